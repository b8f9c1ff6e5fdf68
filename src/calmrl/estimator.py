"""``calmrl.CalMRL``: the trainer as an estimator, in scikit-learn's conventions.

>>> from calmrl import CalMRL
>>> est = CalMRL(epochs=20).fit({"image": X_img, "text": X_txt}, y)   # a row of NaN = that modality missing
>>> Z = est.transform({"image": X_img_new, "text": None})               # (n, d) numpy, fused embeddings
>>> scores, idx = est.retrieve({"text": X_txt_q}, gallery={"image": X_img_g}, k=10)
>>> est.score({"image": X_img_test, "text": X_txt_test})                # cross-modal R@1 (%)
>>> est.save("model_dir"); est2 = CalMRL.load("model_dir")

Keyword hyperparameters map onto the configuration keys (scikit-learn's own ``BaseEstimator``:
``get_params`` / ``set_params`` / ``clone`` / ``check_is_fitted``; ``overrides`` takes any other
``key=value``); fitted attributes end in ``_`` (``model_``, ``results_``, ``names_``,
``config_``). **Data policy**: ``fit`` holds back a validation split (``val_fraction``, 15%) for
auto's choice, the gate and the guard, and trains on the rest; it keeps **no test split**
(``test_fraction=0``, unlike ``calmrl train``'s 15%): score the model on data of your own
(``score``, ``cross_val_score``). ``results_`` then holds the validation split's figures, said in
``results_["data_notes"]`` and ``results_["evaluated_on"]``; ``test_fraction=0.15`` restores a held-out test.
Nothing is written to the working directory: runs go to a temporary directory,
removed after ``fit``, unless ``output_dir`` is given. Numpy or pandas in, numpy out.

**Pairing rows.** Numpy arrays are paired by position (row i of every modality is instance i).
pandas DataFrames are paired by their index: the instances are the union of the index labels
(in the order they first appear, modality by modality), a label absent from a modality's frame
makes that modality missing for the instance, a label given twice is refused; the index
labels are the instances' ids, and a pandas Series of labels is aligned the same way. Mixing
frames with arrays is refused unless every frame's index is ``0..n-1`` (positional).

**Cross-validation and grid search.** scikit-learn's splitters need one table of n rows: give
``X`` as one DataFrame whose columns are a two-level index ``(modality, feature)``
(``pd.concat({"image": img_df, "text": txt_df}, axis=1)``); a row of NaN in a modality's columns
marks it missing. Or one 2-D array (or flat DataFrame) with ``views=``: an int (that many groups
of consecutive columns), a list of widths or ``{name: width}``; it goes through scikit-learn's
``validate_data`` (``n_features_in_``, ``feature_names_in_``, sparse and complex refused), and
``check_estimator`` passes on it but for :data:`EXPECTED_FAILED_CHECKS`. ``cross_val_score(CalMRL(...), X)`` and ``GridSearchCV`` then score with
:meth:`CalMRL.score` (cross-modal R@1 on the held-out rows).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from .data import MultiViewData

__all__ = ["CalMRL", "PARAMS", "as_multiview", "split_views", "EXPECTED_FAILED_CHECKS"]

# scikit-learn's check_estimator on CalMRL(views=2, partial_views="missing"): every check passes but
# these, each a choice (tests/test_estimator_sklearn.py keeps this list exact)
EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": "score(X) is cross-modal retrieval R@1, which reads no labels: a y is refused, "
                               "not ignored",
    "check_pipeline_consistency": "calls score(X, y): refused for the same reason (the pipeline's transform and "
                                  "fit are consistent; tested separately)",
}

# estimator keyword -> configuration key
PARAMS = {"method": "method.name", "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size",
          "weight_decay": "train.weight_decay", "seed": "train.seed", "embed_dim": "model.embed_dim",
          "hidden_dim": "model.hidden_dim", "layers": "model.layers", "dropout": "model.dropout",
          "shared_encoders": "model.shared_encoders", "candidates": "method.candidates", "search": "method.search",
          "latent_dim": "calibrator.latent_dim", "partial_views": "data.partial_views",
          "val_fraction": "data.val_fraction", "test_fraction": "data.test_fraction",
          "accelerator": "train.accelerator", "threads": "train.threads", "progress": "train.progress"}


def overrides_of(params: Mapping[str, object]) -> list[str]:
    """``key=value`` overrides for estimator keywords (``None``: the configuration's default)."""
    unknown = [k for k in params if k not in PARAMS]
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown}; valid: {sorted(PARAMS)} (any other configuration key: "
                        "overrides=['section.key=value'])")
    return [f"{PARAMS[k]}={json.dumps(v)}" for k, v in params.items() if v is not None]


