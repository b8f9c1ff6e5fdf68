"""The cost of one validation score, the whole split against bounded galleries, side by side.

Per-epoch validation (learning curves, auto's rungs) scores retrieval over every ordered pair
of views: over the whole split that is n^2 similarities per pair; above
``eval.val_gallery_size`` (5000) it reads one fixed random sample of that size
(:func:`calmrl.train.evaluate.validation_table`). Random unit embeddings, 4 views, d = 64,
each cell missing with probability 0.3, 2 threads.

    python benchmarks/bench_validation.py --sizes 5000,20000

Also, side by side on the whole split: the rank count as ``(scores >= pos).sum(1)`` (the bool
matrix summed into int64, before) and summed into int32 (``calmrl.core.metrics._ranks_from``
now); the ranks are the same integers.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import best_time, machine
import calmrl.core.metrics as metrics
from calmrl.train.config import load_config
from calmrl.train.evaluate import retrieval_table, validation_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--gallery", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(machine())
    e = load_config(None, [f"eval.val_gallery_size={a.gallery}"]).eval
    print(f"{'n':>7} {'whole split':>12} {'sample':>10} {'ratio':>6}")
    names = ["v0", "v1", "v2", "v3"]
    for n in (int(x) for x in a.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        A = F.normalize(torch.randn(n, 4, 64, generator=g), dim=-1)
        mask = torch.rand(n, 4, generator=g) > 0.3
        whole = best_time(lambda: retrieval_table(A, names, mask), repeat=2)
        gal = best_time(lambda: validation_table(A, names, mask, e), repeat=2)
        print(f"{n:>7} {whole:>11.2f}s {gal:>9.2f}s {whole / gal:>6.2f}")
    print("rank count over the whole split: int64 bool sum (before) vs int32 (now)")
    now = metrics._ranks_from

    def before(at_least, pos, worst):
        return torch.where(torch.isfinite(pos.squeeze(1)), at_least.sum(1),
                           torch.full_like(pos.squeeze(1), worst, dtype=torch.long))

    for n in (int(x) for x in a.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        A = F.normalize(torch.randn(n, 4, 64, generator=g), dim=-1)
        mask = torch.rand(n, 4, generator=g) > 0.3
        metrics._ranks_from = before
        t_before, r_before = best_time(lambda: retrieval_table(A, names, mask), repeat=2), retrieval_table(A, names, mask)
        metrics._ranks_from = now
        t_now, r_now = best_time(lambda: retrieval_table(A, names, mask), repeat=2), retrieval_table(A, names, mask)
        assert r_before == r_now
        print(f"{n:>7} before {t_before:6.2f}s  now {t_now:6.2f}s  ratio {t_before / t_now:.2f} (the same table)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
