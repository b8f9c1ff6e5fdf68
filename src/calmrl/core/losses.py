r"""Mask-aware multimodal alignment objectives (functional core + ``nn.Module`` wrappers).

All take ``A`` ``(B, M, d)``: per instance the ``M`` modality vectors (unit norm for
encoder outputs; imputed vectors may be left un-normalised), and ``mask`` ``(B, M)``
(``True`` = the column takes part). Missing columns are *excluded*, never zero-padded into
a softmax or a determinant.

* :func:`pmrl_loss` -- Principled MRL: maximise the largest singular value,
  :math:`\mathcal L_{intra} = -\log\operatorname{softmax}(s/\tau_1)_1`, plus an
  instance-wise InfoNCE over principal vectors :math:`u_i^\top u_j/\tau_2`.
* :func:`gram_loss` -- GRAM: contrastive score :math:`-\operatorname{vol}/\tau` with
  :math:`\operatorname{vol} = \sqrt{\det G}` of an anchor vector and another instance's
  other modalities, both directions, label smoothing (the authors' form).
* :func:`triangle_loss` -- TRIANGLE: the same with the area of the triangle (simplex)
  spanned by the tips of the anchor and the other modalities.
* :func:`pairwise_infonce_loss` -- symmetric InfoNCE over every co-observed pair of
  modalities, no hub (CLIP / VAST).
* :func:`anchor_infonce_loss` -- CLIP/ImageBind style pairwise InfoNCE of every modality
  against one anchor modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import gram_volume_matrix, triangle_area_matrix
from .reduce import candidate_log_weights, present_cells, weighted_mean, zero_absent
from .spectral import spectrum

__all__ = ["PMRLOutput", "pmrl_loss", "gram_loss", "triangle_loss", "pairwise_infonce_loss", "anchor_infonce_loss",
           "info_nce", "LearnableTemperature", "GRAMLoss", "TriangleLoss", "PairwiseInfoNCELoss"]


def _full_mask(A: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
    if mask.shape != A.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(A.shape[:2])}")
    return mask.bool()


def info_nce(logits: Tensor, symmetric: bool = True, label_smoothing: float = 0.0) -> Tensor:
    r"""InfoNCE with positives on the diagonal: :math:`-\frac1B\sum_i\log\operatorname{softmax}(\ell_{i\cdot})_i`
    (averaged with the column direction when ``symmetric``; optional label smoothing)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target, label_smoothing=label_smoothing))
    return loss


@dataclass
class PMRLOutput:
    loss: Tensor
    intra: Tensor
    inter: Tensor
    singular_values: Tensor  # (B, M) descending
    anchors: Tensor          # (B, d)


