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


def assert_guard_kept_the_better_run(run_dir) -> str:
    """A guarded calmrl run under ``run_dir`` (``<output_dir>/calmrl``): the run kept is the one
    with the higher validation R@1 (ties keep the calibrated run), and ``checkpoints/kept.ckpt``
    is whole and equal to that run's last checkpoint. Returns the kept run's name."""
    import json
    from pathlib import Path

    from calmrl.train import load_checkpoint

    run_dir = Path(run_dir)
    g = json.loads((run_dir / "results.json").read_text())["guard"]
    kept = max(("calibrated", "observed-only"), key=lambda k: (g["val_R@1"][k], k == "calibrated"))
    assert g["alternative_trained"] and g["kept"] == kept, g
    src = (run_dir / "guard" / "pmrl-drop" if kept == "observed-only" else run_dir) / "checkpoints" / "last.ckpt"
    a, b = load_checkpoint(run_dir / "checkpoints" / "kept.ckpt"), load_checkpoint(src)
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    return kept


# the bundled UCI demo's simulation (the code default simulates nothing: a user's data is used as given);
# tests of calibration on UCI ask for it, and name the method they train (the default is auto)
SIM = ["data.missing.kind=mcar", "data.missing.rate=0.5", "method.name=calmrl"]


def cli_args(out, *sets) -> list[str]:
    """``--set s`` for each setting, then ``--output-dir out``: the tail of a ``calmrl train`` command
    line. A key set twice keeps its last value (the command line itself refuses repeated keys)."""
    last = {s.split("=", 1)[0]: s for s in sets}
    a = []
    for s in last.values():
        a += ["--set", s]
    return a + ["--output-dir", str(out)]
