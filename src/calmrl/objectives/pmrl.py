r"""PMRL and its variants: align all observed modalities of an instance at once.

:func:`calmrl.core.pmrl_loss`: for instance :math:`i` with columns :math:`A_i` (``d x M``),
singular values :math:`s`, :math:`\mathcal L_{intra} = -\log\operatorname{softmax}(s/\tau_1)_1`
plus an instance-wise InfoNCE over principal vectors :math:`u_i^\top u_j/\tau_2`. The variants
differ only in what fills a missing column:

- ``calmrl``: the calibrator's imputation :math:`W_m\mathbb E[\beta]+\mu_m` (detached, gated);
  observed columns only during the warm-up;
- ``pmrl-drop``: nothing (observed columns only);
- ``pmrl-meanfill``: the batch's mean direction of the modality;
- ``pmrl-zerofill``: a zero vector (zero singular values enter the softmax);
- ``oracle``: nothing is missing (the data layer hides nothing);
- ``pmrl-truefill``: the true embedding of the hidden input, detached (the upper bound of any imputation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import pmrl_loss
from .base import Objective, register

__all__ = ["pmrl"]


def pmrl(cols, cols_mask, ctx, weights=None):
    m = ctx.method
    out = pmrl_loss(cols, cols_mask, tau1=m.tau1, tau2=m.tau2, inter_weight=m.inter_weight, inter=m.inter,
                    column_weights=weights)
    return out.loss, {"intra": out.intra.detach(), "inter": out.inter.detach()}


def _observed(A, mask, ctx):
    return pmrl(A, mask, ctx)


def _calmrl(A, mask, ctx):
    if ctx.calibrated:          # A holds observed + imputed columns
        return pmrl(A, None, ctx, ctx.column_weights)
    return pmrl(A, mask, ctx)


def _meanfill(A, mask, ctx):
    w = mask.to(A.dtype)[..., None]
    mean_dir = F.normalize((A.detach() * w).sum(0) / w.sum(0).clamp_min(1), dim=-1)   # (M, d)
    return pmrl(torch.where(mask[..., None], A, mean_dir.expand_as(A)), None, ctx)


def _zerofill(A, mask, ctx):
    return pmrl(A * mask[..., None], None, ctx)


register(Objective("calmrl", "pmrl", "PMRL over observed + imputed columns (CalMRL's calibration, gated)",
                   calibration="always", observed_only="pmrl-drop", fn=_calmrl))
register(Objective("pmrl-drop", "pmrl", "PMRL over the observed columns only", fn=_observed))
register(Objective("pmrl-meanfill", "pmrl", "PMRL, missing columns filled with the batch mean direction",
                   fn=_meanfill))
register(Objective("pmrl-zerofill", "pmrl", "PMRL, missing columns left as zero vectors", fn=_zerofill))
register(Objective("oracle", "pmrl", "PMRL with nothing hidden in training (upper bound)", needs="no_missing",
                   candidate=False, fn=_observed))
register(Objective("pmrl-truefill", "pmrl", "PMRL, hidden cells filled by the true embeddings of their inputs "
                   "(upper bound of any imputation)", needs="true_hidden", candidate=False, fn=_observed))
