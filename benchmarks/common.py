"""Shared timing helper for the benchmark scripts."""

from __future__ import annotations

import platform
import time

import torch


def best_time(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> str:
    return (f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
            f"python {platform.python_version()}")
