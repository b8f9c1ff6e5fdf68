r"""Multimodal VAE completion backends on embeddings: MVAE (product of Gaussian experts with a
prior expert) and MoPoE (mixture over subsets of products of experts).

Every modality has an encoder (expert) :math:`q_m(\beta\mid z_m)=\mathcal N(\mu_m(z_m),\operatorname{diag}\lambda_m(z_m)^{-1})`
and a decoder :math:`p(z_m\mid\beta)=\mathcal N(g_m(\beta), s_m^2 I)`, :math:`\beta\in\mathbb R^k`,
:math:`p(\beta)=\mathcal N(0,I)`. The product of the prior and the experts of a subset
:math:`S` of modalities is Gaussian,

.. math:: \Lambda_S = 1+\sum_{m\in S}\lambda_m,\qquad \mu_S = \Lambda_S^{-1}\sum_{m\in S}\lambda_m\mu_m
          \quad(\text{elementwise}).

*MVAE* (Wu & Goodman, 2018) takes :math:`q(\beta\mid z_O)` = the product over the observed
set :math:`O`; *MoPoE* (Sutter et al., 2021) the uniform mixture over the non-empty subsets
:math:`S\subseteq O` of their products. Training maximises the ELBO on embeddings detached
from the encoders of the alignment model,

.. math:: \mathcal L = \mathbb E_S\Big[\mathbb E_{q_S}\sum_{m\in O}\log p(z_m\mid\beta)
          - \mathrm{KL}(q_S\,\|\,p)\Big],

with :math:`S` drawn per instance: MVAE hides each observed cell with probability
``hide_rate`` (at least one stays: the sub-sampled ELBOs of the MVAE paper), MoPoE keeps each
observed cell with probability 1/2 (at least one stays; an unbiased estimate of the mixture's
ELBO up to the non-uniformity of that draw). A missing modality is imputed as the decoded
posterior mean, :math:`\hat z_m = g_m(\mu_O)` (MVAE) or the mixture mean
:math:`|\mathcal S_O|^{-1}\sum_{S\subseteq O} g_m(\mu_S)` (MoPoE, every subset enumerated).

Like every completion backend, an imputation is a function of the observed cells: it cannot
add instance information they lack. These are the peer methods' posteriors, in the same
interface as :class:`~calmrl.core.MaskedCompleter` (``forward``, ``impute``, ``completion_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .completion import hide_cells

__all__ = ["MultimodalVAE", "poe"]


def poe(mu: Tensor, logprec: Tensor, subset: Tensor) -> tuple[Tensor, Tensor]:
    """Product of the prior expert and the experts in ``subset``.

    ``mu``, ``logprec``: ``(N, M, k)`` expert means and log precisions; ``subset``: ``(N, M)``
    or ``(N, S, M)`` 0/1 (which experts take part). Returns ``(mean, precision)`` of shape
    ``(N, k)`` or ``(N, S, k)``."""
    lam = logprec.exp()
    w = subset.to(mu.dtype)
    if w.dim() == 2:
        prec = 1.0 + torch.einsum("nm,nmk->nk", w, lam)
        return torch.einsum("nm,nmk->nk", w, lam * mu) / prec, prec
    prec = 1.0 + torch.einsum("nsm,nmk->nsk", w, lam)
    return torch.einsum("nsm,nmk->nsk", w, lam * mu) / prec, prec


class _PerModality(nn.Module):
    """``M`` independent two-layer MLPs applied at once: ``(N, M, a) -> (N, M, b)``."""

    def __init__(self, M: int, a: int, hidden: int, b: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(M, a, hidden) / math.sqrt(a))
        self.b1 = nn.Parameter(torch.zeros(M, hidden))
        self.w2 = nn.Parameter(torch.randn(M, hidden, b) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(M, b))

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(torch.einsum("...ma,mah->...mh", x, self.w1) + self.b1)
        return torch.einsum("...mh,mhb->...mb", h, self.w2) + self.b2


class MultimodalVAE(nn.Module):
    """``kind="mvae"`` or ``"mopoe"`` (module docstring). ``forward(Z, mask) -> (N, M, d)``:
    every modality decoded from the posterior of the observed cells."""

    def __init__(self, M: int, d: int, k: int, hidden: int = 256, kind: str = "mvae", hide_rate: float = 0.5,
                 max_subsets: int = 1024):
        super().__init__()
        if kind not in ("mvae", "mopoe"):
            raise ValueError(f"unknown multimodal VAE '{kind}'; valid: mvae, mopoe")
        if not 0.0 < hide_rate < 1.0:
            raise ValueError(f"hide_rate must be in (0, 1), got {hide_rate}")
        if kind == "mopoe" and 2 ** M - 1 > max_subsets:
            raise ValueError(f"mopoe enumerates the 2^M - 1 = {2 ** M - 1} subsets of {M} modalities; at most "
                             f"{max_subsets} are allowed (use mvae)")
        self.M, self.d, self.k, self.kind, self.hide_rate = M, d, k, kind, hide_rate
        self.enc = _PerModality(M, d, hidden, 2 * k)
        self.dec = _PerModality(M, k, hidden, d)
        self.log_s2 = nn.Parameter(torch.full((M,), math.log(1.0 / d)))
        codes = torch.arange(1, 2 ** M) if kind == "mopoe" else torch.zeros(0, dtype=torch.long)
        self.register_buffer("subsets", ((codes[:, None] >> torch.arange(M)) & 1).bool(), persistent=False)

    def experts(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        out = self.enc(Z)
        mu, logprec = out[..., : self.k], out[..., self.k:].clamp(-10.0, 10.0)
        return mu, logprec

    def decode(self, beta: Tensor) -> Tensor:
        """``(..., k)`` latents to ``(..., M, d)`` decoder means."""
        return self.dec(beta.unsqueeze(-2).expand(*beta.shape[:-1], self.M, self.k))

    def forward(self, Z: Tensor, mask: Tensor, chunk: int = 256) -> Tensor:
        mask = mask.bool()
        mu, logprec = self.experts(Z)
        if self.kind == "mvae":
            m, _ = poe(mu, logprec, mask)
            return self.decode(m)
        outs = []
        for s in range(0, Z.shape[0], chunk):          # (chunk, 2^M - 1, M, d) at a time
            sl = slice(s, s + chunk)
            valid = ~(self.subsets[None] & ~mask[sl, None]).any(-1)             # (n, S): S within O
            sub = self.subsets[None].expand(valid.shape[0], -1, -1)
            m, _ = poe(mu[sl], logprec[sl], sub)                                  # (n, S, k)
            dec = self.decode(m)                                                  # (n, S, M, d)
            w = valid.to(dec.dtype) / valid.sum(1, keepdim=True).clamp_min(1)
            outs.append(torch.einsum("ns,nsmd->nmd", w, dec))
        return torch.cat(outs)

    @torch.no_grad()
    def impute(self, Z: Tensor, mask: Tensor) -> Tensor:
        """Observed cells kept, missing cells predicted (no gradient)."""
        return torch.where(mask[..., None], Z, self(Z, mask).to(Z.dtype))

    def completion_loss(self, Z: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative ELBO per instance (module docstring) on ``Z`` (detach it first), divided by
        the embedding width so that its scale does not depend on ``d``."""
        mask = mask.bool()
        subset = mask & ~hide_cells(mask, self.hide_rate if self.kind == "mvae" else 0.5, generator)
        mu, logprec = self.experts(Z)
        m, prec = poe(mu, logprec, subset)
        eps = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        beta = m + eps * prec.rsqrt()
        rec = self.decode(beta)
        log_s2 = self.log_s2.clamp_min(math.log(1e-3 / self.d))   # a floor: no collapse onto the training cells
        nll = 0.5 * (((rec - Z) ** 2).sum(-1) / log_s2.exp() + self.d * log_s2)         # (N, M)
        nll = (nll * mask).sum(1)
        kl = 0.5 * (1.0 / prec + m ** 2 - 1.0 + prec.log()).sum(-1)
        return (nll + kl).mean() / self.d
