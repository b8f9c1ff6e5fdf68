"""Multimodal feature datasets with an observation mask, and an on-disk feature store.

:class:`MultiViewData` keeps one float matrix per modality (``(N, d_m)``), the
``(N, M)`` observation mask, instance ids and optional labels. Missing cells may hold
anything; they are never read by the models.

:class:`FeatureStore` is the on-disk form: a directory with ``meta.json`` and one
``.npy`` file per modality, memory-mapped on load so that datasets larger than memory
stream through a ``DataLoader``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..integrity import DamagedFileError, check_store, digest, store_checksums
from .rows import RowView, chunk_rows, is_lazy, observed_summary, per_view

__all__ = ["MultiViewData", "MultiViewDataset", "FeatureStore", "collate_views"]


def _show(v) -> str:
    """An id or value as the user wrote it: ``img-00568``, not ``np.str_('img-00568')``."""
    return str(v.item() if hasattr(v, "item") else v)


def first_repeat(ids: Sequence) -> tuple[object, int, int] | None:
    """The first id listed twice, with the 0-based rows of its two entries, or ``None``."""
    seen: dict = {}
    for r, i in enumerate(ids):
        if i in seen:
            return i, seen[i], r
        seen[i] = r
    return None


@dataclass
class MultiViewData:
    """In-memory (or memory-mapped) multimodal features.

    ``views[m]`` is ``(N, d_m)`` (``np.ndarray`` or ``Tensor``), ``mask`` ``(N, M)`` bool,
    ``ids`` ``(N,)`` strings or ints, ``labels`` ``(N,)`` ints or ``None``.
    """

    views: list
    names: list[str]
    mask: np.ndarray
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.ids is None:
            self.ids = np.arange(self.mask.shape[0] if self.mask.ndim == 2 else 0)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, *, require_observed: bool = True) -> "MultiViewData":
        """Raise ``ValueError`` naming the problem: shapes, NaN/inf in observed cells,
        instances with no observed modality, label/id length."""
        self.validate_structure(require_observed=require_observed)
        for name, bad in zip(self.names, self.nonfinite_all()):
            if len(bad):
                r = int(bad[0])
                raise ValueError(f"modality '{name}' row {r} (id {_show(self.ids[r])}) holds NaN/inf values "
                                 "but is marked observed")
        return self

    def validate_structure(self, *, require_observed: bool = True) -> "MultiViewData":
        """:meth:`validate` without the NaN/inf check of observed cells (for data whose partial
        views are filled afterwards)."""
        M = len(self.views)
        if M == 0:
            raise ValueError("dataset has no modality")
        if len(self.names) != M or len(set(self.names)) != M:
            raise ValueError(f"need {M} distinct modality names, got {self.names}")
        N = self.views[0].shape[0]
        if N == 0:
            raise ValueError("dataset is empty (0 instances)")
        for name, v in zip(self.names, self.views):
            if v.ndim != 2:
                raise ValueError(f"modality '{name}' must be a 2-D (instances, features) array, got shape {v.shape}")
            if v.shape[0] != N:
                raise ValueError(f"modality '{name}' has {v.shape[0]} rows but '{self.names[0]}' has {N}")
        if self.mask.shape != (N, M):
            raise ValueError(f"mask has shape {self.mask.shape}, expected ({N}, {M})")
        if len(self.ids) != N:
            raise ValueError(f"ids has {len(self.ids)} entries for {N} instances")
        if self.labels is not None and len(self.labels) != N:
            raise ValueError(f"labels has {len(self.labels)} entries for {N} instances")
        if require_observed:
            empty = ~self.mask.any(1)
            if empty.any():
                raise ValueError(f"{int(empty.sum())} instance(s) have no observed modality "
                                 f"(first ids: {[_show(i) for i in self.ids[empty][:5]]})")
        return self

    @classmethod
    def unchecked(cls, views, names, mask, ids=None, labels=None, meta=None) -> "MultiViewData":
        """Build without :meth:`validate` (for data whose partial views are resolved afterwards)."""
        data = cls.__new__(cls)
        data.views, data.names, data.mask = list(views), list(names), np.asarray(mask, dtype=bool)
        data.ids = np.arange(data.mask.shape[0]) if ids is None else np.asarray(ids)
        data.labels, data.meta = labels, dict(meta or {})
        return data

    def nonfinite_rows(self, m: int) -> np.ndarray:
        """Indices of observed rows of modality ``m`` with a NaN/inf feature (chunked: a
        memory-mapped view is never loaded whole)."""
        rows = np.nonzero(self.mask[:, m])[0]
        bad, step = [], chunk_rows(self.views[m].shape[1], 4)
        for s in range(0, len(rows), step):
            r = rows[s: s + step]
            bad.append(r[~np.isfinite(np.asarray(self.views[m][r])).all(1)])
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def nonfinite_all(self) -> list[np.ndarray]:
        """:meth:`nonfinite_rows` of every modality, a thread per core."""
        return per_view(self.nonfinite_rows, len(self.views))

    def resolve_partial_views(self, policy: str, fill_rows: np.ndarray | None = None, *,
                              nonfinite: list | None = None) -> tuple["MultiViewData", dict[str, dict[str, int]]]:
        """Observed views with NaN/inf in some features. ``policy``: ``error`` (raise, naming the
        modality, the count and the first id), ``missing`` (the view becomes missing in those
        rows) or ``fill`` (each non-finite feature is replaced by that feature's mean over the
        observed finite values of ``fill_rows``, default all rows; 0 where it has none).
        Returns the new data and ``{modality: {"rows": r, "cells": c}}`` for the affected ones.
        ``nonfinite``: :meth:`nonfinite_all` when already known (one pass fewer over the data)."""
        if policy not in ("error", "missing", "fill"):
            raise ValueError(f"unknown partial-view policy '{policy}'; valid: error, missing, fill")
        report, mask, views = {}, self.mask.copy(), list(self.views)
        for m, (name, bad) in enumerate(zip(self.names, self.nonfinite_all() if nonfinite is None else nonfinite)):
            if len(bad) == 0:
                continue
            block = np.asarray(self.views[m][bad])
            cells = int((~np.isfinite(block)).sum())
            report[name] = {"rows": int(len(bad)), "cells": cells}
            if policy == "error":
                raise ValueError(f"modality '{name}' has NaN/inf in {cells} feature(s) of {len(bad)} observed row(s) "
                                 f"(first id {_show(self.ids[bad[0]])}); set data.partial_views to 'missing' (treat the "
                                 "view as missing in those rows) or 'fill' (training-split feature means)")
            if policy == "missing":
                mask[bad, m] = False
            else:
                v = np.array(self.views[m], dtype=np.float32)            # a writable copy
                rows = np.arange(self.n) if fill_rows is None else np.asarray(fill_rows)
                rows = rows[self.mask[rows, m]]
                ref = np.where(np.isfinite(v[rows]), v[rows], np.nan)
                with warnings.catch_warnings():          # an all-NaN feature: "mean of empty slice"
                    warnings.simplefilter("ignore", RuntimeWarning)
                    means = np.nanmean(ref, 0) if len(rows) else np.zeros(v.shape[1])
                means = np.where(np.isfinite(means), means, 0.0).astype(np.float32)
                sub = v[bad]
                v[bad] = np.where(np.isfinite(sub), sub, means)
                views[m] = v
        return MultiViewData.unchecked(views, self.names, mask, self.ids, self.labels, self.meta), report

    @classmethod
    def from_tables(cls, tables: "dict[str, tuple[Sequence, np.ndarray]]", labels: dict | None = None, *,
                    validate: bool = True) -> "MultiViewData":
        """Join per-modality tables ``name -> (ids, features)`` on their ids.

        Modality files often disagree on which instances they cover: the union of ids is
        kept, and an instance absent from a modality's table is *missing* in that modality
        (counted in ``meta["missing_by_join"]``). Duplicate ids within one table, or tables
        whose ids and rows disagree in length, are errors. ``labels`` maps id -> label.
        """
        order: dict = {}
        for name, (ids, X) in tables.items():
            ids = [i.item() if hasattr(i, "item") else i for i in ids]
            if len(ids) != len(X):
                raise ValueError(f"modality '{name}': {len(ids)} ids for {len(X)} rows")
            rep = first_repeat(ids)
            if rep is not None:
                raise ValueError(f"modality '{name}' lists id {_show(rep[0])} more than once (rows {rep[1]} and "
                                 f"{rep[2]}); ids must be unique within a modality")
            for i in ids:
                order.setdefault(i, len(order))
        all_ids = list(order)
        names = list(tables)
        mask = np.zeros((len(all_ids), len(names)), bool)
        views = []
        for m, name in enumerate(names):
            ids, X = tables[name]
            X = np.asarray(X, dtype=np.float32)
            rows = np.array([order[i.item() if hasattr(i, "item") else i] for i in ids], dtype=np.int64)
            V = np.zeros((len(all_ids), X.shape[1]), np.float32)
            V[rows] = X
            mask[rows, m] = True
            views.append(V)
        y = None
        meta = {"missing_by_join": {n: int((~mask[:, m]).sum()) for m, n in enumerate(names)}}
        if labels is not None:
            unknown = [i for i in all_ids if i not in labels]
            if unknown:      # partly labelled: labels where present, the others unlabelled (said)
                y = np.array([labels.get(i, "") for i in all_ids], dtype=object)
                meta["notes"] = [f"labels for {len(all_ids) - len(unknown)} of {len(all_ids)} instances (e.g. no "
                                 f"label for {', '.join(_show(i) for i in unknown[:3])}): the unlabelled ones are "
                                 "stratified as a group of their own and left out of kNN accuracy"]
            else:
                y = np.array([labels[i] for i in all_ids])
        if not validate:
            return cls.unchecked(views, names, mask, np.array(all_ids), y, meta)
        return cls(views, names, mask, np.array(all_ids), y, meta)

    # ------------------------------------------------------------------ helpers
    @property
    def n(self) -> int:
        return int(self.mask.shape[0])

    @property
    def dims(self) -> list[int]:
        return [int(v.shape[1]) for v in self.views]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown modality name '{name}'; valid names are {self.names}")
        return self.names.index(name)

    def subset(self, idx) -> "MultiViewData":
        """The instances ``idx``. A view read from disk (memory-mapped, or a :class:`RowView`)
        stays on disk: the subset is a row map over it, not a copy. The values were checked
        when this data was; only the structure is checked again."""
        idx = np.asarray(idx)
        views = [RowView(v, idx) if is_lazy(v) else np.asarray(v[idx]) for v in self.views]
        return MultiViewData.unchecked(views, list(self.names), self.mask[idx], self.ids[idx],
                                       None if self.labels is None else self.labels[idx],
                                       dict(self.meta)).validate_structure()

    def select(self, names: Sequence[str]) -> "MultiViewData":
        """The given modalities, in the given order (not re-validated: partial views may still
        be resolved afterwards)."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"unknown modality name(s) {unknown}; the data has {self.names}")
        idx = [self.names.index(n) for n in names]
        return MultiViewData.unchecked([self.views[i] for i in idx], list(names), self.mask[:, idx], self.ids,
                                       self.labels, self.meta)

    def with_mask(self, mask: np.ndarray) -> "MultiViewData":
        return MultiViewData(self.views, list(self.names), mask, self.ids, self.labels, dict(self.meta))

    def complete(self) -> "MultiViewData":
        return self.with_mask(np.ones_like(self.mask))

    def summaries(self) -> list[tuple | None]:
        """Per modality, over its observed rows: feature mean, std, min and max (one pass each,
        in pieces for a view on disk, a thread per core); ``None`` for a modality never observed."""
        def one(m):
            rows = np.nonzero(self.mask[:, m])[0]
            return observed_summary(self.views[m], rows) if len(rows) else None
        return per_view(one, len(self.views))

    def standardize(self, stats: list[tuple[np.ndarray, np.ndarray]] | None = None
                    ) -> tuple["MultiViewData", list[tuple[np.ndarray, np.ndarray]]]:
        """Per-modality z-scoring with statistics of the *observed* rows (or the given ones)."""
        if stats is None:
            stats = [standardization(s, name) for s, name in zip(self.summaries(), self.names)]
        # a view on disk is standardised as it is read (RowView); an in-memory one here, at once
        views = [RowView(v, None, mu, sd) if is_lazy(v) else
                 ((np.asarray(v, dtype=np.float64) - mu) / sd).astype(np.float32) for v, (mu, sd) in zip(self.views, stats)]
        if any(isinstance(v, RowView) for v in views):     # checked as read, not in another pass over the disk
            out = MultiViewData.unchecked(views, self.names, self.mask, self.ids, self.labels, self.meta)
            return out.validate_structure(), stats
        return MultiViewData(views, list(self.names), self.mask, self.ids, self.labels, dict(self.meta)), stats

    def tensors(self, dtype=torch.float32) -> list[Tensor]:
        return [torch.as_tensor(np.asarray(v), dtype=dtype) for v in self.views]


