r"""Filling the missing modalities of a feature store, as library functions (``calmrl impute`` is
a thin layer over them).

- :func:`impute_embeddings`: in the shared embedding space, by a trained run's encoders and
  calibrator (:math:`W_m \mathbb E[\beta \mid z_O] + \mu_m`, with its confidence).
- :func:`impute_inputs`: in the input space, by a shared-latent model fitted by EM on the
  standardised input features themselves, imputations mapped back to the raw units.
"""

from __future__ import annotations

import numpy as np

__all__ = ["impute_embeddings", "impute_inputs"]


def impute_embeddings(model, data, em_iters: int = 30):
    """``(filled (n, M, d), observed mask (n, M), confidence (n, M))`` of ``data`` (standardised
    as the model's training split was) in the model's embedding space; a calibrator that was
    never fitted (a method trained without one) is fitted on ``data`` first."""
    from .evaluate import embed_data

    A, mask = embed_data(model.encoder, data)
    cal = model.calibrator
    if not bool(cal.initialized):
        cal.fit(A.to(cal.W.dtype), mask, n_iter=em_iters)
    imp = cal.impute(A.to(cal.W.dtype), mask)
    return imp.filled.float().numpy(), mask.numpy(), imp.confidence.float().numpy()


def impute_inputs(data, stats, latent_dim: int = 0, em_iters: int = 100, floor_rel: float = 0.01, log=print):
    """A shared-latent model fitted by EM on the standardised input features themselves
    (ragged widths, zero-padded), its latent size chosen by held-out likelihood unless given,
    each view's noise kept above ``floor_rel`` of its variance; imputations mapped back to the
    raw feature units with ``stats`` (per view ``(mean, std)``). Returns ``(views, observed
    mask, confidence)``."""
    import torch

    from ..core import SharedLatentCalibrator, select_latent_dim

    dims, D = data.dims, max(data.dims)
    Z = torch.zeros(data.n, len(dims), D, dtype=torch.float64)
    for m, v in enumerate(data.views):                       # loop over modalities
        Z[:, m, :dims[m]] = torch.as_tensor(np.asarray(v, dtype=np.float64))
    mask = torch.as_tensor(data.mask)
    if latent_dim > 0:
        k = max(1, min(latent_dim, max(dims)))
    else:
        grid = (1, 2, 4, 8, 16, 32)
        k, scores = select_latent_dim(Z, mask, grid, dims=dims, names=data.names,
                                      n_iter=min(em_iters, 30), sigma2_floor_rel=floor_rel)
        log(f"latent size {k} chosen by held-out log-likelihood "
            f"({', '.join(f'k={c}: {v:.1f}' for c, v in scores.items())})")
        if k == grid[-1]:
            log(f"note: k = {k} is the largest size tried and the held-out log-likelihood was still rising; a "
                f"larger --latent-dim may fit better (e.g. --latent-dim {2 * k})")
    cal = SharedLatentCalibrator(len(dims), D, k, dims=dims, names=data.names, dtype=torch.float64,
                                 sigma2_floor_rel=floor_rel)
    cal.fit(Z, mask, n_iter=em_iters)
    imp = cal.impute(Z, mask)
    filled = imp.filled.numpy()
    views = [(filled[:, m, :dims[m]] * sd + mu).astype(np.float32) for m, (mu, sd) in enumerate(stats)]
    return views, mask.numpy(), imp.confidence.float().numpy()
