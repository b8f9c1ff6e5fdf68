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
  other modalities.
* :func:`anchor_infonce_loss` -- CLIP/ImageBind style pairwise InfoNCE of every modality
  against one anchor modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spectral import spectrum

__all__ = ["PMRLOutput", "pmrl_loss", "gram_volume_matrix", "gram_loss", "anchor_infonce_loss",
           "info_nce", "PMRLLoss", "GRAMLoss", "AnchorInfoNCELoss"]


def _full_mask(A: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
    if mask.shape != A.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(A.shape[:2])}")
    return mask.bool()


def info_nce(logits: Tensor, symmetric: bool = True) -> Tensor:
    r"""InfoNCE with positives on the diagonal: :math:`-\frac1B\sum_i\log\operatorname{softmax}(\ell_{i\cdot})_i`
    (averaged with the column direction when ``symmetric``)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
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
    to the positive side of its own anchor. ``column_weights`` ``(B, M)`` scales columns
    before the decomposition (e.g. imputation confidence).
    """
    given = mask
    mask = _full_mask(A, mask)
    if column_weights is not None:
        A = A * column_weights.to(A.dtype).unsqueeze(-1)
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
            w = mask.reshape(-1).to(ce.dtype)
            inter_loss = (ce * w).sum() / w.sum().clamp_min(1)
    else:
        inter_loss = A.new_zeros(())
    return PMRLOutput(intra + inter_weight * inter_loss, intra, inter_loss, s, u)


def gram_volume_matrix(A: Tensor, mask: Tensor | None = None, anchor: int = 0) -> Tensor:
    r"""Volumes :math:`V_{ij}=\sqrt{\det G_{ij}}` of the parallelotope spanned by the anchor
    vector of instance :math:`i` and the observed non-anchor vectors of instance :math:`j`.

    Excluded columns are replaced by unit rows/columns of :math:`G_{ij}`, which leaves the
    determinant of the remaining block unchanged. Returns ``(B, B)``.
    """
    mask = _full_mask(A, mask)
    B, M, _ = A.shape
    others = mask.clone()
    others[:, anchor] = False
    Am = A * others.to(A.dtype).unsqueeze(-1)
    Gj = Am @ Am.transpose(1, 2)                                        # (B, M, M)
    cross = torch.einsum("id,jmd->ijm", A[:, anchor], Am)               # (B, B, M)
    G = Gj.unsqueeze(0).expand(B, B, M, M).clone()
    G[..., anchor, :] = cross
    G[..., :, anchor] = cross
    G[..., anchor, anchor] = (A[:, anchor] ** 2).sum(-1)[:, None]
    pad = (~others).to(A.dtype)
    pad[:, anchor] = 0.0
    G = G + torch.diag_embed(pad).unsqueeze(0)
    det = torch.linalg.det(G)
    return det.clamp_min(1e-12).sqrt()


def gram_loss(A: Tensor, mask: Tensor | None = None, *, anchor: int = 0, tau: float = 0.1) -> Tensor:
    r"""GRAM contrastive loss: logits :math:`-V_{ij}/\tau`, positives :math:`i=j`, over the
    instances whose anchor is observed (both directions)."""
    mask = _full_mask(A, mask)
    keep = mask[:, anchor] & (mask.sum(-1) >= 2)
    if int(keep.sum()) < 2:
        return A.sum() * 0.0
    A, mask = A[keep], mask[keep]
    return info_nce(-gram_volume_matrix(A, mask, anchor) / tau, symmetric=True)


def anchor_infonce_loss(A: Tensor, mask: Tensor | None = None, *, anchor: int = 0, tau: float = 0.1) -> Tensor:
    r"""Pairwise InfoNCE of each modality against the anchor modality (ImageBind style):
    :math:`\sum_m \frac{n_m}{\sum n} \mathrm{InfoNCE}(a_{i,\text{anchor}}^\top a_{jm}/\tau)` over the
    :math:`n_m` instances where both are observed."""
    mask = _full_mask(A, mask)
    total, weight = A.sum() * 0.0, 0
    for m in range(A.shape[1]):                                          # loop over modalities
        if m == anchor:
            continue
        both = mask[:, anchor] & mask[:, m]
        n = int(both.sum())
        if n < 2:
            continue
        logits = A[both, anchor] @ A[both, m].T / tau
        total = total + n * info_nce(logits)
        weight += n
    return total / max(weight, 1)


class PMRLLoss(nn.Module):
    """Module form of :func:`pmrl_loss`; returns the :class:`PMRLOutput`."""

    def __init__(self, tau1: float = 0.05, tau2: float = 0.1, inter_weight: float = 1.0, inter: str = "modality"):
        super().__init__()
        self.tau1, self.tau2, self.inter_weight, self.inter = tau1, tau2, inter_weight, inter

    def forward(self, A: Tensor, mask: Tensor | None = None, column_weights: Tensor | None = None) -> PMRLOutput:
        return pmrl_loss(A, mask, tau1=self.tau1, tau2=self.tau2, inter_weight=self.inter_weight, inter=self.inter,
                         column_weights=column_weights)


class GRAMLoss(nn.Module):
    """Module form of :func:`gram_loss`."""

    def __init__(self, anchor: int = 0, tau: float = 0.1):
        super().__init__()
        self.anchor, self.tau = anchor, tau

    def forward(self, A: Tensor, mask: Tensor | None = None) -> Tensor:
        return gram_loss(A, mask, anchor=self.anchor, tau=self.tau)


class AnchorInfoNCELoss(nn.Module):
    """Module form of :func:`anchor_infonce_loss`."""

    def __init__(self, anchor: int = 0, tau: float = 0.1):
        super().__init__()
        self.anchor, self.tau = anchor, tau

    def forward(self, A: Tensor, mask: Tensor | None = None) -> Tensor:
        return anchor_infonce_loss(A, mask, anchor=self.anchor, tau=self.tau)
