"""``method.guard=validation``: calibration must not cost what the validation split can see."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import objectives
from .outdir import copy_kept
from .results import write_results
from .single import train_one

__all__ = ['imputations_took_part', 'guard']


def imputations_took_part(results: dict) -> bool:
    """Whether a calmrl run's loss ever saw an imputed column at a weight above 0: the gate was
    off (``none``: weight 1 throughout) or opened for some modality in some epoch."""
    if results.get("gate") == "none":
        return True
    return any(w > 0 for h in results.get("gate_history", []) for w in h["weights"])


def guard(cfg, results, model, run_dir: Path, resume, splits, max_epochs, extra_callbacks):
    """``method.guard=validation``: calibration must not cost what the validation split can
    see. If imputed columns took part, train the observed-only path (the objective without
    imputations, the registry's ``observed_only``: ``pmrl-drop`` for calmrl, X for ``X+cal``; the same
    data, seed and start) under ``run_dir/guard`` and keep the run with the higher
    validation R@1 (ties keep the calibrated run). The kept model's checkpoint is copied to
    ``checkpoints/kept.ckpt`` and the kept run's figures become the results; the comparison is
    recorded in ``results["guard"]``."""
    if not imputations_took_part(results):
        results["guard"] = {"kept": "observed-only", "alternative_trained": False,
                            "why": "no imputed column took part (gate 0 throughout): the run is the observed-only run"}
        write_results(run_dir, results)
        return results, model
    alt_dir = run_dir / "guard"
    plain = objectives.get(cfg.method.name).observed_only      # the objective without imputations
    alt_cfg = replace(cfg, output_dir=str(alt_dir), method=replace(cfg.method, name=plain, calibrate=False))
    alt, alt_model = train_one(alt_cfg, splits, alt_dir / plain, resume=resume, max_epochs=max_epochs,
                               extra_callbacks=extra_callbacks, role="the guard's observed-only run")
    val = {"calibrated": results["val_average"]["R@1"], "observed-only": alt["val_average"]["R@1"]}
    kept = "observed-only" if val["observed-only"] > val["calibrated"] else "calibrated"
    record = {"kept": kept, "alternative_trained": True, "val_R@1": val,
             "test_R@1": {"calibrated": results["pairs"]["average"]["R@1"],
                          "observed-only": alt["pairs"]["average"]["R@1"]},
             "checkpoint": str(run_dir / "checkpoints" / "kept.ckpt")}
    src = (run_dir if kept == "calibrated" else alt_dir / plain) / "checkpoints" / "last.ckpt"
    if src.exists():
        copy_kept(src, run_dir)
    if kept == "observed-only":
        results = {**alt, "method": results["method"], "gate": results.get("gate"), "gate_history": results["gate_history"],
                   "calibrated": {k: results[k] for k in ("pairs", "val_average", "anchor", "em_history")
                                  if k in results}}
        model = alt_model
    results["guard"] = record
    write_results(run_dir, results)
    return results, model
