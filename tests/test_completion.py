"""The nonlinear completion backend (``calibrator.backend = mlp``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.core import MaskedCompleter, SharedLatentCalibrator, imputation_gain


class _Spy(MaskedCompleter):
    def forward(self, Z, mask):
        self.seen = mask.clone()
        return super().forward(Z, mask)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 30), M=st.integers(2, 5), seed=st.integers(0, 10 ** 6))
def test_masked_completion_hides_only_observed_cells_and_keeps_one(n, M, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, M, generator=g) < 0.6
    mask[torch.arange(n), torch.randint(0, M, (n,), generator=g)] = True         # every row observes something
    spy = _Spy(M, 3, hidden=8)
    loss = spy.completion_loss(torch.randn(n, M, 3, generator=g), mask, generator=g)
    kept = spy.seen
    assert not (kept & ~mask).any() and kept.any(1).all()
    single = mask.sum(1) == 1
    assert torch.equal(kept[single], mask[single])                                # nothing to hide there
    assert torch.isfinite(loss) and 0.0 <= float(loss) <= 2.0


def _nonlinear_pair(n=1200, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    R = torch.randn(d, d, generator=g)
    z1 = F.normalize(torch.tanh(3 * z0 @ R) ** 3, dim=-1)                        # a nonlinear function of z0
    return torch.stack([z0, z1], 1)


def test_completer_learns_a_nonlinear_relation_the_linear_model_cannot():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    Z = _nonlinear_pair()
    tr, te = Z[:1000], Z[1000:]
    comp = MaskedCompleter(2, 8, hidden=64)
    opt = torch.optim.Adam(comp.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    full = torch.ones(1000, 2, dtype=torch.bool)
    for _ in range(400):
        idx = torch.randint(0, 1000, (200,), generator=g)
        loss = comp.completion_loss(tr[idx], full[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    only0 = torch.tensor([[True, False]]).expand(200, 2)
    mlp = F.cosine_similarity(comp.impute(te, only0)[:, 1], te[:, 1], dim=-1).mean()
    cal = SharedLatentCalibrator(2, 8, 4, dtype=torch.float64)
    cal.fit(tr.double(), full, n_iter=100, init="pca")
    lin = F.cosine_similarity(cal.impute(te.double(), only0).values[:, 1].float(), te[:, 1], dim=-1).mean()
    assert mlp > 0.9 and mlp > lin + 0.05, (float(mlp), float(lin))
    np.testing.assert_array_equal(comp.impute(te, only0)[:, 0].numpy(), te[:, 0].numpy())   # observed kept


def test_gate_scores_a_completer_like_the_calibrator():
    Z = _nonlinear_pair(300)
    gain = imputation_gain(MaskedCompleter(2, 8, hidden=16), Z, torch.ones(300, 2, dtype=torch.bool))
    assert torch.isfinite(gain["id_imputed"]).all() and torch.isfinite(gain["id_fallback"]).all()
    assert gain["n"].tolist() == [300, 300]


def test_training_with_the_mlp_backend_and_the_gate(tmp_path):
    from calmrl.train import load_config, run

    torch.set_num_threads(1)
    cfg = load_config(None, ["calibrator.backend=mlp", "calibrator.mlp_epochs=2", "calibrator.warmup_epochs=1",
                             "method.gate=identification", "train.epochs=3", "train.progress=false",
                             "data.views=[fourier, karhunen, zernike]", f"output_dir={tmp_path}"])
    res = run(cfg, method="calmrl")
    assert np.isfinite(res["pairs"]["average"]["R@1"]) and res["pairs"]["average"]["R@1"] > 5
    assert len(res["gate_history"]) == 2 and all(0 <= w <= 1 for w in res["gate_history"][-1]["weights"])
    assert np.isfinite(res["anchor"]["imputation_cosine"])       # diagnostics of the completer's imputations
