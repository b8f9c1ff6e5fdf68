"""One objective, trained and evaluated on prepared splits into one run directory.

:func:`train_one` is the trainer's single step; the guard (:mod:`.guard`) and auto
(:mod:`.auto`) are built on it, and the entry point (:func:`calmrl.train.runner.run`) takes
the lock, prepares the data and checks the settings once before calling any of them. The
objective is named once, by ``cfg.method.name``.

A new run (not resumed) moves an earlier run in its directory aside; when the new run then
fails (diverges, a bad setting met only in training), the earlier run is moved back, so a
failure never hides finished work (:func:`calmrl.train.outdir.replacing`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from .. import objectives
from .checkpoints import check_resumable, init_from_checkpoint, load_checkpoint, resume_checkpoint
from .config import Config, config_to_dict
from .evaluate import evaluate_model, fit_unused_calibrator, validation_rows, validation_score
from .loaders import make_loader
from .module import CalMRLModule, resolve_gate
from .outdir import check_writable, replacing
from .results import plot_gate, to_yaml, write_results
from .splits import Splits
from .threads import choose_threads
from .trainer import build_trainer

__all__ = ["train_one", "resolve_anchor"]

log = logging.getLogger("calmrl")


def resolve_anchor(anchor: str, splits: Splits) -> str:
    """``method.anchor`` (the hub of gram / triangle / anchor-infonce), or when unset the modality
    observed in the most training instances: the view every subset shares in paired data (text in
    a V-T plus A-T set), the first of the most observed otherwise."""
    if anchor:
        if anchor not in splits.names:
            raise ValueError(f"method.anchor '{anchor}' is not a modality of the data ({splits.names})")
        return anchor
    return splits.names[int(splits.train.mask.sum(0).argmax())]


def train_one(cfg: Config, splits: Splits, run_dir: Path, *, resume: bool = False, max_epochs: int | None = None,
              extra_callbacks=(), role: str = "", final: bool = True) -> tuple[dict, CalMRLModule]:
    """Train objective ``cfg.method.name`` into ``run_dir`` and evaluate it.

    ``max_epochs``: stop after this many epochs of the ``train.epochs`` schedule (the learning
    rate follows the full schedule, so a later call with ``resume=True`` continues exactly as an
    uninterrupted run). ``final=False``: a rung of a search; only the validation R@1 is measured
    (``results["val_average"]``) and no ``results.json`` is written. Returns ``(results, model)``."""
    run_dir = Path(run_dir)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    resume_path, resume_ckpt, notes = resume_checkpoint(run_dir) if resume else (None, None, [])
    for note in notes:
        log.warning("%s", note)
    init_ckpt = load_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
    cfg = replace(cfg, method=replace(cfg.method, gate=resolve_gate(cfg.method.gate, init_ckpt),
                                      anchor=resolve_anchor(cfg.method.anchor, splits)))
    total = max_epochs or cfg.train.epochs
    start_epoch = 0
    if resume:
        if resume_path is None:
            log.warning("--resume: %s", f"{role} had not started; starting it" if role else
                        f"no checkpoint under {run_dir / 'checkpoints'}; starting from epoch 0")
        else:
            start_epoch = int(resume_ckpt.get("epoch", 0)) + 1
            check_resumable(resume_path, resume_ckpt, cfg, splits)
            log.info("resuming %sfrom %s: epoch %d of %d", f"{role} " if role else "", resume_path,
                     min(start_epoch, total), total)
    torch.set_num_threads(choose_threads(cfg))
    model = CalMRLModule(cfg, splits.dims, splits.names)
    model.standardization = splits.standardization
    model.data_fingerprint, model.classes = splits.fingerprint, splits.classes
    model.columns = splits.columns
    if cfg.method.gate != "none":
        model.gate_loader = make_loader(splits.val, cfg, False)
    if init_ckpt is not None:
        init_from_checkpoint(model, cfg.train.init_from, init_ckpt)
    with replacing(run_dir, keep=resume_path is not None):
        check_writable(run_dir / "checkpoints")
        trainer = build_trainer(cfg, run_dir, max_epochs=max_epochs, extra_callbacks=extra_callbacks,
                                keep_logs_before_epoch=start_epoch if resume_path is not None else None,
                                label=role.removeprefix("candidate ") or cfg.method.name)
        if trainer.is_global_zero:
            (run_dir / "config.yaml").write_text(to_yaml(config_to_dict(cfg)))
        t0 = time.time()
        known = splits.train_full.mask if objectives.get(cfg.method.name).needs == "true_hidden" else None
        try:
            # per-epoch validation embeds only the rows its score reads (validation_rows: all of a split up
            # to eval.val_gallery_size); the gate measures on the whole split (gate_loader)
            rows = validation_rows(splits.val.n, cfg.eval)
            val = splits.val if rows is None else splits.val.subset(rows)
            trainer.fit(model, make_loader(splits.train, cfg, True, known), make_loader(val, cfg, False),
                        ckpt_path=str(resume_path) if resume_path else None)
        except torch.linalg.LinAlgError as e:       # a diverged loss reaches the decompositions first
            raise FloatingPointError(f"training diverged at epoch {trainer.current_epoch} (non-finite embeddings "
                                     f"reached {str(e).split(':')[0]}); try a smaller train.lr (now "
                                     f"{cfg.train.lr:g})") from None
        except BaseException as e:
            if hasattr(e, "signum"):                 # the CLI's SIGINT / SIGTERM handler: say where it stopped
                e.epoch = trainer.current_epoch
            raise
        train_time = time.time() - t0
        if not final:
            val = validation_score(model, splits, cfg)
            return {"val_average": val, "epochs": trainer.current_epoch, "train_seconds": train_time,
                    "gate": cfg.method.gate, "gate_history": list(model.gate_history),
                    "val_curve": [list(x) for x in getattr(model, "val_history", [])]}, model
        if fit_unused_calibrator(model, splits, cfg):
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        t1 = time.time()
        results = evaluate_model(model, splits, cfg)
    results.update({"method": objectives.method_label(cfg.method.name, cfg.method.calibrate),
                    "train_seconds": train_time, "eval_seconds": time.time() - t1,
                    "epochs": trainer.current_epoch, "resumed_from_epoch": start_epoch if resume_path else None,
                    "threads": torch.get_num_threads(),
                    "em_history": getattr(model, "em_history", []),
                    "loss_history": getattr(model, "loss_history", []),
                    "gate_history": getattr(model, "gate_history", []), "gate": cfg.method.gate,
                    "val_curve": [list(x) for x in getattr(model, "val_history", [])],
                    "missing_fraction_train": float(1 - splits.train.mask.mean()),
                    "simulated": splits.simulated, "classes": splits.classes, "names": splits.names,
                    "n_train": splits.train.n, "n_val": splits.val.n,
                    "n_test": 0 if splits.test_is_validation else splits.test.n,
                    "evaluated_on": "validation" if splits.test_is_validation else "test",
                    "data_notes": splits.notes})
    if trainer.is_global_zero and results["gate_history"] and cfg.train.plots:
        plot_gate(results["gate_history"], splits.names, run_dir / "gate.png")
    write_results(run_dir, results)
    return results, model
