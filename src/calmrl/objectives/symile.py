r"""Symile (Saporta et al., "Contrasting with Symile: Simple Model-Agnostic Representation
Learning for Unlimited Modalities", NeurIPS 2024), with masks.

Symile scores an instance by the multilinear inner product of its modalities,
:math:`\mathrm{MIP}(a, b, c) = \sum_k a_k b_k c_k`, and contrasts each modality against the
batch's products of the other modalities (``logits_a = a @ (b * c).T``, as CLIP contrasts
rows); the objective is a lower bound on total correlation.

**Missing modalities.** A missing modality enters the product as the all-ones vector, the
identity of the element-wise product, so that an instance is scored over the modalities it
has: :math:`\mathrm{MIP}(a, b, \mathbf 1) = a^\top b`. For instance :math:`i`, each observed
modality :math:`m` with context :math:`S = O_i \setminus \{m\}` (not empty) is one row; its
candidates are the instances :math:`j` that observe all of :math:`S`:

.. math::
    \ell_{im} = -\log\operatorname{softmax}_{j : S \subseteq O_j}
        \Big(\tfrac1\tau\, a_{im}^\top \textstyle\bigodot_{n \in S} a_{jn}\Big)_i,
    \qquad \mathcal L = \frac{1}{|R|}\sum_{(i,m)\in R}\ell_{im}.

On complete data this is the authors' loss (the mean over modalities of each modality's
cross-entropy); with two modalities it is the InfoNCE of the pair. The temperature is
learned, initialised at ``method.tau_init``. Rows are grouped by context (a loop over the
patterns present in the batch, never over instances).

Calibration plugs in: imputed cells fill the contexts of rows and candidates (detached, so
gradients reach observed cells only), a row's query cell must be observed, and a row weighs
the product of its cells' weights (:math:`\sum w\ell / \sum w`); a closed gate gives the plain loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register

__all__ = ["symile_loss"]


def symile_loss(A: Tensor, mask: Tensor | None = None, *, tau: Tensor | float = 0.07,
                cell_weights: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
    """The formula of the module docstring."""
    B, M, _ = A.shape
    present = torch.ones(B, M, dtype=torch.bool, device=A.device) if mask is None else mask.bool()
    if cell_weights is not None:
        present = present & (cell_weights > 0)
    query_ok = present if observed is None else present & observed.bool()
    if B < 2 or M < 2:
        return A.sum() * 0.0
    bits = 2 ** torch.arange(M, device=A.device)
    code = (present.long() * bits).sum(1)                                   # (B,) pattern of each instance
    total, weight = A.sum() * 0.0, A.new_zeros(())
    for m in range(M):                                                      # loop over modalities
        ctx_code = code & ~int(bits[m])
        rows_m = query_ok[:, m] & (ctx_code != 0)
        if not bool(rows_m.any()):
            continue
        for S in torch.unique(ctx_code[rows_m]).tolist():                   # loop over context patterns
            in_S = ((S >> torch.arange(M, device=A.device)) & 1).bool()     # (M,)
            rows = (rows_m & (ctx_code == S)).nonzero().flatten()
            cand = ((code & S) == S).nonzero().flatten()                     # candidates observe all of S
            if cand.numel() < 2:
                continue
            prod = torch.where(in_S[None, :, None], A[cand], torch.ones_like(A[cand])).prod(1)   # (C, d)
            logits = A[rows, m] @ prod.T / tau                               # (R, C)
            target = torch.searchsorted(cand, rows)
            ce = F.cross_entropy(logits, target, reduction="none")
            if cell_weights is None:
                w = torch.ones_like(ce)
            else:
                cw = cell_weights[rows].to(ce.dtype)
                w = cw[:, m] * torch.where(in_S[None, :], cw, torch.ones_like(cw)).prod(1)
            total = total + (w * ce).sum()
            weight = weight + w.sum()
    return total / weight if bool(weight > 0) else total


def _loss(A, mask, ctx):
    if ctx.calibrated:
        return symile_loss(A, None, tau=ctx.tau, cell_weights=ctx.column_weights, observed=mask), {}
    return symile_loss(A, mask, tau=ctx.tau), {}


register(Objective("symile", "symile", "Symile: each modality against the element-wise product of the others "
                   "(multilinear inner product; a missing modality is the product's identity)",
                   temperature="learned", calibration="plug-in", observed_only="symile", fn=_loss))
