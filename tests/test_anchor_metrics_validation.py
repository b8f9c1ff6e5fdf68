import math

import pytest
import torch
import torch.nn.functional as F

from calmrl.core import (SharedLatentCalibrator, anchor, anchor_shift, imputation_quality, retrieval_metrics,
                         retrieval_ranks, shift_bounds, stack_modalities)
from helpers import random_calibrator, random_mask, sample_from


def synthetic_unit(n=400, M=5, d=16, seed=0):
    cal = random_calibrator(M=M, D=d, k=2, seed=seed)
    cal.sigma2.fill_(0.5)
    Z, _ = sample_from(cal, n, seed=seed + 1)
    return cal, Z


def test_anchor_shift_zero_when_nothing_missing():
    _, Z = synthetic_unit()
    shift = anchor_shift(Z, torch.ones(Z.shape[:2], dtype=torch.bool))
    assert float(shift.max()) < 1e-5


def test_anchor_shift_grows_with_missing_fraction_and_falls_with_true_imputation():
    cal, Z = synthetic_unit(n=2000)
    means = []
    for p in (0.2, 0.4, 0.6):
        mask = random_mask(Z.shape[0], Z.shape[1], p, seed=3)
        means.append(float(anchor_shift(Z, mask).mean()))
        if p == 0.4:
            imputed = cal.impute(Z, mask).values
            calibrated = float(anchor_shift(Z, mask, imputed).mean())
            assert calibrated < means[-1]
    assert means[0] < means[1] < means[2]


def test_anchor_is_principal_left_singular_vector():
    _, Z = synthetic_unit(n=20)
    U, _, _ = torch.linalg.svd(Z.transpose(1, 2), full_matrices=False)
    cos = (anchor(Z) * U[..., 0]).sum(-1).abs()
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_theorem1_bounds_hold_numerically():
    _, Z = synthetic_unit(n=500)
    Z = F.normalize(Z, dim=-1)
    mask = random_mask(500, Z.shape[1], 0.4, seed=11)
    lower, dist, upper = shift_bounds(Z, mask)
    assert (mask.sum(1) < mask.shape[1]).any()
    # sqrt(2(1 - c^2)) turns float64 rounding of c into ~1e-8, hence the tolerance
    assert (lower <= dist + 1e-7).all()
    assert (dist <= upper + 1e-7).all()
    assert float((dist / upper.clamp_min(1e-12))[upper > 0].max()) < 1.0


def test_retrieval_ranks_exact_chunked_and_faiss_agree():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(300, 8, generator=g), dim=-1)
    gal = F.normalize(q + 0.7 * torch.randn(300, 8, generator=g), dim=-1)
    S = q @ gal.T
    full = 1 + (S > S.diagonal()[:, None]).sum(1)
    torch.testing.assert_close(retrieval_ranks(q, gal, chunk_size=7), full)
    fr = retrieval_ranks(q, gal, backend="faiss", max_rank=300)
    assert (fr == full).float().mean() > 0.99  # float ties may differ
    m = retrieval_metrics(q, gal)
    assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
    perfect = retrieval_metrics(q, q)
    assert perfect["R@1"] == 100.0 and perfect["MedR"] == 1.0


def test_imputation_quality_perfect_and_nan_when_no_cells():
    t = torch.randn(10, 2, 4)
    cells = torch.zeros(10, 2, dtype=torch.bool)
    cells[:5, 0] = True
    q = imputation_quality(t, t, cells)
    assert abs(float(q["r2"][0]) - 1) < 1e-6 and abs(float(q["cosine"][0]) - 1) < 1e-6
    assert math.isnan(float(q["r2"][1]))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    cal = SharedLatentCalibrator(3, 4, 2, names=["vision", "text", "audio"])
    Z = torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match=r"shape \(5, 2, 4\).*expects \(B, 3, 4\)"):
        cal.posterior(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="got 2 dimension"):
        cal.posterior(torch.randn(5, 12))
    bad = Z.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 'text' row 2 .*NaN"):
        cal.posterior(bad, torch.ones(5, 3, dtype=torch.bool))
    bad[2, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="'text' row 2.*inf"):
        cal.posterior(bad)
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[4] = False
    with pytest.raises(ValueError, match="no observed modality"):
        cal.posterior(Z, mask)
    with pytest.raises(ValueError, match="mask has shape"):
        cal.posterior(Z, torch.ones(5, 2, dtype=torch.bool))
    partly = Z.clone()
    partly[1, 0, :2] = float("nan")  # cell neither fully missing nor clean: disagrees with the mask
    with pytest.raises(ValueError, match="'vision' row 1"):
        cal.posterior(partly)