def pmrl_loss(A: Tensor, mask: Tensor | None = None, *, tau1: float = 0.05, tau2: float = 0.1,
              inter_weight: float = 1.0, inter: str = "modality", column_weights: Tensor | None = None
              ) -> PMRLOutput:
    r"""PMRL objective over the (observed or filled) columns.

    :math:`\mathcal L = \frac{1}{|I_2|}\sum_{i\in I_2} -\log\frac{e^{s_{i1}/\tau_1}}{\sum_{j\le |O_i|} e^{s_{ij}/\tau_1}}
    + \lambda\,\mathcal L_{inter}`, with :math:`I_2` the instances having at least two
    columns. Singular values come from the ``M x M`` Gram eigendecomposition.

    ``inter="anchor"``: :math:`\mathcal L_{inter}=\mathrm{InfoNCE}_i(u_i^\top u_j/\tau_2)` over
    principal vectors. ``inter="modality"`` (default): every column contrasts against all
    principal vectors, :math:`\mathrm{InfoNCE}_{(i,m)}(a_{im}^\top u_j/\tau_2)` with positive
    :math:`j=i`. The singular values are invariant to flipping the sign of a column, so the
    anchor-only form lets a modality settle *anti*-aligned with its anchor (seen on UCI
    Multiple Features: median ranks worse than chance); the modality form pins every column
    to the positive side of its own anchor. ``column_weights`` ``(B, M)`` in [0, 1] scale
    columns before the decomposition (e.g. imputation confidence, the informativeness gate)
    and weight their terms of the modality contrast; a column of weight 0 is excluded exactly
    as a masked one (the loss then equals the loss over the remaining columns).
    """
    given = mask
    mask = _full_mask(A, mask)
    col_w = None
    if column_weights is not None:
        col_w = column_weights.to(A.dtype)
        mask = mask & (col_w > 0)
        given = mask
        A = A * col_w.unsqueeze(-1)
    s, valid, _, u = spectrum(A, given)
    logits = (s / tau1).masked_fill(~valid, float("-inf"))
    multi = mask.sum(-1) >= 2
    logp = torch.log_softmax(logits, dim=-1)[:, 0]
    intra = -(logp * multi).sum() / multi.sum().clamp_min(1)
    if inter not in ("anchor", "modality"):
        raise ValueError(f"unknown inter mode '{inter}'; valid: 'anchor', 'modality'")
    if inter_weight and A.shape[0] > 1:
        un = F.normalize(u, dim=-1)
        if inter == "anchor":
            inter_loss = info_nce(un @ un.T / tau2, symmetric=False)
        else:
            B, M = A.shape[:2]
            logits = (A.reshape(B * M, -1) @ un.T) / tau2                           # (B*M, B)
            target = torch.arange(B, device=A.device).repeat_interleave(M)
            ce = F.cross_entropy(logits, target, reduction="none")
            w = mask.to(ce.dtype) if col_w is None else mask.to(ce.dtype) * col_w
            w = w.reshape(-1)
            inter_loss = (ce * w).sum() / w.sum().clamp_min(1)
    else:
        inter_loss = A.new_zeros(())
    return PMRLOutput(intra + inter_weight * inter_loss, intra, inter_loss, s, u)


def gram_loss(A: Tensor, mask: Tensor | None = None, *, anchor: int = 0, tau: float | Tensor = 0.07,
              label_smoothing: float = 0.1) -> Tensor:
    r"""GRAM contrastive loss (authors' form): logits :math:`-V_{ij}/\tau` with :math:`V` the
    :func:`~calmrl.core.geometry.gram_volume_matrix`, positives :math:`i=j`, cross-entropy with
    label smoothing in both directions, :math:`\tfrac12(\mathcal L_{A2D}+\mathcal L_{D2A})`, over
    the instances whose anchor and at least one other modality are observed. ``tau`` may be
    a learnable tensor (the authors initialise it at 0.07)."""
    return _volume_contrast(gram_volume_matrix, A, mask, anchor, tau, label_smoothing)


def triangle_loss(A: Tensor, mask: Tensor | None = None, *, anchor: int = 0, tau: float | Tensor = 0.07,
                  label_smoothing: float = 0.1) -> Tensor:
    r"""TRIANGLE contrastive loss: as :func:`gram_loss` with the area score
    :func:`~calmrl.core.geometry.triangle_area_matrix` in place of the volume."""
    return _volume_contrast(triangle_area_matrix, A, mask, anchor, tau, label_smoothing)


def _volume_contrast(score_fn, A, mask, anchor, tau, label_smoothing):
    mask = _full_mask(A, mask)
    keep = mask[:, anchor] & (mask.sum(-1) >= 2)
    if int(keep.sum()) < 2:
        return A.sum() * 0.0
    A, mask = A[keep], mask[keep]
    return info_nce(-score_fn(A, mask, anchor) / tau, symmetric=True, label_smoothing=label_smoothing)


