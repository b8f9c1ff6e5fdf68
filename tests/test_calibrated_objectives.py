"""Calibration as a plug-in to the InfoNCE objectives: imputed cells as detached extra pair
members with the gate's weights, against loop references; a closed gate is the plain loss."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers import SIM
from calmrl.core import anchor_infonce_loss, pairwise_infonce_loss


def _case(seed, B, M, d=5):
    g = torch.Generator().manual_seed(seed)
    A = F.normalize(torch.randn(B, M, d, generator=g, dtype=torch.float64), dim=-1)
    observed = torch.rand(B, M, generator=g) < 0.6
    observed[:, 0] |= ~observed.any(1)
    w = torch.where(observed, torch.ones(B, M, dtype=torch.float64), torch.rand(B, M, generator=g, dtype=torch.float64))
    w[(torch.rand(B, M, generator=g) < 0.25) & ~observed] = 0.0       # some imputed cells at weight 0 (gate shut)
    return A, observed, w


def _pairwise_loop(A, observed, w, tau):
    B, M, _ = A.shape
    num = den = 0.0
    for m in range(M):
        for n in range(M):
            if m == n:
                continue
            gal = [j for j in range(B) if w[j, n] > 0]
            for i in range(B):
                if w[i, m] > 0 and w[i, n] > 0 and (observed[i, m] or observed[i, n]):
                    # a candidate j != i counts w_jn e^s: its logit gains log w_jn (the gate is continuous)
                    logits = torch.stack([A[i, m] @ A[j, n] / tau + (0 if j == i else math.log(w[j, n]))
                                          for j in gal])
                    ce = -torch.log_softmax(logits, 0)[gal.index(i)]
                    num, den = num + w[i, m] * w[i, n] * ce, den + w[i, m] * w[i, n]
    return num / den if den else 0.0         # no scorable pair (every imputed cell at weight 0): no loss


def _anchor_loop(A, observed, w, anchor, tau):
    B, M, _ = A.shape
    num = den = 0.0
    for m in range(M):
        if m == anchor:
            continue
        rows = [i for i in range(B) if w[i, anchor] > 0 and w[i, m] > 0 and (observed[i, anchor] or observed[i, m])]
        if len(rows) < 2:
            continue
        for k, i in enumerate(rows):
            # an instance j != i takes part as a candidate through its pair: weight w_j,anchor w_jm
            lw = [0 if j == i else math.log(w[j, anchor] * w[j, m]) for j in rows]
            fwd = torch.stack([A[i, anchor] @ A[j, m] / tau + lw[k2] for k2, j in enumerate(rows)])
            bwd = torch.stack([A[i, m] @ A[j, anchor] / tau + lw[k2] for k2, j in enumerate(rows)])
            ce = 0.5 * (-torch.log_softmax(fwd, 0)[k] - torch.log_softmax(bwd, 0)[k])
            num, den = num + w[i, anchor] * w[i, m] * ce, den + w[i, anchor] * w[i, m]
    return num / den


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 7), st.integers(2, 4))
@example(0, 3, 2)                            # always: the case with no scorable pair (below)
def test_calibrated_infonce_losses_equal_their_loop_references(seed, B, M):
    A, observed, w = _case(seed, B, M)
    if seed == 0:                            # the edge hypothesis once found: no pair has both weights > 0
        w = torch.where(observed, w, torch.zeros_like(w))
        observed = torch.zeros_like(observed)
        observed[:, 0] = True
    got = pairwise_infonce_loss(A, None, tau=0.3, cell_weights=w, observed=observed)
    ref = _pairwise_loop(A, observed, w, 0.3)
    assert math.isclose(float(got), float(ref), rel_tol=1e-9, abs_tol=1e-12)
    if sum(1 for m in range(1, M) if ((w[:, 0] > 0) & (w[:, m] > 0) & (observed[:, 0] | observed[:, m])).sum() >= 2):
        got = anchor_infonce_loss(A, None, anchor=0, tau=0.3, cell_weights=w, observed=observed)
        assert math.isclose(float(got), float(_anchor_loop(A, observed, w, 0, 0.3)), rel_tol=1e-9, abs_tol=1e-12)


def test_a_closed_gate_gives_the_plain_losses_and_gradients():
    A, observed, _ = _case(3, 8, 4)
    A.requires_grad_(True)
    closed = observed.double()                                 # every imputed cell at weight 0
    for fn, kw in ((pairwise_infonce_loss, {"tau": 0.2}), (anchor_infonce_loss, {"anchor": 1, "tau": 0.2})):
        plain = fn(A, observed, **kw)
        g_plain, = torch.autograd.grad(plain, A)
        cal = fn(A, None, cell_weights=closed, observed=observed, **kw)
        g_cal, = torch.autograd.grad(cal, A)
        assert torch.equal(plain, cal) or abs(float(plain - cal)) < 1e-14
        assert torch.allclose(g_plain, g_cal, atol=1e-14)


def test_pairwise_with_calibration_trains_and_its_guard_trains_the_plain_objective(tmp_path):
    from calmrl.train import load_config, run

    torch.set_num_threads(1)
    cfg = load_config(None, SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3",
                                   "train.progress=false", "train.check_val_every=50", "train.threads=1",
                                   "calibrator.warmup_epochs=1", "data.views=[fourier, karhunen, zernike]",
                                   "method.calibrate=true", "method.gate=none", f"output_dir={tmp_path}"])
    res = run(cfg, method="pairwise-infonce")
    assert np.isfinite(res["pairs"]["average"]["R@1"]) and res["pairs"]["average"]["R@1"] > 1   # chance 0.33
    g = res["guard"]
    assert g["alternative_trained"] and (tmp_path / "pairwise-infonce" / "guard" / "pairwise-infonce").is_dir()
    assert res["method"] == "pairwise-infonce+cal"
    assert res["val_average"]["R@1"] == max(g["val_R@1"].values())
