r"""Shared-latent generative model of multimodal representations (the *calibrator*).

Model, for instance :math:`i` and modality :math:`m`:

.. math::
    \beta_i \sim \mathcal N(0, I_k), \qquad
    z_{im} = W_m \beta_i + \mu_m + \varepsilon_{im}, \quad
    \varepsilon_{im} \sim \mathcal N(0, \sigma_m^2 I_{d_m}).

Only the observed modalities :math:`O_i` of an instance enter its posterior, so the
posterior covariance depends on :math:`O_i` alone and is computed once per distinct
missing *pattern* of a batch (a loop over at most :math:`2^M` patterns, never over
instances). Everything is pure PyTorch, dtype- and device-agnostic, and independent of
any trainer: use :meth:`SharedLatentCalibrator.posterior`, :meth:`~SharedLatentCalibrator.impute`,
:meth:`~SharedLatentCalibrator.sufficient_stats` and :meth:`~SharedLatentCalibrator.m_step`
from your own loop, or the scikit-learn style :meth:`~SharedLatentCalibrator.fit`.

Modalities may have different widths :math:`d_m` (pass ``dims``): they are stored
zero-padded to ``D = max(d_m)``; the padded rows of :math:`W_m, \mu_m` stay exactly zero
under EM and are excluded from every count of dimensions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .validation import check_embeddings

__all__ = ["SharedLatentCalibrator", "Posterior", "Imputation", "SufficientStats", "missing_patterns",
           "modality_rows", "select_latent_dim", "select_w_prior", "heldout_imputation_r2"]


def _full_precision(fn):
    """Run a calibrator method with autocast disabled: Cholesky factorisations and EM
    statistics need the parameters' own precision even inside a bf16/fp16 training step."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(device_type=self.W.device.type, enabled=False):
            return fn(self, *args, **kwargs)
    return wrapper


