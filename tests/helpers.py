"""Small shared helpers for the tests (random models and brute-force references)."""

from __future__ import annotations

import torch

from calmrl.core import SharedLatentCalibrator


def random_calibrator(M=3, D=5, k=2, seed=0, dtype=torch.float64, dims=None) -> SharedLatentCalibrator:
    g = torch.Generator().manual_seed(seed)
    cal = SharedLatentCalibrator(M, D, k, dims=dims, dtype=dtype)
    W = torch.randn(M, D, k, generator=g, dtype=dtype)
    cal.W.copy_(W * cal.row_mask[..., None])
    cal.mu.copy_(torch.randn(M, D, generator=g, dtype=dtype) * cal.row_mask)
    cal.sigma2.copy_(0.1 + torch.rand(M, generator=g, dtype=dtype))
    cal.initialized.fill_(True)
    return cal


def sample_from(cal: SharedLatentCalibrator, n: int, seed=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(Z, beta)`` from the calibrator's generative model."""
    g = torch.Generator().manual_seed(seed)
    dt = cal.W.dtype
    beta = torch.randn(n, cal.k, generator=g, dtype=dt)
    eps = torch.randn(n, cal.M, cal.D, generator=g, dtype=dt) * cal.sigma2.sqrt()[None, :, None]
    Z = torch.einsum("mdk,bk->bmd", cal.W, beta) + cal.mu + eps
    return Z * cal.row_mask, beta


def random_mask(n: int, M: int, p_missing: float, seed=2, min_obs=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, M, generator=g) >= p_missing
    # guarantee min_obs observed per row, deterministically
    for j in range(min_obs):
        mask[torch.arange(n), (torch.arange(n) + j) % M] |= mask.sum(1) < min_obs
    return mask


def dense_conditioning(cal: SharedLatentCalibrator, z: torch.Tensor, obs: torch.Tensor):
    """Brute-force posterior of beta from the joint Gaussian of (beta, z_O)."""
    rows = cal.row_mask
    W_blocks = [cal.W[m][rows[m]] for m in range(cal.M) if obs[m]]
    mu_blocks = [cal.mu[m][rows[m]] for m in range(cal.M) if obs[m]]
    s_blocks = [cal.sigma2[m].expand(int(rows[m].sum())) for m in range(cal.M) if obs[m]]
    z_blocks = [z[m][rows[m]] for m in range(cal.M) if obs[m]]
    WO, muO, sO, zO = (torch.cat(x) for x in (W_blocks, mu_blocks, s_blocks, z_blocks))
    C = WO @ WO.T + torch.diag(sO)
    K = WO.T @ torch.linalg.inv(C)
    mean = K @ (zO - muO)
    cov = torch.eye(cal.k, dtype=z.dtype) - K @ WO
    loglik = torch.distributions.MultivariateNormal(muO, C).log_prob(zO)
    return mean, cov, loglik
