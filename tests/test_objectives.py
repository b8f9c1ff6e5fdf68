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
    torch.manual_seed(seed)                       # symile's permutations: the same in both calls
    loss, logs = obj.loss(A, mask, ctx)
    assert torch.isfinite(loss), name
    loss.backward()
    assert torch.isfinite(A.grad).all()
    if name in ("pmrl-meanfill", "pmrl-zerofill"):      # these fill missing cells by design (from observed ones)
        return
    B = A.detach().clone()
    B[~mask] = F.normalize(torch.randn_like(B[~mask]), dim=-1)     # other values in the missing cells
    torch.manual_seed(seed)
    assert torch.allclose(obj.loss(B, mask, ctx)[0], loss.detach(), atol=1e-10), name
    B[~mask] = float("nan")                                          # NaN in missing cells never reaches the loss
    B.requires_grad_(True)
    torch.manual_seed(seed)
    nan_loss = obj.loss(B, mask, ctx)[0]
    assert torch.allclose(nan_loss, loss.detach(), atol=1e-10), name
    nan_loss.backward()
    assert torch.isfinite(B.grad).all() and (B.grad[~mask] == 0).all(), name


@pytest.mark.parametrize("name", [o for o in objectives.names() if objectives.get(o).calibratable])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_closed_gate_is_the_plain_loss_and_gradients(name, seed):
    A, mask = _case(seed)
    obj, plain_ctx = _ctx(name)
    _, cal_ctx = _ctx(name, calibrated=True, column_weights=mask.double())   # imputed cells at weight 0
    filled = torch.where(mask[..., None], A, F.normalize(torch.randn_like(A), dim=-1))
    a1, a2 = A.clone().requires_grad_(True), filled.clone().requires_grad_(True)
    torch.manual_seed(seed)
    l1 = obj.loss(a1, mask, plain_ctx)[0]
    torch.manual_seed(seed)
    l2 = obj.loss(a2, mask, cal_ctx)[0]
    torch.testing.assert_close(l1, l2)
    l1.backward(), l2.backward()
    torch.testing.assert_close(a1.grad[mask], a2.grad[mask])


PLUGINS = [o for o in objectives.names() if objectives.get(o).calibratable]


