"""What a model was trained on, so that a later evaluation can tell whether it still is.

``fingerprint(data)`` records the number of instances, a hash of the ids in their order, and
per modality its shape and a SHA-1 of its observed cells (the values where the mask is set,
and the mask itself), plus a hash of the labels. ``split_fingerprint`` hashes the ids of the
training, validation and test instances. Both travel in checkpoints; :func:`compare` names
what differs (``eval`` refuses a mismatch instead of scoring other data as the test split).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .dataset import MultiViewData
from .rows import chunk_rows, per_view

__all__ = ["fingerprint", "split_fingerprint", "compare"]


def _hash_ids(ids) -> str:
    h = hashlib.sha1()
    ids = np.asarray(ids)
    for s in range(0, len(ids), 65536):      # each id's str and a NUL, a block of ids per update
        h.update(("\0".join(map(str, ids[s: s + 65536].tolist())) + "\0").encode())
    return h.hexdigest()[:16]


def _hash_view(view, mask_col: np.ndarray) -> tuple[str, np.ndarray]:
    """SHA-1 of the observed rows' values (float32 bytes, chunked for memory-mapped views)
    and of which rows are observed; missing cells' placeholder values do not count. Also the
    observed rows holding NaN/inf, found in the same pass (:meth:`MultiViewData.nonfinite_rows`)."""
    h = hashlib.sha1(np.packbits(mask_col).tobytes())
    rows = np.nonzero(mask_col)[0]
    step = chunk_rows(view.shape[1], 4)
    bad = []
    for s in range(0, len(rows), step):
        raw = np.asarray(view[rows[s: s + step]])
        bad.append(rows[s: s + step][~np.isfinite(raw).all(1)])      # as nonfinite_rows: on the values as given
        h.update(np.ascontiguousarray(raw, dtype=np.float32).tobytes())
    return h.hexdigest()[:16], (np.concatenate(bad) if bad else np.zeros(0, np.int64))


def fingerprint(data: MultiViewData, *, with_nonfinite: bool = False):
    """``{"n", "ids", "labels", "modalities": {name: {"shape", "sha1"}}}`` of ``data`` as given;
    ``with_nonfinite``: also each modality's observed rows with NaN/inf (one pass for both),
    as ``(fingerprint, [rows per modality])``."""
    labels = None
    if data.labels is not None:
        labels = hashlib.sha1(np.asarray(data.labels).astype(str).tobytes()).hexdigest()[:16]
    done = per_view(lambda m: _hash_view(data.views[m], data.mask[:, m]), len(data.views))  # views in parallel
    fp = {"n": data.n, "ids": _hash_ids(data.ids), "labels": labels,
          "modalities": {name: {"shape": [data.n, int(v.shape[1])], "sha1": h}
                         for name, v, (h, _) in zip(data.names, data.views, done)}}
    return (fp, [bad for _, bad in done]) if with_nonfinite else fp


def split_fingerprint(train_ids, val_ids, test_ids) -> dict:
    return {"train": _hash_ids(train_ids), "val": _hash_ids(val_ids), "test": _hash_ids(test_ids)}


def compare(recorded: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, in words (empty when they agree)."""
    out = []
    if recorded.get("n") != current.get("n"):
        out.append(f"{recorded.get('n')} instances then, {current.get('n')} now")
    elif recorded.get("ids") != current.get("ids"):
        out.append("the instance ids or their order differ")
    rm, cm = recorded.get("modalities", {}), current.get("modalities", {})
    if list(rm) != list(cm):
        out.append(f"modalities {list(rm)} then, {list(cm)} now")
    for name in rm:
        if name in cm and rm[name] != cm[name]:
            r, c = rm[name], cm[name]
            out.append(f"modality '{name}' " + (f"shape {r['shape']} then, {c['shape']} now" if r["shape"] != c["shape"]
                                                 else "holds other values"))
    if recorded.get("labels") != current.get("labels") and not out:
        out.append("the labels differ")
    for part in ("train", "val", "test"):
        rs, cs = recorded.get("split", {}).get(part), current.get("split", {}).get(part)
        if rs and cs and rs != cs and not out:
            out.append(f"the {part} split differs")
    return out