def missing_patterns(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct rows of a ``(B, M)`` mask: ``(patterns (P, M) bool, index (B,), counts (P,))``.

    Rows are encoded as integers (bit m = modality m observed), so a 1-D ``unique`` does the
    grouping (``unique(dim=0)`` is an order of magnitude slower on CPU)."""
    M = mask.shape[1]
    if M > 62:
        patterns, index, counts = torch.unique(mask.to(torch.uint8), dim=0, return_inverse=True,
                                               return_counts=True)
        return patterns.bool(), index, counts
    bits = torch.ones(M, dtype=torch.long, device=mask.device) << torch.arange(M, device=mask.device)
    codes = (mask.long() * bits).sum(1)
    uniq, index, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    patterns = (uniq[:, None] & bits) != 0
    return patterns, index, counts


def modality_rows(mask: Tensor, observed: bool = True) -> list[Tensor]:
    """For each modality, the indices of the rows where it is observed (or missing).

    The E-step, the statistics and the imputation loop over these ``M`` index sets (never
    over instances) so that their ``(rows x d x k)`` products skip the cells that do not
    take part: with half the cells missing they do half the work of a masked dense product."""
    cols = mask if observed else ~mask
    return [cols[:, m].nonzero().squeeze(1) for m in range(mask.shape[1])]


def blocked_cholesky_ex(A: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    r"""``torch.linalg.cholesky_ex`` by 2 x 2 blocks for matrices wider than ``2 * block``.

    :math:`L_{11}L_{11}^\top = A_{11}`, :math:`L_{21} = A_{21}L_{11}^{-\top}` (triangular solve),
    :math:`L_{22}L_{22}^\top = A_{22} - L_{21}L_{21}^\top` (recursively). The same factor; on
    CPU the batched LAPACK factorisation of ``k >= 128`` matrices is about twice as slow as
    this split, whose off-diagonal work is a triangular solve and a GEMM. ``info`` is 0 or the
    order of the first failing leading minor, as in ``cholesky_ex``."""
    n = A.shape[-1]
    if n < 2 * block:
        return torch.linalg.cholesky_ex(A)
    b = n // 2
    L11, info1 = blocked_cholesky_ex(A[..., :b, :b], block)
    L21 = torch.linalg.solve_triangular(L11.transpose(-2, -1), A[..., b:, :b], upper=True, left=False)
    L22, info2 = blocked_cholesky_ex(A[..., b:, b:] - L21 @ L21.transpose(-2, -1), block)
    L = torch.cat([torch.cat([L11, torch.zeros_like(L21.transpose(-2, -1))], -1), torch.cat([L21, L22], -1)], -2)
    info = torch.where(info1 > 0, info1, torch.where(info2 > 0, info2 + b, info2))
    return L, info


def _pattern_means(rhs: Tensor, cov: Tensor, index: Tensor, counts: Tensor, order: Tensor | None = None) -> Tensor:
    r""":math:`\mathbb E[\beta_i] = V_{O_i} r_i`: instances grouped by pattern (one sort, or the
    given ``order``), then one GEMM per pattern (at most :math:`2^M`)."""
    if cov.shape[0] == 1:
        return rhs @ cov[0]
    order = torch.argsort(index) if order is None else order
    mean_sorted = torch.cat([r @ cov[p] for p, r in enumerate(torch.split(rhs[order], counts.tolist()))])
    return torch.empty_like(mean_sorted).index_copy(0, order, mean_sorted)


def _covariance_sums(patterns: Tensor, counts: Tensor, cov: Tensor) -> Tensor:
    r""":math:`\sum_{i \in S_m} V_{O_i}` per modality ``(M, k, k)``: each pattern's covariance times
    its instance count, summed over the patterns that observe ``m``."""
    return torch.einsum("pm,pkl->mkl", patterns.to(cov.dtype) * counts[:, None].to(cov.dtype), cov)


class _ObservedBlocks:
    """Data held for an EM fit in memory: per modality the observed rows and their features
    (gathered once, contiguous, trimmed to the modality's own width) and the data-only
    statistics that stay fixed across iterations (``sum z``, ``sum ||z||^2``, ``||z_i||^2``)."""

    def __init__(self, Z: Tensor, mask: Tensor, dims: Tensor):
        self.N, self.mask = Z.shape[0], mask
        self.rows = modality_rows(mask)
        self.blocks = [Z[r, m, :int(d)].contiguous() for m, (r, d) in enumerate(zip(self.rows, dims.tolist()))]
        self.sq = [(B * B).sum(1) for B in self.blocks]
        self.sz = Z.new_zeros(Z.shape[1], Z.shape[2])
        for m, B in enumerate(self.blocks):
            self.sz[m, :B.shape[1]] = B.sum(0)
        self.szz = torch.stack([q.sum() for q in self.sq])
        self.n = mask.to(Z.dtype).sum(0)
        self.patterns, self.index, self.counts = missing_patterns(mask)
        self.order = torch.argsort(self.index)


@dataclass
class Posterior:
    r"""Posterior :math:`p(\beta_i \mid z_{i,O_i}) = \mathcal N(\text{mean}_i, V_{O_i})`.

    ``cov[p]`` and ``chol[p]`` belong to ``patterns[p]``; ``pattern_index[i]`` maps instance
    ``i`` to its pattern. ``rhs`` is :math:`r_i = \sum_{m\in O_i} W_m^\top (z_{im}-\mu_m)/\sigma_m^2`.
    """

    mean: Tensor           # (B, k)
    cov: Tensor            # (P, k, k)
    chol: Tensor           # (P, k, k) lower Cholesky factor of the precision P_O
    patterns: Tensor       # (P, M) bool
    pattern_index: Tensor  # (B,)
    counts: Tensor         # (P,)
    rhs: Tensor            # (B, k)
    observed_rows: list[Tensor] | None = None   # per modality (None: every cell observed)

    def instance_cov(self) -> Tensor:
        """Per-instance covariance ``(B, k, k)`` (materialises ``B*k*k`` numbers)."""
        return self.cov[self.pattern_index]


@dataclass
class Imputation:
    r"""Imputed modalities :math:`\hat z_{im} = W_m \mathbb E[\beta_i] + \mu_m`.

    ``values`` ``(B, M, D)`` holds the imputations for every cell (observed cells are
    imputed too, which is useful for diagnostics); ``filled`` keeps observed cells and
    replaces only missing ones. ``predictive_var[i, m]`` is
    :math:`\operatorname{tr}(W_m V_{O_i} W_m^\top)/d_m + \sigma_m^2`, the mean per-feature
    variance of the predictive distribution :math:`\mathcal N(\hat z_{im}, W_m V_O W_m^\top + \sigma_m^2 I)`.
    ``confidence[i, m]`` is :math:`1 - \operatorname{tr}(W_m V_{O_i} W_m^\top)/\operatorname{tr}(W_m W_m^\top)`
    in ``[0, 1]``: the fraction of the latent-driven variance of modality ``m`` that the
    observed modalities of instance ``i`` resolve (1 = fully determined, 0 = prior only).
    """

    values: Tensor
    filled: Tensor
    mask: Tensor
    predictive_var: Tensor
    confidence: Tensor


_STAT_FIELDS = ("n", "sz", "szb", "sb", "sbb", "szz")


@dataclass
class SufficientStats:
    r"""Additive sufficient statistics of the M-step, per modality :math:`m` over the
    instances :math:`S_m` where it is observed:

    ``n`` :math:`=|S_m|`, ``sz`` :math:`=\sum z`, ``szb`` :math:`=\sum z\,\mathbb E[\beta]^\top`,
    ``sb`` :math:`=\sum \mathbb E[\beta]`, ``sbb`` :math:`=\sum \mathbb E[\beta\beta^\top]`,
    ``szz`` :math:`=\sum \lVert z\rVert^2`.

    Statistics of disjoint batches (or processes) add exactly: ``s1 + s2``. For
    stochastic EM, blend with :meth:`ema`. :meth:`flatten` / :meth:`unflatten_like` pack
    them into one vector for a single ``all_reduce``.
    """

    n: Tensor    # (M,)
    sz: Tensor   # (M, D)
    szb: Tensor  # (M, D, k)
    sb: Tensor   # (M, k)
    sbb: Tensor  # (M, k, k)
    szz: Tensor  # (M,)

    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        return SufficientStats(*(getattr(self, f) + getattr(other, f) for f in _STAT_FIELDS))

    def scale(self, a: float) -> "SufficientStats":
        return SufficientStats(*(getattr(self, f) * a for f in _STAT_FIELDS))

    def ema(self, new: "SufficientStats", momentum: float) -> "SufficientStats":
        r""":math:`s \leftarrow (1-\eta)\, s + \eta\, s_{new}` (stochastic-approximation EM)."""
        return self.scale(1.0 - momentum) + new.scale(momentum)

    def flatten(self) -> Tensor:
        return torch.cat([getattr(self, f).reshape(-1) for f in _STAT_FIELDS])

    def unflatten_like(self, flat: Tensor) -> "SufficientStats":
        out, i = [], 0
        for f in _STAT_FIELDS:
            t = getattr(self, f)
            out.append(flat[i: i + t.numel()].view_as(t))
            i += t.numel()
        return SufficientStats(*out)

    @staticmethod
    def zeros(M: int, D: int, k: int, *, dtype=None, device=None) -> "SufficientStats":
        kw = dict(dtype=dtype, device=device)
        return SufficientStats(torch.zeros(M, **kw), torch.zeros(M, D, **kw), torch.zeros(M, D, k, **kw),
                               torch.zeros(M, k, **kw), torch.zeros(M, k, k, **kw), torch.zeros(M, **kw))

    def to(self, *args, **kwargs) -> "SufficientStats":
        return SufficientStats(*(getattr(self, f).to(*args, **kwargs) for f in _STAT_FIELDS))


class SharedLatentCalibrator(nn.Module):
    r"""Shared-latent Gaussian model over ``M`` modalities with closed-form E and M steps.

    Parameters are buffers (not trained by back-propagation): ``W`` ``(M, D, k)``,
    ``mu`` ``(M, D)``, ``sigma2`` ``(M,)``. They are saved by ``state_dict``.

    Args:
        n_modalities: ``M``.
        dim: ``D``, the (maximum) embedding width.
        latent_dim: ``k``. The paper's default is ``D // 2``.
        dims: optional per-modality widths ``d_m <= D`` (zero-padded storage).
        names: optional modality names, used in error messages.
        jitter: added to the diagonal of every matrix that is factorised.
        sigma2_floor: lower bound of :math:`\sigma_m^2` (guards collapse to 0).
        sigma2_floor_rel: a further lower bound relative to each modality's own per-feature
            variance (measured by :meth:`init_from_data`): :math:`\sigma_m^2 \ge \rho\,v_m`.
            Without it a low-dimensional or nearly deterministic view can get a noise variance
            orders of magnitude below the others and dominate every posterior it enters
            (UCI's 6-feature view: about 100x); ``0`` keeps the published model.
        w_prior: precision :math:`\lambda` of a Gaussian prior :math:`W_m \sim \mathcal N(0, \lambda^{-1})`
            elementwise; the M-step then gives the MAP loading (ridge regression on the
            posterior latents, see :meth:`m_step`); ``0`` is maximum likelihood.
        min_count: an M-step skips (with a warning) a modality observed in fewer
            instances than this.
    """

    def __init__(self, n_modalities: int, dim: int, latent_dim: int, *, dims: Sequence[int] | None = None,
                 names: Sequence[str] | None = None, jitter: float = 1e-6, sigma2_floor: float = 1e-6,
                 sigma2_floor_rel: float = 0.0, w_prior: float = 0.0,
                 min_count: int = 2, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if n_modalities < 1 or dim < 1 or latent_dim < 1:
            raise ValueError(f"n_modalities, dim and latent_dim must be >= 1, got {n_modalities}, {dim}, {latent_dim}")
        if dims is not None:
            dims = [int(d) for d in dims]
            if len(dims) != n_modalities or min(dims) < 1 or max(dims) > dim:
                raise ValueError(f"dims must list {n_modalities} widths in [1, {dim}], got {dims}")
        if names is not None and len(names) != n_modalities:
            raise ValueError(f"names must have {n_modalities} entries, got {len(names)}")
        self.M, self.D, self.k = int(n_modalities), int(dim), int(latent_dim)
        self.names = list(names) if names is not None else None
        self.jitter, self.sigma2_floor, self.min_count = float(jitter), float(sigma2_floor), int(min_count)
        if not 0.0 <= sigma2_floor_rel < 1.0:
            raise ValueError(f"sigma2_floor_rel must be in [0, 1), got {sigma2_floor_rel}")
        self.sigma2_floor_rel = float(sigma2_floor_rel)
        if w_prior < 0:
            raise ValueError(f"w_prior must be >= 0, got {w_prior}")
        self.w_prior = float(w_prior)
        kw = dict(dtype=dtype or torch.get_default_dtype(), device=device)
        self.register_buffer("W", torch.zeros(self.M, self.D, self.k, **kw))
        self.register_buffer("mu", torch.zeros(self.M, self.D, **kw))
        self.register_buffer("sigma2", torch.ones(self.M, **kw))
        self.register_buffer("dims", torch.tensor(dims or [self.D] * self.M, dtype=torch.long, device=device))
        self.register_buffer("initialized", torch.tensor(False, device=device))
        # per-modality per-feature variance of the data the model was initialised on (for the
        # relative noise floor); 0 until init_from_data
        self.register_buffer("data_var", torch.zeros(self.M, **kw))
        self.history_: list[float] = []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "data_var"
        if key not in state_dict:          # saved before the relative floor existed
            state_dict[key] = torch.zeros_like(self.data_var)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sigma2_lower_bound(self) -> Tensor:
        """``(M,)``: ``max(sigma2_floor, sigma2_floor_rel * data_var)``."""
        return (self.data_var * self.sigma2_floor_rel).clamp_min(self.sigma2_floor)

    # ------------------------------------------------------------------ helpers
    @property
    def row_mask(self) -> Tensor:
        """``(M, D)`` boolean: which stored rows are real features (not padding)."""
        return torch.arange(self.D, device=self.W.device)[None, :] < self.dims[:, None]

    def _check(self, Z: Tensor, mask: Tensor | None, require_observed: bool = True) -> tuple[Tensor, Tensor]:
        Z, mask = check_embeddings(Z, mask, self.M, self.D, names=self.names, require_observed=require_observed)
        if Z.dtype != self.W.dtype or Z.device != self.W.device:
            Z = Z.to(dtype=self.W.dtype, device=self.W.device)
        return Z, mask.to(self.W.device)

    def _eye(self, n: int) -> Tensor:
        return torch.eye(n, dtype=self.W.dtype, device=self.W.device)

    def _cholesky(self, A: Tensor, what: str) -> Tensor:
        """Cholesky of SPD ``A``; if it fails, retried with ``jitter * I`` escalated x10 up to 6 times.

        The posterior precision is ``I + PSD`` (eigenvalues >= 1) and needs no jitter, so
        exact results are kept whenever the plain factorisation succeeds.
        """
        if not bool(torch.isfinite(A).all()):
            raise FloatingPointError(f"{what} contains NaN/inf; the calibrator parameters are corrupt")
        eye = self._eye(A.shape[-1])
        jitter = 0.0
        for attempt in range(8):
            L, info = blocked_cholesky_ex(A + jitter * eye if jitter else A)
            if not bool((info > 0).any()):
                return L
            jitter = self.jitter if attempt == 0 else jitter * 10.0
        raise FloatingPointError(f"{what} is not positive definite even with jitter {jitter:g}")

    # ------------------------------------------------------------------ E-step
    @_full_precision
    def posterior(self, Z: Tensor, mask: Tensor | None = None, *, validate: bool = True) -> Posterior:
        r"""Closed-form posterior of :math:`\beta` given the observed modalities.

        :math:`P_O = I + \sum_{m\in O} W_m^\top W_m/\sigma_m^2`, :math:`V_O = P_O^{-1}`,
        :math:`\mathbb E[\beta_i] = V_O \sum_{m\in O} W_m^\top (z_{im}-\mu_m)/\sigma_m^2`.
        One Cholesky factor per distinct pattern gives :math:`V_O` (``cholesky_inverse``; both
        are cached per pattern until the parameters change); the means of a pattern's
        instances are then one GEMM with :math:`V_O`. As
        :math:`P_O \succeq I`, :math:`\lVert V_O\rVert_2 \le 1` and this product is as accurate as two
        triangular solves (tested to 1e-10 against dense Gaussian conditioning in float64)
        while several times faster for small groups.
        Differentiable in ``Z`` (useful when gradients should pass through imputations).
        """
        if validate:
            Z, mask = self._check(Z, mask)
        W, s2 = self.W, self.sigma2
        B = Z.shape[0]
        patterns, index, counts = missing_patterns(mask)
        L, cov = self._pattern_factors(patterns)                             # (P, k, k) each
        rows_m = None if bool(mask.all()) else modality_rows(mask)
        if rows_m is None:                                                   # (B, k): one GEMM
            rhs = ((Z - self.mu) / s2[:, None]).reshape(B, -1) @ W.reshape(-1, self.k)
        else:                                                                # observed cells only
            rhs = Z.new_zeros(B, self.k)
            for m, rows in enumerate(rows_m):                                # loop over modalities
                if rows.numel():
                    rhs = rhs.index_add(0, rows, (Z[rows, m] - self.mu[m]) @ W[m] / s2[m])
        mean = _pattern_means(rhs, cov, index, counts)
        return Posterior(mean, cov, L, patterns, index, counts, rhs, rows_m)

    def _param_cache(self) -> dict:
        """Quantities that depend on ``W`` and ``sigma2`` only, kept until either changes
        (in place, e.g. by an M-step, or replaced); rebuilt on every call while ``W`` takes gradients."""
        # the cache holds the tensors themselves (compared by identity, so a new tensor at a
        # recycled address is not mistaken for the old one) and their in-place version counters
        key = (self.W._version, self.sigma2._version)
        cache = getattr(self, "_cache", None)
        if (cache is None or cache["tensors"][0] is not self.W or cache["tensors"][1] is not self.sigma2
                or cache["key"] != key or torch.is_grad_enabled() and self.W.requires_grad):
            cache = {"tensors": (self.W, self.sigma2), "key": key, "factors": {}}
            self._cache = cache
        return cache

    def invalidate_cache(self) -> None:
        """Forget the cached parameter-derived quantities; needed only after ``W`` or
        ``sigma2`` were written by something that bypasses PyTorch's version counter
        (``.data``, a collective such as ``dist.broadcast``)."""
        self._cache = None

    def _scaled_gram(self) -> Tensor:
        r""":math:`W_m^\top W_m/\sigma_m^2` ``(M, k, k)``, cached until ``W`` or ``sigma2`` change."""
        cache = self._param_cache()
        if "gram" not in cache:
            cache["gram"] = self.W.transpose(1, 2) @ self.W / self.sigma2[:, None, None]
        return cache["gram"]

    _MAX_CACHED_PATTERNS = 256

    def _pattern_factors(self, patterns: Tensor) -> tuple[Tensor, Tensor]:
        r"""Cholesky factor of :math:`P_O` and :math:`V_O=P_O^{-1}` for each row of ``patterns``
        ``(P, M)``. Factorised once per pattern while the parameters stay the same (a refit
        pass, an epoch of the ``epoch`` schedule, inference), so later batches only stack them."""
        factors = self._param_cache()["factors"]
        keys = [tuple(row) for row in patterns.tolist()]
        new = [i for i, key in enumerate(keys) if key not in factors]
        if new:
            if len(factors) + len(new) > self._MAX_CACHED_PATTERNS:
                # full: start again with this call's patterns (all of them, so that none of the
                # ones found above is lost with the rest; 12 views at MCAR 0.5 have 4096)
                factors.clear()
                new = list(range(len(keys)))
            sub = patterns[new].to(self.W.dtype)
            prec = self._eye(self.k) + torch.einsum("pm,mkl->pkl", sub, self._scaled_gram())
            L = self._cholesky(prec, "posterior precision")
            cov = torch.cholesky_inverse(L)
            if len(new) <= self._MAX_CACHED_PATTERNS:
                for j, i in enumerate(new):
                    factors[keys[i]] = (L[j], cov[j])
            if len(new) == len(keys):                                         # all fresh: no re-stacking
                return L, cov
        return (torch.stack([factors[key][0] for key in keys]), torch.stack([factors[key][1] for key in keys]))

    def transform(self, Z: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Posterior mean :math:`\mathbb E[\beta_i \mid z_{i,O_i}]`, shape ``(B, k)``."""
        return self.posterior(Z, mask).mean

    @_full_precision
    def impute(self, Z: Tensor, mask: Tensor | None = None, posterior: Posterior | None = None, *,
               validate: bool = True, observed_too: bool = True) -> Imputation:
        r"""Impute every modality as :math:`W_m\mathbb E[\beta_i]+\mu_m` with a confidence.

        Differentiable in ``Z`` through the posterior mean. ``validate=False`` skips the
        input checks (for trusted tensors already in the calibrator's dtype, e.g. a training step).
        ``observed_too=False`` computes the missing cells only (``values`` then equals
        ``filled``), the training step's case."""
        if validate:
            Z, mask = self._check(Z, mask)
        post = posterior if posterior is not None else self.posterior(Z, mask, validate=False)
        if observed_too:
            values = torch.einsum("mdk,bk->bmd", self.W, post.mean) + self.mu
            filled = torch.where(mask[..., None], Z, values)
        else:
            values = Z.clone()
            for m, rows in enumerate(modality_rows(mask, observed=False)):   # loop over modalities
                if rows.numel():
                    values[rows, m] = post.mean[rows] @ self.W[m].T + self.mu[m]
            filled = values
        # tr(W_m V_p W_m^T) = <W_m^T W_m, V_p>_F, per pattern then gathered per instance.
        WtW = self._scaled_gram() * self.sigma2[:, None, None]                # (M, k, k), cached
        tr_post = torch.einsum("mkl,pkl->pm", WtW, post.cov)                  # (P, M)
        tr_prior = WtW.diagonal(dim1=1, dim2=2).sum(-1)                       # (M,)
        d = self.dims.to(self.W.dtype)
        pred_var = (tr_post / d + self.sigma2)[post.pattern_index]
        conf = (1.0 - tr_post / tr_prior.clamp_min(torch.finfo(self.W.dtype).tiny)).clamp(0.0, 1.0)
        return Imputation(values, filled, mask, pred_var, conf[post.pattern_index])

    # ------------------------------------------------------------------ M-step
    @_full_precision
    def sufficient_stats(self, Z: Tensor, mask: Tensor | None = None, posterior: Posterior | None = None, *,
                         validate: bool = True) -> SufficientStats:
        """E-step statistics of a batch (see :class:`SufficientStats`). No gradient."""
        with torch.no_grad():
            if validate:
                Z, mask = self._check(Z, mask)
            post = posterior if posterior is not None else self.posterior(Z, mask, validate=False)
            Eb = post.mean.detach()
            n = mask.to(Z.dtype).sum(0)
            cov_sum = _covariance_sums(post.patterns, post.counts, post.cov)   # sum of V_O over S_m
            rows_m = None if bool(mask.all()) else (post.observed_rows or modality_rows(mask))
            if rows_m is None:
                sz, szz, sb = Z.sum(0), (Z * Z).sum((0, 2)), Eb.sum(0).expand(self.M, -1)
                szb = (Z.reshape(Z.shape[0], -1).T @ Eb).view(self.M, self.D, self.k)
                sbb = (Eb.T @ Eb).expand(self.M, -1, -1) + cov_sum
            else:   # observed cells only, one loop over modalities
                stats = []
                for m, rows in enumerate(rows_m):
                    Zm, Em = Z[rows, m], Eb[rows]
                    stats.append((Zm.sum(0), (Zm * Zm).sum(), Em.sum(0), Zm.T @ Em, Em.T @ Em))
                sz, szz, sb, szb, sbb = (torch.stack(t) for t in zip(*stats))
                sbb = sbb + cov_sum
            return SufficientStats(n, sz, szb, sb, sbb, szz)

    @_full_precision
    def m_step(self, stats: SufficientStats) -> Tensor:
        r"""Closed-form update from (summed) statistics; returns the ``(M,)`` bool of
        modalities that were updated.

        :math:`[W_m\ \mu_m] = (\sum z b^\top)(\sum B)^{-1}` with :math:`b=[\mathbb E\beta; 1]`,
        :math:`B=\mathbb E[bb^\top]`; then
        :math:`\sigma_m^2 = \frac{1}{d_m n_m}\big(\sum\lVert z\rVert^2 - 2\operatorname{tr}(\Theta^\top \sum z b^\top)
        + \operatorname{tr}(\Theta^\top\Theta \sum B)\big)
        = \frac{1}{d_m n_m}\big(\sum\lVert z\rVert^2 - \operatorname{tr}(\Theta^\top \sum z b^\top)\big)`
        (as :math:`\Theta\sum B = \sum z b^\top`), floored at ``sigma2_floor``.

        With ``w_prior`` :math:`\lambda>0` the loading is the MAP estimate under
        :math:`W_m\sim\mathcal N(0,\lambda^{-1})`: :math:`\Theta(\sum B + \sigma_m^2\Lambda) = \sum z b^\top`
        with :math:`\Lambda=\operatorname{diag}(\lambda,\dots,\lambda,0)` (no prior on :math:`\mu_m`;
        :math:`\sigma_m^2` the current value), and :math:`\sigma_m^2` takes the full residual
        :math:`\sum\lVert z\rVert^2 - 2\operatorname{tr}(\Theta^\top\sum z b^\top) + \operatorname{tr}(\Theta^\top\Theta\sum B)`.
        """
        with torch.no_grad():
            st = stats.to(dtype=self.W.dtype, device=self.W.device)
            # one synchronising check: a sum is NaN/inf iff a term is (or the sum overflows)
            if not bool(torch.isfinite(torch.stack([getattr(st, f).sum() for f in _STAT_FIELDS])).all()):
                bad = [f for f in _STAT_FIELDS if not bool(torch.isfinite(getattr(st, f)).all())]
                raise FloatingPointError(f"sufficient statistic(s) {bad or list(_STAT_FIELDS)} hold NaN/inf")
            M, k = self.M, self.k
            SB = torch.zeros(M, k + 1, k + 1, dtype=self.W.dtype, device=self.W.device)
            SB[:, :k, :k] = st.sbb
            SB[:, :k, k] = st.sb
            SB[:, k, :k] = st.sb
            SB[:, k, k] = st.n
            SZB = torch.cat([st.szb, st.sz[..., None]], dim=-1)                 # (M, D, k+1)
            ok = st.n >= self.min_count
            if not bool(ok.all()):
                bad = [self.names[m] if self.names else m for m in (~ok).nonzero().flatten().tolist()]
                warnings.warn(f"M-step skipped for modality(ies) {bad}: observed in fewer than "
                              f"{self.min_count} instances; their parameters are kept", RuntimeWarning)
                if not bool(ok.any()):
                    return ok
                SB, SZB, st = SB[ok], SZB[ok], SufficientStats(*(getattr(st, f)[ok] for f in _STAT_FIELDS))
            SB_data = SB
            if self.w_prior > 0:       # MAP: ridge on the loading columns, none on the mean
                s2_now = (self.sigma2 if ok.all() else self.sigma2[ok]).to(SB.dtype)
                ridge = torch.zeros(k + 1, dtype=SB.dtype, device=SB.device)
                ridge[:k] = self.w_prior
                SB = SB + torch.diag_embed(s2_now[:, None] * ridge)
            # Scale-aware jitter: the statistics grow with n.
            scale = SB.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1.0)[:, None, None]
            L = self._cholesky(SB / scale, "M-step normal matrix")
            # Theta (L L^T) = SZB: two triangular solves from the right, no transposed copies
            Y = torch.linalg.solve_triangular(L.transpose(1, 2), SZB / scale, upper=True, left=False)
            theta = torch.linalg.solve_triangular(L, Y, upper=False, left=False)
            rows = self.row_mask if ok.all() else self.row_mask[ok]
            theta = theta * rows[..., None]
            # at the solution Theta SB = SZB, so tr(Theta^T Theta SB) = tr(Theta^T SZB) and the
            # residual is sum ||z||^2 - tr(Theta^T SZB) (Tipping & Bishop's PPCA update)
            cross = (theta * SZB).sum((1, 2))
            d = self.dims[ok].to(self.W.dtype)
            if self.w_prior > 0:       # Theta SB != SZB under the prior: the full residual
                quad = (theta @ SB_data * theta).sum((1, 2))
                s2 = (st.szz - 2 * cross + quad) / (d * st.n)
            else:
                s2 = (st.szz - cross) / (d * st.n)
            self.W[ok] = theta[..., :k]
            self.mu[ok] = theta[..., k]
            self.sigma2[ok] = torch.maximum(s2, self.sigma2_lower_bound()[ok])
            self.initialized.fill_(True)
            return ok

    # ------------------------------------------------------------------ likelihood
    @_full_precision
    def log_likelihood(self, Z: Tensor, mask: Tensor | None = None, posterior: Posterior | None = None, *,
                       validate: bool = True) -> Tensor:
        r"""Per-instance marginal log-likelihood of the observed part, ``(B,)``.

        :math:`z_O \sim \mathcal N(\mu_O, W_O W_O^\top + \Sigma_O)`; with the determinant
        lemma :math:`\log|C| = \log|P_O| + \sum_{m\in O} d_m\log\sigma_m^2` and Woodbury
        :math:`x^\top C^{-1}x = \sum_{m\in O}\lVert x_m\rVert^2/\sigma_m^2 - r^\top \mathbb E[\beta]`.
        """
        if validate:
            Z, mask = self._check(Z, mask)
        post = posterior if posterior is not None else self.posterior(Z, mask, validate=False)
        X = Z - self.mu
        quad = (mask.to(Z.dtype) * (X * X).sum(-1) / self.sigma2).sum(-1) - (post.rhs * post.mean).sum(-1)
        return self._marginal_loglik(quad, post.chol, post.pattern_index, mask)

    def _marginal_loglik(self, quad: Tensor, chol: Tensor, index: Tensor, mask: Tensor) -> Tensor:
        """``log N(z_O; mu_O, C_O)`` per instance from the Woodbury quadratic form ``quad`` and
        the Cholesky factors ``chol`` of the pattern precisions (determinant lemma)."""
        w = mask.to(quad.dtype)
        d = self.dims.to(quad.dtype)
        logdet = 2 * torch.log(chol.diagonal(dim1=1, dim2=2)).sum(-1)[index] + (w * d * torch.log(self.sigma2)).sum(-1)
        return -0.5 * ((w * d).sum(-1) * math.log(2 * math.pi) + logdet + quad)

    # ------------------------------------------------------------------ initialisation
    @_full_precision
    def init_from_data(self, Z: Tensor, mask: Tensor | None = None, *, method: str = "pca",
                       max_samples: int = 20000, generator: torch.Generator | None = None,
                       solver: str = "auto") -> "SharedLatentCalibrator":
        r"""Initialise ``W, mu, sigma2``.

        ``"pca"``: :math:`\mu_m` = mean of the observed rows; missing cells are mean-filled,
        the modalities concatenated and the closed-form PPCA solution of that matrix taken:
        :math:`W = U_k(\Lambda_k - \bar\sigma^2 I)^{1/2}` split per modality, with
        :math:`\sigma_m^2` the per-feature residual variance of modality :math:`m` outside the
        top-:math:`k` subspace. A subsample of at most ``max_samples`` instances is used.
        ``"random"``: small random ``W``, data means and variances (for tests of EM itself).

        ``solver`` (PCA): ``"full"`` eigendecomposes the ``p x p`` covariance of the
        concatenated widths :math:`p=\sum_m d_m` (cubic in ``p``); ``"randomized"`` takes the
        top-``k`` singular vectors of the ``N x p`` data by a randomised range finder with
        power iterations (``torch.svd_lowrank``, Halko et al. 2011), linear in ``p``, and the
        residual variance :math:`(\operatorname{tr}C - \sum_{j\le k}\lambda_j)/(p-k)` without the
        other eigenvalues; ``"auto"``: ``full`` up to ``p = 1024``, else ``randomized``.
        """
        if method not in ("pca", "random"):
            raise ValueError(f"unknown init method '{method}'; valid: 'pca', 'random'")
        if solver not in ("auto", "full", "randomized"):
            raise ValueError(f"unknown init solver '{solver}'; valid: 'auto', 'full', 'randomized'")
        Z, mask = self._check(Z, mask)
        with torch.no_grad():
            if Z.shape[0] > max_samples:
                sel = torch.randperm(Z.shape[0], generator=generator)[:max_samples].to(Z.device)
                Z, mask = Z[sel], mask[sel]
            w = mask.to(Z.dtype)
            n = w.sum(0).clamp_min(1.0)
            mu = torch.einsum("bm,bmd->md", w, Z) / n[:, None]
            X = torch.where(mask[..., None], Z - mu, torch.zeros((), dtype=Z.dtype, device=Z.device))
            d = self.dims.to(Z.dtype)
            var = (X * X).sum((0, 2)) / (n * d)                                  # per-feature variance
            self.data_var.copy_(var)
            rows = self.row_mask
            if method == "random":
                g = generator if generator is not None else torch.Generator().manual_seed(0)
                W = torch.randn(self.M, self.D, self.k, generator=g).to(Z) * (0.1 * var.sqrt())[:, None, None]
                self.W.copy_(W * rows[..., None])
                self.sigma2.copy_(torch.maximum(var, self.sigma2_lower_bound()))
            else:
                Xc = X[:, rows]                                                   # (B, sum d_m)
                p = Xc.shape[1]
                k = min(self.k, p, Xc.shape[0])
                if solver == "full" or (solver == "auto" and p <= 1024):
                    evals, evecs = torch.linalg.eigh(Xc.T @ Xc / Xc.shape[0])
                    evals, evecs = evals.flip(0), evecs.flip(1)
                    resid = evals[k:].clamp_min(0).mean() if p > k else evals.new_tensor(self.sigma2_floor)
                else:
                    # svd_lowrank draws from the global generator: a forked, seeded one keeps the
                    # initialisation reproducible and leaves the caller's random stream untouched
                    with torch.random.fork_rng(devices=[Xc.device] if Xc.is_cuda else []):
                        torch.manual_seed(0)
                        _, S, V = torch.svd_lowrank(Xc, q=min(k + 10, min(Xc.shape)), niter=4)
                    evals, evecs = S[:k] ** 2 / Xc.shape[0], V[:, :k]
                    total = (Xc * Xc).sum() / Xc.shape[0]
                    resid = ((total - evals.sum()) / (p - k)).clamp_min(0) if p > k \
                        else evals.new_tensor(self.sigma2_floor)
                Wc = evecs[:, :k] * (evals[:k] - resid).clamp_min(0).sqrt()        # (sum d_m, k)
                W = torch.zeros(self.M, self.D, self.k, dtype=Z.dtype, device=Z.device)
                W_rows = torch.zeros(Wc.shape[0], self.k, dtype=Z.dtype, device=Z.device)
                W_rows[:, :k] = Wc
                W[rows] = W_rows                                                 # row-major: (m, d)
                # Per-modality residual variance outside the leading subspace.
                proj = Xc @ evecs[:, :k]
                R = Xc - proj @ evecs[:, :k].T
                offs = torch.cumsum(torch.cat([self.dims.new_zeros(1), self.dims]), 0).tolist()
                s2 = torch.stack([(R[:, offs[m]:offs[m + 1]] ** 2).sum() / (n[m] * d[m])
                                  for m in range(self.M)])                       # loop over modalities
                self.W.copy_(W)
                self.sigma2.copy_(torch.maximum(s2.clamp_min(max(self.sigma2_floor, 1e-3 * float(var.mean()))),
                                                self.sigma2_lower_bound()))
            self.mu.copy_(mu * rows)
            self.initialized.fill_(True)
        return self

    # ------------------------------------------------------------------ fitting
    def _batches(self, Z: Tensor, mask: Tensor, batch_size: int | None) -> Iterable[tuple[Tensor, Tensor]]:
        if batch_size is None or batch_size >= Z.shape[0]:
            yield Z, mask
            return
        for s in range(0, Z.shape[0], batch_size):
            yield Z[s: s + batch_size], mask[s: s + batch_size]

    def accumulate(self, Z: Tensor, mask: Tensor | None = None, batch_size: int | None = None, *,
                   validate: bool = True) -> tuple[SufficientStats, float]:
        """One E-step pass: summed statistics and total log-likelihood under the current parameters.
        ``validate=False`` skips the input checks (``Z`` already checked, missing cells zero)."""
        if validate:
            Z, mask = self._check(Z, mask)
        total, ll = None, 0.0
        with torch.no_grad():
            for Zb, mb in self._batches(Z, mask, batch_size):
                post = self.posterior(Zb, mb, validate=False)
                st = self.sufficient_stats(Zb, mb, post, validate=False)
                ll += float(self.log_likelihood(Zb, mb, post, validate=False).sum())
                total = st if total is None else total + st
        return total, ll

    @_full_precision
    def _em_pass(self, b: "_ObservedBlocks") -> tuple[SufficientStats, float]:
        r"""One E-step over data held as :class:`_ObservedBlocks`: the same statistics and
        log-likelihood as :meth:`accumulate`, with the parameter-dependent work only: per
        modality :math:`Z_m W_m` (for :math:`r_i`), :math:`Z_m^\top \mathbb E[\beta]` and
        :math:`Z_m\mu_m` (for the quadratic form
        :math:`\lVert z-\mu\rVert^2=\lVert z\rVert^2-2z^\top\mu+\lVert\mu\rVert^2`), on blocks
        trimmed to each modality's own width."""
        with torch.no_grad():
            W, mu, s2, k = self.W, self.mu, self.sigma2, self.k
            N = b.N
            L, cov = self._pattern_factors(b.patterns)
            rhs = W.new_zeros(N, k)
            quad = W.new_zeros(N)
            for m, (rows, Zm) in enumerate(zip(b.rows, b.blocks)):          # loop over modalities
                if not rows.numel():
                    continue
                d = Zm.shape[1]
                Wm, mum = W[m, :d], mu[m, :d]
                rhs.index_add_(0, rows, (Zm @ Wm - mum @ Wm) / s2[m])
                quad.index_add_(0, rows, (b.sq[m] - 2 * (Zm @ mum) + mum @ mum) / s2[m])
            mean = _pattern_means(rhs, cov, b.index, b.counts, order=b.order)
            cov_sum = _covariance_sums(b.patterns, b.counts, cov)
            szb = W.new_zeros(self.M, self.D, k)
            sb = W.new_zeros(self.M, k)
            sbb = cov_sum.clone()
            for m, (rows, Zm) in enumerate(zip(b.rows, b.blocks)):
                if not rows.numel():
                    continue
                Em = mean[rows]
                szb[m, :Zm.shape[1]] = Zm.T @ Em
                sb[m] = Em.sum(0)
                sbb[m] += Em.T @ Em
            stats = SufficientStats(b.n.to(W.dtype), b.sz.to(W.dtype), szb, sb, sbb, b.szz.to(W.dtype))
            ll = self._marginal_loglik(quad - (rhs * mean).sum(-1), L, b.index, b.mask)
            return stats, float(ll.sum())

    def fit(self, Z: Tensor, mask: Tensor | None = None, *, n_iter: int = 100, tol: float = 1e-6,
            batch_size: int | None = None, init: str | None = "pca", verbose: bool = False
            ) -> "SharedLatentCalibrator":
        r"""EM until the mean log-likelihood per instance improves by less than ``tol``.

        ``init=None`` continues from the current parameters. The per-iteration mean
        log-likelihood (before each M-step) is kept in ``history_``. Data larger than
        memory: pass ``batch_size`` (statistics are summed over batches exactly).
        """
        Z, mask = self._check(Z, mask)
        if init is not None:
            self.init_from_data(Z, mask, method=init)
        elif not bool(self.initialized):
            raise RuntimeError("calibrator is not initialised: call fit(init='pca') or init_from_data first")
        self.history_ = []
        N = Z.shape[0]
        blocks = _ObservedBlocks(Z, mask, self.dims) if batch_size is None or batch_size >= N else None
        for it in range(n_iter):
            if blocks is not None:       # in memory: the data-only work is done once, not per iteration
                stats, ll = self._em_pass(blocks)
            else:
                stats, ll = self.accumulate(Z, mask, batch_size, validate=False)   # checked once above
            self.history_.append(ll / N)
            if verbose:
                print(f"EM iter {it}: mean log-likelihood {ll / N:.6f}")
            if it > 0 and abs(self.history_[-1] - self.history_[-2]) < tol * max(1.0, abs(self.history_[-2])):
                break
            self.m_step(stats)
        return self

    def score(self, Z: Tensor, mask: Tensor | None = None) -> float:
        """Mean marginal log-likelihood per instance."""
        return float(self.log_likelihood(Z, mask).mean())

    def extra_repr(self) -> str:
        return f"n_modalities={self.M}, dim={self.D}, latent_dim={self.k}"


def _heldout_split(N: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(kept, held_out)`` instance indices of a seeded random ``holdout`` share of ``N``
    (the selectors' split: the same seed gives the same split)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    n_out = max(1, int(round(holdout * N)))
    return perm[n_out:], perm[:n_out]


def select_latent_dim(Z: Tensor, mask: Tensor | None = None, candidates: Sequence[int] = (2, 4, 8, 16, 32), *,
                      holdout: float = 0.2, n_iter: int = 50, seed: int = 0, dims: Sequence[int] | None = None,
                      sigma2_floor_rel: float = 0.0, w_prior: float = 0.0, names: Sequence[str] | None = None
                      ) -> tuple[int, dict[int, float]]:
    r"""The latent size :math:`k` with the best held-out fit: a random ``holdout`` share of
    instances is set aside, a calibrator with each candidate ``k`` is fitted by EM on the
    rest, and the mean marginal log-likelihood of the held-out instances' observed cells is
    compared (larger ``k`` always fits the training instances better; held-out likelihood
    stops rewarding it once it models noise). Returns ``(best_k, {k: held-out score})``.
    Candidates at or above the total width (or the number of training instances) are skipped."""
    Z = torch.as_tensor(Z)
    N, M, D = Z.shape
    mask = torch.ones(N, M, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    inn, out = _heldout_split(N, holdout, seed)
    limit = min((sum(dims) if dims is not None else M * D) - 1, len(inn) - 1)
    ks = sorted({int(k) for k in candidates if 1 <= int(k) <= limit})
    if not ks:
        raise ValueError(f"no candidate latent size in {list(candidates)} is between 1 and {limit}")
    scores = {}
    for k in ks:                                           # loop over candidate sizes
        cal = SharedLatentCalibrator(M, D, k, dims=dims, names=names, dtype=Z.dtype if Z.is_floating_point()
                                     else None, sigma2_floor_rel=sigma2_floor_rel, w_prior=w_prior)
        cal.fit(Z[inn], mask[inn], n_iter=n_iter)
        scores[k] = cal.score(Z[out], mask[out])
    best = max(scores, key=scores.get)
    return best, scores


def heldout_imputation_r2(cal: "SharedLatentCalibrator", Z: Tensor, mask: Tensor, mean: Tensor) -> Tensor:
    r"""``(M,)`` coefficient of determination of the calibrator's imputations on held-out
    instances: for each modality :math:`m`, every instance observing :math:`m` and another
    modality has :math:`m` hidden and imputed from the rest,
    :math:`R^2_m = 1-\sum_i\|\hat z_{im}-z_{im}\|^2/\sum_i\|ar z_m-z_{im}\|^2` with :math:`ar z_m`
    (``mean``, ``(M, D)``) the training mean; NaN where no instance qualifies."""
    mask = mask.bool()
    out = torch.full((Z.shape[1],), float("nan"), dtype=torch.float64)
    for m in range(Z.shape[1]):                                  # loop over modalities
        others = mask.clone()
        others[:, m] = False
        rows = mask[:, m] & others.any(1)
        if not bool(rows.any()):
            continue
        imp = cal.impute(Z[rows], others[rows], validate=False).values[:, m]
        err = ((imp - Z[rows, m]) ** 2).sum()
        base = ((mean[m] - Z[rows, m]) ** 2).sum()
        out[m] = float(1.0 - err / base.clamp_min(1e-12))
    return out


def select_w_prior(Z: Tensor, mask: Tensor | None = None, k: int = 32,
                   candidates: Sequence[float] = (0.0, 1e1, 1e2, 1e3, 1e4, 3e4, 1e5), *, holdout: float = 0.2,
                   n_iter: int = 50, seed: int = 0, dims: Sequence[int] | None = None,
                   sigma2_floor_rel: float = 0.0) -> tuple[float, dict[float, float]]:
    r"""The strength :math:`\lambda` of the MAP prior on the loadings (``w_prior``) with the
    best held-out *imputation*: a random ``holdout`` share of instances is set aside, a
    calibrator with each candidate is fitted by EM on the rest, and the held-out instances'
    observed modalities are hidden in turn and imputed (:func:`heldout_imputation_r2`; the
    score is the mean :math:`R^2` over modalities). Marginal likelihood is the wrong yardstick
    for an imputer on wide views: it keeps rewarding loadings that explain each view's own
    variation, which a cross-view prediction then carries over as noise (on the emoji
    drawings, 3,072 features a view, the likelihood-chosen model imputes with :math:`R^2<0`).
    :math:`\lambda=0` is maximum likelihood. Returns ``(best, {lambda: score})``."""
    Z = torch.as_tensor(Z)
    N, M, D = Z.shape
    mask = torch.ones(N, M, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    if not candidates or any(float(c) < 0 for c in candidates):
        raise ValueError(f"w_prior candidates must be >= 0 and not empty, got {list(candidates)}")
    inn, out = _heldout_split(N, holdout, seed)
    Z = torch.where(mask[..., None], Z, torch.zeros((), dtype=Z.dtype))    # missing cells may hold NaN
    w = mask[inn].to(Z.dtype)[..., None]
    mean = (Z[inn] * w).sum(0) / w.sum(0).clamp_min(1)
    scores = {}
    for lam in candidates:                                       # loop over candidate strengths
        cal = SharedLatentCalibrator(M, D, k, dims=dims, dtype=Z.dtype if Z.is_floating_point() else None,
                                     sigma2_floor_rel=sigma2_floor_rel, w_prior=float(lam))
        cal.fit(Z[inn], mask[inn], n_iter=n_iter)
        r2 = heldout_imputation_r2(cal, Z[out], mask[out], mean)
        scores[float(lam)] = float(torch.nanmean(r2))
    best = max(scores, key=scores.get)
    return best, scores