class CalMRL(TransformerMixin, BaseEstimator):
    """Multimodal representation learning with missing modalities: one embedding space for several
    modalities, trained from instances that carry only some of them.

    ``fit(X, y=None)`` trains on ``X = {modality: (n, d) array or DataFrame}`` (a row of NaN, or
    for DataFrames an absent index label, marks the modality missing); by default it searches
    the candidate objectives (``method="auto"``) and keeps the one best on validation.
    ``transform(X)`` gives the fused embedding ``(n, embed_dim)``; ``embed``, ``retrieve``,
    ``score`` (cross-modal R@1), ``save`` and ``load`` as in the module docstring of
    :mod:`calmrl.estimator`. Every keyword is a configuration key (``calmrl config show
    --keys``); ``None`` keeps the configuration's default. Besides them: ``views`` (one 2-D
    table cut into modalities: an int, a list of widths or ``{name: width}``), ``test_fraction``
    (0 by default: a validation split for the choices and no test split; ``results_`` then
    holds validation figures), ``progress`` (one bar for the whole search), ``config`` (a YAML
    path or a ``Config``), ``overrides`` (``"key=value"`` strings) and ``output_dir``."""

    def __init__(self, method: str | None = None, *, epochs: int | None = None, lr: float | None = None,
                 batch_size: int | None = None, weight_decay: float | None = None, seed: int | None = None,
                 embed_dim: int | None = None, hidden_dim: int | None = None, layers: int | None = None,
                 dropout: float | None = None, shared_encoders: list | None = None, candidates: list | None = None,
                 search: str | None = None, latent_dim: int | None = None, partial_views: str | None = None,
                 val_fraction: float | None = None, test_fraction: float | None = 0.0,
                 accelerator: str | None = None, threads: int | None = None, progress: bool | None = False,
                 views=None, config=None, overrides=(), output_dir: str | None = None):
        self.method, self.epochs, self.lr, self.batch_size = method, epochs, lr, batch_size
        self.weight_decay, self.seed, self.embed_dim, self.hidden_dim = weight_decay, seed, embed_dim, hidden_dim
        self.layers, self.dropout, self.shared_encoders, self.candidates = layers, dropout, shared_encoders, candidates
        self.search, self.latent_dim, self.partial_views = search, latent_dim, partial_views
        self.val_fraction, self.test_fraction, self.accelerator = val_fraction, test_fraction, accelerator
        self.threads, self.progress, self.views = threads, progress, views
        self.config, self.overrides, self.output_dir = config, overrides, output_dir

    def _config(self):
        from .train import Config, load_config
        from .train.config import apply_overrides

        sets = overrides_of({k: getattr(self, k) for k in PARAMS}) + list(self.overrides)
        if isinstance(self.config, Config):
            return apply_overrides(self.config, sets)
        return load_config(self.config, sets)

    # -- fitting
    def fit(self, X, y=None, *, ids=None) -> "CalMRL":
        """Train on ``X`` (``{modality: (n, d) array or DataFrame}``, a row of NaN = that modality
        missing) with optional labels ``y`` (used to stratify the split and for kNN accuracy)."""
        from .inference import CalMRLModel
        from .train.runner import run
        from .train.splits import prepare_data

        cfg = self._config()
        arrays, index = self._aligned(X, fitting=True)
        if index is not None:
            if ids is None:
                ids = np.asarray([str(i) for i in index])
            if y is not None and hasattr(y, "reindex"):          # a Series: by its index, as the frames
                _refuse_duplicate_labels(y.index, "y")
                y = y.reindex(index).to_numpy()
        if y is not None:
            y = np.asarray(y)
            if y.dtype.kind == "f" and np.isnan(y).any():
                raise ValueError(f"y holds NaN for {int(np.isnan(y).sum())} instance(s) (e.g. row "
                                 f"{int(np.nonzero(np.isnan(y))[0][0])}); give every instance a label, or none (y=None)")
        mv = as_multiview(arrays, y, ids)
        with tempfile.TemporaryDirectory(prefix="calmrl-") as tmp:
            from dataclasses import replace
            cfg = replace(cfg, output_dir=str(self.output_dir or tmp),
                          # figures in a directory removed after fit would be drawn for nobody
                          train=cfg.train if self.output_dir else replace(cfg.train, plots=False))
            splits = prepare_data(cfg, data=mv)
            results, module = run(cfg, splits=splits, return_model=True)
        self.model_ = CalMRLModel(module.encoder, module.calibrator, splits.names, splits.standardization,
                                  cfg.data.partial_views)
        self.results_, self.names_, self.dims_, self.config_ = results, list(splits.names), list(splits.dims), module.cfg
        return self

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError    # scikit-learn's own (a ValueError)

            raise NotFittedError("this CalMRL is not fitted yet: call fit(X) first, or CalMRL.load(path)")

    def _aligned(self, X, fitting: bool = False):
        """``({modality: array}, index labels or None)`` from any input the estimator takes; one
        2-D table with ``views`` goes through scikit-learn's own ``validate_data`` (dtype, 2-D,
        sparse and complex refused, ``n_features_in_`` / ``feature_names_in_`` set by ``fit`` and
        checked afterwards), then is cut into modalities by :func:`split_views`."""
        from scipy.sparse import issparse

        if issparse(X) or (isinstance(X, Mapping) and any(issparse(v) for v in X.values())):
            raise TypeError("Sparse data was passed, but dense data is required: give X.toarray() (each modality a "
                            "dense (n, d) array; a row of NaN marks it missing)")
        if self.views is None or isinstance(X, Mapping) or getattr(getattr(X, "columns", None), "nlevels", 1) == 2:
            return _aligned(X)
        from sklearn.utils.validation import validate_data

        index = None
        if hasattr(X, "iloc"):                    # a DataFrame: its index labels are the instances' ids
            _refuse_duplicate_labels(X.index, "X")
            index = list(X.index)
        table = validate_data(self, X, reset=fitting, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan",
                              ensure_min_samples=2 if fitting else 0, ensure_min_features=2 if fitting else 1)
        return _aligned(split_views(table, self.views))[0], index

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True                     # a row of NaN in a modality: that modality missing
        tags.transformer_tags.preserves_dtype = ["float32"]  # embeddings are float32 whatever comes in
        return tags

    # -- using
    def embed(self, X) -> dict[str, np.ndarray]:
        """``{"embeddings", "mask", "imputed", "confidence", "fused"}`` as numpy arrays (see
        :class:`calmrl.inference.Embedded`)."""
        self._check_fitted()
        out = self.model_.embed(self._aligned(X)[0])
        return {k: np.asarray(getattr(out, k)) for k in ("embeddings", "mask", "imputed", "confidence", "fused")}

    def transform(self, X) -> np.ndarray:
        """The fused embedding of each instance, ``(n, d)``: its observed modalities and its imputed
        ones weighted by confidence, on the unit sphere."""
        self._check_fitted()
        arrays, _ = self._aligned(X)
        if all(v is None or len(v) == 0 for v in arrays.values()):      # zero rows: (0, d)
            return np.zeros((0, self.model_.calibrator.D), np.float32)
        return np.asarray(self.model_.embed(arrays).fused)

    def fit_transform(self, X, y=None, **kw) -> np.ndarray:
        return self.fit(X, y, **kw).transform(X)

    def retrieve(self, query, gallery, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items for each query: ``(scores, indices)``, numpy. ``gallery``: raw
        inputs by modality (each item its fused embedding) or embeddings ``(n, d)``; with
        ``views``, a 2-D table as wide as the one fitted is raw inputs."""
        self._check_fitted()
        raw_table = (self.views is not None and not isinstance(gallery, Mapping)
                     and np.ndim(gallery) == 2 and np.shape(gallery)[1] == getattr(self, "n_features_in_", -1))
        g = self._aligned(gallery)[0] if isinstance(gallery, Mapping) or raw_table else np.asarray(gallery)
        s, i = self.model_.retrieve(self._aligned(query)[0], g, k=k)
        return np.asarray(s), np.asarray(i)

    def score(self, X, y=None) -> float:
        """Cross-modal retrieval R@1 (%) on ``X``: every ordered pair of modalities, each over the
        instances that observe both, the query's own instance the one correct item; averaged."""
        from .train.evaluate import retrieval_table

        self._check_fitted()
        arrays = self._aligned(X)[0]            # X checked first (its width against the fit's), then y
        if y is not None:
            raise ValueError("score(X) measures cross-modal retrieval, which reads no labels: call score(X) without y "
                             "(for a classifier's accuracy, put CalMRL in a Pipeline before one)")
        out = self.model_.embed(arrays)
        return float(retrieval_table(torch.as_tensor(out.embeddings), self.names_,
                                     torch.as_tensor(out.mask))["average"]["R@1"])

    # -- persistence
    def save(self, path) -> Path:
        """Write the exported format (``model.safetensors`` with its checksum, ``config.json``), as
        ``calmrl export`` does; :meth:`load` and :meth:`calmrl.inference.CalMRLModel.load` read it."""
        from .model.export import export_model

        self._check_fitted()
        # the estimator's own hyperparameters and the fit's figures travel in config.json (checksummed)
        params = json.loads(json.dumps(self.get_params(deep=False), default=str))
        results = json.loads(json.dumps(self.results_, default=float)) if self.results_ is not None else None
        return export_model(self.model_.encoder, self.model_.calibrator, self.config_, self.dims_, path,
                            [(m.numpy(), s.numpy()) for m, s in self.model_.standardization]
                            if self.model_.standardization is not None else None,
                            extra={"estimator": {"params": params, "results": results, **self._table_spec()}})

    def _table_spec(self) -> dict:
        """What ``validate_data`` set at fit time from one 2-D table (``views``), to check later inputs."""
        out = {}
        if hasattr(self, "n_features_in_"):
            out["n_features_in"] = int(self.n_features_in_)
        if hasattr(self, "feature_names_in_"):
            out["feature_names_in"] = [str(c) for c in self.feature_names_in_]
        return out

    @classmethod
    def load(cls, path) -> "CalMRL":
        from .inference import CalMRLModel
        from .model.export import load_exported
        from .train.config import Config, _build

        enc, cal, meta = load_exported(path)
        saved = meta.get("estimator") or {}
        est = cls(**{k: (tuple(v) if k == "overrides" else v) for k, v in (saved.get("params") or {}).items()})
        est.names_, est.dims_, est.config_ = list(meta["names"]), list(meta["dims"]), _build(Config, meta["config"])
        est.model_ = CalMRLModel(enc, cal, meta["names"], meta.get("standardization"), est.config_.data.partial_views)
        est.results_ = saved.get("results")        # None for a model exported by `calmrl export`
        if "n_features_in" in saved:                 # fitted on one 2-D table: its width and names are checked again
            est.n_features_in_ = int(saved["n_features_in"])
        if "feature_names_in" in saved:
            est.feature_names_in_ = np.asarray(saved["feature_names_in"], dtype=object)
        return est


def as_multiview(data, labels=None, ids=None) -> MultiViewData:
    """``MultiViewData`` as is, or ``{name: (N, d) array}`` where a row that is entirely NaN
    marks the modality missing for that instance (partial NaN rows follow
    ``data.partial_views``)."""
    if isinstance(data, MultiViewData):
        return data
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a MultiViewData or a non-empty {modality name: (N, d) array} mapping")
    names = list(data)
    views = []
    for name in names:
        v = np.asarray(data[name], dtype=np.float32)
        if v.ndim != 2:
            raise ValueError(f"modality '{name}' must be a 2-D (instances, features) array, got shape {v.shape}")
        views.append(v)
    n = {v.shape[0] for v in views}
    if len(n) != 1:
        raise ValueError(f"modalities disagree on the number of instances: { {k: v.shape[0] for k, v in zip(names, views)} }")
    mask = np.stack([~np.isnan(v).all(1) for v in views], 1)
    views = [np.where(mask[:, m:m + 1], v, 0.0).astype(np.float32) if not mask[:, m].all() else v
             for m, v in enumerate(views)]
    out = MultiViewData.unchecked(views, names, mask, ids, None if labels is None else np.asarray(labels),
                                  {"source": "in-memory"})
    if out.labels is not None and len(out.labels) != out.n:
        raise ValueError(f"labels has {len(out.labels)} entries for {out.n} instances")
    return out



def _refuse_duplicate_labels(index, what: str) -> None:
    dup = index[index.duplicated()]
    if len(dup):
        raise ValueError(f"{what}'s index holds label {dup[0]!r} more than once; each instance once (rows are paired "
                         "by their index labels)")


def split_views(X, views) -> dict:
    """One 2-D table (array or DataFrame, ``(n, sum of widths)``) cut into modalities by
    ``views``: an int ``k`` (``k`` groups of consecutive columns, as equal as they come: ``np.array_split``),
    a list of widths (``[64, 76]``) or ``{name: width}`` in column order."""
    if hasattr(X, "iloc"):
        table = X
        width = X.shape[1]
    else:
        table = np.asarray(X)
        if table.ndim != 2:
            raise ValueError(f"X must be a 2-D (instances, features) table when views= is given, got shape {table.shape}")
        width = table.shape[1]
    if isinstance(views, (bool, float)) or not isinstance(views, (int, np.integer, list, tuple, Mapping)):
        raise ValueError(f"views must be an int, a list of widths or a {{name: width}} mapping, got {views!r}")
    if isinstance(views, (int, np.integer)):
        if not 2 <= views <= width:
            raise ValueError(f"views={views}: X has {width} feature column(s); it needs at least one per modality and "
                             "at least two modalities")
        cuts = [len(c) for c in np.array_split(np.arange(width), int(views))]
        names = [f"view{i}" for i in range(int(views))]
    else:
        names = list(views) if isinstance(views, Mapping) else [f"view{i}" for i in range(len(views))]
        cuts = list(views.values()) if isinstance(views, Mapping) else list(views)
        if len(cuts) < 2 or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in cuts):
            raise ValueError(f"views={views!r}: at least two modalities, each a positive number of columns")
        if sum(cuts) != width:
            raise ValueError(f"views={views!r} add up to {sum(cuts)} columns; X has {width}")
    edges = np.cumsum([0, *cuts])
    return {n: (table.iloc[:, a:b] if hasattr(table, "iloc") else table[:, a:b])
            for n, a, b in zip(names, edges[:-1], edges[1:])}


