r"""The masked, weighted pieces every contrastive objective shares, written once.

* :func:`present_cells` -- the cells that take part: observed (``mask``), or imputed with a
  weight above 0 (``cell_weights``).
* :func:`zero_absent` -- missing cells set to 0 *before* any arithmetic, so that whatever a
  missing cell holds (NaN, inf, stale values) never reaches a loss or its gradient.
* :func:`candidate_log_weights` -- :math:`\log w` of each candidate, added to its logit inside
  the log-sum-exp: a candidate of weight :math:`w` counts :math:`w e^{s}` in the partition
  function, so an imputed cell fades out continuously as its gate weight goes to 0
  (:math:`\log 0 = -\infty`: exactly absent), and :math:`w = 1` changes nothing.
* :func:`weighted_mean` -- :math:`\sum_r w_r \ell_r / \sum_r w_r` over the rows of weight
  above 0; a batch with no such row gives 0 with a zero gradient (never NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["present_cells", "zero_absent", "candidate_log_weights", "weighted_mean"]


def present_cells(A: Tensor, mask: Tensor | None, cell_weights: Tensor | None = None) -> Tensor:
    """``(B, M)`` bool: ``mask`` (all ``True`` when ``None``), and with ``cell_weights`` only the
    cells of weight above 0."""
    if mask is None:
        present = torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
    else:
        if mask.shape != A.shape[:2]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(A.shape[:2])}")
        present = mask.bool()
    if cell_weights is not None:
        if cell_weights.shape != A.shape[:2]:
            raise ValueError(f"cell_weights has shape {tuple(cell_weights.shape)}, expected {tuple(A.shape[:2])}")
        present = present & (cell_weights > 0)
    return present


def zero_absent(A: Tensor, present: Tensor) -> Tensor:
    """``A`` with every cell not ``present`` set to 0 (a select, so no NaN of an absent cell
    reaches the values or the gradient)."""
    return torch.where(present[..., None], A, torch.zeros((), dtype=A.dtype, device=A.device))


def candidate_log_weights(w: Tensor) -> Tensor:
    r""":math:`\log w`, :math:`-\infty` where :math:`w = 0`, with no NaN in the gradient."""
    tiny = torch.finfo(w.dtype).tiny if w.is_floating_point() else 1e-38
    w = w.to(torch.get_default_dtype()) if not w.is_floating_point() else w
    return torch.where(w > 0, w.clamp_min(tiny).log(), torch.full_like(w, float("-inf")))


def weighted_mean(terms: Tensor, weights: Tensor | None, like: Tensor) -> Tensor:
    r""":math:`\sum w\ell / \sum w` over the entries of weight above 0 (all weights 1 when
    ``weights`` is ``None``); 0 connected to ``like``'s graph when no entry has weight."""
    if weights is None:
        weights = torch.ones_like(terms)
    weights = weights.to(terms.dtype)
    keep = weights > 0
    if not bool(keep.any()):
        return like.sum() * 0.0
    safe = torch.where(keep, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    return (weights * safe).sum() / weights[keep].sum()
