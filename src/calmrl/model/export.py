"""Export a trained model as one directory: ``model.safetensors`` (encoders + calibrator)
and ``config.json``; :func:`load_exported` rebuilds it without the training config files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config, _build, config_to_dict
from ..core import SharedLatentCalibrator
from ..integrity import CHECKSUM_KEY, DamagedFileError, digest, read_json, unverified
from .encoders import MultiModalEncoder

__all__ = ["export_model", "load_exported", "verify_exported"]

CONFIG_KEY = "calmrl_config_sha256"      # the digest of config.json (names, dims, settings), in the weights' header


def export_model(encoder: MultiModalEncoder, calibrator: SharedLatentCalibrator, cfg: Config, dims: list[int],
                 out: str | os.PathLike, standardization: list | None = None, extra: dict | None = None) -> Path:
    """``standardization``: the training split's per-modality ``(mean, std)``; stored (float64)
    and applied by :class:`~calmrl.inference.CalMRLModel` to raw inputs, as training did."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not _is_export(out):
        raise FileExistsError(f"--out {out} exists and is not an earlier calmrl export (no config.json + "
                              "model.safetensors written by calmrl); it is left as it is: choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    # copies: a shared encoder's tensors appear under each of its modalities (safetensors refuses shared memory)
    tensors = {f"encoder.{k}": v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    tensors.update({f"calibrator.{k}": v.detach().contiguous().cpu() for k, v in calibrator.state_dict().items()})
    for name, (mean, std) in zip(encoder.names, standardization or []):
        tensors[f"standardize.{name}.mean"] = torch.as_tensor(np.asarray(mean, np.float64))
        tensors[f"standardize.{name}.std"] = torch.as_tensor(np.asarray(std, np.float64))
    meta = {"names": encoder.names, "dims": list(dims), "config": config_to_dict(cfg), "format_version": 2,
            "standardized": bool(standardization), **(extra or {})}
    # the SHA-256 of the tensors in the header, checked by load_exported; both files written
    # under temporary names first and renamed only once both are whole
    import tempfile

    tmp, tmp_meta = (Path(tempfile.mkstemp(dir=out, prefix=f".{n}.", suffix=".tmp")[1])
                     for n in ("model.safetensors", "config.json"))    # this call's own names, nobody else's
    try:
        meta = json.loads(json.dumps(meta))
        save_file(tensors, str(tmp), metadata={CHECKSUM_KEY: digest(tensors), CONFIG_KEY: digest(meta)})
        tmp_meta.write_text(json.dumps(meta, indent=2))
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, OSError):
            full = "No space" in str(e) or "problem writing" in str(e) or "os error 28" in str(e)
            raise OSError(f"cannot write the exported model to {out}: "
                          + ("no space left on device" if full else str(e).splitlines()[0][:120])
                          + "; nothing was left there") from None
        raise
    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp, tmp_meta):                     # temporary files are 0600; the exported ones follow the umask
        os.chmod(f, 0o666 & ~umask)
    os.replace(tmp, out / "model.safetensors")
    os.replace(tmp_meta, out / "config.json")
    return out


def _is_export(path: Path) -> bool:
    """A directory an earlier ``export`` wrote: its config.json is calmrl's and its weights are beside it."""
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and {"names", "dims", "config", "format_version"} <= set(meta)
            and (path / "model.safetensors").is_file())


def load_exported(path: str | os.PathLike, device="cpu") -> tuple[MultiModalEncoder, SharedLatentCalibrator, dict]:
    """Returns ``(encoder, calibrator, meta)`` from an exported directory."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except FileNotFoundError as e:
        raise ValueError(f"{path} is not an exported calmrl model: {e}") from None
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path / 'config.json'} is damaged: not valid JSON ({e})") from None
    tensors, _ = verify_exported(path, device, meta)
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


def verify_exported(path: str | os.PathLike, device="cpu", meta: dict | None = None) -> tuple[dict, bool]:
    """``(tensors, verified)`` of ``path/model.safetensors``, checked against the SHA-256 in its
    header, and ``config.json`` (``meta``, read here when not given) against its own digest there;
    :class:`~calmrl.integrity.DamagedFileError` naming the file when they differ, and
    :class:`~calmrl.integrity.UnverifiedFileError` when the header has no digest (exported
    before checksums) unless ``CALMRL_ALLOW_UNVERIFIED=1`` (then ``verified`` is False)."""
    from safetensors import safe_open

    f = Path(path) / "model.safetensors"
    if not f.exists():
        raise ValueError(f"{path} is not an exported calmrl model: no model.safetensors")
    try:
        tensors = load_file(str(f), device=str(device))
        with safe_open(str(f), framework="pt") as h:
            header = h.metadata() or {}
    except Exception as e:
        raise DamagedFileError(f"{f} is damaged: it cannot be read ({str(e).splitlines()[0][:120]})") from None
    want, want_cfg = header.get(CHECKSUM_KEY), header.get(CONFIG_KEY)
    if want is None or want_cfg is None:
        return tensors, unverified(f, "its tensors" if want is None else "its config.json", "export it again")
    if digest({k: v.cpu() for k, v in tensors.items()}) != want:
        raise DamagedFileError(f"{f} is damaged: checksum mismatch (its content changed after it was exported); "
                               "export it again")
    if meta is None:
        meta = read_json(Path(path) / "config.json")
    if digest(meta) != want_cfg:
        raise DamagedFileError(f"{Path(path) / 'config.json'} is damaged or was edited: it differs from what was "
                               "exported with these weights (names, dims, standardisation or settings); export "
                               "it again")
    return tensors, True
