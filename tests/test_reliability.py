"""Faults that happen to real runs: numerical edge cases, bad data, a run killed with SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.core import SharedLatentCalibrator
from calmrl.train import load_config, prepare_data
from helpers import SIM, random_calibrator, random_mask, sample_from


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 4), D=st.integers(1, 8), k=st.integers(1, 5), p=st.floats(0.0, 0.8),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_posterior_covariances_spd_and_outputs_finite(M, D, k, p, scale, seed):
    cal = random_calibrator(M=M, D=D, k=k, seed=seed)
    cal.W.mul_(scale)
    Z, _ = sample_from(cal, 40, seed=seed + 1)
    mask = random_mask(40, M, p, seed=seed + 2)
    post = cal.posterior(Z, mask)
    torch.testing.assert_close(post.cov, post.cov.transpose(1, 2))
    assert (torch.linalg.eigvalsh(post.cov) > 0).all()
    imp = cal.impute(Z, mask)
    assert torch.isfinite(imp.values).all() and torch.isfinite(imp.predictive_var).all()
    assert (imp.predictive_var >= cal.sigma2.min() * (1 - 1e-9)).all()
    stats = cal.sufficient_stats(Z, mask)
    cal.m_step(stats)
    assert torch.isfinite(cal.W).all() and (cal.sigma2 > 0).all()


def test_singular_m_step_normal_matrix_is_guarded_by_jitter():
    from calmrl.core import SufficientStats
    cal = SharedLatentCalibrator(2, 3, 2, dtype=torch.float64)
    st_ = SufficientStats.zeros(2, 3, 2, dtype=torch.float64)
    st_.n.fill_(5.0)                 # sum E[bb^T] = 0: the (k+1)x(k+1) normal matrix is singular
    st_.sz.fill_(1.0)
    st_.szz.fill_(10.0)
    L, info = torch.linalg.cholesky_ex(torch.zeros(2, 2, dtype=torch.float64))
    assert int(info) > 0             # a plain Cholesky fails here
    cal.m_step(st_)
    assert torch.isfinite(cal.W).all() and torch.isfinite(cal.mu).all() and (cal.sigma2 > 0).all()
    torch.testing.assert_close(cal.mu, torch.full((2, 3), 0.2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_corrupt_parameters_are_reported():
    cal = random_calibrator()
    cal.W[0, 0, 0] = float("nan")
    Z, _ = sample_from(random_calibrator(), 5)
    with pytest.raises(FloatingPointError, match="posterior precision contains NaN"):
        cal.posterior(Z)


def test_modality_never_observed_in_training_is_an_error():
    cfg = load_config(None, SIM + ["data.missing.kind=paired", "data.missing.subsets=[[pixel, fourier]]",
                             "data.missing.complete_fraction=0.0", "data.views=[pixel, fourier, zernike]"])
    with pytest.raises(ValueError, match=r"\['zernike'\] are never observed"):
        prepare_data(cfg)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path, capfd, caplog):
    """A real subprocess is killed with SIGKILL after some epochs; `--resume` finishes the run
    and the final metrics equal those of an uninterrupted run with the same seed."""
    # no validation during the run: checkpoints must come from the end of every training epoch
    sets = ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=12", "calibrator.warmup_epochs=2",
            "calibrator.em_iters=3", "train.progress=false", "train.check_val_every=50", "train.threads=1",
            "data.views=[fourier, karhunen, zernike]"]

    def cmd(out, resume=False):
        c = [sys.executable, "-m", "calmrl.cli", "train", "--method", "calmrl"]
        for s in sets + [f"output_dir={out}"]:
            c += ["--set", s]
        return c + (["--resume"] if resume else [])

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    from calmrl.cli import main
    assert main(["train", "--method", "calmrl"] + sum((["--set", s] for s in sets + [f"output_dir={tmp_path / 'ref'}"]),
                                                      [])) == 0      # the uninterrupted reference, in-process

    out = tmp_path / "killed"
    ckpt = out / "calmrl" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # wait until a random epoch has been checkpointed, then a random fraction of an epoch more,
    # then kill without warning (mid-epoch or mid-checkpoint-write, wherever it lands)
    rng = random.Random()
    target, extra = rng.randint(2, 7), rng.random()
    while time.time() < deadline and proc.poll() is None:
        try:
            if ckpt.exists() and torch.load(ckpt, weights_only=False, map_location="cpu").get("epoch", 0) >= target:
                break
        except Exception:        # caught between the rename of last.ckpt and its replacement
            pass
        time.sleep(0.05)
    time.sleep(extra * 0.3)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "calmrl" / "results.json").exists()
    from calmrl.train.checkpoints import resume_checkpoint
    path, kept_ckpt, _ = resume_checkpoint(out / "calmrl")
    kept = kept_ckpt["epoch"]
    assert 0 < kept < 11, (kept, target)   # a mid-run epoch was kept, not only the end of training
    capfd.readouterr()
    assert main(cmd(out, resume=True)[3:]) == 0          # the user's next command (in this process: its imports paid)
    assert f"resuming from {path}: epoch {kept + 1} of 12" in capfd.readouterr().err + caplog.text
    a = json.loads((tmp_path / "ref" / "calmrl" / "results.json").read_text())
    b = json.loads((out / "calmrl" / "results.json").read_text())
    assert b["epochs"] == a["epochs"] == 12
    for key in ("R@1", "R@5", "MeanR"):
        assert abs(a["pairs"]["average"][key] - b["pairs"]["average"][key]) < 1e-6, key


def test_calibrator_ignores_autocast():
    cal = random_calibrator().float()
    Z, _ = sample_from(random_calibrator(), 30)
    Z = Z.float()
    mask = random_mask(30, 3, 0.4)
    ref = cal.impute(Z, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cal.impute(Z, mask)
        cal.m_step(cal.sufficient_stats(Z, mask))
    assert got.values.dtype == torch.float32
    torch.testing.assert_close(got.values, ref.values)
    assert torch.isfinite(cal.W).all()


def test_resume_from_truncated_checkpoint_is_a_clear_error(tmp_path):
    import dataclasses
    from calmrl.train import CheckpointError, run
    cfg = load_config(None, SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=2", "train.progress=false", "train.threads=1",
                             "calibrator.warmup_epochs=1", f"output_dir={tmp_path}"])
    run(cfg)
    for name in ("last.ckpt", "last.prev.ckpt"):
        ckpt = tmp_path / "calmrl" / "checkpoints" / name
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is damaged"):
        run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=4)), resume=True)


@pytest.mark.parametrize("n", [5, 127, 128, 129, 300])
def test_blocked_cholesky_equals_lapack_and_reports_failures(n):
    from calmrl.core.calibrator import blocked_cholesky_ex
    g = torch.Generator().manual_seed(n)
    X = torch.randn(3, n, n + 5, generator=g, dtype=torch.float64)
    A = X @ X.transpose(1, 2) + torch.eye(n, dtype=torch.float64)
    L, info = blocked_cholesky_ex(A)
    torch.testing.assert_close(L, torch.linalg.cholesky(A), atol=1e-10, rtol=1e-10)
    assert (info == 0).all()
    bad = A.clone()
    bad[1, n - 1, n - 1] = -1.0          # last leading minor fails: info = n, like LAPACK
    bad[2, 0, 0] = -1.0                  # first one fails: info = 1
    _, info = blocked_cholesky_ex(bad)
    assert info.tolist() == [0, n, 1]
