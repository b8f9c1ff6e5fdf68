"""The nonlinear completion backends (``calibrator.backend = mlp | mvae | mopoe``)."""

from __future__ import annotations

from helpers import SIM  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.core import MaskedCompleter, MultimodalVAE, SharedLatentCalibrator, imputation_gain, poe


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


@pytest.mark.parametrize("backend", ["mlp", "mopoe"])
def test_training_with_a_nonlinear_backend_and_the_gate(tmp_path, backend):
    from calmrl.train import load_config, run

    torch.set_num_threads(1)
    cfg = load_config(None, SIM + ["model.embed_dim=128", "method.tau1=0.05", f"calibrator.backend={backend}", "calibrator.mlp_epochs=2", "calibrator.warmup_epochs=1",
                             "calibrator.mlp_hidden=64",
                             "method.gate=identification", "train.epochs=3", "train.progress=false",
                             "data.views=[fourier, karhunen, zernike]", f"output_dir={tmp_path}"])
    res = run(cfg, method="calmrl")
    assert np.isfinite(res["pairs"]["average"]["R@1"]) and res["pairs"]["average"]["R@1"] > 5
    assert len(res["gate_history"]) == 2 and all(0 <= w <= 1 for w in res["gate_history"][-1]["weights"])
    assert np.isfinite(res["anchor"]["imputation_cosine"])       # diagnostics of the completer's imputations


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), M=st.integers(1, 4), k=st.integers(1, 3), seed=st.integers(0, 10 ** 6))
def test_product_of_experts_against_gaussian_conditioning(n, M, k, seed):
    """The prior N(0, I) times the observed experts, multiplied out as densities: precision
    is the sum of precisions, mean the precision-weighted mean (per latent coordinate)."""
    g = torch.Generator().manual_seed(seed)
    mu, logprec = torch.randn(n, M, k, generator=g, dtype=torch.float64), torch.randn(n, M, k, generator=g,
                                                                                        dtype=torch.float64)
    subset = torch.rand(n, M, generator=g) < 0.5
    m, prec = poe(mu, logprec, subset)
    for i in range(n):
        P, h = torch.eye(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        for j in range(M):
            if subset[i, j]:
                Pj = torch.diag(logprec[i, j].exp())
                P, h = P + Pj, h + Pj @ mu[i, j]
        torch.testing.assert_close(m[i], torch.linalg.solve(P, h))
        torch.testing.assert_close(prec[i], torch.diagonal(P))
    m3, _ = poe(mu, logprec, subset[:, None].expand(n, 2, M))        # the batched-subset form agrees
    torch.testing.assert_close(m3[:, 1], m)


def test_mopoe_imputes_the_mean_over_subsets_of_the_observed():
    torch.manual_seed(0)
    vae = MultimodalVAE(3, 4, 2, hidden=8, kind="mopoe")
    Z = torch.randn(5, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    out = vae(Z, mask, chunk=2)
    mu, logprec = vae.experts(Z)
    for i in range(5):
        obs = [j for j in range(3) if mask[i, j]]
        decs = []
        for code in range(1, 8):
            S = [j for j in range(3) if code >> j & 1]
            if set(S) <= set(obs):
                sub = torch.zeros(1, 3, dtype=torch.bool)
                sub[0, S] = True
                m, _ = poe(mu[i:i + 1], logprec[i:i + 1], sub)
                decs.append(vae.decode(m)[0])
        torch.testing.assert_close(out[i], torch.stack(decs).mean(0))
    with pytest.raises(ValueError, match="2\\^M - 1"):
        MultimodalVAE(11, 4, 2, kind="mopoe")


@pytest.mark.parametrize("kind", ["mvae", "mopoe"])
def test_multimodal_vae_learns_a_shared_latent_relation(kind):
    """Two modalities from one 2-d latent: after training on complete pairs, imputing one from
    the other reaches a high cosine, far above the direction of the mean."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2)
    n, d, k = 1200, 8, 2
    beta = torch.randn(n, k, generator=g)
    Z = torch.stack([F.normalize(beta @ torch.randn(k, d, generator=g) + 0.3, dim=-1),
                     F.normalize(torch.tanh(beta @ torch.randn(k, d, generator=g)), dim=-1)], 1)
    Z = Z + 0.02 * torch.randn(Z.shape, generator=g)
    tr, te = Z[:1000], Z[1000:]
    vae = MultimodalVAE(2, d, 4, hidden=64, kind=kind)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    full = torch.ones(200, 2, dtype=torch.bool)
    for _ in range(300):
        idx = torch.randint(0, 1000, (200,), generator=g)
        loss = vae.completion_loss(tr[idx], full, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    only0 = torch.tensor([[True, False]]).expand(200, 2)
    cos = F.cosine_similarity(vae.impute(te, only0)[:, 1], te[:, 1], dim=-1).mean()
    base = F.cosine_similarity(F.normalize(tr[:, 1].mean(0), dim=0).expand(200, d), te[:, 1], dim=-1).mean()
    assert torch.isfinite(loss) and cos > 0.9 and cos > base + 0.2, (float(cos), float(base))