def standardization(summary: tuple | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of modality ``name``'s :meth:`MultiViewData.summaries` entry, a constant
    feature's std set to 1."""
    if summary is None:
        raise ValueError(f"modality '{name}' is never observed; cannot standardise it")
    mean, std = summary[0], summary[1]
    return mean, np.where(std > 1e-8, std, 1.0)


class MultiViewDataset(Dataset):
    """``torch`` dataset over :class:`MultiViewData`: item ``i`` is
    ``{"views": [x_m (d_m,)], "mask": (M,), "index": i}``; missing cells are zeros."""

    def __init__(self, data: MultiViewData, known: np.ndarray | None = None):
        """``known``: an ``(N, M)`` mask of cells whose values are real although ``data.mask``
        hides them (simulated missingness); they are passed in ``views`` and the batch gets a
        ``"known"`` entry (for the true-fill upper bound). Default: only observed cells."""
        self.data = data
        self.known = None if known is None else np.asarray(known, dtype=bool)
        if self.known is not None and (self.known.shape != data.mask.shape or (data.mask & ~self.known).any()):
            raise ValueError("known must be an (N, M) mask that contains the observed mask")

    def __len__(self) -> int:
        return self.data.n

    def __getitem__(self, i: int) -> dict:
        d = self.data
        views = []
        for m, v in enumerate(d.views):
            x = torch.from_numpy(np.array(v[i], dtype=np.float32))      # a copy: a memory-mapped row is read-only
            views.append(x if d.mask[i, m] else torch.zeros_like(x))
        return {"views": views, "mask": torch.as_tensor(d.mask[i]), "index": i}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A whole batch by one fancy index per modality (``DataLoader`` calls this instead
        of ``__getitem__`` per instance); returns the collated batch."""
        d = self.data
        idx = np.asarray(indices, dtype=np.int64)
        mask = np.asarray(d.mask[idx], dtype=bool)
        keep = mask if self.known is None else self.known[idx]
        views = []
        for m, v in enumerate(d.views):                      # loop over modalities
            x = np.asarray(v[idx], dtype=np.float32)
            views.append(torch.from_numpy(np.where(keep[:, m:m + 1], x, np.float32(0.0))))
        out = {"views": views, "mask": torch.from_numpy(mask), "index": torch.from_numpy(idx)}
        if self.known is not None:
            out["known"] = torch.from_numpy(np.ascontiguousarray(keep))
        return out


def collate_views(items: Sequence[dict] | dict) -> dict:
    """Stack items of :class:`MultiViewDataset` (a batch from ``__getitems__`` passes through)."""
    if isinstance(items, dict):
        return items
    M = len(items[0]["views"])
    return {"views": [torch.stack([it["views"][m] for it in items]) for m in range(M)],
            "mask": torch.stack([it["mask"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


class FeatureStore:
    """A directory of per-modality ``.npy`` feature files (memory-mapped) with ids and mask.

    Layout: ``meta.json`` (``names``, ``dims``, ``n``, ``format_version``), ``<name>.npy``
    ``(N, d_m)`` float32, ``mask.npy`` ``(N, M)`` bool, ``ids.npy``, optional ``labels.npy``.
    """

    FORMAT_VERSION = 1

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def is_store(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a feature store written by calmrl (its ``meta.json`` says so)."""
        meta = Path(path) / "meta.json"
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(m, dict) and "format_version" in m and "names" in m and "sha256" in m

    @classmethod
    def write(cls, path: str | os.PathLike, data: MultiViewData, extra: dict | None = None, *,
              replace: bool = True) -> "FeatureStore":
        """Write atomically: files go to a temporary directory of this process's own (a unique name
        beside ``path``) that is renamed into place, each with its SHA-256 in ``meta.json``.
        ``extra``: more ``{name: array}`` to store beside (e.g. ``impute``'s observed mask and
        confidences), checksummed alike. An existing ``path`` is replaced only when it is a store
        calmrl wrote and ``replace`` is true; anything else there is never touched (the write is
        refused, and what this call wrote removed). Nothing but this call's own temporary
        directories is ever deleted."""
        import errno
        import tempfile

        path = Path(path)
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            if not replace:
                raise FileExistsError(f"{path} exists and is not empty; choose a new directory (nothing was written)")
            if not cls.is_store(path):
                raise FileExistsError(f"{path} exists and is not a calmrl feature store; it is left as it is: "
                                      "choose a new directory (nothing was written)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            for name, v in zip(data.names, data.views):
                np.save(tmp / f"{name}.npy", np.asarray(v, dtype=np.float32))
            np.save(tmp / "mask.npy", data.mask)
            for name, arr in (extra or {}).items():
                np.save(tmp / f"{name}.npy", np.asarray(arr))
            np.save(tmp / "ids.npy", np.asarray(data.ids))
            if data.labels is not None:   # object arrays would need pickle to load: store strings
                labels = np.asarray(data.labels)
                np.save(tmp / "labels.npy", labels.astype(str) if labels.dtype == object else labels)
            meta = {"format_version": cls.FORMAT_VERSION, "names": data.names, "dims": data.dims, "n": data.n,
                    **{k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, list, dict))
                       and k not in ("sha256", "meta_sha256")}}
            # a SHA-256 per file, checked on every read (calmrl.integrity)
            meta["sha256"] = store_checksums(tmp, sorted(f.name for f in tmp.glob("*.npy")))
            meta = json.loads(json.dumps(meta))       # as it will be read back
            meta["meta_sha256"] = digest(meta)         # what gives the arrays their meaning, checksummed too
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)      # nothing partial is left behind
            if isinstance(e, OSError):       # numpy says "problem writing element N" on a full disk
                full = getattr(e, "errno", None) == 28 or "problem writing" in str(e) or "No space" in str(e)
                raise OSError(f"cannot write the feature store {path}: "
                              + ("no space left on device" if full else str(e).splitlines()[0][:120])
                              + "; nothing was written there") from None
            raise
        try:
            os.rename(tmp, path)      # onto nothing or an empty directory; a non-empty one refuses (ENOTEMPTY)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not replace or not cls.is_store(path):
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileExistsError(f"{path} was written by another process meanwhile (or is not a calmrl "
                                      "feature store); it is left as it is and nothing was written") from None
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.rename(path, old)      # the earlier store, moved onto this call's own empty directory
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        return cls(path)

    def read(self, *, mmap: bool = True, validate: bool = True, verify: bool = True,
             inputs_only: bool = False) -> MultiViewData:
        """The store's data (memory-mapped by default). ``verify``: check every file against the
        SHA-256 in ``meta.json`` first (a damaged file is refused, naming it). ``inputs_only``:
        refuse a store of embeddings (``space: embedding``), which no encoder can take."""
        p = self.path
        if not (p / "meta.json").exists():
            raise ValueError(f"{p} is not a feature store (no meta.json)")
        try:
            meta = json.loads((p / "meta.json").read_text())
        except json.JSONDecodeError as e:
            raise DamagedFileError(f"{p / 'meta.json'} is damaged: not valid JSON ({e})") from None
        for key in ("names", "dims", "n"):
            if key not in meta:
                raise ValueError(f"{p / 'meta.json'} lacks the key '{key}'")
        if verify:
            check_store(p, meta)
        mode = "r" if mmap else None

        def load(name):
            f = p / f"{name}.npy"
            if not f.exists():
                raise ValueError(f"feature store {p} lacks {f.name}")
            try:
                return np.load(f, mmap_mode=mode, allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{f} is corrupt or not a .npy array: {e}") from None

        views = [load(n) for n in meta["names"]]
        for n, v, d in zip(meta["names"], views, meta["dims"]):
            if v.ndim != 2 or v.shape != (meta["n"], d):
                raise ValueError(f"{n}.npy has shape {v.shape}, meta.json says ({meta['n']}, {d})")
        mask, ids = np.asarray(load("mask")), np.asarray(load("ids"))
        labels = np.asarray(load("labels")) if (p / "labels.npy").exists() else None
        data = MultiViewData.__new__(MultiViewData)
        data.views, data.names, data.mask, data.ids, data.labels = views, list(meta["names"]), mask.astype(bool), ids, labels
        data.meta = {k: v for k, v in meta.items() if k not in ("names", "dims", "n", "format_version", "sha256",
                                                               "meta_sha256")}
        if inputs_only and meta.get("space") == "embedding":
            raise ValueError(f"{p} holds embeddings (meta.json space: embedding, written by calmrl impute), not input "
                             "features; train, eval, impute and retrieve read input features (impute --space input writes "
                             "those)")
        if validate:
            data.validate()
        return data