def pairwise_infonce_loss(A: Tensor, mask: Tensor | None = None, *, tau: float | Tensor = 0.07,
                          label_smoothing: float = 0.0, cell_weights: Tensor | None = None,
                          observed: Tensor | None = None) -> Tensor:
    r"""Symmetric InfoNCE over every pair of co-observed modalities, no hub (CLIP / VAST style).

    For each ordered pair :math:`(m, n)`, :math:`m\ne n`, each instance :math:`i` observing both
    queries with :math:`a_{im}` among the gallery :math:`\{a_{jn} : n \in O_j\}` (every instance
    that observes :math:`n`), logits :math:`a_{im}^\top a_{jn}/\tau`, positive :math:`j=i`:
    :math:`\mathcal L = \frac{1}{|P|}\sum_{(m,n,i)\in P} -\log\operatorname{softmax}_j(\ell_{mnij})_i`.
    Both directions of a pair enter, so the loss is symmetric. Computed for all pairs at
    once (no loop over modalities or instances).

    Calibrated (imputed cells as extra pair members): ``mask`` then marks the cells present,
    observed or imputed (imputations detached by the caller), ``observed`` the observed ones
    and ``cell_weights`` ``(B, M)`` each cell's weight (1 observed, the gate's weight imputed).
    A cell's weight scales its whole contribution: as a query row, the row weighs
    :math:`w_{im} w_{in}` and :math:`\mathcal L = \sum_P w\,\ell / \sum_P w`; as a candidate
    (a negative of another row), its logit gains :math:`\log w_{jn}`, so it counts
    :math:`w_{jn} e^{\ell}` in the softmax's denominator
    (:func:`~calmrl.core.reduce.candidate_log_weights`). The loss is continuous in the weights
    and a weight of 0 is a missing cell exactly (a closed gate gives the plain loss). A row
    enters only if one of its two cells is observed. Missing cells are zeroed before any
    arithmetic, so whatever they hold (NaN) never reaches the loss."""
    present = present_cells(A, mask, cell_weights)
    A = zero_absent(A, present)
    B, M, _ = A.shape
    if B < 2 or M < 2:
        return A.sum() * 0.0
    logits = torch.einsum("imd,jnd->mnij", A, A) / tau                   # (M, M, B, B)
    if cell_weights is not None:                                         # candidates j != i weigh w_jn
        eye = torch.eye(B, dtype=torch.bool, device=A.device)
        lw = candidate_log_weights(cell_weights.T.to(logits.dtype))     # (M, B)
        logits = logits + torch.where(eye, torch.zeros((), dtype=logits.dtype, device=A.device),
                                      lw[None, :, None, :])
    gallery_ok = present.T[None, :, None, :]                             # a_jn present
    logits = logits.masked_fill(~gallery_ok, float("-inf"))
    query_ok = present.T[:, None, :] & present.T[None, :, :]             # (M, M, B): both present
    query_ok = query_ok & ~torch.eye(M, dtype=torch.bool, device=A.device)[..., None]
    if observed is not None:
        obs = observed.T.bool()
        query_ok = query_ok & (obs[:, None, :] | obs[None, :, :])        # not two imputed cells
    if not bool(query_ok.any()):
        return A.sum() * 0.0
    rows = logits[query_ok]                                              # (P, B)
    target = torch.arange(B, device=A.device).expand(M, M, B)[query_ok]
    if cell_weights is None:
        return F.cross_entropy(rows, target, label_smoothing=label_smoothing)
    w = (cell_weights.T[:, None, :] * cell_weights.T[None, :, :])[query_ok].to(rows.dtype)
    ce = F.cross_entropy(rows, target, label_smoothing=label_smoothing, reduction="none")
    return weighted_mean(ce, w, A)


