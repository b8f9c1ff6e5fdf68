"""A trained model back from a checkpoint, without the trainer: the file verified against its
SHA-256 (:mod:`calmrl.integrity`), then the encoders, the calibrator and the completion backend
rebuilt from the configuration stored in it. Never imports Lightning, so that ``calmrl eval``,
``impute`` and ``export`` start fast."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..config import Config, _build, calibrates
from ..core import MaskedCompleter, MultimodalVAE, SharedLatentCalibrator
from ..integrity import DamagedFileError, UnverifiedFileError, check_sealed
from .encoders import MultiModalEncoder

__all__ = ["CheckpointError", "load_checkpoint", "TrainedModel", "model_from_loaded", "kept_checkpoint"]


def kept_checkpoint(run_dir) -> Path:
    """The model a run keeps: ``checkpoints/kept.ckpt`` where a guard or auto chose one, else
    ``checkpoints/last.ckpt``."""
    ck = Path(run_dir) / "checkpoints"
    return ck / "kept.ckpt" if (ck / "kept.ckpt").exists() else ck / "last.ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt."""


def load_checkpoint(path, map_location="cpu") -> dict:
    """The dict a checkpoint holds, verified; :class:`CheckpointError` naming the file when it is
    missing, unreadable or damaged (never blamed on the data)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"checkpoint {path} is damaged: it cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}){_earlier(path)}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no model state (not a calmrl checkpoint)")
    try:
        check_sealed(ckpt, path)
    except DamagedFileError as e:
        err = CheckpointError(f"{e}{_earlier(path)}")
        err.unverified = isinstance(e, UnverifiedFileError)      # no checksum, rather than a wrong one
        raise err from None
    return ckpt


def _earlier(path: Path) -> str:
    """The other checkpoints beside ``path``, for the message that refuses it."""
    others = sorted(p.name for p in Path(path).parent.glob("*.ckpt") if p.name != Path(path).name)
    return f"; other checkpoints there: {', '.join(others)}" if others else "; no other checkpoint there"


class TrainedModel(nn.Module):
    """What a run trained, for use: ``encoder``, ``calibrator`` and (for a nonlinear completion
    backend) ``completer``, with the modality ``names``, input ``dims``, the training split's
    ``standardization`` and the run's ``cfg``. The state-dict keys are the trainer's, so a
    checkpoint's weights load as they are."""

    def __init__(self, cfg: Config, dims, names, standardization=None):
        super().__init__()
        self.cfg, self.names, self.dims = cfg, list(names), [int(x) for x in dims]
        m, c = cfg.model, cfg.calibrator
        self.encoder = MultiModalEncoder.mlp(self.dims, self.names, m.embed_dim, m.hidden_dim, m.layers, m.dropout,
                                             shared=m.shared_encoders)
        k = c.latent_dim or max(1, m.embed_dim // 2)
        self.calibrator = SharedLatentCalibrator(len(names), m.embed_dim, k, names=self.names, jitter=c.jitter,
                                                 sigma2_floor=c.sigma2_floor, sigma2_floor_rel=c.sigma2_floor_rel,
                                                 w_prior=c.w_prior)
        self.completer = None
        self.columns = None
        if calibrates(cfg.method) and c.backend == "mlp":
            self.completer = MaskedCompleter(len(names), m.embed_dim, c.mlp_hidden, hide_rate=c.hide_rate)
        elif calibrates(cfg.method) and c.backend in ("mvae", "mopoe"):
            self.completer = MultimodalVAE(len(names), m.embed_dim, k, c.mlp_hidden, kind=c.backend,
                                           hide_rate=c.hide_rate)
        self.standardization = standardization
        self.eval()

    @property
    def uses_calibrator(self) -> bool:
        return calibrates(self.cfg.method)


def model_from_loaded(ckpt: dict, path: str | os.PathLike) -> tuple[Config, TrainedModel]:
    """The :class:`TrainedModel` of a checkpoint already read (and verified) from ``path``. The
    trainer's own parameters (a learned temperature, running EM statistics, the gate's weights)
    are not part of it."""
    if "calmrl_config" not in ckpt:
        raise CheckpointError(f"{path} has no calmrl configuration (not written by calmrl train)")
    cfg = _build(Config, ckpt["calmrl_config"])
    names, dims = ckpt.get("calmrl_names"), ckpt.get("calmrl_dims")
    if dims is None:
        raise CheckpointError(f"{path} was written before checkpoints carried the data's widths; load it with "
                              "calmrl.train.checkpoints.model_from_checkpoint (which reads the training data)")
    model = TrainedModel(cfg, dims, names, ckpt.get("calmrl_standardization"))
    mine = set(model.state_dict())
    state = {k: v for k, v in ckpt["state_dict"].items() if k in mine}
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its own configuration: {str(e)[:300]}") from None
    if missing:
        raise CheckpointError(f"{path} does not match its own configuration (missing {missing[:5]})")
    model.columns = ckpt.get("calmrl_columns")          # each view's feature column names, where the data named them
    return cfg, model
