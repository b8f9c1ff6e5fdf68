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


def _broadened_inverse_gaps(evals: Tensor) -> Tensor:
    r""":math:`F_{ij} = (\lambda_j-\lambda_i)/((\lambda_j-\lambda_i)^2+\delta^2)`, zero diagonal: the
    :math:`1/(\lambda_j-\lambda_i)` of the eigenvector gradient, finite for repeated eigenvalues
    (:math:`\delta = \sqrt{\epsilon_{mach}}\max(1, |\lambda|_{max})`)."""
    E = evals.unsqueeze(-2) - evals.unsqueeze(-1)                # E_ij = l_j - l_i
    scale = evals.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
    delta2 = (torch.finfo(evals.dtype).eps ** 0.5 * scale) ** 2
    F = E / (E * E + delta2)
    F.diagonal(dim1=-2, dim2=-1).zero_()
    return F


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
            inner = _broadened_inverse_gaps(evals) * (V.transpose(-2, -1) @ g_evecs)
        if g_evals is not None:
            inner = inner + torch.diag_embed(g_evals)
        inner = 0.5 * (inner + inner.transpose(-2, -1))
        return V @ inner @ V.transpose(-2, -1)


def safe_eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` (ascending) with a backward pass that is finite for repeated eigenvalues."""
    return _SafeEigh.apply(G)


class _PrincipalSpectrum(torch.autograd.Function):
    r"""Eigenvalues of the masked Gram and the principal left singular vector, with one
    hand-written backward pass.

    Forward: :math:`G = (AA^\top)\circ ww^\top` (``w`` the 0/1 column mask),
    :math:`G = V\Lambda V^\top` (descending), :math:`v_1 \leftarrow \pm w\circ v_1` with the sign
    making :math:`\sum_m v_{1m}\ge 0`, :math:`u = A^\top v_1/s_1`, :math:`s_1=\sqrt{\lambda_1}`.

    Backward (:math:`\bar x` the incoming gradient of :math:`x`):
    :math:`\bar c = A\bar u`, :math:`\bar v_1 \mathrel{+}= \bar c/s_1`,
    :math:`\bar\lambda_1 \mathrel{+}= -\tfrac{v_1^\top\bar c}{2 s_1^3}`,
    :math:`\bar G = V\,\mathrm{sym}(\mathrm{diag}(\bar\lambda) + F\circ V^\top\bar V)\,V^\top`
    with the broadened :math:`F` of :func:`safe_eigh` (only the first column of :math:`\bar V`
    is non-zero), and :math:`\bar A = (v_1/s_1)\,\bar u^\top + 2(\bar G\circ ww^\top)A`.
    Equal to autograd through :func:`safe_eigh` (tested), without its dozen intermediate
    ``(B, M, d)`` tensors; see ``benchmarks/bench_core.py``.
    """

    @staticmethod
    def forward(ctx, A: Tensor, w: Tensor, eps: float):
        G = (A @ A.transpose(-2, -1)) * (w.unsqueeze(-1) * w.unsqueeze(-2))
        evals, V = torch.linalg.eigh(G)
        evals, V = evals.flip(-1), V.flip(-1)                          # descending
        sign = torch.where((V[..., 0] * w).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(A.dtype)
        v1 = V[..., 0] * w * sign
        s1 = evals[..., :1].clamp_min(eps).sqrt()
        u = torch.einsum("bm,bmd->bd", v1 / s1, A)
        ctx.save_for_backward(A, w, evals, V, sign, s1)
        ctx.eps = eps
        return evals, v1, u

    @staticmethod
    def backward(ctx, g_evals, g_v1, g_u):
        A, w, evals, V, sign, s1 = ctx.saved_tensors
        v1 = V[..., 0] * w * sign
        g_evals = torch.zeros_like(evals) if g_evals is None else g_evals.clone()
        g_vcol = torch.zeros_like(v1) if g_v1 is None else g_v1 * w * sign   # d loss / d V[..., 0]
        outer = None
        if g_u is not None:
            gc = (A * g_u.unsqueeze(-2)).sum(-1)                              # A u_bar, (B, M)
            g_vcol = g_vcol + gc * w * sign / s1
            g_s1 = -(gc * v1).sum(-1, keepdim=True) / s1 ** 2
            g_evals[..., :1] += torch.where(evals[..., :1] > ctx.eps, 0.5 * g_s1 / s1, torch.zeros_like(s1))
            outer = (v1 / s1).unsqueeze(-1) * g_u.unsqueeze(-2)
        f = _broadened_inverse_gaps(evals)[..., :, 0]                          # column 0 of F
        inner = torch.diag_embed(g_evals)
        inner[..., :, 0] += f * (V * g_vcol.unsqueeze(-1)).sum(-2)            # F o (V^T V_bar), column 0
        inner = 0.5 * (inner + inner.transpose(-2, -1))
        gG = V @ inner @ V.transpose(-2, -1) * (w.unsqueeze(-1) * w.unsqueeze(-2))
        gA = 2.0 * (gG @ A) if outer is None else torch.baddbmm(outer, gG, A, alpha=2.0)
        return gA, None, None


def spectrum(A: Tensor, mask: Tensor | None = None, *, eps: float = 1e-12
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Singular values and the principal left singular vector of each instance's observed columns.

    Returns ``(s, valid, v1, u)``: ``s`` ``(B, M)`` singular values in descending order,
    ``valid`` ``(B, M)`` marks the first ``|O_i|`` of them (the masked columns add zero
    eigenvalues, which are the *last* ones and are excluded), ``v1`` ``(B, M)`` (zero on
    masked columns), ``u`` ``(B, d)`` the principal left singular vector, sign fixed so that
    :math:`u_i^\top\sum_m a_{im} \ge 0` (equivalently :math:`\sum_m v_{1,m}\ge 0`).
    Computed in at least float32 (half-precision inputs are promoted, autocast is off).
    """
    B, M, _ = A.shape
    work = A.float() if A.dtype in (torch.float16, torch.bfloat16) else A
    w = (torch.ones(B, M, dtype=work.dtype, device=A.device) if mask is None
         else mask.to(device=A.device, dtype=work.dtype))
    with torch.autocast(device_type=A.device.type, enabled=False):
        evals, v1, u = _PrincipalSpectrum.apply(work, w, eps)
    s = evals.clamp_min(eps).sqrt()
    valid = torch.arange(M, device=A.device)[None, :] < w.sum(-1, keepdim=True)
    return s, valid, v1, u
