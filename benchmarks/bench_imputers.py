"""The calibrator as an imputer vs scikit-learn's IterativeImputer and KNNImputer, and MOFA+
(``mofapy2``, a multi-view factor model that handles missing views) when it is installed
(``pip install mofapy2``; benchmark only, not a dependency of calmrl).

UCI Multiple Features (6 views, 649 raw features; the default) or a suite dataset
(``python bench_imputers.py emoji``: 4 drawings of 3072 pixels + a 384-wide text embedding,
12,672 features), standardised, 50% of the observed (instance, view) cells hidden completely
at random (at least one view kept; natural gaps stay gaps and are not scored). Each imputer
sees the same data; quality is measured on the hidden cells: R^2 and cosine per view. Prints
wall times and the time ratios to the calibrator. IterativeImputer is skipped above 2,000
features (one regression per feature per round: hours at 12,672).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from calmrl.core import SharedLatentCalibrator, imputation_quality, stack_modalities
from calmrl.data import load_uci_mfeat, mcar_mask
from common import machine


def main(dataset="uci", rate=0.5, k=32, em_iters=50, seed=0):
    if dataset == "uci":
        data, _ = load_uci_mfeat().standardize()
    else:
        from calmrl.data.suite import load
        data, _ = load(dataset).standardize()
    M, dims = len(data.names), data.dims
    natural = np.asarray(data.mask, bool)
    mask = mcar_mask(data.n, M, rate, min_observed=1, seed=seed, observed=natural)
    hidden = torch.as_tensor(natural & ~mask)          # scored: hidden cells whose truth is known
    full = [torch.as_tensor(v, dtype=torch.float64) for v in data.views]
    Z_full, _, _ = stack_modalities(full)
    X = np.concatenate([np.where(mask[:, [m]], v, np.nan) for m, v in enumerate(data.views)], 1)

    def score(name, filled_views, seconds):
        Z, _, _ = stack_modalities([torch.as_tensor(v, dtype=torch.float64) for v in filled_views])
        q = imputation_quality(Z, Z_full, hidden)
        r2, cos = q["r2"].numpy(), q["cosine"].numpy()
        print(f"{name:18s} {seconds:8.2f} s   R2 mean {np.nanmean(r2):6.3f}   cosine mean {np.nanmean(cos):6.3f}   "
              f"R2 per view {np.round(r2, 3).tolist()}")
        return seconds

    def split(Xf):
        offs = np.cumsum([0] + dims)
        return [Xf[:, offs[m]:offs[m + 1]] for m in range(M)]

    print(machine())
    print(f"{dataset}, {data.n} instances, views {dict(zip(data.names, dims))}, {100 * (1 - natural.mean()):.1f}% "
          f"of cells missing in the data, {100 * hidden.float().mean():.1f}% hidden and scored")
    t = time.perf_counter()
    Z, msk, _ = stack_modalities([torch.as_tensor(np.where(mask[:, [m]], v, np.nan), dtype=torch.float64)
                                  for m, v in enumerate(data.views)])
    cal = SharedLatentCalibrator(M, max(dims), k, dims=dims, dtype=torch.float64).fit(Z, msk, n_iter=em_iters)
    imp = cal.impute(Z, msk).filled
    t_cal = score(f"calibrator k={k}", [imp[:, m, :dims[m]].numpy() for m in range(M)], time.perf_counter() - t)
    # regularised: latent size by held-out likelihood, each view's noise >= 1% of its variance
    from calmrl.core import select_latent_dim
    t = time.perf_counter()
    k_sel, scores = select_latent_dim(Z, msk, (2, 4, 8, 16, 32, 64), dims=dims, n_iter=30, sigma2_floor_rel=0.01)
    reg = SharedLatentCalibrator(M, max(dims), k_sel, dims=dims, dtype=torch.float64,
                                 sigma2_floor_rel=0.01).fit(Z, msk, n_iter=em_iters)
    imp = reg.impute(Z, msk).filled
    score(f"calibrator k={k_sel} (sel.)", [imp[:, m, :dims[m]].numpy() for m in range(M)], time.perf_counter() - t)
    print(f"  held-out log-likelihood per k: { {c: round(v, 1) for c, v in scores.items()} }")
    # regularised by held-out imputation: the MAP prior's strength on W chosen by the R^2 of
    # held-out instances' views hidden in turn (select_w_prior), k as the first row
    from calmrl.core import select_w_prior
    t = time.perf_counter()
    lam, lscores = select_w_prior(Z, msk, k, dims=dims, n_iter=30)
    pri = SharedLatentCalibrator(M, max(dims), k, dims=dims, dtype=torch.float64, w_prior=lam).fit(Z, msk,
                                                                                                 n_iter=em_iters)
    imp = pri.impute(Z, msk).filled
    score(f"calibrator k={k}, w_prior={lam:g} (sel.)", [imp[:, m, :dims[m]].numpy() for m in range(M)],
          time.perf_counter() - t)
    print(f"  held-out imputation R^2 per w_prior: { {c: round(v, 3) for c, v in lscores.items()} }")

    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    t = time.perf_counter()
    Xm = SimpleImputer().fit_transform(X)
    t_mean = score("mean", split(Xm), time.perf_counter() - t)
    t = time.perf_counter()
    Xk = KNNImputer(n_neighbors=10).fit_transform(X)
    t_knn = score("KNNImputer k=10", split(Xk), time.perf_counter() - t)
    t_it = None
    if X.shape[1] > 2000:
        print(f"IterativeImputer   skipped: {X.shape[1]} features")
    t = time.perf_counter()
    # clipped to each feature's observed range: unclipped, BayesianRidge chains diverge on these
    # collinear views (R^2 -6e12 in an earlier run)
    lo, hi = np.nanmin(X, 0), np.nanmax(X, 0)
    hi = np.where(hi > lo, hi, lo + 1e-9)        # constant columns: scikit-learn needs min < max
    if X.shape[1] <= 2000:
        Xi = IterativeImputer(max_iter=5, n_nearest_features=100, random_state=0, min_value=lo,
                              max_value=hi).fit_transform(X)
        t_it = score("IterativeImputer", split(Xi), time.perf_counter() - t)
    t_mofa = None
    if "--no-mofa" in sys.argv:
        print("MOFA+              skipped: --no-mofa")
    else:
        t_mofa = mofa(X, split, k, seed)
    if t_mofa is not None:
        t_mofa = score(f"MOFA+ k={k}", *t_mofa)
    print("time ratios to the calibrator: " + (f"IterativeImputer {t_it / t_cal:.1f}x, " if t_it else "")
          + f"KNNImputer {t_knn / t_cal:.1f}x, "
          + (f"MOFA+ {t_mofa / t_cal:.1f}x, " if t_mofa is not None else "") + f"mean {t_mean / t_cal:.2f}x")


def mofa(X, split, k, seed):
    """MOFA+ (variational Bayesian group factor analysis) with ``k`` factors, Gaussian
    likelihoods; features are centred per view on the observed rows, and the means are
    added back to its predictions. Returns ``(filled views, seconds)`` or None without mofapy2."""
    try:
        from mofapy2.run.entry_point import entry_point
    except ImportError:
        print("MOFA+              skipped: mofapy2 is not installed (pip install mofapy2)")
        return None
    import contextlib
    import io
    t = time.perf_counter()
    means = np.nanmean(X, 0)
    views = split(X - means)
    with contextlib.redirect_stdout(io.StringIO()):          # mofapy2 prints its progress
        ent = entry_point()
        ent.set_data_options(scale_views=False, center_groups=False)
        ent.set_data_matrix([[v] for v in views])
        ent.set_model_options(factors=k)
        ent.set_train_options(convergence_mode="fast", seed=seed, quiet=True, verbose=False)
        ent.build()
        ent.run()
        ent.impute(uncertainty=True, mask_outliers=False)   # uncertainty=False fails in mofapy2 0.7.5
    filled = np.concatenate(ent.imputed_data["mean"], 1) + means
    return split(filled), time.perf_counter() - t


if __name__ == "__main__":
    # python bench_imputers.py [uci | <suite dataset>] [--no-mofa]
    main(*[a for a in sys.argv[1:] if not a.startswith("--")][:1])
