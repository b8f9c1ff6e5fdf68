import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.core import (GRAMLoss, PairwiseInfoNCELoss, TriangleLoss, anchor_infonce_loss, gram_loss, gram_volume_matrix,
                         pair_similarity, pairwise_infonce_loss, pmrl_loss, retrieval_ranks, safe_eigh, spectrum,
                         triangle_area_matrix, triangle_loss)


def unit(B, M, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, M, d, generator=g, dtype=dtype), dim=-1)


def pmrl_svd_reference(A, tau1, tau2, inter="modality"):
    """PMRL with torch.linalg.svd of the d x M matrices (complete columns)."""
    U, S, _ = torch.linalg.svd(A.transpose(1, 2), full_matrices=False)
    intra = -torch.log_softmax(S / tau1, -1)[:, 0].mean()
    u = U[..., 0]
    u = u * torch.where((u * A.sum(1)).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    B, M = A.shape[:2]
    if inter == "anchor":
        inter_loss = F.cross_entropy(u @ u.T / tau2, torch.arange(B))
    else:
        logits = torch.einsum("imd,jd->imj", A, u).reshape(B * M, B) / tau2
        inter_loss = F.cross_entropy(logits, torch.arange(B).repeat_interleave(M))
    return intra + inter_loss


@pytest.mark.parametrize("inter", ["modality", "anchor"])
def test_pmrl_matches_svd_reference_values_and_gradients(inter):
    A = unit(16, 4, 32).requires_grad_(True)
    out = pmrl_loss(A, tau1=0.05, tau2=0.1, inter=inter)
    ref = pmrl_svd_reference(A, 0.05, 0.1, inter)
    assert abs(float(out.loss.detach() - ref.detach())) < 1e-5
    g1, = torch.autograd.grad(out.loss, A)
    g2, = torch.autograd.grad(ref, A)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)
    S = torch.linalg.svdvals(A.transpose(1, 2))
    torch.testing.assert_close(out.singular_values, S, atol=1e-6, rtol=1e-6)


def test_pmrl_float32_matches_svd():
    A = unit(32, 3, 64, dtype=torch.float32)
    assert abs(float(pmrl_loss(A).loss - pmrl_svd_reference(A, 0.05, 0.1))) < 1e-4


def test_pmrl_degenerate_spectrum_has_finite_gradients():
    v = F.normalize(torch.randn(1, 1, 8, dtype=torch.float64), dim=-1)
    A = v.expand(5, 4, 8).clone().requires_grad_(True)   # all columns equal, all instances equal
    out = pmrl_loss(A)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(A.grad).all()
    # and a rank-deficient, partially masked batch
    B = unit(6, 4, 8)
    B[:, 1] = B[:, 0]
    B.requires_grad_(True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1]]).bool()
    pmrl_loss(B, mask).loss.backward()
    assert torch.isfinite(B.grad).all()


def test_safe_eigh_gradient_equals_torch_when_separated():
    G = torch.randn(3, 4, 4, dtype=torch.float64)
    G = (G @ G.transpose(1, 2)).requires_grad_(True)
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    l1, v1 = safe_eigh(G)
    l2, v2 = torch.linalg.eigh(G)
    f1 = (l1 ** 2).sum() + ((v1 * v1.sign()[:, :1]) * w).sum()
    f2 = (l2 ** 2).sum() + ((v2 * v2.sign()[:, :1]) * w).sum()
    g1, = torch.autograd.grad(f1, G)
    g2, = torch.autograd.grad(f2, G)
    torch.testing.assert_close(0.5 * (g1 + g1.transpose(1, 2)), 0.5 * (g2 + g2.transpose(1, 2)),
                               atol=1e-8, rtol=1e-6)


