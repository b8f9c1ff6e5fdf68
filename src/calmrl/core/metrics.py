r"""Retrieval and imputation metrics.

Retrieval: query :math:`q_i` has the single correct gallery item :math:`g_{t_i}`; its rank is
:math:`1 + \#\{j \ne t_i : \langle q_i, g_j\rangle \ge \langle q_i, g_{t_i}\rangle\}`: a tie counts
*against* the query (the pessimistic rank), so a view whose embeddings coincide (a constant or
categorical view) cannot score above chance by tying with its target. Exact search runs in
query chunks so memory stays at ``chunk_size * |gallery|`` scores; ``backend="faiss"``
uses an exact inner-product index (``faiss.IndexFlatIP``) to find the ``max_rank + 1`` best
candidates, rescores them and the target with the same dot product as the torch backend
(so ties are the same ties on both), and returns ranks capped at ``max_rank + 1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .geometry import SIMILARITIES, pair_similarity

__all__ = ["retrieval_ranks", "retrieval_metrics", "summarize_ranks", "imputation_quality", "fuse_observed"]


def fuse_observed(A: Tensor, mask: Tensor) -> Tensor:
    r"""Fused query of each instance: the normalised sum of its observed embeddings,
    :math:`\operatorname{normalize}(\sum_{m\in O_i} a_{im})`, ``(N, d)`` from ``(N, M, d)``."""
    return torch.nn.functional.normalize((A * mask[..., None].to(A.dtype)).sum(1), dim=-1)


def retrieval_ranks(query: Tensor, gallery: Tensor, targets: Tensor | None = None, *,
                    chunk_size: int = 4096, backend: str = "torch", max_rank: int = 100,
                    similarity: str = "cosine") -> Tensor:
    """1-based rank of each query's correct gallery item, ``(Q,)`` long. ``similarity``: the
    score of :func:`~calmrl.core.geometry.pair_similarity` (``cosine`` = inner product;
    ``volume`` and ``area`` need the torch backend)."""
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be "
                         "(n, d) matrices of the same width")
    if targets is None:
        if query.shape[0] != gallery.shape[0]:
            raise ValueError("without targets, query and gallery must be aligned (same length)")
        targets = torch.arange(query.shape[0], device=query.device)
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity '{similarity}'; valid: {list(SIMILARITIES)}")
    if backend == "faiss":
        if similarity != "cosine":
            raise ValueError(f"the faiss backend scores by inner product only, not by '{similarity}'")
        return _faiss_ranks(query, gallery, targets, max_rank)
    if backend != "torch":
        raise ValueError(f"unknown retrieval backend '{backend}'; valid: 'torch', 'faiss'")
    ranks = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    for s in range(0, query.shape[0], chunk_size):
        q = query[s: s + chunk_size]
        scores = q @ gallery.T if similarity == "cosine" else pair_similarity(q, gallery, similarity)  # (c, G)
        pos = scores.gather(1, targets[s: s + chunk_size, None])
        # the target and every other item scoring at least as high (ties count against the query)
        ranks[s: s + chunk_size] = _ranks_from(scores >= pos, pos, gallery.shape[0])
    return ranks


def _ranks_from(at_least: Tensor, pos: Tensor, worst: int) -> Tensor:
    """Rank from the count of items scoring at least the target (the target included); a
    non-finite target score ranks last instead of first (NaN compares false with everything)."""
    # counted in int32 (a row has fewer than 2^31 items): summing the bool matrix into int64 is
    # about 2x slower on CPU (benchmarks/bench_validation.py)
    count = at_least.sum(1, dtype=torch.int32).long()
    return torch.where(torch.isfinite(pos.squeeze(1)), count, torch.full_like(count, worst))


def _faiss_ranks(query: Tensor, gallery: Tensor, targets: Tensor, max_rank: int) -> Tensor:
    import faiss  # optional heavy dependency, imported lazily
    import numpy as np

    q, g, t = query.detach().cpu().float(), gallery.detach().cpu().float(), targets.cpu()
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g.numpy()))
    k = min(max_rank + 1, g.shape[0])          # one beyond max_rank: ranks <= max_rank are exact
    _, ids = index.search(np.ascontiguousarray(q.numpy()), k)
    cand = torch.from_numpy(ids).long()                                   # (Q, k), -1 never occurs (k <= G)
    # rescore candidates and target with one dot product, as the torch backend does, so that
    # items equal to the target tie with it here too (faiss's own scores may round differently)
    cs = (q[:, None, :] * g[cand]).sum(-1)                                 # (Q, k)
    ts = (q * g[t]).sum(-1, keepdim=True)                                  # (Q, 1)
    rank = _ranks_from((cs >= ts) & (cand != t[:, None]), ts, max_rank + 1) + torch.isfinite(ts.squeeze(1)).long()
    # every candidate at least as good as the target: items beyond the cut may tie with it too
    beyond = (cs.min(1, keepdim=True).values >= ts).squeeze(1) & (rank >= k) & (k < g.shape[0])
    rank = torch.where(beyond, torch.full_like(rank, max_rank + 1), rank)
    return rank.clamp_max(max_rank + 1).to(query.device)


def summarize_ranks(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (in %), median and mean rank."""
    r = ranks.float()
    out = {f"R@{k}": 100.0 * float((r <= k).float().mean()) for k in ks}
    out["MedR"] = float(r.median())
    out["MeanR"] = float(r.mean())
    return out


def retrieval_metrics(query: Tensor, gallery: Tensor, *, ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int = 4096, backend: str = "torch") -> dict[str, float]:
    """Recall@K, median and mean rank of aligned query/gallery embeddings."""
    return summarize_ranks(retrieval_ranks(query, gallery, chunk_size=chunk_size, backend=backend), ks)


def imputation_quality(pred: Tensor, truth: Tensor, cells: Tensor) -> dict[str, Tensor]:
    r"""Quality of imputed cells, per modality (``(M,)`` tensors, NaN where no cell).

    ``cosine``: mean :math:`\cos(\hat z, z)`; ``r2``: :math:`1-\sum\lVert\hat z-z\rVert^2/\sum\lVert z-\bar z\rVert^2`
    over the held-out cells ``cells`` ``(B, M)`` of each modality.
    """
    cells = cells.bool()
    w = cells.to(pred.dtype)
    n = w.sum(0)
    cos = torch.nn.functional.cosine_similarity(pred, truth, dim=-1)          # (B, M)
    mean_cos = (cos * w).sum(0) / n
    zbar = (truth * w[..., None]).sum(0) / n[:, None].clamp_min(1)
    sse = (((pred - truth) ** 2).sum(-1) * w).sum(0)
    sst = (((truth - zbar) ** 2).sum(-1) * w).sum(0)
    r2 = 1 - sse / sst.clamp_min(torch.finfo(pred.dtype).tiny)
    nan = torch.full_like(n, float("nan"))
    return {"cosine": torch.where(n > 0, mean_cos, nan), "r2": torch.where(n > 0, r2, nan), "count": n}
