"""The training objectives selectable by name (``method.name``).

=================  ===========================================================================
``calmrl``         PMRL over observed + imputed columns; imputations
                   :math:`W_m\\mathbb E[\\beta]+\\mu_m` from the shared-latent calibrator
                   (observed-only PMRL during the warm-up epochs)
``pmrl-drop``      PMRL over the observed columns only (the uncalibrated baseline)
``pmrl-meanfill``  missing columns filled with the batch mean direction of that modality
``pmrl-zerofill``  missing columns left as zero vectors (zero singular values enter the softmax)
``gram``           GRAM (authors' form): volume contrast of the anchor modality against the other
                   observed modalities, both directions, learnable temperature, label smoothing
``triangle``       TRIANGLE: the same with the area spanned by the tips of the vectors
``pairwise-infonce`` symmetric InfoNCE over every co-observed pair of modalities (CLIP / VAST); with
                   ``method.calibrate`` imputed cells join as detached extra pair members
``anchor-infonce`` pairwise InfoNCE of each modality against the anchor modality (ImageBind); with
                   ``method.calibrate`` the same, the imputed hub where the hub is missing
``oracle``         PMRL with no missingness in training (upper bound; set by the data layer)
``pmrl-truefill``  PMRL with the simulator's hidden cells filled by the true embeddings of their
                   inputs, detached (the upper bound of any imputation: instance information
                   the observed cells lack, without gradients into the hidden encoders)
=================  ===========================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import (SharedLatentCalibrator, anchor_infonce_loss, gram_loss, pairwise_infonce_loss, pmrl_loss,
                    triangle_loss)
from ..core.calibrator import Posterior
from .config import CALIBRATABLE, MethodConfig

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


def alignment_loss(A: Tensor, mask: Tensor, cfg: MethodConfig, *, anchor: int = 0,
                   calibrator: SharedLatentCalibrator | None = None, calibrated: bool = False,
                   column_weights: Tensor | None = None, tau: Tensor | float | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one batch for method ``cfg.name``; returns ``(loss, logs)``.

    For ``calmrl`` with ``calibrated=True``: given a ``calibrator``, the missing columns of
    ``A`` are imputed here; without one, ``A`` is taken as already filled (as the trainer
    does, per process before the all-gather) and ``column_weights`` are optional. ``tau``:
    the (learnable) temperature of gram / triangle / pairwise-infonce (default ``cfg.tau_init``)."""
    name = cfg.name

    def pmrl(cols: Tensor, cols_mask: Tensor | None, weights: Tensor | None = None):
        out = pmrl_loss(cols, cols_mask, tau1=cfg.tau1, tau2=cfg.tau2, inter_weight=cfg.inter_weight,
                        inter=cfg.inter, column_weights=weights)
        return out.loss, {"intra": out.intra.detach(), "inter": out.inter.detach()}

    plugged = calibrated and name in CALIBRATABLE and cfg.calibrate
    if (name == "calmrl" and calibrated or plugged) and calibrator is not None:
        A, column_weights = fill_missing(A, mask, calibrator, cfg)
    if name in ("pmrl-drop", "oracle", "pmrl-truefill") or (name == "calmrl" and not calibrated):
        return pmrl(A, mask)
    if name == "calmrl":
        return pmrl(A, None, column_weights)
    if name == "pmrl-meanfill":
        w = mask.to(A.dtype)[..., None]
        mean_dir = F.normalize((A.detach() * w).sum(0) / w.sum(0).clamp_min(1), dim=-1)   # (M, d)
        return pmrl(torch.where(mask[..., None], A, mean_dir.expand_as(A)), None)
    if name == "pmrl-zerofill":
        return pmrl(A * mask[..., None], None)
    tau = cfg.tau_init if tau is None else tau
    if name == "gram":
        return gram_loss(A, mask, anchor=anchor, tau=tau, label_smoothing=cfg.label_smoothing), {}
    if name == "triangle":
        return triangle_loss(A, mask, anchor=anchor, tau=tau, label_smoothing=cfg.label_smoothing), {}
    if plugged:    # imputed cells as extra pair members (A already filled, imputations detached)
        kw = {"mask": None, "cell_weights": column_weights, "observed": mask}
    else:
        kw = {"mask": mask}
    if name == "pairwise-infonce":
        return pairwise_infonce_loss(A, tau=tau, **kw), {}
    if name == "anchor-infonce":
        return anchor_infonce_loss(A, anchor=anchor, tau=cfg.tau2, **kw), {}
    raise ValueError(f"unknown method '{name}'")