@pytest.mark.parametrize("name", PLUGINS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_gate_is_continuous_and_an_open_gate_is_read(name, seed):
    """The loss goes to the closed gate's as the imputed cells' weight goes to 0 (linearly: a
    candidate of weight w counts w e^{s/tau}, up to e^{1/0.07} = 1.2e6 times w), and a gate at
    0.5 changes the loss: a plug-in that ignored its imputations would fail here."""
    A, mask = _case(seed)
    obj, _ = _ctx(name)
    filled = torch.where(mask[..., None], A, F.normalize(torch.randn_like(A), dim=-1))
    losses = {}
    for w in (0.0, 1e-14, 1e-12, 0.5):
        _, ctx = _ctx(name, calibrated=True, column_weights=torch.where(mask, 1.0, w).double())
        torch.manual_seed(seed)
        losses[w] = float(obj.loss(filled, mask, ctx)[0])
    d14, d12 = abs(losses[1e-14] - losses[0.0]), abs(losses[1e-12] - losses[0.0])
    # to 0 linearly in w: a hundredth of the difference at 100 times the weight (or below 1e-9)
    assert d12 <= 1e-6 and (d14 <= 1e-9 or d14 <= 0.011 * d12 + 1e-12), losses
    assert abs(losses[0.5] - losses[0.0]) > 1e-6, losses


@pytest.mark.parametrize("name", objectives.names())
def test_edge_batches_give_a_finite_loss_and_gradient(name):
    """Empty batch, one row, a batch where no pair is co-observed (rows without negatives),
    float32, and a calibrated call without column weights: finite, and 0 where nothing can be scored."""
    obj, ctx = _ctx(name)
    cases = {"empty": _case(0, B=0)[0:1] + (torch.zeros(0, 3, dtype=torch.bool),),
             "one row": _case(1, B=1), "float32": tuple(x.float() if x.is_floating_point() else x
                                                          for x in _case(2))}
    A, _ = _case(3, B=6)
    apart = torch.zeros(6, 3, dtype=torch.bool)
    apart[torch.arange(6), torch.arange(6) % 3] = True                 # each row one view: no pair
    cases["no pair"] = (A, apart)
    for label, (A, mask) in cases.items():
        if label == "float32" and ctx.params is not None:
            _, ctx32 = _ctx(name)
            ctx32.params = ctx32.params.float()
            use = ctx32
        else:
            use = ctx
        A = A.clone().requires_grad_(True)
        torch.manual_seed(0)
        loss = obj.loss(A, mask, use)[0]
        assert torch.isfinite(loss), (name, label)
        if loss.requires_grad:
            loss.backward()
            assert torch.isfinite(A.grad).all(), (name, label)
        pmrl = objectives.get(name).family == "pmrl"   # PMRL's intra term scores one instance alone
        if label == "empty" or label in ("one row", "no pair") and not pmrl:
            assert abs(float(loss)) < 1e-12, (name, label, float(loss))
    if objectives.get(name).calibratable:                           # calibrated, every cell imputed at weight 1
        A, mask = _case(4)
        _, cal = _ctx(name, calibrated=True)
        torch.manual_seed(0)
        assert torch.isfinite(obj.loss(A, mask, cal)[0])


def test_siglip_ignores_pairs_never_observed_together_and_its_normaliser_cannot_jump():
    g = torch.Generator().manual_seed(0)
    B = 64
    A = F.normalize(torch.randn(B + 1, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.zeros(B, 3, dtype=torch.bool)
    mask[:, 0] = True                                   # 0 with 1 in the first half, 0 with 2 in the second
    mask[: B // 2, 1] = True
    mask[B // 2:, 2] = True
    three = siglip_loss(A[:B], mask, tau=0.1, bias=-2.0)
    pairs = [siglip_loss(A[:B, [0, k]], mask[:, [0, k]], tau=0.1, bias=-2.0) for k in (1, 2)]
    # views 1 and 2 are never seen together: no couples between them, the loss is that of the two pairs
    assert abs(float(three) - float(sum(pairs)) / 2) < 1e-12
    two = torch.zeros(B, 2, dtype=torch.bool)          # 64 rows split in halves that see one view each
    two[: B // 2, 0] = True
    two[B // 2:, 1] = True
    assert float(siglip_loss(A[:B, :2], two, tau=0.1, bias=-2.0)) == 0.0
    two1 = torch.cat([two, torch.ones(1, 2, dtype=torch.bool)])          # one more row sees both
    jumped = float(siglip_loss(A[:, :2], two1, tau=0.1, bias=-2.0))
    assert 0 < jumped < 20, jumped                      # divided by the 65 rows that see either side, not by 1


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
    """Per pair m < n: the couples' sum over the rows that see either side, |S_m u S_n|
    (weighted: w_im + w_in - w_im w_in); pairs weighted by min(1, their positives)."""
    B, M, _ = A.shape
    w = present.double() if w is None else w * present
    num = den = 0.0
    for m in range(M):
        for n in range(m + 1, M):
            pair = pos = 0.0
            for i in range(B):
                for j in range(B):
                    if not (present[i, m] and present[j, n]):
                        continue
                    if observed is not None and not (observed[i, m] or observed[j, n]):
                        continue
                    wt = w[i, m] * w[j, n]
                    z = 1.0 if i == j else -1.0
                    pair = pair + wt * -F.logsigmoid(torch.tensor(z) * (t * A[i, m] @ A[j, n] + b))
                    if i == j:
                        pos = pos + wt
            either = sum(float(w[i, m] + w[i, n] - w[i, m] * w[i, n]) for i in range(B))
            weight = min(1.0, float(pos))
            if weight > 0:
                num, den = num + weight * pair / either, den + weight
    return num / den if den else torch.tensor(0.0, dtype=A.dtype)


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
    """Symile with ``joint`` negatives, one row at a time; a candidate j != i counts its weight."""
    B, M, _ = A.shape
    num = den = 0.0
    for i in range(B):
        for m in range(M):
            if not present[i, m] or (observed is not None and not observed[i, m]):
                continue
            S = [n for n in range(M) if n != m and present[i, n]]
            if not S:
                continue
            contexts = [(S, 1.0 if w is None else w[i, m] * math.prod(w[i, n] for n in S))]
            if w is not None and observed is not None:      # imputed cells in the context: the observed one too
                So = [n for n in S if observed[i, n]]
                if So != S and So:
                    contexts.append((So, w[i, m] * (1 - math.prod(float(w[i, n]) for n in S if not observed[i, n]))))
            for ctx_S, wt in contexts:
                cand = [j for j in range(B) if all(present[j, n] for n in ctx_S)]
                if len(cand) < 2:
                    continue
                scores = torch.stack([(A[i, m] * math.prod(A[j, n] for n in ctx_S)).sum() / tau
                                      + (0.0 if w is None or j == i
                                         else math.log(math.prod(float(w[j, n]) for n in ctx_S)))
                                      for j in cand])
                ce = -torch.log_softmax(scores, 0)[cand.index(i)]
                num, den = num + wt * ce, den + wt
    return num / den


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(2, 7), M=st.integers(2, 4))
def test_symile_matches_its_loop_reference(seed, B, M):
    A, mask = _case(seed, B, M)
    torch.testing.assert_close(symile_loss(A, mask, tau=0.2, negatives="joint"), _symile_loop(A, mask, 0.2))
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.where(mask, 1.0, torch.rand(B, M, generator=g, dtype=torch.float64))
    torch.testing.assert_close(symile_loss(A, None, tau=0.2, cell_weights=w, observed=mask, negatives="joint"),
                               _symile_loop(A, w > 0, 0.2, w, mask))


def _authors_symile(reps, tau, generator=None, negatives="n"):
    """Symile as the paper and the authors' package define it (complete data): for each anchor,
    the other modalities' rows permuted independently (O(n)), or every combination
    (O(n^2)), the positive MIP in its row's column, the mean over anchors of the cross-entropy."""
    B = reps[0].shape[0]
    y = torch.arange(B)
    out = []
    for i, r in enumerate(reps):
        others = [x for j, x in enumerate(reps) if j != i]
        if negatives == "n":
            shuffled = torch.ones_like(r)
            for x in others:
                shuffled = shuffled * x[torch.randperm(B, generator=generator)]
            logits = r @ shuffled.T
            pos = (r * math.prod(others)).sum(1)
            logits = torch.where(torch.eye(B, dtype=torch.bool), pos[:, None].expand(B, B), logits)
            out.append(F.cross_entropy(logits / tau, y))
        else:                                       # every combination (j, k, ...) of the others' rows
            import itertools
            combos = list(itertools.product(range(B), repeat=len(others)))
            prods = torch.stack([math.prod(x[c] for x, c in zip(others, combo)) for combo in combos])
            logits = r @ prods.T / tau
            target = torch.tensor([combos.index((b,) * len(others)) for b in range(B)])
            out.append(F.cross_entropy(logits, target))
    return sum(out) / len(out)


@pytest.mark.parametrize("M", [2, 3, 4])
def test_symile_on_complete_data_is_the_authors_loss_with_the_same_permutations(M):
    A, _ = _case(3, B=6, M=M)
    reps = [A[:, m] for m in range(M)]
    ours = symile_loss(A, None, tau=0.1, negatives="n", generator=torch.Generator().manual_seed(7))
    theirs = _authors_symile(reps, 0.1, torch.Generator().manual_seed(7))
    assert abs(float(ours - theirs)) <= 1e-12
    if M <= 3:
        assert abs(float(symile_loss(A, None, tau=0.1, negatives="n_squared")
                         - _authors_symile(reps, 0.1, negatives="n_squared"))) <= 1e-12
    if M == 2:                                      # joint and n_squared: the InfoNCE of the pair
        a, b = reps
        y = torch.arange(6)
        info = 0.5 * (F.cross_entropy(a @ b.T / 0.1, y) + F.cross_entropy(b @ a.T / 0.1, y))
        for neg in ("joint", "n_squared"):
            torch.testing.assert_close(symile_loss(A, None, tau=0.1, negatives=neg), info)


def test_siglip_and_symile_prefer_aligned_data():
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(16, 1, 8, generator=g), dim=-1)
    aligned = F.normalize(base.expand(16, 3, 8) + 0.05 * torch.randn(16, 3, 8, generator=g), dim=-1)
    rand = F.normalize(torch.randn(16, 3, 8, generator=g), dim=-1)
    assert siglip_loss(aligned, tau=0.1, bias=-2.0) < siglip_loss(rand, tau=0.1, bias=-2.0)
    assert symile_loss(aligned, tau=0.05) < symile_loss(rand, tau=0.05)


def test_registration_checks_the_declaration():
    from calmrl.objectives.base import REGISTRY, register

    def fn(A, mask, ctx):
        return A.sum() * 0.0, {}

    with pytest.raises(ValueError, match="calibration='plugin'"):
        register(objectives.Objective("typo-objective", "x", "x", calibration="plugin", fn=fn))
    with pytest.raises(ValueError, match="has no loss"):
        register(objectives.Objective("lossless-objective", "x", "x"))
    try:
        o = register(objectives.Objective("plug-default", "x", "x", calibration="plug-in", fn=fn))
        assert o.observed_only == "plug-default" and objectives.get("plug-default+cal").calibratable
    finally:
        REGISTRY.pop("plug-default", None)
    assert "typo-objective" not in REGISTRY and "lossless-objective" not in REGISTRY


def test_a_fixed_temperature_objective_reading_ctx_tau_is_an_error():
    from calmrl.objectives.base import REGISTRY, register

    def reads_tau(A, mask, ctx):
        return A.sum() * 0.0 + ctx.tau, {}

    try:
        obj = register(objectives.Objective("tau-reader", "x", "x", temperature="fixed", fn=reads_tau))
        A, mask = _case(0)
        with pytest.raises(ValueError, match="declares a fixed temperature but reads ctx.tau"):
            obj.loss(A, mask, LossContext(MethodConfig(name="pairwise-infonce")))
    finally:
        REGISTRY.pop("tau-reader", None)
