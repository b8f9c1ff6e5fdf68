"""End-to-end runs: ``run(cfg)`` trains one method (``auto``: each candidate, see
:mod:`calmrl.train.auto`) and returns, and writes, its results; it resumes from
``<output_dir>/<method>/checkpoints/last.ckpt`` when ``resume=True``.

The pieces a run is made of each live in a module of their own, read top-down:
:mod:`.splits` (data preparation), :mod:`.loaders`, :mod:`.checkpoints` (files, resume, warm
starts), :mod:`.outdir` (lock, earlier runs), :mod:`.threads`, :mod:`.trainer` (Lightning),
:mod:`.evaluate`, :mod:`.guard`, :mod:`.results`, :mod:`.calibrate` (absorb step b).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from .calibrate import calibrate_checkpoint
from .checkpoints import (AtomicCheckpointIO, CheckpointError, check_resumable, init_from_checkpoint, load_checkpoint,
                          model_from_checkpoint, resume_checkpoint)
from .config import CALIBRATABLE, Config, calibrates, config_to_dict, default_output_dir
from .evaluate import evaluate_model, fit_unused_calibrator
from .guard import guard
from .loaders import make_loader
from .module import CalMRLModule, resolve_gate
from .outdir import RunLockedError, check_writable, move_aside, output_lock
from .results import format_table, plot_gate, to_yaml, write_results
from .splits import Splits, describe_simulation, prepare_data
from .threads import choose_threads
from .trainer import build_trainer, check_accelerator, quiet_lightning

# the public names this module has always offered, wherever they live now
__all__ = ["run", "Splits", "prepare_data", "describe_simulation", "AtomicCheckpointIO", "CheckpointError",
           "RunLockedError", "load_checkpoint", "output_lock", "resume_checkpoint", "model_from_checkpoint",
           "calibrate_checkpoint", "evaluate_model", "format_table", "choose_threads"]

log = logging.getLogger("calmrl")


def run(cfg: Config, *, method: str | None = None, resume: bool = False, splits: Splits | None = None,
        max_epochs: int | None = None, extra_callbacks=(), return_model: bool = False, run_name: str | None = None):
    """Train one method and evaluate it; writes ``results.json`` under ``output_dir/method``.

    Everything that can fail before training is checked first (data, labels, trainer settings,
    the checkpoint to resume from, a writable checkpoint directory, no other run in
    ``output_dir``), so that a bad input changes nothing on disk."""
    quiet_lightning()
    check_accelerator(cfg)
    method = method or cfg.method.name
    cfg = replace(cfg, method=replace(cfg.method, name=method), output_dir=cfg.output_dir or default_output_dir(cfg))
    if method == "auto":
        from .auto import run_auto
        return run_auto(cfg, resume=resume, splits=splits, max_epochs=max_epochs, extra_callbacks=extra_callbacks,
                        return_model=return_model)
    run_dir = Path(cfg.output_dir) / (run_name or method)
    with output_lock(cfg.output_dir):
        results, model = _run_locked(cfg, method, run_dir, resume, splits, max_epochs, extra_callbacks)
        if calibrates(cfg.method) and cfg.method.guard == "validation":
            results, model = guard(cfg, results, model, run_dir, resume, splits, max_epochs, extra_callbacks)
    return (results, model) if return_model else results


def resolve_anchor(anchor: str, splits: Splits) -> str:
    """``method.anchor`` (the hub of gram / triangle / anchor-infonce), or when unset the modality
    observed in the most training instances: the view every subset shares in paired data (text in
    a V-T plus A-T set), the first of the most observed otherwise."""
    if anchor:
        if anchor not in splits.names:
            raise ValueError(f"method.anchor '{anchor}' is not a modality of the data ({splits.names})")
        return anchor
    return splits.names[int(splits.train.mask.sum(0).argmax())]


def _run_locked(cfg, method, run_dir, resume, splits, max_epochs, extra_callbacks, role: str = "") -> dict:
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    splits = splits or prepare_data(cfg, method)
    for note in splits.notes:
        log.warning("note: %s", note)
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
            log.warning("resuming %sfrom %s: epoch %d of %d", f"{role} " if role else "", resume_path,
                        min(start_epoch, total), total)
    torch.set_num_threads(choose_threads(cfg))
    model = CalMRLModule(cfg, splits.dims, splits.names)
    model.standardization = splits.standardization
    model.data_fingerprint, model.classes = splits.fingerprint, splits.classes
    if cfg.method.gate != "none":
        model.gate_loader = make_loader(splits.val, cfg, False)
    if init_ckpt is not None:
        init_from_checkpoint(model, cfg.train.init_from, init_ckpt)
    if resume_path is None:
        move_aside(run_dir)
    check_writable(run_dir / "checkpoints")
    trainer = build_trainer(cfg, run_dir, max_epochs=max_epochs, extra_callbacks=extra_callbacks,
                            keep_logs_before_epoch=start_epoch if resume_path is not None else None)
    if trainer.is_global_zero:    # (a new run's directory holds no earlier results: move_aside above)
        (run_dir / "config.yaml").write_text(to_yaml(config_to_dict(cfg)))
    t0 = time.time()
    known = splits.train_full.mask if cfg.method.name == "pmrl-truefill" else None
    try:
        trainer.fit(model, make_loader(splits.train, cfg, True, known), make_loader(splits.val, cfg, False),
                    ckpt_path=str(resume_path) if resume_path else None)
    except torch.linalg.LinAlgError as e:       # a diverged loss reaches the decompositions first
        raise FloatingPointError(f"training diverged at epoch {trainer.current_epoch} (non-finite embeddings reached "
                                 f"{str(e).split(':')[0]}); try a smaller train.lr (now {cfg.train.lr:g})") from None
    except BaseException as e:
        if hasattr(e, "signum"):                 # the CLI's SIGINT / SIGTERM handler: say where it stopped
            e.epoch = trainer.current_epoch
        raise
    train_time = time.time() - t0
    if fit_unused_calibrator(model, splits, cfg):
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    t1 = time.time()
    results = evaluate_model(model, splits, cfg)
    label = f"{method}+cal" if cfg.method.calibrate and method in CALIBRATABLE else method
    results.update({"method": label, "train_seconds": train_time, "eval_seconds": time.time() - t1,
                    "epochs": trainer.current_epoch, "resumed_from_epoch": start_epoch if resume_path else None,
                    "threads": torch.get_num_threads(),
                    "em_history": getattr(model, "em_history", []),
                    "loss_history": getattr(model, "loss_history", []),
                    "gate_history": getattr(model, "gate_history", []), "gate": cfg.method.gate,
                    "missing_fraction_train": float(1 - splits.train.mask.mean()),
                    "simulated": splits.simulated, "classes": splits.classes, "names": splits.names,
                    "n_train": splits.train.n, "n_val": splits.val.n, "n_test": splits.test.n,
                    "data_notes": splits.notes})
    if trainer.is_global_zero:
        if results["gate_history"]:
            plot_gate(results["gate_history"], splits.names, run_dir / "gate.png")
    write_results(run_dir, results)
    return results, model
