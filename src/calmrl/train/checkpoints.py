"""Checkpoint files: atomic writes, loading with clear errors, what to resume from and
whether it may be resumed, warm starts from another run, and a trained model back from a file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ..data.fingerprint import compare as compare_fingerprints
from ..integrity import seal
from ..model.checkpoint import CheckpointError, load_checkpoint
from .config import Config, _build, config_to_dict
from .module import CalMRLModule
from .splits import prepare_data

__all__ = ['CheckpointError', 'AtomicCheckpointIO', 'load_checkpoint', 'resume_checkpoint', 'config_differences', 'check_resumable', 'init_from_checkpoint', 'model_from_checkpoint', 'model_from_loaded']

log = logging.getLogger("calmrl")


PREVIOUS = "last.prev.ckpt"   # the checkpoint before last.ckpt, kept in case last.ckpt is damaged


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.tmp`` then ``os.replace``s it: a crash mid-write never damages the
    previous checkpoint. Loading a corrupt file raises :class:`CheckpointError`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        seal(checkpoint)      # a SHA-256 of its content, checked on every load
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos"
            writer = isinstance(e, OSError) or any(t in str(e) for t in ("unexpected pos", "enforce fail", "No space"))
            if not writer:
                raise
            full = getattr(e, "errno", None) == 28 or "unexpected pos" in str(e) or "No space" in str(e)
            raise OSError((f"no space left on device while writing {path}" if full else
                           f"cannot write checkpoint {path}: {str(e).splitlines()[0][:120]}")
                          + "; nothing already written was lost (the previous checkpoint is kept): free space and "
                            "rerun with --resume") from None
        if path.name == "last.ckpt" and path.exists():
            os.replace(path, path.with_name(PREVIOUS))    # the previous good one is kept
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path, map_location)


def resume_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, dict | None, list[str]]:
    """The checkpoint to resume ``run_dir`` from: ``last.ckpt``, else the previous one kept
    beside it when ``last.ckpt`` is damaged. Returns ``(path, checkpoint, notes)``; ``(None,
    None, notes)`` when there is none. Raises :class:`CheckpointError` when every checkpoint
    there is damaged (nothing is touched)."""
    d = Path(run_dir) / "checkpoints"
    notes, errors = [], []
    for name in ("last.ckpt", PREVIOUS):
        p = d / name
        if not p.exists():
            continue
        try:
            ck = load_checkpoint(p)
        except CheckpointError as e:
            errors.append(str(e))
            notes.append(f"{p} is damaged; trying the previous checkpoint")
            continue
        return p, ck, notes
    if errors:
        raise CheckpointError("cannot resume: " + "; ".join(errors))
    return None, None, notes


_RESUME_FREE = ("output_dir", "train.progress", "train.plots", "train.threads", "train.num_workers", "train.accelerator",
                "train.devices", "train.num_nodes", "train.strategy", "train.check_val_every", "eval.",
                # auto's search settings: they choose which candidates train, not how one trains
                "method.candidates", "method.auto_lrs", "method.lr_factors", "method.search", "method.halving_eta",
                "method.halving_min_epochs", "method.halving_keep", "method.auto_shared")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "tables":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(old: dict, new: dict, free=_RESUME_FREE) -> list[str]:
    """``key: old -> new`` for every setting (dotted) that differs, except those in ``free``."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in free)]


def check_resumable(resume_path: Path, resume_ckpt: dict, cfg, splits) -> None:
    """--resume continues the run the checkpoint holds, on the same data, with the same settings."""
    if resume_ckpt.get("calmrl_names") not in (None, splits.names):
        raise CheckpointError(f"{resume_path} was trained on modalities {resume_ckpt['calmrl_names']}, "
                              f"this run has {splits.names}")
    old = resume_ckpt.get("calmrl_config")
    if old is not None:
        diff = config_differences(old, config_to_dict(cfg))
        if diff:
            raise CheckpointError(f"--resume: {resume_path} was trained with other settings ({'; '.join(diff[:4])}"
                                  f"{'; ...' if len(diff) > 4 else ''}); resume with the same settings, or start a "
                                  "new run without --resume")
    fp = resume_ckpt.get("calmrl_fingerprint")
    if fp is not None and splits.fingerprint is not None:
        diff = compare_fingerprints(fp, splits.fingerprint)
        if diff:
            raise CheckpointError(f"--resume: the data changed since {resume_path} was written ({'; '.join(diff)})")


def init_from_checkpoint(model: CalMRLModule, path: str, ckpt: dict) -> None:
    """Continual training: encoders, calibrator parameters and statistics warm-started from
    ``ckpt``, which may come from another method sharing the encoders: loss parameters the
    checkpoint lacks (e.g. a learnable temperature) start from their defaults, and those this
    method has no use for are left out, each said in a note."""
    own = ("temperature.", "completer.")
    state = ckpt["state_dict"]
    mine = model.state_dict()
    skipped = [k for k in state if k.startswith(own) and k not in mine]
    state = {k: v for k, v in state.items() if k not in skipped}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise CheckpointError(f"{path} does not fit this model: {str(e)[:300]}") from None
    fresh = [k for k in missing if k.startswith(own)]
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}): modalities or sizes differ")
    src = (ckpt.get("calmrl_config") or {}).get("method", {}).get("name", "?")
    if fresh:
        log.warning("note: %s (a %s checkpoint) has no %s; they start from their defaults", path, src,
                    sorted({k.split('.')[0] for k in fresh}))
    if skipped:
        log.warning("note: %s (a %s checkpoint) holds %s, which %s does not use; left out", path, src,
                    sorted({k.split('.')[0] for k in skipped}), model.cfg.method.name)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[Config, CalMRLModule]:
    """The trained model of a checkpoint, without the training data (names, widths and the
    training split's standardisation travel in the checkpoint; older checkpoints without
    them fall back to reading the configured data)."""
    return model_from_loaded(load_checkpoint(path), path)


def model_from_loaded(ckpt: dict, path) -> tuple[Config, CalMRLModule]:
    """:func:`model_from_checkpoint` on a checkpoint already read from ``path``."""
    if "calmrl_config" not in ckpt:
        raise CheckpointError(f"{path} has no calmrl configuration (not written by calmrl train)")
    cfg = _build(Config, ckpt["calmrl_config"])
    names, dims, std = ckpt.get("calmrl_names"), ckpt.get("calmrl_dims"), ckpt.get("calmrl_standardization")
    if dims is None:
        splits = prepare_data(cfg)
        names, dims, std = splits.names, splits.dims, splits.standardization
    model = CalMRLModule(cfg, dims, names)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its own configuration: {str(e)[:300]}") from None
    model.standardization = std
    model.columns = ckpt.get("calmrl_columns")
    return cfg, model
