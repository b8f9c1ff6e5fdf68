"""``calmrl embed``: raw inputs (JSON lines) -> feature store, batched and resumable.

Each input line is one instance: ``{"id": ..., "caption": "a text", "pixels": [0.1, ...], "label": 3}``.
Text fields are embedded by a frozen sentence model (offline; the bundled MiniLM by
default); vector fields are stored as they are. A field that is absent or ``null`` makes
that modality missing for the instance. Every finished batch is saved to
``<out>.partial/chunk_XXXXXX.npz``; a rerun skips finished chunks, so an interrupted run
resumes where it stopped. The finished store is written atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import FeatureStore, MultiViewData

__all__ = ["embed_jsonl"]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i + 1} is not valid JSON: {e}") from None
    if not rows:
        raise ValueError(f"{path} holds no instance")
    return rows


def _sha1(path: Path) -> str:
    """Content hash of the input: an input edited in place at the same size is another input."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resume_manifest(part: Path, path: Path, fields: list[str], batch_size: int, n_rows: int) -> int:
    """The partial store's ``manifest.json`` records what its chunks were made from. A rerun
    with another ``--batch-size`` continues with the recorded one (chunks stay consistent); a
    different input or field list is refused, naming the partial directory to delete."""
    want = {"input": str(path.resolve()), "input_size": path.stat().st_size, "input_sha1": _sha1(path),
            "fields": fields, "rows": n_rows}
    mf = part / "manifest.json"
    if mf.exists():
        try:
            have = json.loads(mf.read_text())
        except json.JSONDecodeError:
            have = None
        if have is None or any(have.get(k) != v for k, v in want.items()):
            raise ValueError(f"{part} holds a partial run made from other input or fields; delete it to start over")
        if have["batch_size"] != batch_size:
            import logging
            logging.getLogger("calmrl").warning("resuming %s with its batch size %d (not %d), so that finished "
                                                "chunks stay valid", part, have["batch_size"], batch_size)
        return int(have["batch_size"])
    if part.exists() and any(part.glob("chunk_*.npz")):
        raise ValueError(f"{part} holds chunks without a manifest (an older calmrl); delete it to start over")
    part.mkdir(parents=True, exist_ok=True)
    tmp = mf.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps({**want, "batch_size": batch_size}))
    tmp.replace(mf)
    return batch_size


def embed_jsonl(path: str | Path, out: str | Path, *, text_fields: Sequence[str] = (),
                vector_fields: Sequence[str] = (), id_field: str = "id", label_field: str | None = None,
                batch_size: int = 64, model_path: str | None = None, progress: bool = True) -> FeatureStore:
    path, out = Path(path), Path(out)
    fields = list(text_fields) + list(vector_fields)
    if not fields:
        raise ValueError("name at least one text or vector field to embed")
    rows = _read_jsonl(path)
    ids = [r.get(id_field, i) for i, r in enumerate(rows)]
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"ids in field '{id_field}' of {path} are not unique")
    for f in vector_fields:
        dims = {len(r[f]) for r in rows if r.get(f) is not None}
        if len(dims) > 1:
            raise ValueError(f"vector field '{f}' has rows of different lengths {sorted(dims)}")
    text_model = None
    if text_fields:
        from .raw_encoders import SentenceEncoder
        text_model = SentenceEncoder(2, model_path)  # the head is unused: only backbone features are stored
    part = out.with_name(out.name + ".partial")
    batch_size = _resume_manifest(part, path, fields, batch_size, len(rows))
    n_chunks = (len(rows) + batch_size - 1) // batch_size
    from tqdm.auto import tqdm

    for c in tqdm(range(n_chunks), desc=f"embedding {path.name}", disable=not progress):
        f_chunk = part / f"chunk_{c:06d}.npz"
        if f_chunk.exists():
            continue
        batch = rows[c * batch_size: (c + 1) * batch_size]
        arrays = {}
        for f in text_fields:
            present = [i for i, r in enumerate(batch) if isinstance(r.get(f), str)]
            emb = np.full((len(batch), text_model.backbone.dim), np.nan, np.float32)
            if present:
                emb[present] = text_model.embed_raw([batch[i][f] for i in present], batch_size).numpy()
            arrays[f] = emb
        for f in vector_fields:
            d = next(len(r[f]) for r in rows if r.get(f) is not None)
            arrays[f] = np.array([r[f] if r.get(f) is not None else [np.nan] * d for r in batch], np.float32)
        tmp = f_chunk.with_name(f_chunk.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(f_chunk)
    views = [np.concatenate(parts) for parts in zip(*(_read_chunk(part / f"chunk_{c:06d}.npz", fields)
                                                       for c in range(n_chunks)))]
    mask = np.stack([~np.isnan(v).all(1) for v in views], 1)
    labels = np.array([r[label_field] for r in rows]) if label_field else None
    data = MultiViewData(views, fields, mask, np.array(ids), labels,
                         {"source": str(path), "text_fields": list(text_fields)})
    store = FeatureStore.write(out, data)
    shutil.rmtree(part, ignore_errors=True)
    return store


def _read_chunk(path: Path, fields) -> list:
    """The arrays of one finished chunk; a damaged one is named, with what to do."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as ch:
            return [np.asarray(ch[f]) for f in fields]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} (a finished chunk of this embedding) is damaged ({type(e).__name__}: {e}); delete "
                         "that file and rerun the same command: only its rows are embedded again") from None
