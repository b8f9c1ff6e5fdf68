"""The informativeness gate: identification of held-out cells by imputations vs the fallback."""

import torch
import torch.nn.functional as F

from calmrl.core import SharedLatentCalibrator, gate_weights, imputation_gain
from helpers import SIM, assert_guard_kept_the_better_run, random_calibrator, random_mask, sample_from


def test_gain_against_a_loop_and_weights_in_unit_interval():
    cal = random_calibrator(M=3, D=6, k=2, seed=11)
    Z, _ = sample_from(cal, 60, seed=12)
    mask = random_mask(60, 3, 0.3, seed=13, min_obs=2)
    A = Z * mask[..., None]
    gain = imputation_gain(cal, A, mask, min_rows=1)
    for m in range(3):
        rows = [i for i in range(60) if mask[i, m] and mask[i].sum() >= 2]
        gal = [i for i in range(60) if mask[i, m]]
        G = F.normalize(A[gal, m], dim=-1)
        hit_i = hit_f = 0
        for i in rows:
            o = mask[i].clone()
            o[m] = False
            imp = cal.impute(A[i:i + 1], o[None]).values[0, m]
            fb = F.normalize((A[i] * o[:, None]).sum(0), dim=0)
            hit_i += int(gal[int((G @ F.normalize(imp, dim=0)).argmax())] == i)
            hit_f += int(gal[int((G @ fb).argmax())] == i)
        assert abs(float(gain["id_imputed"][m]) - 100 * hit_i / len(rows)) < 1e-5
        assert abs(float(gain["id_fallback"][m]) - 100 * hit_f / len(rows)) < 1e-5
        assert int(gain["n"][m]) == len(rows)
    w = gate_weights(gain)
    assert ((w >= 0) & (w <= 1)).all()


def test_gate_opens_only_where_imputations_carry_the_instance():
    """Modalities 0 and 1 share the latent; modality 2 is independent noise. Imputing 0 from 1
    identifies instances far better than the fallback (a direction in another modality's
    coordinates); imputing 2 cannot, so its weight is 0."""
    g = torch.Generator().manual_seed(0)
    N, d, k = 400, 8, 4
    beta = torch.randn(N, k, generator=g, dtype=torch.float64)
    W0, W1 = (torch.randn(d, k, generator=g, dtype=torch.float64) for _ in range(2))
    Z = torch.stack([beta @ W0.T, beta @ W1.T, torch.randn(N, d, generator=g, dtype=torch.float64)], 1)
    Z = Z + 0.05 * torch.randn(N, 3, d, generator=g, dtype=torch.float64)
    mask = torch.ones(N, 3, dtype=torch.bool)
    cal = SharedLatentCalibrator(3, d, k, dtype=torch.float64).fit(Z, mask, n_iter=100)
    w = gate_weights(imputation_gain(cal, Z, mask))
    assert w[0] > 0.5 and w[1] > 0.5 and w[2] == 0.0, w


def test_trainer_measures_and_logs_the_gate(tmp_path):
    from calmrl.train import load_config, run
    cfg = load_config(None, SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=4", "train.progress=false",
                             "calibrator.warmup_epochs=1", "train.check_val_every=50", "train.threads=1",
                             "train.batch_size=128", "data.views=[fourier, karhunen, zernike]",
                             "method.gate=identification", f"output_dir={tmp_path}"])
    res = run(cfg)
    hist = res["gate_history"]
    assert [h["epoch"] for h in hist] == [2, 3]      # measured once the calibrator is fitted (after epoch 1)
    for h in hist:
        assert len(h["weights"]) == 3 and all(0.0 <= w <= 1.0 for w in h["weights"])
    assert (tmp_path / "calmrl" / "gate.png").stat().st_size > 5_000
    import csv
    with open(tmp_path / "calmrl" / "logs" / "metrics.csv") as f:
        assert "gate/fourier" in next(csv.reader(f))


