r"""Informativeness gate: does an imputation carry more of its instance than the observed-only
fallback does?

An imputation :math:`\hat z_{im} = W_m\mathbb E[\beta_i\mid z_{i,O}]+\mu_m` is a function of the
observed cells, so it cannot add instance information they lack; what it can do is express
that information in modality :math:`m`'s own coordinates. The gate measures whether it does,
on cells whose truth is known: for each modality :math:`m`, every instance that observes
:math:`m` and at least one other modality has :math:`m` hidden, imputed from the rest, and
scored by *instance identification*: the rate (%) at which the stand-in's nearest true
embedding of :math:`m` (cosine, among all instances observing :math:`m`) is the instance's own.
The fallback is the normalised mean of the instance's other observed embeddings (the
direction an uncalibrated alignment loss works with). The weight of imputed columns of
:math:`m` is

.. math:: g_m = \operatorname{clip}\Big(\frac{\mathrm{id}^{imp}_m-\mathrm{id}^{fb}_m-z\,\mathrm{se}_m}{100-\mathrm{id}^{fb}_m},\,0,\,1\Big),

with :math:`\mathrm{se}_m` the standard error of the paired difference of the two hit
indicators over the scored cells and :math:`z` a one-sided normal quantile: the gain's lower
confidence bound, so that a gain within the measurement's noise opens nothing. A training run
measures the gate for :math:`M` modalities at each of :math:`T` epochs, :math:`MT` tests (about
100 on the benchmark suite); at a per-test :math:`z=1.96` some column opens by chance in most
runs where no imputation beats its fallback. :func:`family_z` is the Bonferroni quantile
:math:`z=\Phi^{-1}(1-\alpha/(2MT))` that keeps the chance of any false opening over the run
below :math:`\alpha/2` (``method.gate_alpha``, 0.05 by default). :math:`g_m = 0` where the
imputation does not beat the fallback (a column of weight 0 is excluded from the loss
exactly as a missing one: the loss is then ``pmrl-drop``'s), 1 where it identifies every instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .calibrator import SharedLatentCalibrator
from .metrics import fuse_observed, retrieval_ranks

__all__ = ["imputation_gain", "gate_weights", "family_z"]


@torch.no_grad()
def imputation_gain(calibrator, A: Tensor, mask: Tensor, *, min_rows: int = 10) -> dict[str, Tensor]:
    """Per modality ``(M,)``: ``id_imputed``, ``id_fallback`` (identification rates, %),
    ``id_se`` (standard error of their paired difference, %), ``cos_imputed``, ``cos_fallback`` (mean cosine to the truth) and ``n`` (cells scored); NaN
    where fewer than ``min_rows`` cells can be hidden. ``A`` ``(N, M, d)`` holds the true
    embeddings of the observed cells. ``calibrator`` is a :class:`SharedLatentCalibrator` or any
    completion backend with ``impute(Z, mask) -> (n, M, d)`` (e.g. :class:`MaskedCompleter`)."""
    mask = mask.bool()
    N, M, _ = A.shape
    nan = float("nan")
    out = {k: torch.full((M,), nan, dtype=torch.float64) for k in
           ("id_imputed", "id_fallback", "id_se", "cos_imputed", "cos_fallback")}
    out["n"] = torch.zeros(M, dtype=torch.long)
    if isinstance(calibrator, SharedLatentCalibrator):
        Z = A.to(calibrator.W.dtype)
        impute = lambda z, o: calibrator.impute(z, o, validate=False).values  # noqa: E731
    else:
        Z, impute = A, calibrator.impute
    for m in range(M):                                          # loop over modalities
        others = mask.clone()
        others[:, m] = False
        rows = torch.nonzero(mask[:, m] & others.any(1)).squeeze(1)
        if len(rows) < min_rows:
            continue
        imputed = impute(Z[rows], others[rows])[:, m].to(A.dtype)
        fallback = fuse_observed(A[rows], others[rows])
        gal_rows = torch.nonzero(mask[:, m]).squeeze(1)
        gallery = F.normalize(A[gal_rows, m], dim=-1)
        targets = torch.searchsorted(gal_rows, rows)              # positions of the rows in the gallery
        truth = F.normalize(A[rows, m], dim=-1)
        hits = {}
        for key, q in (("imputed", F.normalize(imputed, dim=-1)), ("fallback", fallback)):
            hits[key] = (retrieval_ranks(q, gallery, targets) == 1).double()
            out[f"id_{key}"][m] = 100.0 * float(hits[key].mean())
            out[f"cos_{key}"][m] = float((q * truth).sum(-1).mean())
        diff = hits["imputed"] - hits["fallback"]
        out["id_se"][m] = 100.0 * float(diff.std(unbiased=True) / len(rows) ** 0.5)
        out["n"][m] = len(rows)
    return out


def gate_weights(gain: dict[str, Tensor], z: float = 1.96) -> Tensor:
    """``(M,)`` weights in [0, 1] of imputed columns: the gain's lower confidence bound
    (``z`` standard errors below the measured gain; module docstring); 0 where unmeasured."""
    imp, fb = gain["id_imputed"], gain["id_fallback"]
    se = gain.get("id_se", torch.zeros_like(imp))
    w = ((imp - fb - z * torch.nan_to_num(se, nan=0.0)) / (100.0 - fb).clamp_min(1e-6)).clamp(0.0, 1.0)
    return torch.nan_to_num(w, nan=0.0)


def family_z(alpha: float, n_tests: int) -> float:
    r"""One-sided normal quantile :math:`\Phi^{-1}(1-\alpha/(2n))` of a Bonferroni family of
    ``n_tests`` lower confidence bounds: the chance that any of them lies above a zero gain is
    at most :math:`\alpha/2` (``alpha=0.05, n_tests=1`` gives 1.96)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"gate alpha must be in (0, 1), got {alpha}")
    if n_tests < 1:
        raise ValueError(f"the number of gate tests must be >= 1, got {n_tests}")
    return float(torch.special.ndtri(torch.tensor(1.0 - alpha / (2.0 * n_tests), dtype=torch.float64)))
