"""EM time and peak memory vs number of instances (10^3 .. 10^6), data streamed in batches.

Each size runs in a fresh subprocess so that its peak resident memory is its own. The data
are generated batch by batch from a fixed model (as a stream from disk would arrive), so no
process ever holds all N instances; one EM iteration = one pass of E-step statistics + M-step.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

from calmrl.core import SharedLatentCalibrator


def one(N: int, M=4, d=64, k=16, batch=8192, iters=2) -> dict:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(M, d, k, generator=g) / k ** 0.5
    cal = SharedLatentCalibrator(M, d, k)

    def stream():
        for s in range(0, N, batch):
            gb = torch.Generator().manual_seed(s)
            n = min(batch, N - s)
            Z = torch.einsum("mdk,bk->bmd", W, torch.randn(n, k, generator=gb)) + 0.3 * torch.randn(n, M, d, generator=gb)
            mask = torch.rand(n, M, generator=gb) > 0.5
            mask[:, 0] = True
            yield Z, mask

    Z0, m0 = next(stream())
    cal.init_from_data(Z0, m0)
    t = time.perf_counter()
    for _ in range(iters):
        total = None
        for Z, mask in stream():
            st = cal.sufficient_stats(Z, mask)
            total = st if total is None else total + st
        cal.m_step(total)
    sec = (time.perf_counter() - t) / iters
    return {"N": N, "sec_per_iter": sec, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    if len(sys.argv) > 1:
        print(json.dumps(one(int(sys.argv[1]))))
        return
    print("M=4, d=64, k=16, batches of 8192, 50% of cells missing")
    rows = []
    for N in (1_000, 10_000, 100_000, 1_000_000):
        out = subprocess.run([sys.executable, __file__, str(N)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(f"N={N:>9,d}: {r['sec_per_iter']:8.3f} s per EM iteration, {r['sec_per_iter'] / N * 1e6:6.2f} us per "
              f"instance, peak RSS {r['peak_rss_mb']:7.1f} MB")
    print(f"time ratio 10^6 / 10^5 = {rows[-1]['sec_per_iter'] / rows[-2]['sec_per_iter']:.1f} (linear = 10); "
          f"peak memory ratio 10^6 / 10^3 = {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} (flat = 1)")


if __name__ == "__main__":
    main()
