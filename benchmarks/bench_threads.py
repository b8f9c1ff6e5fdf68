"""Intra-op threads in the trainer: 1 thread, all cores, and the default (``train.threads=0``,
auto), side by side on a small model (UCI-sized heads) and a large one (wide views and
heads), each on an idle machine and with one core kept busy by another process (a shared
machine). Median epoch time after the first epoch, best of interleaved repeats, ratios
against the faster of 1 and all threads in the same condition.

The auto policy (``calmrl.train.threads.choose_threads``): the cores that other processes are
not keeping busy when training starts (sampled from /proc/stat over 0.25 s), at least 1.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_trainer import EpochTimer
from calmrl.train import load_config, run
from common import machine

COMMON = ["data.dataset=synthetic", "train.progress=false", "train.check_val_every=1000", "train.epochs=4",
          "calibrator.warmup_epochs=0"]
MODELS = {
    "small (4 x 64 features, heads 64-256-64, batch 256, 8000 instances)":
        ["data.synthetic_n=8000", "data.synthetic_dims=[64,64,64,64]", "model.embed_dim=64",
         "model.hidden_dim=256", "train.batch_size=256"],
    "large (4 x 1024 features, heads 1024-2048-512, batch 512, 6000 instances)":
        ["data.synthetic_n=6000", "data.synthetic_dims=[1024,1024,1024,1024]", "model.embed_dim=512",
         "model.hidden_dim=2048", "train.batch_size=512"],
}


def measure(overrides: list[str]) -> tuple[float, int]:
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        res = run(load_config(None, COMMON + overrides + [f"output_dir={out}"]), method="calmrl",
                  extra_callbacks=[timer])
    return statistics.median(timer.epochs[1:]), res["threads"]


def main(repeats: int = 2):
    cores = len(os.sched_getaffinity(0))
    print(f"{machine()}; {cores} cores for this process")
    ways = {"1 thread": ["train.threads=1"], f"all {cores} threads": [f"train.threads={cores}"],
            "auto": ["train.threads=0"]}
    for loaded in (False, True):
        hog = None
        if loaded:   # another process keeps one core busy, as on a shared machine
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            print(f"-- {'one core kept busy by another process' if loaded else 'idle machine'}")
            for name, model in MODELS.items():
                best, chosen = {}, None
                for _ in range(repeats):
                    for w, o in ways.items():
                        t, n = measure(model + o)
                        best[w] = min(best.get(w, float("inf")), t)
                        if w == "auto":
                            chosen = n
                ref = min(best["1 thread"], best[f"all {cores} threads"])
                print(f"{name}")
                for w in ways:
                    label = f"auto (chose {chosen})" if w == "auto" else w
                    print(f"  {label:18s} epoch {best[w]:6.2f} s   {best[w] / ref:5.2f}x the faster of 1 / all")
        finally:
            if hog is not None:
                hog.kill()


if __name__ == "__main__":
    main()
