"""What verifying a checkpoint's SHA-256 costs: loading with and without the check, side by side.

A checkpoint of the trainer's model (MLP heads for the UCI views' widths, its calibrator and
AdamW state, as Lightning writes it) at the bundled width (d = 64, hidden 256) and a large one
(d = 512, hidden 2048). For each, the median of ``--repeat`` loads of
``calmrl.train.checkpoints.load_checkpoint`` (read, unpickle, verify) against the same load with
the verification skipped (``torch.load`` alone), and the digest alone. Prints the ratio.

    python benchmarks/bench_checksum.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import machine
from calmrl.integrity import check_sealed
from calmrl.train import AtomicCheckpointIO, load_checkpoint, load_config
from calmrl.train.module import CalMRLModule


def _checkpoint(d: int, hidden: int, path: Path) -> int:
    cfg = load_config(None, [f"model.embed_dim={d}", f"model.hidden_dim={hidden}", "method.name=pairwise-infonce"])
    m = CalMRLModule(cfg, [76, 216, 64, 240, 47, 6], ["fourier", "profile", "karhunen", "pixel", "zernike", "morph"])
    opt = torch.optim.AdamW(m.parameters())
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    AtomicCheckpointIO().save_checkpoint({"state_dict": m.state_dict(), "optimizer_states": [opt.state_dict()],
                                          "epoch": 39, "calmrl_config": {}}, path)
    return path.stat().st_size


def _median(fn, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(machine())
    print(f"{'checkpoint':34s} {'size':>9s} {'torch.load':>11s} {'load+verify':>12s} {'digest':>9s} {'overhead':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for d, h in ((64, 256), (512, 2048)):
            path = Path(tmp) / f"d{d}.ckpt"
            size = _checkpoint(d, h, path)
            plain = _median(lambda: torch.load(path, map_location="cpu", weights_only=False), args.repeat)
            full = _median(lambda: load_checkpoint(path), args.repeat)
            ck = torch.load(path, map_location="cpu", weights_only=False)
            dig = _median(lambda: check_sealed(ck, path), args.repeat)
            print(f"{f'd={d}, hidden={h} (+AdamW state)':34s} {size / 2**20:7.1f}MB {plain * 1e3:9.1f}ms "
                  f"{full * 1e3:10.1f}ms {dig * 1e3:7.1f}ms {100 * (full / plain - 1):+8.1f}%")


if __name__ == "__main__":
    main()
