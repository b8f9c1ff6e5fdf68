"""The table of full learning curves: ``python -m calmrl.experiments.curves.table``.

For every dataset x setting x seed (a *cell*: the suite's settings, :mod:`..suite.plan`), every
candidate of auto's default space on that data (:func:`calmrl.train.auto.candidate_space`,
with ``method.candidates`` as given, both learning rates, with and without the shared encoders
auto offers) is trained to ``train.epochs`` on the cell's splits. At the end of every epoch
the :class:`CurveRecorder` scores the validation and the test split (average R@1 over ordered
view pairs, as a search ranks) and keeps the epoch's training seconds apart from the scoring.

A calibrated candidate's observed-only twin (``pmrl-drop`` for ``calmrl``, X for ``X+cal``) is
the same run until an imputed column takes part (the gate opens; :func:`calmrl.train.guard.
imputations_took_part`): where that never happens in the full run, the twin is recorded as
``same_run_as`` its calibrated form instead of being trained a second time; otherwise it is
trained and ``took_part_epoch`` says from which epoch the two differ.

Records: ``<out>/records/<dataset>/<setting>/seed<k>.json``, rewritten atomically after each
candidate; a rerun skips what is recorded. Run directories (and their checkpoints) are
removed once a cell is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import lightning as L

__all__ = ["CurveRecorder", "run_curves", "run_cell", "DEFAULT_DATASETS", "DEFAULT_SETTINGS"]

DEFAULT_DATASETS = ("emoji", "glyphs", "movies", "leaf", "cells", "uci_mfeat", "wdbc", "vowels")
DEFAULT_SETTINGS = ("mcar 0.5", "paired", "never-complete")
AS_GIVEN = "as given"     # a setting: the data and missingness as the configuration says (a user's own data)


class CurveRecorder(L.Callback):
    """Validation and test R@1 and training seconds of every epoch (``self.rows``)."""

    def __init__(self, splits, cfg):
        self.splits, self.cfg, self.rows, self._t = splits, cfg, [], None

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        from ...train.evaluate import split_score

        seconds = time.perf_counter() - self._t
        t0 = time.perf_counter()
        val = split_score(pl_module, self.splits.val, self.splits.names, self.cfg)["R@1"]
        t1 = time.perf_counter()
        test = split_score(pl_module, self.splits.test, self.splits.names, self.cfg, validation=False)["R@1"]
        self.rows.append({"epoch": int(trainer.current_epoch) + 1, "val": float(val), "test": float(test),
                          "train_seconds": seconds, "val_seconds": t1 - t0})


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _first_took_part(res: dict, warmup: int) -> int | None:
    """The first epoch (1-based) whose training saw an imputed column at a weight above 0."""
    if res.get("gate") == "none":
        return warmup + 1
    epochs = [int(h["epoch"]) + 1 for h in res.get("gate_history", []) if any(w > 0 for w in h["weights"])]
    return min(epochs) if epochs else None


def record_path(out: Path, dataset: str, setting: str, seed: int) -> Path:
    return Path(out) / "records" / dataset / setting.replace(" ", "_") / f"seed{seed}.json"


def run_cell(cfg, dataset: str, setting: str, seed: int, out: Path, names: list[str], log=print) -> dict:
    """Every candidate of one cell to the full budget; returns the cell's record."""
    import torch

    from ...train import prepare_data
    from ...train.auto import candidate_space
    from ...train.config import apply_overrides
    from ...train.single import train_one
    from ..suite.plan import _setting_cfg

    torch.set_num_threads(1)
    base = apply_overrides(cfg, [f"data.dataset={dataset}", f"train.seed={seed}", "train.progress=false",
                                 "train.threads=1", f"train.check_val_every={cfg.train.epochs + 1}"])
    c = base if setting == AS_GIVEN else _setting_cfg(base, setting, names)
    path = record_path(out, dataset, setting, seed)
    rec = json.loads(path.read_text()) if path.exists() else {
        "dataset": dataset, "setting": setting, "seed": seed, "epochs": c.train.epochs,
        "candidates": {}, "meta": {}}
    splits = prepare_data(c)
    cands = candidate_space(c, splits, "halving")
    rec["meta"].update({"n_train": splits.train.n, "n_val": splits.val.n, "n_test": splits.test.n,
                        "order": [x.label for x in cands], "names": splits.names, "dims": splits.dims})
    runs = Path(out) / "runs" / dataset / setting.replace(" ", "_") / f"seed{seed}"
    warmup = c.calibrator.warmup_epochs
    for cand in cands:
        if cand.label in rec["candidates"]:
            continue
        parent = cand.twin_of
        entry = {"method": cand.cfg.method.name, "calibrate": bool(cand.cfg.method.calibrate),
                 "lr": cand.cfg.train.lr, "shared": bool(cand.cfg.model.shared_encoders),
                 "twin_of": parent.label if parent is not None else None}
        prec = rec["candidates"].get(parent.label) if parent is not None else None
        if prec is not None and prec.get("took_part_epoch") is None and not prec.get("error"):
            entry["same_run_as"] = parent.label          # the gate never opened: the twin is this very run
            rec["candidates"][cand.label] = entry
            _atomic_json(path, rec)
            continue
        recorder = CurveRecorder(splits, c)
        t0 = time.time()
        try:
            res, _ = train_one(cand.cfg, splits, runs / cand.label, final=False, extra_callbacks=[recorder],
                               role=f"candidate {cand.label}")
            entry["took_part_epoch"] = (_first_took_part(res, warmup)
                                        if cand.cfg.method.calibrate or cand.cfg.method.name == "calmrl" else None)
        except (FloatingPointError, ValueError, RuntimeError) as e:      # recorded, as auto records it
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        entry["curve"] = recorder.rows
        entry["seconds"] = time.time() - t0
        rec["candidates"][cand.label] = entry
        _atomic_json(path, rec)
        last = recorder.rows[-1] if recorder.rows else {}
        log(f"    {dataset} {setting} seed {seed} {cand.label}: val {last.get('val', float('nan')):.2f} "
            f"test {last.get('test', float('nan')):.2f} ({entry['seconds']:.0f}s)")
    shutil.rmtree(runs, ignore_errors=True)
    rec["done"] = True
    _atomic_json(path, rec)
    return rec


