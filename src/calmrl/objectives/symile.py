r"""Symile (Saporta et al., "Contrasting with Symile: Simple Model-Agnostic Representation
Learning for Unlimited Modalities", NeurIPS 2024), with masks.

Symile scores an instance by the multilinear inner product of its modalities,
:math:`\mathrm{MIP}(a, b, c) = \sum_k a_k b_k c_k`, and contrasts each modality (the anchor of
its row) against products of the other modalities; the objective is a lower bound on total
correlation. **Negatives** (``method.symile.negatives``), as the authors' ``symile`` package
(0.1.0, ``loss.py``) draws them:

- ``n`` (the authors' default, O(n)): for each anchor modality, the rows of each other modality
  are permuted *independently* (``torch.randperm``), so a negative
  :math:`\mathrm{MIP}(a_i, b_{\pi(j)}, c_{\sigma(j)})` is drawn from :math:`p(b)\,p(c)`; the
  positive :math:`\mathrm{MIP}(a_i, b_i, c_i)` is put in its row's own column;
- ``n_squared`` (the authors' O(n^{M-1})): every combination of the other modalities' rows;
- ``joint``: the products of one other instance, :math:`b_j \odot c_j`, drawn from
  :math:`p(b, c)`. Not the authors' loss (earlier versions of calmrl used it): where the anchor
  carries no information about the others, its term is exactly :math:`\log B`.

On complete data ``n`` and ``n_squared`` are the authors' loss (the mean over anchors of each
anchor's cross-entropy) with the same permutations; with two modalities ``joint`` and
``n_squared`` are the InfoNCE of the pair (``n`` then draws one permutation of the other
modality's rows, so a row may meet its own positive again as a negative, as the authors' does).

**Missing modalities.** A missing modality enters the product as the all-ones vector, the
identity of the element-wise product, so that an instance is scored over the modalities it
has: :math:`\mathrm{MIP}(a, b, \mathbf 1) = a^\top b`. (The authors instead learn a
placeholder embedding and append a missingness indicator; calmrl keeps the identity, which
needs no extra parameters and leaves complete instances' scores unchanged.) For instance
:math:`i`, each observed modality :math:`m` with context :math:`S = O_i \setminus \{m\}` (not
empty) is one row; its candidates are built from the instances that observe all of
:math:`S`:

.. math::
    \ell_{im} = -\log\operatorname{softmax}_{c}
        \Big(\tfrac1\tau\, a_{im}^\top \textstyle\bigodot_{n \in S} a_{c_n n}\Big)_{c = (i, \dots, i)},
    \qquad \mathcal L = \frac{\sum_{(i,m)} w_{im} \ell_{im}}{\sum_{(i,m)} w_{im}}.

With ``n``, a row's columns are the batch's positions: column :math:`j` is the product of
the other modalities' cells at rows :math:`\pi_n(j)` (one permutation of the batch per anchor
and other modality), a column that would use an absent cell is left out, and the row's own
column holds its positive, so negatives come from the marginals even where no other instance
observes the row's whole context (a row left with no negative scores 0). ``n_squared`` and
``joint`` build their candidates from the instances that observe the whole context. The
temperature is learned, initialised at ``method.tau_init``. Rows are grouped by context (a
loop over the patterns present in the batch, never over instances).

Calibration plugs in: imputed cells fill the contexts of rows and candidates (detached), a
row's anchor cell must be observed, a row weighs the product of its cells' weights, and a
candidate's logit gains the log of the product of its cells' weights (it counts
:math:`w e^{s}` in the softmax). Where imputed cells are in a row's context, the row also
enters over its observed context alone, weighing one minus the product of the imputed cells'
weights; so the loss is continuous in the weights and a closed gate gives the plain loss. Missing cells are zeroed before any arithmetic.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.reduce import candidate_log_weights, present_cells, weighted_mean, zero_absent
from .base import Objective, Setting, register

__all__ = ["symile_loss", "NEGATIVES"]


NEGATIVES = ("n", "n_squared", "joint")
_MAX_PRODUCTS = 1 << 22          # n_squared: candidate products per row group at most


def symile_loss(A: Tensor, mask: Tensor | None = None, *, tau: Tensor | float = 0.07,
                cell_weights: Tensor | None = None, observed: Tensor | None = None, negatives: str = "n",
                generator: torch.Generator | None = None) -> Tensor:
    """The formula of the module docstring. ``generator``: the permutations' random source for
    ``negatives="n"`` (default: torch's global generator, which the trainer seeds)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown Symile negatives '{negatives}'; valid: {', '.join(NEGATIVES)}")
    present = present_cells(A, mask, cell_weights)
    A = zero_absent(A, present)
    B, M, d = A.shape
    query_ok = present if observed is None else present & observed.bool()
    if B < 2 or M < 2:
        return A.sum() * 0.0
    bits = 2 ** torch.arange(M, device=A.device)
    code = (present.long() * bits).sum(1)                                   # (B,) pattern of each instance
    # the rows: (i, m) over its full context (imputed cells included), weighing the product of
    # the context's weights; and where imputed cells are in the context, the same row over its
    # observed context too, weighing 1 - the product of the imputed cells' weights, so that the
    # loss goes continuously to the plain loss as the gate closes
    variants = [(code, None)]
    if cell_weights is not None and observed is not None:
        obs = present & observed.bool()
        ocode = (obs.long() * bits).sum(1)
        imp_w = torch.where(present & ~obs, cell_weights.to(A.dtype), torch.ones((), dtype=A.dtype, device=A.device))
        variants.append((ocode, imp_w))
    # n: one permutation of the batch per (anchor, other modality), drawn up front in the authors'
    # order (anchor by anchor, the others ascending), so the draws do not depend on the masks
    perm = [[torch.randperm(B, generator=generator).to(A.device) if n != m else None for n in range(M)]
            for m in range(M)] if negatives == "n" else None
    # log of each cell's weight as a candidate's: 0 observed, log w imputed, -inf absent
    cell_lw = candidate_log_weights(present.to(A.dtype) if cell_weights is None
                                    else cell_weights.to(A.dtype) * present)
    weighted = cell_weights is not None
    terms, weights = [], []
    for (row_code, imp_w), m in itertools.product(variants, range(M)):     # loop over anchors
        ctx_code = row_code & ~int(bits[m])
        rows_m = query_ok[:, m] & (ctx_code != 0)
        if imp_w is not None:                                               # only where imputed cells are in it
            rows_m = rows_m & (ctx_code != (code & ~int(bits[m])))
        if not bool(rows_m.any()):
            continue
        for S in torch.unique(ctx_code[rows_m]).tolist():                   # loop over context patterns
            idx = [n for n in range(M) if (S >> n) & 1]
            rows = (rows_m & (ctx_code == S)).nonzero().flatten()
            cand = ((code & S) == S).nonzero().flatten()                     # observe all of S
            C = cand.numel()
            if C < 2 and negatives != "n":             # n: negatives from the marginals need no such instance
                continue
            q = A[rows, m]                                                   # (R, d)
            target = torch.searchsorted(cand, rows)
            if negatives == "n_squared":
                if C ** len(idx) > _MAX_PRODUCTS:
                    raise ValueError(f"symile negatives n_squared: {C}^{len(idx)} candidate products in one batch; "
                                     f"use a smaller batch or method.symile.negatives=n")
                prod, clw = A[cand, idx[0]], cell_lw[cand, idx[0]]
                for n in idx[1:]:
                    prod = (prod[:, None, :] * A[cand, n][None, :, :]).reshape(-1, d)
                    clw = (clw[:, None] + cell_lw[cand, n][None, :]).reshape(-1)
                k = len(idx)
                col = target * ((C ** k - 1) // (C - 1)) if k > 1 else target   # the column (i, ..., i)
            else:
                col = target
                if negatives == "n":
                    # column j: the product of each other modality's row perm[m][n][j] of the whole batch,
                    # weighing the product of those cells' weights (an absent cell: weight 0, no column);
                    # the row's own column holds its positive (set below)
                    prod = torch.ones(B, d, dtype=A.dtype, device=A.device)
                    clw = torch.zeros(B, dtype=A.dtype, device=A.device)
                    for n in idx:
                        prod = prod * A[perm[m][n], n]
                        clw = clw + cell_lw[perm[m][n], n]
                    col = rows
                else:
                    prod = torch.ones(C, d, dtype=A.dtype, device=A.device)
                    clw = torch.zeros(C, dtype=A.dtype, device=A.device)
                    for n in idx:
                        prod = prod * A[cand, n]
                        clw = clw + cell_lw[cand, n]
            logits = q @ prod.T                                              # (R, columns)
            hit = torch.zeros_like(logits, dtype=torch.bool)
            hit[torch.arange(len(rows), device=A.device), col] = True
            if negatives == "n":                                             # the positive in its own column
                own = torch.ones_like(q)
                for n in idx:
                    own = own * A[rows, n]
                logits = torch.where(hit, (q * own).sum(-1, keepdim=True), logits)
            logits = logits / tau
            if weighted or negatives == "n":      # candidates weigh w: + log w (n: absent cells, -inf)
                logits = logits + torch.where(hit, torch.zeros((), dtype=logits.dtype, device=A.device),
                                              clw[None, :])
            terms.append(F.cross_entropy(logits, col, reduction="none"))
            if cell_weights is None:
                weights.append(torch.ones(len(rows), dtype=A.dtype, device=A.device))
            else:
                cw = cell_weights[rows].to(A.dtype)
                rw = cw[:, m] * cw[:, idx].prod(1)
                if imp_w is not None:      # the observed-context row (imp_w is 1 at the observed anchor m)
                    rw = rw * (1 - imp_w[rows].prod(1))
                weights.append(rw)
    if not terms:
        return A.sum() * 0.0
    return weighted_mean(torch.cat(terms), torch.cat(weights), A)


def _loss(A, mask, ctx):
    neg = ctx.settings.negatives
    if ctx.calibrated:
        return symile_loss(A, None, tau=ctx.tau, cell_weights=ctx.column_weights, observed=mask, negatives=neg), {}
    return symile_loss(A, mask, tau=ctx.tau, negatives=neg), {}


register(Objective("symile", "symile", "Symile: each modality against the element-wise product of the others "
                   "(multilinear inner product; a missing modality is the product's identity)",
                   temperature="learned", calibration="plug-in", observed_only="symile", fn=_loss,
                   settings=(Setting("negatives", "n", "the negatives, as the authors' package draws them: n (each "
                                     "other modality's rows permuted independently, O(n)), n_squared (every "
                                     "combination), or joint (one other instance's product; not the authors' loss)",
                                     choices=NEGATIVES),)))