def test_drop_mask_equals_running_on_observed_columns_only():
    A = unit(8, 4, 16)
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[:, 3] = False
    masked = pmrl_loss(A, mask, tau1=1.0, inter_weight=0.0)
    sub = pmrl_loss(A[:, :3], tau1=1.0, inter_weight=0.0)
    assert abs(float(masked.intra - sub.intra)) < 1e-10
    # zero-padding instead of masking changes the loss (zero singular value enters the softmax)
    padded = pmrl_loss(A * mask[..., None], tau1=1.0, inter_weight=0.0)
    assert abs(float(padded.intra - sub.intra)) > 1e-4


def test_spectrum_principal_vector_is_unit_and_sign_fixed():
    A = unit(10, 3, 12)
    s, valid, v1, u = spectrum(A)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(10, dtype=torch.float64))
    assert ((u * A.sum(1)).sum(-1) >= 0).all()
    assert valid.all()


def spectrum_autograd_reference(A, mask):
    """The composed form: masked Gram, safe_eigh, principal vector, all through autograd."""
    Am = A * mask.to(A.dtype).unsqueeze(-1)
    evals, evecs = safe_eigh(Am @ Am.transpose(-2, -1))
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    s = evals.clamp_min(1e-12).sqrt()
    v1 = evecs[..., 0] * mask.to(A.dtype)
    v1 = v1 * torch.where(v1.sum(-1, keepdim=True) < 0, -1.0, 1.0).to(A.dtype)
    return s, v1, torch.einsum("bm,bmd->bd", v1, Am) / s[:, :1]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 10_000))
def test_fused_spectrum_matches_autograd_reference(B, M, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, M, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.rand(B, M, generator=g) < 0.7
    mask[:, 0] = True
    ws, wv, wu = (torch.randn(B, M, generator=g, dtype=torch.float64), torch.randn(B, M, generator=g, dtype=torch.float64),
                  torch.randn(B, 7, generator=g, dtype=torch.float64))
    s, _, v1, u = spectrum(A, mask)
    s_r, v1_r, u_r = spectrum_autograd_reference(A, mask)
    for x, y in ((s, s_r), (v1, v1_r), (u, u_r)):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)
    f = (s * ws).sum() + (v1 * wv).sum() + (u * wu).sum()
    f_r = (s_r * ws).sum() + (v1_r * wv).sum() + (u_r * wu).sum()
    g1, = torch.autograd.grad(f, A)
    g2, = torch.autograd.grad(f_r, A)
    torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-7)


def test_fused_spectrum_gradcheck():
    # columns of different norms: with two unit columns sum(v1) can be 0, where the sign flips
    A = torch.randn(4, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]]).bool()
    wu = torch.randn(4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda X: tuple(spectrum(X, mask)[i] for i in (0, 2)) + ((spectrum(X, mask)[3] * wu),),
                                    (A,), eps=1e-6, atol=1e-6)


def test_spectrum_half_precision_input_is_promoted():
    A = unit(8, 3, 16, dtype=torch.float32)
    s32, _, _, u32 = spectrum(A)
    s16, _, _, u16 = spectrum(A.bfloat16())
    assert s16.dtype == torch.float32 and u16.dtype == torch.float32
    torch.testing.assert_close(s16, s32, atol=2e-2, rtol=2e-2)


def test_gram_volume_matches_direct_determinant():
    A = unit(5, 3, 6)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]]).bool()
    V = gram_volume_matrix(A, mask, anchor=0)
    for i in range(5):
        for j in range(5):
            cols = [A[i, 0]] + [A[j, m] for m in (1, 2) if mask[j, m]]
            X = torch.stack(cols, 1)
            ref = torch.sqrt(torch.det(X.T @ X).clamp_min(1e-12))
            assert abs(float(V[i, j] - ref)) < 1e-9