def _job(cfg, dataset, setting, seed, out, names):
    run_cell(cfg, dataset, setting, seed, out, names)
    return dataset, setting, seed


def run_curves(cfg, out: Path, *, datasets=DEFAULT_DATASETS, settings=DEFAULT_SETTINGS, seeds=(0, 1, 2),
               jobs: int = 1, log=print) -> list[dict]:
    """Every cell not yet recorded under ``out``, on ``jobs`` worker processes; returns all records."""
    from ..suite.run import _names, _pool_map

    out = Path(out)
    names = {d: _names(d) for d in datasets}
    tasks = []
    for seed in seeds:                 # seed by seed: an interrupted table still covers every dataset
        for d in datasets:
            for s in settings:
                p = record_path(out, d, s, seed)
                if not (p.exists() and json.loads(p.read_text()).get("done")):
                    tasks.append((cfg, d, s, seed, out, names[d]))
    log(f"curves: {len(tasks)} cells to run ({jobs} worker(s))")
    t0 = time.time()
    for i, (t, _) in enumerate(_pool_map(_job, tasks, jobs, log)):
        log(f"  [{i + 1}/{len(tasks)} {time.time() - t0:.0f}s] {t[1]} {t[2]} seed {t[3]}")
    return load_records(out)


def load_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("records/*/*/seed*.json"))]


def main(argv=None) -> int:
    from ...train.config import load_config

    ap = argparse.ArgumentParser(prog="python -m calmrl.experiments.curves.table", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/bench/curves")
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. method.candidates=[...]")
    a = ap.parse_args(argv)
    cfg = load_config(None, [f"train.epochs={a.epochs}", "train.lr=0.002", *a.set])
    run_curves(cfg, Path(a.out), datasets=a.datasets.split(","), settings=a.settings.split(","),
               seeds=[int(s) for s in a.seeds.split(",")], jobs=a.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
