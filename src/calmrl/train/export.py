"""Export a trained model as one directory: ``model.safetensors`` (encoders + calibrator)
and ``config.json``; :func:`load_exported` rebuilds it without the training config files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..core import SharedLatentCalibrator
from .config import Config, _build, config_to_dict
from .encoders import MultiModalEncoder

__all__ = ["export_model", "load_exported"]


def export_model(encoder: MultiModalEncoder, calibrator: SharedLatentCalibrator, cfg: Config, dims: list[int],
                 out: str | os.PathLike, standardization: list | None = None) -> Path:
    """``standardization``: the training split's per-modality ``(mean, std)``; stored (float64)
    and applied by :class:`~calmrl.inference.CalMRLModel` to raw inputs, as training did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # copies: a shared encoder's tensors appear under each of its modalities (safetensors refuses shared memory)
    tensors = {f"encoder.{k}": v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    tensors.update({f"calibrator.{k}": v.detach().contiguous().cpu() for k, v in calibrator.state_dict().items()})
    for name, (mean, std) in zip(encoder.names, standardization or []):
        tensors[f"standardize.{name}.mean"] = torch.as_tensor(np.asarray(mean, np.float64))
        tensors[f"standardize.{name}.std"] = torch.as_tensor(np.asarray(std, np.float64))
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    meta = {"names": encoder.names, "dims": list(dims), "config": config_to_dict(cfg), "format_version": 2,
            "standardized": bool(standardization)}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    return out


def load_exported(path: str | os.PathLike, device="cpu") -> tuple[MultiModalEncoder, SharedLatentCalibrator, dict]:
    """Returns ``(encoder, calibrator, meta)`` from an exported directory."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        tensors = load_file(str(path / "model.safetensors"), device=str(device))
    except FileNotFoundError as e:
        raise ValueError(f"{path} is not an exported calmrl model: {e}") from None
    except Exception as e:
        raise ValueError(f"exported model in {path} is corrupt: {e}") from None
    cfg = _build(Config, meta["config"])
    m = cfg.model
    enc = MultiModalEncoder.mlp(meta["dims"], meta["names"], m.embed_dim, m.hidden_dim, m.layers, m.dropout,
                                shared=m.shared_encoders)
    enc.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})
    cal_state = {k[len("calibrator."):]: v for k, v in tensors.items() if k.startswith("calibrator.")}
    cal = SharedLatentCalibrator(len(meta["names"]), m.embed_dim, cal_state["W"].shape[-1], names=meta["names"])
    cal.load_state_dict(cal_state)
    std = None
    if f"standardize.{meta['names'][0]}.mean" in tensors:
        std = [(tensors[f"standardize.{n}.mean"], tensors[f"standardize.{n}.std"]) for n in meta["names"]]
    elif meta.get("format_version", 1) < 2:
        import warnings
        warnings.warn(f"{path} was exported before standardisation was saved: inputs must be standardised by "
                      "the caller with the training split's statistics", stacklevel=2)
    meta["standardization"] = std
    return enc.eval(), cal, meta