def test_stack_modalities_ragged_and_errors():
    Z, mask, dims = stack_modalities({"a": torch.randn(4, 3), "b": torch.full((4, 5), float("nan"))},
                                     names=["a", "b"])
    assert Z.shape == (4, 2, 5) and dims == [3, 5] and not mask[:, 1].any()
    with pytest.raises(ValueError, match="unknown modality name"):
        stack_modalities({"a": torch.randn(4, 3), "zzz": torch.randn(4, 3)}, names=["a", "b"])
    with pytest.raises(ValueError, match="disagree on the number of instances"):
        stack_modalities([torch.randn(4, 3), torch.randn(5, 3)])


def test_instance_identification_against_a_loop():
    import torch.nn.functional as F
    from calmrl.train.evaluate import instance_identification
    g = torch.Generator().manual_seed(0)
    A = F.normalize(torch.randn(40, 3, 5, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(40, 3, generator=g) > 0.4
    mask[:, 0] = True
    imputed = A + 0.8 * torch.randn(40, 3, 5, generator=g, dtype=torch.float64)
    got = instance_identification(A, mask, imputed)
    hits = {"imputed": 0, "fallback": 0}
    n = 0
    for i in range(40):
        fb = F.normalize(sum(A[i, m] for m in range(3) if mask[i, m]), dim=0)
        for m in range(3):
            if mask[i, m]:
                continue
            n += 1
            for key, q in (("imputed", F.normalize(imputed[i, m], dim=0)), ("fallback", fb)):
                scores = A[:, m] @ q
                hits[key] += int(scores.argmax() == i)
    assert got == {k: 100.0 * v / n for k, v in hits.items()}
    perfect = instance_identification(A, mask, A)
    assert perfect["imputed"] == 100.0


def test_bounded_galleries_average_draws_and_equal_the_full_table_when_large_enough():
    import torch.nn.functional as F
    from calmrl.train.evaluate import retrieval_table

    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, 1, 8, generator=g)
    A = F.normalize(base + 0.8 * torch.randn(200, 3, 8, generator=g), dim=-1)
    full = retrieval_table(A, ["a", "b", "c"])
    assert retrieval_table(A, ["a", "b", "c"], gallery_size=500) == full          # larger than the split: exact
    small = retrieval_table(A, ["a", "b", "c"], gallery_size=50, galleries=4)
    again = retrieval_table(A, ["a", "b", "c"], gallery_size=50, galleries=4)
    assert small == again and small["a->b"]["n"] == 50                           # seeded, the size said
    assert small["average"]["R@1"] > full["average"]["R@1"]                       # a smaller gallery is easier
    # one draw by hand: the same instances as queries and gallery
    from calmrl.core import retrieval_ranks, summarize_ranks
    one = retrieval_table(A, ["a", "b", "c"], gallery_size=50, galleries=1)
    gen = torch.Generator().manual_seed(0 * 1_000_003 + 0 * 1009 + 1)
    sub = torch.arange(200)[torch.randperm(200, generator=gen)[:50]]
    assert one["a->b"]["R@1"] == summarize_ranks(retrieval_ranks(A[sub, 0], A[sub, 1]))["R@1"]


def test_fused_queries_on_bounded_galleries_match_a_loop_over_one_draw():
    import torch.nn.functional as F
    from calmrl.train.evaluate import fused_retrieval

    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 1, 8, generator=g)
    A = F.normalize(base + 0.8 * torch.randn(300, 3, 8, generator=g), dim=-1)
    mask = torch.rand(300, 3, generator=g) > 0.3
    mask[~mask.any(1), 0] = True
    full = fused_retrieval(A, ["a", "b", "c"], mask)
    assert fused_retrieval(A, ["a", "b", "c"], mask, gallery_size=1000) == full    # larger than the split: exact
    small = fused_retrieval(A, ["a", "b", "c"], mask, gallery_size=40, galleries=3)
    assert small == fused_retrieval(A, ["a", "b", "c"], mask, gallery_size=40, galleries=3)
    assert small["average"]["R@1"] > full["average"]["R@1"]                       # a smaller gallery is easier
    one = fused_retrieval(A, ["a", "b", "c"], mask, gallery_size=40, galleries=1)
    # by hand, modality b: the draw, then each drawn instance with another view observed asks for its b
    gal_all = torch.nonzero(mask[:, 1]).squeeze(1)
    gen = torch.Generator().manual_seed(0 * 1_000_003 + 7 * 1009 + 1)
    gal = gal_all[torch.randperm(len(gal_all), generator=gen)[:40]]
    hits = total = 0
    for pos, i in enumerate(gal.tolist()):
        rest = [m for m in (0, 2) if mask[i, m]]
        if not rest:
            continue
        q = F.normalize(A[i, rest].sum(0), dim=0)
        scores = A[gal, 1] @ q
        hits += int((scores > scores[pos]).sum() == 0 and (scores == scores[pos]).sum() == 1)
        total += 1
    assert one["rest->b"]["n"] == total
    assert abs(one["rest->b"]["R@1"] - 100.0 * hits / total) < 1e-4            # float32 arithmetic
