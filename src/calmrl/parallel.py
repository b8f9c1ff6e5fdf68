"""A map over a thread per core, for the passes over files and views whose work releases the
GIL (hashlib on blocks over 2 KB, numpy's reductions, copies and conversions)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

__all__ = ["cores", "map_per_core"]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # not on Linux
        return os.cpu_count() or 1


def map_per_core(fn: Callable, items: Sequence) -> list:
    """``[fn(x) for x in items]``, in order, computed by ``min(cores, len(items))`` threads
    (in this thread when that is one)."""
    workers = min(cores(), len(items))
    if workers < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
