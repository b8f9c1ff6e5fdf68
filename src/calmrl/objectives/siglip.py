r"""SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023), over every
pair of modalities, with masks.

Every (query, candidate) couple of a batch is its own binary problem; no softmax over the
batch. For each unordered pair of modalities :math:`m < n`, instance :math:`i` observing
:math:`m` and instance :math:`j` observing :math:`n`:

.. math::
    \ell_{mnij} = -\log\sigma\big(z_{ij}\,(t\,a_{im}^\top a_{jn} + b)\big),\qquad
    z_{ij} = +1 \text{ if } i = j \text{ else } -1,

    \mathcal L_{mn} = \frac{1}{N_{mn}} \sum_{i \in S_m}\sum_{j\in S_n} \ell_{mnij},\qquad
    \mathcal L = \frac{\sum_{m<n} \pi_{mn}\, \mathcal L_{mn}}{\sum_{m<n} \pi_{mn}}

(:math:`S_m`: the instances observing :math:`m`). Each pair is normalised by
:math:`N_{mn} = |S_m \cup S_n|`, the rows that observe either side, as open_clip's
``SigLipLoss`` divides by the batch size (on complete data :math:`N_{mn} = B` and
:math:`\mathcal L` is the mean over pairs of the authors' loss). A pair enters with weight
:math:`\pi_{mn} = \min(1, |S_m \cap S_n|)`: **a pair that no instance of the batch observes
together has no couples at all** (no gradient from similarities between modalities never seen
together, as pairwise InfoNCE leaves such a pair out), and the normaliser cannot jump (one
co-observed row among 64 divides the pair's couples by the 65 rows that see either side, not
by its one positive). :math:`t = e^{t'} = 1/\tau` and :math:`b` are learned, initialised as the
authors do (:math:`t' = \log 10`, :math:`b = -10`: ``method.siglip.t_init`` and
``method.siglip.bias_init``); ``method.learn_temperature=false`` fixes both.

Calibration plugs in: imputed cells join as detached members with weight :math:`w` (the
gate's); a couple weighs :math:`w_{im} w_{jn}` and enters only if one of its two cells is
observed, :math:`|S_m \cup S_n|` counts a row :math:`w_{im} + w_{in} - w_{im} w_{in}` and
:math:`|S_m \cap S_n|` the positives' weights, so the loss is continuous in the weights and a
closed gate gives the plain loss exactly. Missing cells are zeroed before any arithmetic.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import LearnableTemperature
from ..core.reduce import present_cells, weighted_mean, zero_absent
from .base import Objective, Setting, register

__all__ = ["siglip_loss", "SigLIPParameters"]


def siglip_loss(A: Tensor, mask: Tensor | None = None, *, tau: Tensor | float = 0.1, bias: Tensor | float = -10.0,
                cell_weights: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
    """The formula of the module docstring, for every pair at once (no loop over modalities or instances)."""
    present = present_cells(A, mask, cell_weights)
    A = zero_absent(A, present)
    B, M, _ = A.shape
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
    terms = torch.where(valid, -F.logsigmoid(sign * logits), torch.zeros((), dtype=logits.dtype, device=A.device))
    cw = present.T.to(logits.dtype) if cell_weights is None else cell_weights.T.to(logits.dtype) * present.T
    w = (cw[:, None, :, None] * cw[None, :, None, :]) * valid                        # (M, M, B, B)
    positives = (w * eye).sum((-2, -1))                                              # (M, M)
    either = (cw[:, None, :] + cw[None, :, :] - cw[:, None, :] * cw[None, :, :]).sum(-1)   # (M, M): |S_m u S_n|
    pair_weight = positives.clamp(max=1.0) * upper
    if not bool(pair_weight.sum() > 0):
        return A.sum() * 0.0
    pair_loss = (w * terms).sum((-2, -1)) / either.clamp_min(1e-12)
    return weighted_mean(pair_loss[upper], pair_weight[upper], A)


class SigLIPParameters(LearnableTemperature):
    """SigLIP's learned temperature (:math:`\\tau = 1/t`) and bias."""

    def __init__(self, t: float = 10.0, bias: float = -10.0, learnable: bool = True):
        super().__init__(1.0 / t, learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)


class _SigLIP(Objective):
    def make_parameters(self, method):
        own = self.own_settings(method)
        return SigLIPParameters(own.t_init, own.bias_init, learnable=method.learn_temperature)


def _loss(A, mask, ctx):
    p = ctx.params
    tau, bias = (p.tau, p.bias) if p is not None else (1.0 / ctx.settings.t_init, ctx.settings.bias_init)
    if ctx.calibrated:
        return siglip_loss(A, None, tau=tau, bias=bias, cell_weights=ctx.column_weights, observed=mask), {}
    return siglip_loss(A, mask, tau=tau, bias=bias), {}


register(_SigLIP("siglip", "siglip", "SigLIP: a sigmoid loss on every (query, candidate) couple of every "
                 "co-observed pair, learned temperature and bias", temperature="learned", calibration="plug-in",
                 observed_only="siglip", fn=_loss,
                 settings=(Setting("t_init", 10.0, "initial inverse temperature t = 1/tau (the authors' 10; learned "
                                   "with the encoders unless method.learn_temperature is false)", lo=1e-3),
                           Setting("bias_init", -10.0, "initial bias b of the logits t*s + b (the authors' -10, which "
                                   "starts the loss near its value at chance for large batches)"))))
