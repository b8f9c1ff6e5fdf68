"""Rows of a large feature matrix, read on demand: the splits of a memory-mapped store without
a second copy of it in memory.

``RowView(base, index, mean, std)`` stands for the ``(len(index), d)`` float32 matrix

    X[i] = (base[index[i]] - mean) / std        (float64 arithmetic, then float32)

(``mean``/``std`` optional). Indexing it (an int, a slice, a boolean or integer array) reads
only the rows asked for, so a ``DataLoader`` batch costs one fancy index of the store's pages,
and the numbers are those of standardising an in-memory copy, bit for bit.

``observed_summary`` passes over a view in pieces of about ``CHUNK_BYTES`` (the statistics of
standardisation and the constant-feature check, in memory bounded by a piece).
"""

from __future__ import annotations

import numpy as np

from ..parallel import map_per_core

__all__ = ["RowView", "is_lazy", "observed_summary", "bounded_sample", "chunk_rows", "per_view", "CHUNK"]

CHUNK = 65536            # rows read at once by a pass over a view that fits in memory anyway
EXACT_BYTES = 64 << 20   # up to this size (as float64) the moments are numpy's own, in one piece
CHUNK_BYTES = 16 << 20   # a pass over a larger view reads it in pieces of about this size


def chunk_rows(width: int, itemsize: int = 8) -> int:
    """Rows per piece of a pass over a view of ``width`` features: about ``CHUNK_BYTES``, at
    most ``CHUNK``, so that memory stays flat in the number of instances and in the width."""
    return int(max(1, min(CHUNK, CHUNK_BYTES // max(1, width * itemsize))))


class RowView:
    """``base[index]`` (optionally standardised), read when indexed. ``base``: any 2-D array
    that supports fancy indexing on rows (a ``np.memmap``, an ``np.ndarray``)."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, base, index=None, mean=None, std=None):
        if isinstance(base, RowView):        # a view of a view: compose the row maps
            if base.mean is not None and mean is not None:
                raise ValueError("a standardised view cannot be standardised again")
            index = base.index if index is None else base.index[np.asarray(index)]
            mean, std = (base.mean, base.std) if mean is None else (mean, std)
            base = base.base
        self.base = base
        self.index = np.arange(base.shape[0], dtype=np.int64) if index is None else np.asarray(index, np.int64)
        if self.index.ndim != 1:
            raise ValueError(f"a row index must be 1-D, got shape {self.index.shape}")
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.std = None if std is None else np.asarray(std, np.float64)
        self.shape = (len(self.index), int(base.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowView({self.shape[0]} of {self.base.shape[0]} rows, d={self.shape[1]}, " \
               f"standardised={self.mean is not None})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):           # (rows, columns): read the rows, then slice the columns
            return self[key[0]][(slice(None),) + key[1:]]
        idx = self.index[key]
        if np.ndim(idx) == 0:
            return self[np.asarray([key])][0]
        x = np.asarray(self.base[idx])
        if self.mean is None:
            return x.astype(np.float32, copy=False)
        return ((x.astype(np.float64) - self.mean) / self.std).astype(np.float32)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def is_lazy(v) -> bool:
    """Whether a view is read from disk on demand (a memory-mapped array or a :class:`RowView`)."""
    return isinstance(v, (RowView, np.memmap))


def observed_summary(v, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation (float64, population), minimum and maximum of ``v[rows]`` per
    feature, in one pass. Up to ``EXACT_BYTES``: numpy's ``mean``/``std`` of the rows at once;
    beyond, pieces of ``CHUNK_BYTES`` whose moments are merged by Chan et al.'s pairwise update
    (stable, no second pass), so memory stays flat in the number of rows."""
    rows = np.asarray(rows)
    if len(rows) <= CHUNK and len(rows) * v.shape[1] * 8 <= EXACT_BYTES:
        x = np.asarray(v[rows], dtype=np.float64)
        return x.mean(0), x.std(0), x.min(0), x.max(0)
    n, mean, m2, lo, hi = 0, None, None, None, None
    step = chunk_rows(v.shape[1])
    for s in range(0, len(rows), step):
        raw = np.asarray(v[rows[s: s + step]])
        a, b = raw.min(0), raw.max(0)
        x = raw.astype(np.float64)
        nb, mb = len(x), x.mean(0)
        x -= mb                                          # in place: one float64 piece in memory
        m2b = np.einsum("ij,ij->j", x, x)
        if mean is None:
            n, mean, m2, lo, hi = nb, mb, m2b, a, b
            continue
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta ** 2 * (n * nb / tot)
        n, lo, hi = tot, np.minimum(lo, a), np.maximum(hi, b)
    return mean, np.sqrt(m2 / n), lo, hi


def bounded_sample(n: int, cap: int, seed: int, salt: int = 0) -> np.ndarray | None:
    """``cap`` of ``range(n)`` drawn without replacement from ``(seed, salt)``, sorted (rows read
    in store order), or ``None`` when ``n <= cap`` or ``cap == 0`` (everything is used)."""
    if cap <= 0 or n <= cap:
        return None
    rng = np.random.default_rng([int(seed), 0x5A17, int(salt)])
    return np.sort(rng.choice(n, cap, replace=False))


def per_view(fn, n: int) -> list:
    """``[fn(0), ..., fn(n - 1)]``, a thread per core: the passes over a store's views (hashing,
    moments, finiteness) spend their time in numpy and hashlib, which release the GIL."""
    return map_per_core(fn, range(n))
