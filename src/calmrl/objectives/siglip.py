r"""SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023), over every
pair of modalities, with masks.

Every (query, candidate) couple of a batch is its own binary problem; no softmax over the
batch. For each unordered pair of modalities :math:`m < n`, instance :math:`i` observing
:math:`m` and instance :math:`j` observing :math:`n`:

.. math::
    \ell_{mnij} = -\log\sigma\big(z_{ij}\,(t\,a_{im}^\top a_{jn} + b)\big),\qquad
    z_{ij} = +1 \text{ if } i = j \text{ else } -1,

    \mathcal L = \frac{\sum_{m<n}\sum_{i \in S_m}\sum_{j\in S_n} \ell_{mnij}}{\sum_{m<n} |S_m\cap S_n|}

(:math:`S_m`: the instances observing :math:`m`; the denominator counts the positives, the
authors' division by the batch size when nothing is missing). :math:`t = e^{t'} = 1/\tau` and
:math:`b` are learned, initialised as the authors do (:math:`t' = \log 10`, :math:`b = -10`);
``method.learn_temperature=false`` fixes both.

Calibration plugs in as for the InfoNCE objectives: imputed cells join as detached members
with weight :math:`w` (the gate's), an entry weighs :math:`w_{im} w_{jn}`, enters only if one
of its two cells is observed, and the sum is divided by the positives' weights; a closed gate
gives the plain loss exactly.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import LearnableTemperature
from .base import Objective, register

__all__ = ["siglip_loss", "SigLIPParameters"]


def siglip_loss(A: Tensor, mask: Tensor | None = None, *, tau: Tensor | float = 0.1, bias: Tensor | float = -10.0,
                cell_weights: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
    """The formula of the module docstring, for every pair at once (no loop over modalities or instances)."""
    B, M, _ = A.shape
    present = torch.ones(B, M, dtype=torch.bool, device=A.device) if mask is None else mask.bool()
    if cell_weights is not None:
        present = present & (cell_weights > 0)
    if B < 2 or M < 2:
        return A.sum() * 0.0
    logits = torch.einsum("imd,jnd->mnij", A, A) / tau + bias                      # (M, M, B, B)
    upper = torch.triu(torch.ones(M, M, dtype=torch.bool, device=A.device), 1)
    valid = upper[:, :, None, None] & present.T[:, None, :, None] & present.T[None, :, None, :]
    if observed is not None:       # not two imputed cells
        obs = observed.T.bool()
        valid = valid & (obs[:, None, :, None] | obs[None, :, None, :])
    eye = torch.eye(B, dtype=torch.bool, device=A.device)
    sign = torch.where(eye, 1.0, -1.0).to(logits.dtype)
    terms = -F.logsigmoid(sign * logits)
    if cell_weights is None:
        w = valid.to(logits.dtype)
    else:
        cw = cell_weights.T.to(logits.dtype)
        w = (cw[:, None, :, None] * cw[None, :, None, :]) * valid
    pos = (w * eye).sum()
    if not bool(pos > 0):
        return A.sum() * 0.0
    return (w * terms).sum() / pos


class SigLIPParameters(LearnableTemperature):
    """SigLIP's learned temperature (:math:`\\tau = 1/t`) and bias."""

    def __init__(self, t: float = 10.0, bias: float = -10.0, learnable: bool = True):
        super().__init__(1.0 / t, learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)


class _SigLIP(Objective):
    def make_parameters(self, method):
        return SigLIPParameters(10.0, -10.0, learnable=method.learn_temperature)


def _loss(A, mask, ctx):
    p = ctx.params
    tau, bias = (p.tau, p.bias) if p is not None else (0.1, -10.0)
    if ctx.calibrated:
        return siglip_loss(A, None, tau=tau, bias=bias, cell_weights=ctx.column_weights, observed=mask), {}
    return siglip_loss(A, mask, tau=tau, bias=bias), {}


register(_SigLIP("siglip", "siglip", "SigLIP: a sigmoid loss on every (query, candidate) couple of every "
                 "co-observed pair, learned temperature and bias", temperature="learned", calibration="plug-in",
                 observed_only="siglip", fn=_loss))
