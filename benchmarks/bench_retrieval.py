"""Retrieval evaluation: chunked exact ranks vs the naive full similarity matrix, and faiss.

Q = 2000 queries, d = 128, galleries of 10^4, 10^5 and 10^6. The naive way builds the full
Q x G score matrix at once (skipped where it would exceed 2 GB); the chunked way keeps
``chunk_size x G`` scores; faiss (IndexFlatIP, exact) returns the top 100.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from calmrl.core import retrieval_ranks
from common import machine


def naive_ranks(q, g, targets):
    scores = q @ g.T
    pos = scores.gather(1, targets[:, None])
    return (scores >= pos).sum(1)            # ties count against the query, as retrieval_ranks


def main(Q=2000, d=128):
    print(machine())
    gen = torch.Generator().manual_seed(0)
    for G in (10_000, 100_000, 1_000_000):
        gal = F.normalize(torch.randn(G, d, generator=gen), dim=-1)
        targets = torch.randint(0, G, (Q,), generator=gen)
        q = F.normalize(gal[targets] + 0.8 * torch.randn(Q, d, generator=gen) / d ** 0.5, dim=-1)
        row = [f"G={G:>9,d}"]
        t = time.perf_counter()
        r_chunk = retrieval_ranks(q, gal, targets, chunk_size=256)
        t_chunk = time.perf_counter() - t
        row.append(f"chunked(256) {t_chunk:6.2f} s, scores held {256 * G * 4 / 2**20:7.1f} MB")
        naive_mb = Q * G * 4 / 2**20
        if naive_mb <= 2048:
            t = time.perf_counter()
            r_naive = naive_ranks(q, gal, targets)
            t_naive = time.perf_counter() - t
            assert torch.equal(r_naive, r_chunk)
            row.append(f"naive {t_naive:6.2f} s, scores held {naive_mb:7.1f} MB (time ratio {t_naive / t_chunk:.2f}x, "
                       f"memory ratio {naive_mb / (256 * G * 4 / 2**20):.1f}x)")
        else:
            row.append(f"naive skipped (would hold {naive_mb / 1024:.1f} GB of scores)")
        t = time.perf_counter()
        r_faiss = retrieval_ranks(q, gal, targets, backend="faiss", max_rank=100)
        t_faiss = time.perf_counter() - t
        agree = float((r_faiss == r_chunk.clamp(max=101)).float().mean())
        row.append(f"faiss top-100 {t_faiss:6.2f} s (ratio to chunked {t_chunk / t_faiss:.2f}x, ranks agree {agree:.4f})")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
