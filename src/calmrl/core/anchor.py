r"""Anchor and anchor-shift diagnostics.

The *anchor* of an instance is the principal left singular vector :math:`u_1` of its
modality matrix. When modalities are missing, aligning the observed columns pulls them to
:math:`u_1(\text{observed})`, which differs from :math:`u_1(\text{all})`: the *anchor shift*.
Calibration fills the missing columns with imputations and measures
:math:`u_1(\text{observed} + \text{imputed})` instead.

Theorem 1 of the CalMRL paper, with :math:`\lambda` the eigenvalues of :math:`ZZ^\top`
(squared singular values of the full matrix), :math:`\lambda_1^{obs}` that of the observed
columns and :math:`\eta^2 = \sum_{m\notin O}\langle u_1^{obs}, z_m\rangle^2`:

.. math::
    \sqrt{2\Big(1-\frac{\lambda_1^{obs}+\eta^2}{\lambda_1}\Big)} \;\le\; \lVert\Delta\rVert
    \;\le\; \frac{\sqrt 2\,\lVert Z_{miss}\rVert_2^{2}}{\lambda_1-\lambda_2},

where :math:`\lVert\Delta\rVert = \sqrt{2(1-\langle u_1,u_1^{obs}\rangle^2)}` is sign invariant.
(:func:`shift_bounds` returns both; the upper bound carries the square of the spectral
norm, which is what makes it dimensionally consistent with a gap of *eigenvalues*;
the tests check both bounds numerically.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .spectral import spectrum

__all__ = ["anchor", "anchor_shift", "anchor_distance", "shift_bounds"]


def anchor(Z: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Principal left singular vector :math:`u_1` per instance of the masked columns, ``(B, d)``,
    unit norm, sign fixed by :math:`u_1^\top\sum_m z_m \ge 0`."""
    _, _, _, u = spectrum(Z, mask)
    return torch.nn.functional.normalize(u, dim=-1)


def _abs_cos(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).sum(-1).abs().clamp(max=1.0)


def anchor_distance(u: Tensor, v: Tensor) -> Tensor:
    r"""Sign-invariant distance :math:`\sqrt{2(1-\langle u,v\rangle^2)}` of unit vectors."""
    return (2.0 * (1.0 - _abs_cos(u, v) ** 2)).clamp_min(0).sqrt()


def anchor_shift(Z_full: Tensor, mask: Tensor, Z_imputed: Tensor | None = None, *,
                 degrees: bool = True) -> Tensor:
    r"""Angle between the anchor of the complete instance and the anchor of its observed
    columns (or, with ``Z_imputed``, observed columns + imputed missing ones), ``(B,)``.

    ``Z_full`` ``(B, M, d)`` holds every modality (known when missingness is simulated);
    ``Z_imputed`` ``(B, M, d)`` supplies the missing columns (observed ones are taken from
    ``Z_full``). Returns :math:`\arccos|\langle u_1, u_1'\rangle|` in degrees (or radians).
    """
    mask = mask.bool()
    u_full = anchor(Z_full)
    if Z_imputed is None:
        u_obs = anchor(Z_full, mask)
    else:
        u_obs = anchor(torch.where(mask[..., None], Z_full, Z_imputed.to(Z_full)))
    ang = torch.arccos(_abs_cos(u_full, u_obs))
    return ang * (180.0 / math.pi) if degrees else ang


def shift_bounds(Z_full: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(lower, distance, upper)`` of Theorem 1 per instance (see module docstring)."""
    mask = mask.bool()
    G = Z_full @ Z_full.transpose(1, 2)
    lam = torch.linalg.eigvalsh(G).flip(-1)                              # descending
    Gobs = G * (mask[:, :, None] & mask[:, None, :])
    lam_obs = torch.linalg.eigvalsh(Gobs).flip(-1)
    u_full, u_obs = anchor(Z_full), anchor(Z_full, mask)
    proj = torch.einsum("bd,bmd->bm", u_obs, Z_full)
    eta2 = (proj ** 2 * (~mask)).sum(-1)
    lower = (2 * (1 - (lam_obs[:, 0] + eta2) / lam[:, 0])).clamp_min(0).sqrt()
    Zm = Z_full * (~mask)[..., None]
    miss_norm2 = torch.linalg.matrix_norm(Zm, ord=2) ** 2
    gap = (lam[:, 0] - lam[:, 1]).clamp_min(torch.finfo(Z_full.dtype).tiny)
    upper = math.sqrt(2) * miss_norm2 / gap
    return lower, anchor_distance(u_full, u_obs), upper
