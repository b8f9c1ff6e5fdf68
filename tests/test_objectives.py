"""The objective registry: one contract over every registered objective (finite loss and
gradients on random masks, nothing read from a missing cell, a closed gate equal to the
plain loss and gradients for every calibratable one), and loop references for SigLIP and
Symile, the two objectives added through it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl import objectives
from calmrl.objectives import LossContext, siglip_loss, symile_loss
from calmrl.train.config import MethodConfig, load_config


def _case(seed, B=7, M=3, d=5, p=0.6):
    g = torch.Generator().manual_seed(seed)
    A = F.normalize(torch.randn(B, M, d, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(B, M, generator=g) < p
    mask[:, 0] |= ~mask.any(1)
    mask[:2] = True
    return A, mask


def _ctx(name, **kw):
    obj = objectives.get(name)
    cfg = MethodConfig(name=name)
    params = obj.make_parameters(cfg)
    if params is not None:
        params = params.double()
    return obj, LossContext(cfg, anchor=0, params=params, **kw)


@pytest.mark.parametrize("name", objectives.names())
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_every_objective_is_finite_and_never_reads_a_missing_cell(name, seed):
    A, mask = _case(seed)
    obj, ctx = _ctx(name)
    A = A.clone().requires_grad_(True)
    loss, logs = obj.loss(A, mask, ctx)
    assert torch.isfinite(loss), name
    loss.backward()
    assert torch.isfinite(A.grad).all()
    if name in ("pmrl-meanfill", "pmrl-zerofill"):      # these fill missing cells by design (from observed ones)
        return
    B = A.detach().clone()
    B[~mask] = F.normalize(torch.randn_like(B[~mask]), dim=-1)     # other values in the missing cells
    assert torch.allclose(obj.loss(B, mask, ctx)[0], loss.detach(), atol=1e-10), name


@pytest.mark.parametrize("name", [o for o in objectives.names() if objectives.get(o).calibratable])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_closed_gate_is_the_plain_loss_and_gradients(name, seed):
    A, mask = _case(seed)
    obj, plain_ctx = _ctx(name)
    _, cal_ctx = _ctx(name, calibrated=True, column_weights=mask.double())   # imputed cells at weight 0
    filled = torch.where(mask[..., None], A, F.normalize(torch.randn_like(A), dim=-1))
    a1, a2 = A.clone().requires_grad_(True), filled.clone().requires_grad_(True)
    l1, l2 = obj.loss(a1, mask, plain_ctx)[0], obj.loss(a2, mask, cal_ctx)[0]
    torch.testing.assert_close(l1, l2)
    l1.backward(), l2.backward()
    torch.testing.assert_close(a1.grad[mask], a2.grad[mask])


def test_the_registry_is_what_the_config_auto_and_the_suite_read():
    from calmrl.experiments.suite.plan import FAMILY, VARIANTS
    from calmrl.train.config import CALIBRATABLE, METHODS

    assert set(METHODS) == {"auto", *objectives.names()}
    assert {"siglip", "symile"} <= set(CALIBRATABLE)
    assert VARIANTS["siglip+cal"] == ("siglip", ["method.calibrate=true"]) and FAMILY["symile+cal"] == "symile"
    assert objectives.parse_method("siglip+cal") == ("siglip", True)
    assert "oracle" not in objectives.candidate_names() and "symile+cal" in objectives.candidate_names()
    load_config(None, ["method.candidates=[siglip+cal, symile]"])
    with pytest.raises(ValueError, match="not valid"):
        load_config(None, ["method.candidates=[gram+cal]"])


def _siglip_loop(A, present, t, b, w=None, observed=None):
    B, M, _ = A.shape
    num = den = 0.0
    for m in range(M):
        for n in range(m + 1, M):
            for i in range(B):
                for j in range(B):
                    if not (present[i, m] and present[j, n]):
                        continue
                    if observed is not None and not (observed[i, m] or observed[j, n]):
                        continue
                    wt = 1.0 if w is None else w[i, m] * w[j, n]
                    z = 1.0 if i == j else -1.0
                    num = num + wt * -F.logsigmoid(torch.tensor(z) * (t * A[i, m] @ A[j, n] + b))
                    if i == j:
                        den = den + wt
    return num / den


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(2, 6), M=st.integers(2, 4))
def test_siglip_matches_its_loop_reference(seed, B, M):
    A, mask = _case(seed, B, M)
    t, b = 7.0, -3.0
    torch.testing.assert_close(siglip_loss(A, mask, tau=1 / t, bias=b), _siglip_loop(A, mask, t, b))
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.where(mask, 1.0, torch.rand(B, M, generator=g, dtype=torch.float64))
    full = torch.ones_like(mask)
    torch.testing.assert_close(siglip_loss(A, None, tau=1 / t, bias=b, cell_weights=w, observed=mask),
                               _siglip_loop(A, full & (w > 0), t, b, w, mask))


def _symile_loop(A, present, tau, w=None, observed=None):
    B, M, _ = A.shape
    num = den = 0.0
    for i in range(B):
        for m in range(M):
            if not present[i, m] or (observed is not None and not observed[i, m]):
                continue
            S = [n for n in range(M) if n != m and present[i, n]]
            if not S:
                continue
            cand = [j for j in range(B) if all(present[j, n] for n in S)]
            if len(cand) < 2:
                continue
            scores = torch.stack([(A[i, m] * math.prod(A[j, n] for n in S)).sum() / tau for j in cand])
            ce = -torch.log_softmax(scores, 0)[cand.index(i)]
            wt = 1.0 if w is None else w[i, m] * math.prod(w[i, n] for n in S)
            num, den = num + wt * ce, den + wt
    return num / den


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(2, 7), M=st.integers(2, 4))
def test_symile_matches_its_loop_reference(seed, B, M):
    A, mask = _case(seed, B, M)
    torch.testing.assert_close(symile_loss(A, mask, tau=0.2), _symile_loop(A, mask, 0.2))
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.where(mask, 1.0, torch.rand(B, M, generator=g, dtype=torch.float64))
    torch.testing.assert_close(symile_loss(A, None, tau=0.2, cell_weights=w, observed=mask),
                               _symile_loop(A, w > 0, 0.2, w, mask))


def test_symile_on_complete_data_is_the_authors_loss_and_two_modalities_are_infonce():
    A, _ = _case(3, B=6, M=3)
    a, b, c = A[:, 0], A[:, 1], A[:, 2]
    y = torch.arange(6)
    authors = (F.cross_entropy(a @ (b * c).T / 0.1, y) + F.cross_entropy(b @ (a * c).T / 0.1, y)
               + F.cross_entropy(c @ (a * b).T / 0.1, y)) / 3
    torch.testing.assert_close(symile_loss(A, None, tau=0.1), authors)
    two = A[:, :2]
    torch.testing.assert_close(symile_loss(two, None, tau=0.1),
                               0.5 * (F.cross_entropy(a @ b.T / 0.1, y) + F.cross_entropy(b @ a.T / 0.1, y)))


def test_siglip_and_symile_prefer_aligned_data():
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(16, 1, 8, generator=g), dim=-1)
    aligned = F.normalize(base.expand(16, 3, 8) + 0.05 * torch.randn(16, 3, 8, generator=g), dim=-1)
    rand = F.normalize(torch.randn(16, 3, 8, generator=g), dim=-1)
    assert siglip_loss(aligned, tau=0.1, bias=-2.0) < siglip_loss(rand, tau=0.1, bias=-2.0)
    assert symile_loss(aligned, tau=0.05) < symile_loss(rand, tau=0.05)
