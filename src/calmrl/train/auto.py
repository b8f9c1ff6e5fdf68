"""``method.name=auto``: train every candidate objective and keep the best on validation.

The objective moves retrieval more than calibration does (pairwise InfoNCE, hub InfoNCE and
PMRL each win on some data of the suite), and the suite's validation splits choose among
them without ever leaving auto below a single method (docs/results.md). So the default
trains each method of ``method.candidates`` (by default the calibrated forms: calmrl,
``pairwise-infonce+cal``, ``anchor-infonce+cal``, each with its gate and guard), for each
learning rate of ``method.auto_lrs`` (or ``train.lr``), on the same splits, seed and
encoders, and keeps the run with the highest validation R@1 (averaged over ordered view
pairs; a tie keeps the earlier candidate). The test split is never looked at for the choice.

Layout under ``<output_dir>/auto/``: ``candidates/<method>[-lr<rate>]/`` (each a full run,
calmrl with its guard), ``checkpoints/kept.ckpt`` (a copy of the chosen run's kept model) and
``results.json`` (the chosen run's figures, with ``auto``: every candidate's validation and
test R@1 and the choice).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path


__all__ = ["run_auto", "kept_checkpoint"]

log = logging.getLogger("calmrl")


def kept_checkpoint(run_dir: Path) -> Path:
    """The model a run keeps: ``checkpoints/kept.ckpt`` where a guard or auto chose one, else
    ``checkpoints/last.ckpt``."""
    ck = Path(run_dir) / "checkpoints"
    return ck / "kept.ckpt" if (ck / "kept.ckpt").exists() else ck / "last.ckpt"


def _label(method: str, lr: float | None) -> str:
    return method if lr is None else f"{method}-lr{lr:g}"


def run_auto(cfg, *, resume: bool = False, splits=None, max_epochs=None, extra_callbacks=(), return_model=False):
    """Train the candidates and keep the best on validation (module docstring)."""
    from .outdir import copy_kept, move_aside, output_lock
    from .results import write_results
    from .runner import run
    from .splits import prepare_data

    run_dir = Path(cfg.output_dir) / "auto"
    lrs = list(cfg.method.auto_lrs) or [None]
    grid = [(m, lr) for m in cfg.method.candidates for lr in lrs]
    with output_lock(cfg.output_dir):
        if not resume:
            move_aside(run_dir)          # a finished auto run there is moved aside, never mixed
        splits = splits or prepare_data(cfg, "calmrl")
        cands = {}
        for m, lr in grid:
            base = m.removesuffix("+cal")       # 'pairwise-infonce+cal': the objective with calibration plugged in
            c = replace(cfg, output_dir=str(run_dir / "candidates"),
                        method=replace(cfg.method, name=base, calibrate=m.endswith("+cal")))
            if lr is not None:
                c = replace(c, train=replace(c.train, lr=float(lr)))
            sub = run_dir / "candidates" / _label(m, lr)
            log.warning("auto: training candidate %s", _label(m, lr))
            res, model = run(c, method=base, resume=resume, splits=splits,
                             max_epochs=max_epochs, extra_callbacks=extra_callbacks, return_model=True,
                             run_name=sub.name)
            cands[_label(m, lr)] = (res, model, sub)
        best = None
        for name, (res, _, _) in cands.items():       # strict: a tie keeps the earlier candidate
            if best is None or res["val_average"]["R@1"] > cands[best][0]["val_average"]["R@1"]:
                best = name
        res, model, sub = cands[best]
        choice = {"chosen": best, "rule": "highest validation R@1 (average over ordered view pairs)",
                  "val_R@1": {k: v[0]["val_average"]["R@1"] for k, v in cands.items()},
                  "test_R@1": {k: v[0]["pairs"]["average"]["R@1"] for k, v in cands.items()},
                  "kept_by_guard": {k: v[0]["guard"]["kept"] for k, v in cands.items() if v[0].get("guard")},
                  "checkpoint": str(run_dir / "checkpoints" / "kept.ckpt"),
                  "source_checkpoint": str(kept_checkpoint(sub))}
        copy_kept(kept_checkpoint(sub), run_dir)
        results = {**res, "method": "auto", "chosen_method": res["method"], "auto": choice}
        write_results(run_dir, results)
    log.warning("auto: kept %s (validation R@1 %s)", best,
                ", ".join(f"{k} {v:.2f}" for k, v in choice["val_R@1"].items()))
    return (results, model) if return_model else results