def test_gram_and_anchor_losses_prefer_aligned_data():
    aligned = unit(16, 1, 8).expand(16, 3, 8) + 0.05 * unit(16, 3, 8, seed=1)
    aligned = F.normalize(aligned, dim=-1)
    random = unit(16, 3, 8, seed=2)
    mask = torch.ones(16, 3, dtype=torch.bool)
    mask[::3, 2] = False
    assert gram_loss(aligned, mask) < gram_loss(random, mask)
    assert anchor_infonce_loss(aligned, mask) < anchor_infonce_loss(random, mask)
    for fn in (gram_loss, anchor_infonce_loss):
        A = random.clone().requires_grad_(True)
        fn(A, mask).backward()
        assert torch.isfinite(A.grad).all()
        # masked columns get no gradient
        assert float(A.grad[~mask].abs().max()) == 0.0


@settings(max_examples=30, deadline=None)
@given(B=st.integers(2, 8), M=st.integers(1, 5), d=st.integers(2, 10), seed=st.integers(0, 1000),
       p=st.floats(0, 0.8))
def test_losses_finite_for_random_masks(B, M, d, seed, p):
    g = torch.Generator().manual_seed(seed)
    A = unit(B, M, d, seed=seed).requires_grad_(True)
    mask = torch.rand(B, M, generator=g) >= p
    mask[:, 0] = True
    for loss in (pmrl_loss(A, mask).loss, gram_loss(A, mask), triangle_loss(A, mask), pairwise_infonce_loss(A, mask),
                 anchor_infonce_loss(A, mask)):
        assert torch.isfinite(loss)
        grad, = torch.autograd.grad(loss, A, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()


def test_bad_mask_shape_is_an_error():
    with pytest.raises(ValueError, match="mask has shape"):
        pmrl_loss(unit(4, 3, 5), torch.ones(4, 2, dtype=torch.bool))


# ---------------------------------------------------------------- GRAM, TRIANGLE, pairwise InfoNCE

def test_gram_volume_is_the_product_of_singular_values():
    A = unit(6, 4, 9)
    V = gram_volume_matrix(A, None, anchor=1)
    for i in range(6):
        for j in range(6):
            X = torch.stack([A[i, 1]] + [A[j, m] for m in (0, 2, 3)], 1)          # (d, 4)
            assert abs(float(V[i, j] - torch.linalg.svdvals(X).prod())) < 1e-7


def test_two_vector_volume_is_abs_sine():
    A = unit(7, 2, 5)
    V = gram_volume_matrix(A, None, anchor=0)
    cos = A[:, 0] @ A[:, 1].T
    torch.testing.assert_close(V, (1 - cos ** 2).sqrt(), atol=1e-7, rtol=0)
    torch.testing.assert_close(pair_similarity(A[:, 0], A[:, 1], "volume"), -(1 - cos ** 2).sqrt())


def _area_reference(a, others):
    """Twice the squared content of the simplex with vertices a, others (brute force)."""
    if not others:
        return torch.zeros((), dtype=a.dtype)
    E = torch.stack([o - a for o in others], 1)
    return 0.5 * torch.det(E.T @ E)


def test_triangle_area_against_brute_force_and_authors_formula():
    A = unit(5, 4, 7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 0]]).bool()
    T = triangle_area_matrix(A, mask, anchor=0)
    for i in range(5):
        for j in range(5):
            ref = _area_reference(A[i, 0], [A[j, m] for m in (1, 2, 3) if mask[j, m]])
            assert abs(float(T[i, j] - ref)) < 1e-9
    # three modalities: exactly the TRIANGLE authors' area_computation
    B = unit(6, 3, 8, seed=3)
    u = B[:, None, 0] - B[None, :, 1]
    v = B[:, None, 0] - B[None, :, 2]
    authors = ((u * u).sum(-1) * (v * v).sum(-1) - (u * v).sum(-1) ** 2) / 2
    torch.testing.assert_close(triangle_area_matrix(B), authors, atol=1e-9, rtol=0)
    # a right isosceles triangle with unit legs has area 1/2: the score is 2 * area^2 = 1/2
    e = torch.eye(3, dtype=torch.float64)
    C = torch.stack([torch.zeros(3, dtype=torch.float64), e[0], e[1]])[None]
    assert abs(float(triangle_area_matrix(C)[0, 0]) - 0.5) < 1e-12


