"""Checksums of everything calmrl writes and later reads back.

A file that was damaged after it was written (a bad disk sector, a partial copy, a stray
``dd``) must be refused when it is read, naming the file, and never evaluated or blamed on
the user's data. Every artefact carries a SHA-256 of its content, computed when it is
written and checked on every load:

- checkpoints (``*.ckpt``: Lightning's torch.save of a dict): ``ckpt["calmrl_sha256"]``, the
  digest of every tensor (name, dtype, shape, bytes) and every other value of the dict,
  walked in a fixed order (:func:`digest`);
- exported models (``model.safetensors``): the digest of its tensors in the safetensors
  header's metadata (``calmrl_sha256``);
- feature stores (imported, embedded or imputed): ``meta.json``'s ``sha256``, one SHA-256
  per ``.npy`` file, and ``meta_sha256``, the digest of the rest of ``meta.json`` (names, dims
  and their order, columns, the file digests): what gives the arrays their meaning;
- an export's ``config.json``: its digest in the safetensors header (``calmrl_config_sha256``);
- auto's ``search.json``: its own ``sha256`` key.

A file that carries no digest (written by an older calmrl, or its key removed) is refused as
*unverified* (:class:`UnverifiedFileError`), unless the environment says
``CALMRL_ALLOW_UNVERIFIED=1``; even then it is never reported as verified.

This module imports neither Lightning nor the trainer; ``calmrl verify PATH`` uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .parallel import map_per_core

__all__ = ["DamagedFileError", "UnverifiedFileError", "digest", "seal", "check_sealed", "file_sha256", "CHECKSUM_KEY",
           "check_store", "store_checksums", "read_json", "unverified", "seal_json", "check_json", "ALLOW_UNVERIFIED"]

ALLOW_UNVERIFIED = "CALMRL_ALLOW_UNVERIFIED"

CHECKSUM_KEY = "calmrl_sha256"


class DamagedFileError(ValueError):
    """A file calmrl wrote no longer holds what it wrote (checksum mismatch or unreadable)."""


class UnverifiedFileError(DamagedFileError):
    """A file that carries no checksum: it cannot be told intact from damaged."""


def unverified(path, what: str, redo: str) -> bool:
    """Refuse a file without a checksum (:class:`UnverifiedFileError`, saying how to proceed), or,
    where ``CALMRL_ALLOW_UNVERIFIED=1`` asks to read such files, return False (not verified)."""
    if os.environ.get(ALLOW_UNVERIFIED) == "1":
        return False
    raise UnverifiedFileError(f"{path} carries no checksum of {what} (written by an older calmrl, or the key was "
                              f"removed), so it cannot be told from a damaged one: {redo}, or set "
                              f"{ALLOW_UNVERIFIED}=1 to read it unverified")


def seal_json(obj: dict) -> dict:
    """``obj`` with ``sha256``: the digest of the rest, as JSON reads it back."""
    rest = json.loads(json.dumps({k: v for k, v in obj.items() if k != "sha256"}))
    return {**rest, "sha256": digest(rest)}


def check_json(obj: dict, path, redo: str) -> bool:
    """Verify a dict sealed by :func:`seal_json` (``DamagedFileError`` naming ``path``)."""
    if "sha256" not in obj:
        return unverified(path, "its content", redo)
    if digest({k: v for k, v in obj.items() if k != "sha256"}) != obj["sha256"]:
        raise DamagedFileError(f"{path} is damaged or was edited: checksum mismatch (its content changed after it "
                               f"was written); {redo}")
    return True


def _feed(h, obj, path: str) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{path}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())    # the bytes, without a copy
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(obj, dict):
        h.update(f"D{path}|{len(obj)}|".encode())
        for k in sorted(obj, key=lambda x: (type(x).__name__, str(x))):
            _feed(h, obj[k], f"{path}/{k!s}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{path}|{len(obj)}|".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{path}/{i}")
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(f"V{path}|{type(obj).__name__}|{obj!r}|".encode())
    else:      # another object (its repr may name a memory address): its type only
        h.update(f"O{path}|{type(obj).__module__}.{type(obj).__qualname__}|".encode())


def digest(obj) -> str:
    """SHA-256 (hex) of a nested structure of tensors, arrays, dicts, lists and plain values."""
    h = hashlib.sha256()
    _feed(h, obj, "")
    return h.hexdigest()


def seal(ckpt: dict) -> dict:
    """Set ``ckpt[CHECKSUM_KEY]`` to the digest of everything else in the dict (in place)."""
    ckpt.pop(CHECKSUM_KEY, None)
    ckpt[CHECKSUM_KEY] = digest(ckpt)
    return ckpt


def check_sealed(ckpt: dict, path, *, hint: str = "") -> bool:
    """Raise :class:`DamagedFileError` when the stored digest does not match the content.
    Returns False when the dict carries no digest (written before checksums existed)."""
    want = ckpt.get(CHECKSUM_KEY)
    if want is None:
        return unverified(path, "its content", "train it again")
    rest = {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}
    if digest(rest) != want:
        raise DamagedFileError(f"{path} is damaged: checksum mismatch (its content changed after it was written)"
                               + (f"; {hint}" if hint else ""))
    return True


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(block), b""):
            h.update(b)
    return h.hexdigest()


def _sha256_many(paths: list) -> list[str]:
    """``file_sha256`` of several files at once, a thread per core, largest files first."""
    order = sorted(range(len(paths)), key=lambda i: -os.path.getsize(paths[i]))
    done = dict(zip(order, map_per_core(file_sha256, [paths[i] for i in order])))
    return [done[i] for i in range(len(paths))]


def store_checksums(directory: Path, names) -> dict:
    """``{file name: sha256}`` of a store's ``.npy`` files."""
    names = list(names)
    return dict(zip(names, _sha256_many([Path(directory) / n for n in names])))


def check_store(directory: Path, meta: dict) -> bool:
    """Verify a feature store's files against ``meta['sha256']``; False when it has none."""
    sums = meta.get("sha256")
    if not sums or "meta_sha256" not in meta:
        return unverified(directory, "its files" if not sums else "its meta.json (names, dims and their order)",
                          "write the store again (calmrl data import, calmrl data fetch --rebuild)")
    if digest({k: v for k, v in meta.items() if k != "meta_sha256"}) != meta["meta_sha256"]:
        raise DamagedFileError(f"{Path(directory) / 'meta.json'} is damaged or was edited: its names, dims, order or "
                               "file digests changed after the store was written, so the arrays would be read with "
                               "another meaning; write the store again")
    for name in sums:
        if not (Path(directory) / name).exists():
            raise DamagedFileError(f"feature store {directory} is damaged: {name} is missing")
    got = _sha256_many([Path(directory) / name for name in sums])
    for (name, want), have in zip(sums.items(), got):
        f = Path(directory) / name
        if have != want:
            raise DamagedFileError(f"{f} is damaged: checksum mismatch (its content changed after the store was "
                                   "written); write the store again")
    return True


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path} is damaged: not valid JSON ({e})") from None
