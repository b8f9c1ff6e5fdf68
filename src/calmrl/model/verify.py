"""``calmrl verify PATH``: check what calmrl wrote, with the same readers every load uses
(:func:`~calmrl.model.checkpoint.load_checkpoint`, :func:`~calmrl.model.export.verify_exported`,
the feature store's :func:`~calmrl.integrity.check_store`). Nothing is changed."""

from __future__ import annotations

import os
from pathlib import Path

from ..integrity import ALLOW_UNVERIFIED, CHECKSUM_KEY, DamagedFileError, UnverifiedFileError, check_store, read_json
from .checkpoint import CheckpointError, load_checkpoint
from .export import verify_exported

__all__ = ["verify_path"]

UNVERIFIABLE = f"unverified (it carries no checksum; read only because {ALLOW_UNVERIFIED}=1)"


def _checkpoint(f: Path) -> str:
    return "ok" if CHECKSUM_KEY in load_checkpoint(f) else UNVERIFIABLE


def _exported(d: Path) -> str:
    return "ok" if verify_exported(d)[1] else UNVERIFIABLE


def _store(d: Path) -> str:
    return "ok" if check_store(d, read_json(d / "meta.json")) else UNVERIFIABLE


def verify_path(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Check a checkpoint, a run or output directory (every ``*.ckpt`` below it), a feature
    store (``meta.json``) or an exported model (``model.safetensors``). Returns
    ``[(file, "ok" | "damaged: ...")]``."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    out = []

    def one(name, fn, arg):
        try:
            out.append((name, fn(arg)))
        except (DamagedFileError, CheckpointError) as e:
            kind = "unverified" if isinstance(e, UnverifiedFileError) or getattr(e, "unverified", False) else "damaged"
            out.append((name, f"{kind}: {e}"))

    if p.is_file():
        one(str(p), _checkpoint, p)
        return out
    if (p / "model.safetensors").exists():
        one(str(p / "model.safetensors"), _exported, p)
    if (p / "meta.json").exists():
        one(str(p), _store, p)
    for f in sorted(p.rglob("*.ckpt")):
        one(str(f), _checkpoint, f)
    if not out:
        raise ValueError(f"{p} holds nothing calmrl wrote (no checkpoint, feature store or exported model)")
    return out