def test_volume_and_area_losses_have_finite_gradients_when_vectors_coincide():
    v = F.normalize(torch.randn(1, 1, 8, dtype=torch.float64), dim=-1)
    for dtype in (torch.float64, torch.float32):
        A = v.expand(5, 4, 8).to(dtype).clone().requires_grad_(True)   # every vector equal
        for fn in (gram_loss, triangle_loss, pairwise_infonce_loss):
            loss = fn(A)
            g, = torch.autograd.grad(loss, A)
            assert torch.isfinite(loss) and torch.isfinite(g).all(), fn.__name__


def test_volume_and_area_gradcheck_with_masks():
    A = unit(4, 4, 6, seed=7).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]).bool()
    assert torch.autograd.gradcheck(lambda X: gram_volume_matrix(X, mask, 0), (A,))
    assert torch.autograd.gradcheck(lambda X: triangle_area_matrix(X, mask, 0), (A,))


def _pairwise_infonce_reference(A, mask, tau):
    """Loop form: every ordered pair (m, n), every query i observing both, gallery = all j observing n."""
    terms = []
    B, M, _ = A.shape
    for m in range(M):
        for n in range(M):
            if m == n:
                continue
            gal = torch.nonzero(mask[:, n]).flatten()
            for i in range(B):
                if mask[i, m] and mask[i, n]:
                    logits = A[i, m] @ A[gal, n].T / tau
                    pos = int((gal == i).nonzero())
                    terms.append(-torch.log_softmax(logits, 0)[pos])
    return torch.stack(terms).mean()


@settings(max_examples=20, deadline=None)
@given(B=st.integers(2, 7), M=st.integers(2, 4), seed=st.integers(0, 1000), p=st.floats(0, 0.6))
def test_pairwise_infonce_matches_loop_reference(B, M, seed, p):
    g = torch.Generator().manual_seed(seed)
    A = unit(B, M, 6, seed=seed)
    mask = torch.rand(B, M, generator=g) >= p
    mask[0] = True
    ref = _pairwise_infonce_reference(A, mask, 0.2)
    assert abs(float(pairwise_infonce_loss(A, mask, tau=0.2) - ref)) < 1e-10


def test_new_contrasts_prefer_aligned_data_and_ignore_masked_columns():
    aligned = F.normalize(unit(16, 1, 8).expand(16, 3, 8) + 0.05 * unit(16, 3, 8, seed=1), dim=-1)
    random = unit(16, 3, 8, seed=2)
    mask = torch.ones(16, 3, dtype=torch.bool)
    mask[::3, 2] = False
    for fn in (triangle_loss, pairwise_infonce_loss):
        assert fn(aligned, mask) < fn(random, mask)
        A = random.clone().requires_grad_(True)
        fn(A, mask).backward()
        assert float(A.grad[~mask].abs().max()) == 0.0


def test_learnable_temperature_modules_train_tau():
    A = unit(8, 3, 6).float().requires_grad_(True)
    for mod in (GRAMLoss(), TriangleLoss(), PairwiseInfoNCELoss()):
        assert abs(float(mod.tau) - 0.07) < 1e-6
        mod(A).backward()
        assert mod.log_tau.grad is not None and torch.isfinite(mod.log_tau.grad)


def test_retrieval_by_own_similarity():
    A = unit(50, 2, 16, seed=4)
    q, g = A[:, 0], A[:, 1].clone()
    g[:25] = -q[:25]                        # anti-aligned: first by |sin| (volume), last by cosine
    r_vol = retrieval_ranks(q, g, similarity="volume")
    r_cos = retrieval_ranks(q, g, similarity="cosine")
    assert (r_vol[:25] == 1).all() and (r_cos[:25] > 1).all()
    # area of two unit vertices ranks as cosine does
    torch.testing.assert_close(retrieval_ranks(q, g, similarity="area"), r_cos)
    with pytest.raises(ValueError, match="unknown similarity"):
        retrieval_ranks(q, g, similarity="dot")