def test_zero_weight_columns_give_exactly_the_observed_only_loss():
    """A gate of 0 must reduce calmrl to pmrl-drop: loss and gradients equal the loss over the
    observed columns alone (in both terms), for any filler in the hidden cells."""
    from calmrl.core import pmrl_loss
    g = torch.Generator().manual_seed(3)
    B, M, d = 24, 4, 8
    A = F.normalize(torch.randn(B, M, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    mask = random_mask(B, M, 0.4, seed=4, min_obs=1)
    filler = 3.0 * torch.randn(B, M, d, generator=g, dtype=torch.float64)
    filled = torch.where(mask[..., None], A, filler)
    ref = pmrl_loss(A, mask)
    for weights in (mask.double(), torch.where(mask, torch.ones(B, M, dtype=torch.float64), torch.zeros(B, M))):
        out = pmrl_loss(filled, None, column_weights=weights)
        assert torch.allclose(out.loss, ref.loss, atol=1e-12), (out.loss, ref.loss)
        ga, = torch.autograd.grad(out.loss, A, retain_graph=True)
        gr, = torch.autograd.grad(ref.loss, A, retain_graph=True)
        assert torch.allclose(ga, gr, atol=1e-10)
    # a positive weight changes the loss (the imputed column takes part)
    half = torch.where(mask, torch.ones(B, M, dtype=torch.float64), torch.full((B, M), 0.5, dtype=torch.float64))
    assert not torch.allclose(pmrl_loss(filled, None, column_weights=half).loss, ref.loss)


def test_gain_within_noise_opens_nothing():
    """The weight is the gain's lower confidence bound: equal hit rates (or a gain of a few
    cells among many) give 0; a large gain gives the bound, not the raw gain."""
    nan = float("nan")
    gain = {"id_imputed": torch.tensor([30.0, 31.0, 60.0, nan], dtype=torch.float64),
            "id_fallback": torch.tensor([30.0, 30.0, 20.0, 10.0], dtype=torch.float64),
            "id_se": torch.tensor([2.0, 2.0, 3.0, nan], dtype=torch.float64)}
    w = gate_weights(gain)
    assert w[0] == 0 and w[1] == 0 and w[3] == 0
    assert abs(float(w[2]) - (40 - 1.96 * 3) / 80) < 1e-9
    assert abs(float(gate_weights(gain, z=0.0)[2]) - 0.5) < 1e-9


def test_family_z_keeps_false_openings_over_a_run_rare():
    """No imputation beats its fallback (both hit at the same rate, independently): with the
    per-test z = 1.96, some of a run's M*T = 100 gate measurements open in most runs; with the
    Bonferroni quantile of the whole run, in at most about alpha / 2 of them."""
    import pytest
    from calmrl.core import family_z

    assert abs(family_z(0.05, 1) - 1.959964) < 1e-5 and family_z(0.05, 100) > 3.4 > family_z(0.05, 50) > 1.96
    g = torch.Generator().manual_seed(5)
    runs, tests, n = 300, 100, 200
    imp = (torch.rand(runs, tests, n, generator=g) < 0.3).double()
    fb = (torch.rand(runs, tests, n, generator=g) < 0.3).double()
    diff = imp - fb
    gain = {"id_imputed": 100 * imp.mean(-1).flatten(), "id_fallback": 100 * fb.mean(-1).flatten(),
            "id_se": 100 * (diff.std(-1) / n ** 0.5).flatten()}
    opened = {z: float((gate_weights(gain, z=z).view(runs, tests) > 0).any(1).double().mean())
              for z in (1.96, family_z(0.05, tests))}
    z_per_test, z_family = opened
    assert opened[z_per_test] > 0.8 and opened[z_family] <= 0.06, opened
    with pytest.raises(ValueError, match="gate alpha"):
        family_z(1.5, 3)


def test_guard_keeps_the_run_better_on_validation(tmp_path):
    """method.guard=validation: where imputed columns took part (here gate none: weight 1), the
    observed-only path is trained too (the same run as a separate pmrl-drop run) and the run
    with the higher validation R@1 is kept, its figures reported and its checkpoint copied;
    where the gate stayed shut nothing more is trained."""
    import json

    from calmrl.train import load_config, run
    base = ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3", "train.progress=false",
            "calibrator.warmup_epochs=1", "train.check_val_every=50", "train.threads=1", "train.batch_size=128",
            "data.views=[fourier, karhunen, zernike]"]
    res = run(load_config(None, SIM + base + ["method.gate=none", f"output_dir={tmp_path / 'g'}"]), method="calmrl")
    g = res["guard"]
    alt = json.loads((tmp_path / "g" / "calmrl" / "guard" / "pmrl-drop" / "results.json").read_text())
    ref = run(load_config(None, SIM + base + [f"output_dir={tmp_path / 'ref'}"]), method="pmrl-drop")
    assert g["alternative_trained"] and alt["val_average"] == ref["val_average"] and alt["pairs"] == ref["pairs"]
    assert g["val_R@1"]["observed-only"] == ref["val_average"]["R@1"]
    kept = assert_guard_kept_the_better_run(tmp_path / "g" / "calmrl")
    assert g["kept"] == kept and res["val_average"]["R@1"] == max(g["val_R@1"].values())
    assert res["pairs"]["average"]["R@1"] == g["test_R@1"][kept] and res["method"] == "calmrl"
    on_disk = json.loads((tmp_path / "g" / "calmrl" / "results.json").read_text())
    assert on_disk["guard"]["kept"] == kept and on_disk["pairs"] == res["pairs"]
    # the gate shut throughout (a family level no gain reaches): the run is the observed-only one
    shut = run(load_config(None, SIM + base + ["method.gate=identification", "method.gate_alpha=1e-9",
                                         f"output_dir={tmp_path / 's'}"]), method="calmrl")
    assert shut["guard"]["alternative_trained"] is False and not (tmp_path / "s" / "calmrl" / "guard").exists()
    assert all(w == 0 for h in shut["gate_history"] for w in h["weights"]) and len(shut["gate_history"]) >= 1
    off = run(load_config(None, SIM + base + ["method.gate=none", "method.guard=none", f"output_dir={tmp_path / 'n'}"]),
              method="calmrl")
    assert "guard" not in off and not (tmp_path / "n" / "calmrl" / "guard").exists()