def _aligned(X) -> tuple[dict, list | None]:
    """``({name: array}, index labels)``: DataFrames paired by their index (module docstring),
    arrays by position (``None`` for the labels). One 2-D table with ``views`` is cut first, by
    :meth:`CalMRL._aligned`."""
    columns = getattr(X, "columns", None)
    if getattr(columns, "nlevels", 1) == 2:           # one DataFrame, columns (modality, feature): splitters see n rows
        X = {m: X[m] for m in dict.fromkeys(columns.get_level_values(0))}
    if not isinstance(X, Mapping):
        raise ValueError("X must be a mapping {modality name: (n, d) array or DataFrame}, or one DataFrame whose "
                         "columns are (modality, feature) pairs")
    frames = {k: v for k, v in X.items() if hasattr(v, "index") and hasattr(v, "to_numpy")}
    if not frames:
        return _as_arrays(X), None
    for k, f in frames.items():
        _refuse_duplicate_labels(f.index, f"modality '{k}'")
    others = {k: v for k, v in X.items() if k not in frames and v is not None}
    if others:
        n = {len(v) for v in others.values()}
        positional = all(list(f.index) == list(range(len(f))) and {len(f)} == n for f in frames.values())
        if not positional:
            raise ValueError(f"modalities {sorted(frames)} are DataFrames (paired by index) and {sorted(others)} arrays "
                             "(paired by position): give all as DataFrames with a shared index, or all as arrays")
        return _as_arrays(X), None
    index = list(dict.fromkeys(label for f in frames.values() for label in f.index))
    # an index label a frame lacks: a row of NaN there, that modality missing for the instance
    return _as_arrays({k: (None if v is None else v.reindex(index)) for k, v in X.items()}), index


def _numeric_column(col) -> bool:
    try:
        np.asarray(col, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False


def _as_arrays(X) -> dict:
    """``{name: array}`` from a mapping of numpy arrays, pandas DataFrames or tensors (``None`` kept)."""
    if not isinstance(X, Mapping):
        raise ValueError("X must be a mapping {modality name: (n, d) array or DataFrame}")
    out = {}
    for k, v in X.items():
        if v is None or isinstance(v, torch.Tensor):
            out[k] = v
            continue
        try:
            out[k] = np.array(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as e:
            bad = next((c for c in getattr(v, "columns", []) if not _numeric_column(v[c])), None)
            raise ValueError(f"modality '{k}'" + (f", column {bad!r}," if bad is not None else "") +
                             f" holds a value that is not a number ({str(e).splitlines()[0]})") from None
    return out
