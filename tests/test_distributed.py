"""Two CPU processes (gloo): exact statistics, global-batch losses, and DDP training via torchrun."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from calmrl.core import anchor_infonce_loss, gram_loss, pmrl_loss
from calmrl.core.distributed import all_reduce_stats, gather_nograd, gather_with_grad, global_loss_scale
from helpers import assert_guard_kept_the_better_run, random_calibrator, random_mask, sample_from

WORLD, B = 2, 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(A, mask):
    return {"pmrl": pmrl_loss(A, mask).loss, "gram": gram_loss(A, mask), "infonce": anchor_infonce_loss(A, mask)}


def _global_data():
    cal = random_calibrator(M=3, D=6, k=2, seed=3)
    Z, _ = sample_from(cal, WORLD * B, seed=4)
    mask = random_mask(WORLD * B, 3, 0.4, seed=5)
    A = F.normalize(torch.randn(WORLD * B, 3, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64), dim=-1)
    return cal, Z, mask, A


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cal, Z, mask, A = _global_data()
        sl = slice(rank * B, (rank + 1) * B)
        stats = all_reduce_stats(cal.sufficient_stats(Z[sl], mask[sl]))
        cal.m_step(stats)
        res = {"W": cal.W.clone(), "mu": cal.mu.clone(), "sigma2": cal.sigma2.clone(), "grads": {}, "loss": {}}
        mask_all = gather_nograd(mask[sl])
        for name in ("pmrl", "gram", "infonce"):
            A_loc = A[sl].clone().requires_grad_(True)
            loss = _losses(gather_with_grad(A_loc), mask_all)[name]
            (loss * global_loss_scale()).backward()
            res["grads"][name] = A_loc.grad / WORLD  # DDP divides parameter gradients by the world size
            res["loss"][name] = loss.detach()
        res["gathered"] = gather_nograd(A[sl])
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    cal, Z, mask, A = _global_data()
    cal.m_step(cal.sufficient_stats(Z, mask))
    for r in parts:  # every rank holds the single-process M-step result
        torch.testing.assert_close(r["W"], cal.W, atol=1e-6, rtol=0)
        torch.testing.assert_close(r["mu"], cal.mu, atol=1e-6, rtol=0)
        torch.testing.assert_close(r["sigma2"], cal.sigma2, atol=1e-6, rtol=0)
        torch.testing.assert_close(r["gathered"], A)
    for name in ("pmrl", "gram", "infonce"):
        A_ref = A.clone().requires_grad_(True)
        loss = _losses(A_ref, mask)[name]
        loss.backward()
        for r in range(WORLD):
            assert abs(float(parts[r]["loss"][name] - loss.detach())) < 1e-10
        got = torch.cat([parts[r]["grads"][name] for r in range(WORLD)])
        torch.testing.assert_close(got, A_ref.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.slow
def test_torchrun_ddp_training_and_resume_on_one_process(tmp_path):
    """`calmrl train` under torchrun with 2 CPU processes (gloo), then resumed on 1 process."""
    out = tmp_path / "ddp"
    sets = ["model.embed_dim=32", "model.hidden_dim=64", "train.epochs=6", "calibrator.warmup_epochs=2",
            "calibrator.em_iters=3", "train.progress=false", "train.check_val_every=3", "train.accelerator=cpu", "train.threads=1",
            "train.batch_size=128", f"output_dir={out}"]
    args = sum((["--set", s] for s in sets), [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "calmrl.cli",
           "train", "--method", "calmrl", "--set", "train.devices=2", "--set", "train.strategy=ddp"] + args
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "calmrl" / "results.json").read_text())
    assert res["epochs"] == 6 and res["pairs"]["average"]["R@1"] > 3.0      # chance: 0.33
    assert res["em_history"], "no calibrator refit ran under DDP"
    # evaluating the DDP checkpoint in one process gives the metrics the DDP run reported
    from calmrl.cli import main
    assert main(["eval", "--checkpoint", str(out / "calmrl" / "checkpoints" / "last.ckpt"),
                 "--out", str(tmp_path / "eval.json")]) == 0
    single = json.loads((tmp_path / "eval.json").read_text())
    for key in ("R@1", "R@5", "MeanR"):
        assert abs(single["pairs"]["average"][key] - res["pairs"]["average"][key]) < 1e-4, key
    # more epochs on --resume would not be the longer run (the cosine schedule spans train.epochs): refused
    # (one process from here on: this one, as a user's second command would be; the imports are paid once)
    no_epochs = sum((["--set", s] for s in sets if not s.startswith("train.epochs=")), [])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc8 = main(["train", "--method", "calmrl", "--resume"] + no_epochs + ["--set", "train.epochs=8",
                                                                           "--set", "train.devices=1"])
    assert rc8 == 2 and "train.epochs: 6 -> 8" in err.getvalue(), err.getvalue()[-2000:]
    # the 2-process run as if stopped after its 5th epoch (its last checkpoint gone), resumed on 1 process
    ck = out / "calmrl" / "checkpoints"
    for f in [ck / "last.ckpt", *ck.glob("epoch=5-*.ckpt")]:
        f.unlink()
    assert main(["train", "--method", "calmrl", "--resume"] + args + ["--set", "train.devices=1"]) == 0
    res1 = json.loads((out / "calmrl" / "results.json").read_text())
    assert res1["epochs"] == 6 and res1["resumed_from_epoch"] == 5


def test_guard_under_torchrun_ddp(tmp_path):
    """method.guard under two DDP processes: the observed-only path is trained in the same
    process group, rank 0 alone writes results and the kept checkpoint, which is whole."""
    out = tmp_path / "ddp"
    sets = ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3", "calibrator.warmup_epochs=1",
            "train.progress=false", "train.check_val_every=50", "train.accelerator=cpu", "train.threads=1",
            "train.batch_size=128", "data.views=[fourier, karhunen, zernike]", "method.gate=none", f"output_dir={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "calmrl.cli",
           "train", "--method", "calmrl", "--set", "train.devices=2", "--set", "train.strategy=ddp"] + sum(
               (["--set", s] for s in sets), [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_guard_kept_the_better_run(out / "calmrl")
    assert (out / "calmrl" / "guard" / "pmrl-drop" / "results.json").exists()
