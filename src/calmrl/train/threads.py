"""Intra-op threads for a training process on a shared machine."""

from __future__ import annotations

import os
import time

from .config import Config

__all__ = ['busy_cores', 'choose_threads']


def busy_cores(window: float = 0.25) -> float:
    """Cores kept busy by *other* processes over a short window: the machine's busy time from
    ``/proc/stat`` minus this process's CPU time (0 where ``/proc/stat`` is absent)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4], time.process_time()
    try:
        t0, i0, p0 = snap()
        time.sleep(window)
        t1, i1, p1 = snap()
    except (OSError, ValueError):
        return 0.0
    if t1 <= t0:
        return 0.0
    ncpu = os.cpu_count() or 1
    busy = ncpu * (1 - (i1 - i0) / (t1 - t0))            # cores busy, all processes
    return max(0.0, busy - (p1 - p0) / window)


def choose_threads(cfg: Config) -> int:
    """Intra-op threads for this process: ``train.threads`` if set; else the cores this process
    may use that other processes are not keeping busy right now, divided among the processes
    of its node (at least 1). On a shared machine, threads that compete with a busy core wait
    on each other at every parallel region (OpenMP), which made training 16x slower than one
    thread; on an idle one all cores are used (``benchmarks/bench_threads.py``)."""
    if cfg.train.threads:
        return cfg.train.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if isinstance(cfg.train.devices, int) and cfg.train.accelerator == "cpu":
        local = max(local, cfg.train.devices)
    free = cores - int(round(busy_cores()))
    return max(1, free // max(1, local))
