"""The paper's absorb workflow: pretrain on complete data, fit the calibrator on that model's
complete embeddings (`calmrl calibrate`), continue on incomplete data from the fit."""

from __future__ import annotations

from helpers import SIM  # noqa: E402
import numpy as np
import pytest
import torch

from calmrl.cli import main
from calmrl.data import split_parts
from calmrl.train import AtomicCheckpointIO, load_checkpoint, load_config, run

BASE = ["model.embed_dim=16", "model.hidden_dim=32", "train.progress=false", "train.check_val_every=50",
        "train.threads=1", "train.batch_size=128", "data.views=[fourier, karhunen, zernike]"]


def _gram(state):
    W = state["calibrator.W"].double()
    return torch.einsum("mdk,nek->mdne", W, W)            # W W^T: invariant to rotations of the latent


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("absorb")
    cfg = load_config(None, SIM + BASE + ["train.epochs=4", f"output_dir={root / 'pre'}"])
    run(cfg, method="oracle")
    ck = root / "pre" / "oracle" / "checkpoints" / "last.ckpt"
    st = load_checkpoint(ck)["state_dict"]     # oracle trains without one, then leaves one fitted for export
    assert bool(st["calibrator.initialized"]) and not bool(st["running_valid"])
    assert main(["calibrate", "--checkpoint", str(ck), "--em-iters", "100"]) == 0
    return root, ck.with_name("calibrated.ckpt")


def test_calibrate_fits_to_convergence_and_seeds_running_statistics(calibrated):
    _, ck = calibrated
    c = load_checkpoint(ck)
    st = c["state_dict"]
    assert bool(st["calibrator.initialized"]) and bool(st["running_valid"])
    assert c["calmrl_calibrated"]["used"] == "complete instances"
    assert 1 < c["calmrl_calibrated"]["em_iterations"] <= 100
    assert torch.isfinite(st["running_stats"]).all() and st["running_stats"].abs().sum() > 0


def test_gate_auto_is_off_when_continuing_from_a_complete_data_fit(calibrated):
    """method.gate=auto: imputations from a calibrator fitted on complete data take part at
    weight 1 (no gate measured); from scratch the gate is measured each calibrated epoch."""
    import yaml
    from calmrl.train.module import resolve_gate
    root, ck = calibrated
    assert resolve_gate("auto", load_checkpoint(ck)) == "none"
    assert resolve_gate("auto", load_checkpoint(ck.with_name("last.ckpt"))) == "identification"
    assert resolve_gate("auto", None) == "identification" and resolve_gate("none", None) == "none"
    res = _run_cont(root, ck, "auto", "step")
    assert res["gate_history"] == []
    cfg = yaml.safe_load((root / "auto" / "calmrl" / "config.yaml").read_text())
    assert cfg["method"]["gate"] == "none"


def _run_cont(root, ck, name, schedule, lr="5e-4"):
    cfg = load_config(None, SIM + BASE + ["train.epochs=1", "calibrator.warmup_epochs=0", f"calibrator.schedule={schedule}",
                                    "calibrator.momentum=0.01",
                                    f"train.lr={lr}", f"train.init_from={ck}", f"output_dir={root / name}"])
    return run(cfg, method="calmrl")


def _continue(root, ck, name, schedule, seeded=True, lr="5e-4"):
    if not seeded:
        c = load_checkpoint(ck)
        c["state_dict"]["running_valid"] = torch.tensor(False)
        ck = root / f"unseeded-{name}.ckpt"
        AtomicCheckpointIO().save_checkpoint(c, ck)     # re-sealed: a deliberate change
    _run_cont(root, ck, name, schedule, lr)
    return load_checkpoint(root / name / "calmrl" / "checkpoints" / "last.ckpt")["state_dict"]


def test_frozen_keeps_the_fit_and_step_continues_from_it(calibrated):
    root, ck = calibrated
    fit = load_checkpoint(ck)["state_dict"]
    frozen = _continue(root, ck, "frozen", "frozen")
    for key in ("calibrator.W", "calibrator.mu", "calibrator.sigma2"):
        torch.testing.assert_close(frozen[key], fit[key], atol=0, rtol=0)     # not refitted on incomplete data
    # encoders held still (lr 0), so that the calibrator's own drift is measured; EMA 0.01 (the paper's)
    seeded = _continue(root, ck, "seeded", "step", lr="0")
    unseeded = _continue(root, ck, "unseeded", "step", seeded=False, lr="0")
    g0 = _gram(fit)

    def drift(s):
        return float((_gram(s) - g0).norm() / g0.norm())
    # seeded: each M-step blends a few batches into the fit; unseeded: the first M-step replaces it
    assert drift(seeded) < 0.5 * drift(unseeded), (drift(seeded), drift(unseeded))


def test_train_parts_are_random_and_stratified_unless_class_order_is_asked():
    y = np.repeat(np.arange(10), 140)
    parts = split_parts(len(y), 2, labels=y, order="random", seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    for p in parts:
        counts = np.bincount(y[p], minlength=10)
        assert counts.min() >= 69 and counts.max() <= 71          # every class in both parts
    cls = split_parts(len(y), 2, labels=y, order="class")
    assert set(y[cls[0]]) == {0, 1, 2, 3, 4} and set(y[cls[1]]) == {5, 6, 7, 8, 9}
