r"""Spectrum of per-instance modality matrices through their small Gram matrices.

For instance :math:`i` with columns :math:`A_i = [a_{i1}\dots a_{iM}] \in \mathbb R^{d\times M}`
the Gram :math:`G_i = A_i^\top A_i` (``M x M``) has eigenvalues :math:`s_j^2` (squared
singular values) and eigenvectors :math:`v_j` (right singular vectors); the principal
left singular vector is :math:`u_i = A_i v_1 / s_1`. An ``M x M`` ``eigh`` is far cheaper
than an SVD of ``d x M``.

:func:`safe_eigh` has a backward pass that stays finite when eigenvalues coincide
(all vectors equal, padded zero columns): the factor :math:`1/(\lambda_j-\lambda_i)` of
the eigenvector gradient is replaced by :math:`(\lambda_j-\lambda_i)/((\lambda_j-\lambda_i)^2+\delta^2)`
(Lorentzian broadening), which equals the exact gradient up to a relative
:math:`\delta^2/(\lambda_j-\lambda_i)^2` wherever the spectrum is separated.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _SafeEigh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, G: Tensor):
        evals, evecs = torch.linalg.eigh(G)
        ctx.save_for_backward(evals, evecs)
        return evals, evecs

    @staticmethod
    def backward(ctx, g_evals, g_evecs):
        evals, V = ctx.saved_tensors
        inner = torch.zeros_like(V)
        if g_evecs is not None:
            E = evals.unsqueeze(-2) - evals.unsqueeze(-1)        # E_ij = l_j - l_i
            scale = evals.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
            delta2 = (torch.finfo(evals.dtype).eps ** 0.5 * scale) ** 2
            F = E / (E * E + delta2)
            F.diagonal(dim1=-2, dim2=-1).zero_()
            inner = F * (V.transpose(-2, -1) @ g_evecs)
        if g_evals is not None:
            inner = inner + torch.diag_embed(g_evals)
        inner = 0.5 * (inner + inner.transpose(-2, -1))
        return V @ inner @ V.transpose(-2, -1)


def safe_eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` (ascending) with a backward pass that is finite for repeated eigenvalues."""
    return _SafeEigh.apply(G)


def spectrum(A: Tensor, mask: Tensor | None = None, *, eps: float = 1e-12
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Singular values and the principal left singular vector of each instance's observed columns.

    Returns ``(s, valid, v1, u)``: ``s`` ``(B, M)`` singular values in descending order,
    ``valid`` ``(B, M)`` marks the first ``|O_i|`` of them (the padded zero columns add
    zero eigenvalues, which are the *last* ones and are excluded), ``v1`` ``(B, M)``,
    ``u`` ``(B, d)`` the principal left singular vector, sign fixed so that
    :math:`u_i^\top\sum_m a_{im} \ge 0` (equivalently :math:`\sum_m v_{1,m}\ge 0`).
    """
    B, M, _ = A.shape
    if mask is not None and bool(mask.all()):
        mask = None                                                 # fast path: no masking copies
    Am = A if mask is None else A * mask.to(A.dtype).unsqueeze(-1)
    evals, evecs = safe_eigh(Am @ Am.transpose(-2, -1))
    evals, evecs = evals.flip(-1), evecs.flip(-1)                  # descending
    s = evals.clamp_min(eps).sqrt()
    if mask is None:
        valid = torch.ones(B, M, dtype=torch.bool, device=A.device)
        v1 = evecs[..., 0]
    else:
        valid = torch.arange(M, device=A.device)[None, :] < mask.sum(-1, keepdim=True)
        v1 = evecs[..., 0] * mask.to(A.dtype)
    sign = torch.where(v1.sum(-1, keepdim=True) < 0, -1.0, 1.0).to(A.dtype).detach()
    v1 = v1 * sign
    u = torch.einsum("bm,bmd->bd", v1, Am) / s[:, :1]
    return s, valid, v1, u