def anchor_infonce_loss(A: Tensor, mask: Tensor | None = None, *, anchor: int = 0, tau: float = 0.1,
                        cell_weights: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
    r"""Pairwise InfoNCE of each modality against the anchor modality (ImageBind style):
    :math:`\sum_m \frac{n_m}{\sum n} \mathrm{InfoNCE}(a_{i,\text{anchor}}^\top a_{jm}/\tau)` over the
    :math:`n_m` instances where both are observed.

    Calibrated: as :func:`pairwise_infonce_loss`, ``mask`` marks present cells (observed or
    imputed; the imputed hub where the hub is missing), ``observed`` the observed ones and
    ``cell_weights`` their weights; an instance enters modality ``m``'s contrast if both cells
    are present with weight above 0 and one of them is observed, its two InfoNCE terms weighted
    by :math:`w_{i,\text{anchor}} w_{im}`, and :math:`n_m` becomes the sum of those weights. As
    a candidate of another instance's row, an instance's logit gains
    :math:`\log w_{j,\text{anchor}} w_{jm}` (continuous in the weights; weight 0 is a missing
    cell exactly). Missing cells are zeroed first."""
    present = present_cells(A, mask, cell_weights)
    A = zero_absent(A, present)
    terms, weights = [], []
    total, weight = A.sum() * 0.0, 0.0
    for m in range(A.shape[1]):                                          # loop over modalities
        if m == anchor:
            continue
        both = present[:, anchor] & present[:, m]
        if observed is not None:
            both = both & (observed[:, anchor].bool() | observed[:, m].bool())
        n = int(both.sum())
        if n < 2:
            continue
        logits = A[both, anchor] @ A[both, m].T / tau
        if cell_weights is None:
            total = total + n * info_nce(logits)
            weight += n
            continue
        cw = cell_weights[both].to(logits.dtype)
        eye = torch.eye(n, dtype=torch.bool, device=A.device)
        zero = torch.zeros((), dtype=logits.dtype, device=A.device)
        # an instance j takes part through its pair (anchor, m): as a candidate of another row,
        # in either direction, it weighs w_j,anchor w_jm (weight 0: not in the contrast at all)
        lw = candidate_log_weights(cw[:, anchor] * cw[:, m])[None, :]
        rows = logits + torch.where(eye, zero, lw)
        cols = logits.T + torch.where(eye, zero, lw)
        target = torch.arange(n, device=A.device)
        terms.append(0.5 * (F.cross_entropy(rows, target, reduction="none")
                            + F.cross_entropy(cols, target, reduction="none")))
        weights.append(cw[:, anchor] * cw[:, m])
    if cell_weights is not None:
        if not terms:
            return A.sum() * 0.0
        return weighted_mean(torch.cat(terms), torch.cat(weights), A)
    return total / weight if weight > 0 else total


class LearnableTemperature(nn.Module):
    """A temperature :math:`\tau = e^{\theta}` learned with the encoders (initialised at
    ``tau``), clamped below at ``min_tau`` so the logits stay bounded."""

    def __init__(self, tau: float = 0.07, learnable: bool = True, min_tau: float = 0.01):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)), requires_grad=learnable)
        self.min_tau = min_tau

    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp().clamp_min(self.min_tau)


class GRAMLoss(LearnableTemperature):
    """Module form of :func:`gram_loss` with a learnable temperature."""

    def __init__(self, anchor: int = 0, tau: float = 0.07, label_smoothing: float = 0.1, learnable: bool = True):
        super().__init__(tau, learnable)
        self.anchor, self.label_smoothing = anchor, label_smoothing

    def forward(self, A: Tensor, mask: Tensor | None = None) -> Tensor:
        return gram_loss(A, mask, anchor=self.anchor, tau=self.tau, label_smoothing=self.label_smoothing)


class TriangleLoss(GRAMLoss):
    """Module form of :func:`triangle_loss` with a learnable temperature."""

    def forward(self, A: Tensor, mask: Tensor | None = None) -> Tensor:
        return triangle_loss(A, mask, anchor=self.anchor, tau=self.tau, label_smoothing=self.label_smoothing)


class PairwiseInfoNCELoss(LearnableTemperature):
    """Module form of :func:`pairwise_infonce_loss` with a learnable temperature."""

    def __init__(self, tau: float = 0.07, label_smoothing: float = 0.0, learnable: bool = True):
        super().__init__(tau, learnable)
        self.label_smoothing = label_smoothing

    def forward(self, A: Tensor, mask: Tensor | None = None) -> Tensor:
        return pairwise_infonce_loss(A, mask, tau=self.tau, label_smoothing=self.label_smoothing)
