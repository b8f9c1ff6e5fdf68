"""Objectives by name, for the trainer: :func:`alignment_loss` looks the objective up in the
registry (:mod:`calmrl.objectives`, where each is declared and documented once) and
:func:`fill_missing` builds CalMRL's calibrated matrix (observed cells, imputed ones)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import objectives
from ..core import SharedLatentCalibrator
from ..core.calibrator import Posterior
from .config import MethodConfig, calibrates

__all__ = ["alignment_loss", "fill_missing"]


def fill_missing(A: Tensor, mask: Tensor, calibrator: SharedLatentCalibrator, cfg: MethodConfig,
                 posterior: Posterior | None = None) -> tuple[Tensor, Tensor | None]:
    """CalMRL's calibrated matrix: observed columns from ``A``, missing ones imputed.

    Returns ``(filled, column_weights)``. Without ``impute_grad`` the imputations are
    constants (computed from ``A.detach()``); with it, gradients flow through the
    posterior mean (linear in the observed columns) back into the observed encoders.
    A ``posterior`` already computed for this batch (from ``A``, or ``A.detach()`` without
    ``impute_grad``) is reused instead of a second E-step.
    """
    src = A if cfg.impute_grad else A.detach()
    dtype = calibrator.W.dtype
    if posterior is None:
        posterior = calibrator.posterior(src.to(dtype), mask, validate=False)
    # observed cells are A itself (with its gradient); only the missing cells are computed
    imp = calibrator.impute(A.to(dtype), mask, posterior, validate=False, observed_too=False)
    filled = imp.filled
    if cfg.renormalize_imputed:
        filled = torch.where(mask[..., None], filled, F.normalize(filled, dim=-1))
    filled = filled.to(A.dtype)
    weights = None
    if cfg.confidence_weighting:
        weights = torch.where(mask, torch.ones_like(imp.confidence), imp.confidence).to(A.dtype).detach()
    return filled, weights


def alignment_loss(A: Tensor, mask: Tensor, cfg: MethodConfig, *, anchor: int = 0, calibrated: bool = False,
                   column_weights: Tensor | None = None, params: nn.Module | None = None,
                   tau: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one batch for objective ``cfg.name`` (:mod:`calmrl.objectives`); returns ``(loss, logs)``.

    ``calibrated=True``: ``A`` already holds the imputed cells (as the trainer fills them, per
    process before the all-gather; :func:`fill_missing`), ``mask`` marks the observed ones and
    ``column_weights`` the gate's weights. ``params``: the objective's own parameters
    (:meth:`~calmrl.objectives.Objective.make_parameters`: a learned temperature, SigLIP's bias);
    ``tau`` a fixed temperature instead (default ``cfg.tau_init``)."""
    obj = objectives.get(cfg.name)
    if params is None and tau is not None:
        params = _Fixed(tau)
    ctx = objectives.LossContext(cfg, anchor=anchor, calibrated=calibrated and calibrates(cfg),
                                 column_weights=column_weights, params=params)
    return obj.loss(A, mask, ctx)


class _Fixed(nn.Module):
    def __init__(self, tau):
        super().__init__()
        self.tau = tau
