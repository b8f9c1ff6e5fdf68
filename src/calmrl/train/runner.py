"""The entry point of training: ``run(cfg)`` trains one method (``auto``: a search over
candidates, :mod:`calmrl.train.auto`) and returns, and writes, its results; it resumes from
``<output_dir>/<method>/checkpoints/last.ckpt`` when ``resume=True``.

Layers, read top-down, each importing only those below it: this entry (accelerator, lock,
data, every check that can fail without training: once) -> :mod:`.auto` (the search) ->
:mod:`.guard` -> :mod:`.single` (one objective into one run directory) -> :mod:`.trainer`,
:mod:`.module`, :mod:`.evaluate`, :mod:`.checkpoints`, :mod:`.outdir`, :mod:`.splits`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .auto import run_auto
from .checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint, model_from_checkpoint, resume_checkpoint
from .config import Config, calibrates, default_output_dir
from .encoders import check_shared_groups
from .evaluate import evaluate_model
from .guard import guard
from .outdir import RunLockedError, check_writable, output_lock
from .results import format_table
from .single import resolve_anchor, train_one
from .splits import Splits, describe_simulation, prepare_data
from .threads import choose_threads
from .trainer import check_accelerator, quiet_lightning

# the public names this module has always offered, wherever they live now
__all__ = ["run", "preflight", "Splits", "prepare_data", "describe_simulation", "AtomicCheckpointIO", "CheckpointError",
           "RunLockedError", "load_checkpoint", "output_lock", "resume_checkpoint", "model_from_checkpoint",
           "evaluate_model", "format_table", "choose_threads"]

log = logging.getLogger("calmrl")


def preflight(cfg: Config, splits: Splits) -> None:
    """Every check that can fail without training, before anything is moved or trained:
    shared-encoder groups, the anchor, the checkpoint to start from, a writable output directory."""
    check_shared_groups(cfg.model.shared_encoders, splits.names, splits.dims)
    resolve_anchor(cfg.method.anchor, splits)
    if cfg.train.init_from:
        load_checkpoint(cfg.train.init_from)
    check_writable(Path(cfg.output_dir))
    if cfg.train.batch_size > splits.train.n:
        log.warning("note: train.batch_size %d exceeds the %d training instances: every step sees the whole "
                    "training split", cfg.train.batch_size, splits.train.n)


def run(cfg: Config, *, method: str | None = None, resume: bool = False, splits: Splits | None = None,
        max_epochs: int | None = None, extra_callbacks=(), return_model: bool = False, run_name: str | None = None):
    """Train one method and evaluate it; writes ``results.json`` under ``output_dir/<method>``.

    ``method`` (default ``cfg.method.name``) is written into the config here, once. Everything
    that can fail before training is checked first (:func:`preflight`), so a bad input changes
    nothing on disk; a run that fails later puts an earlier run back where it was."""
    quiet_lightning()
    check_accelerator(cfg)
    cfg = replace(cfg, method=replace(cfg.method, name=method or cfg.method.name),
                  output_dir=cfg.output_dir or default_output_dir(cfg))
    with output_lock(cfg.output_dir):
        if splits is None:         # (a caller that prepared the splits has said their notes)
            splits = prepare_data(cfg)
            for note in splits.notes:
                log.warning("note: %s", note)
        preflight(cfg, splits)
        if cfg.method.name == "auto":
            results, model = run_auto(cfg, splits, resume=resume, max_epochs=max_epochs,
                                      extra_callbacks=extra_callbacks)
        else:
            run_dir = Path(cfg.output_dir) / (run_name or cfg.method.name)
            results, model = train_one(cfg, splits, run_dir, resume=resume, max_epochs=max_epochs,
                                       extra_callbacks=extra_callbacks)
            if calibrates(cfg.method) and cfg.method.guard == "validation":
                results, model = guard(cfg, results, model, run_dir, resume, splits, max_epochs, extra_callbacks)
    return (results, model) if return_model else results
