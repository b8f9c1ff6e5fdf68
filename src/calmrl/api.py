"""In-memory Python API: train on arrays, get a model back.

>>> import calmrl
>>> model = calmrl.fit({"image": X_img, "text": X_txt}, labels=y,      # NaN rows = missing modality
...                    overrides=["train.epochs=20"])          # method "auto": the best objective on validation
>>> model.embed({"image": X_img[:5], "text": None}).fused    # raw features, as in training
>>> model.results["pairs"]["average"]["R@1"]
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from .data import MultiViewData
from .inference import CalMRLModel

__all__ = ["fit", "as_multiview"]


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


def fit(data, config=None, *, labels=None, ids=None, method: str | None = None,
        overrides: Sequence[str] = (), output_dir: str | None = None) -> CalMRLModel:
    """Train ``method`` (default: the config's, ``auto``: every candidate objective, the best on
    validation kept) on in-memory data and return the trained
    :class:`~calmrl.inference.CalMRLModel` (raw inputs standardised as in training); its
    ``results`` attribute holds the evaluation on the held-out test split, and
    ``results["simulated"]`` what was hidden (``None``: nothing; the data is used as given
    unless ``data.missing`` asks for a simulation). ``config``: a
    :class:`~calmrl.train.Config`, a YAML path or ``None`` (the bundled defaults);
    ``overrides``: ``key=value`` strings as on the command line. Checkpoints and logs go to
    ``output_dir`` (default ``runs/in_memory``)."""
    from .train import Config, load_config, run
    from .train.config import apply_overrides
    from .train.splits import describe_simulation, prepare_data

    mv = as_multiview(data, labels, ids)
    sets = list(overrides) + ([f"output_dir={output_dir}"] if output_dir else [])
    if isinstance(config, Config):
        cfg = apply_overrides(config, sets)
    else:
        cfg = load_config(config, sets)
    if not output_dir and cfg.output_dir in ("", "runs/uci_mfeat"):
        cfg = apply_overrides(cfg, ["output_dir=runs/in_memory"])
    method = method or cfg.method.name
    splits = prepare_data(cfg, method, data=mv)
    logging.getLogger("calmrl").warning("calmrl.fit: %s; train %d, val %d, test %d instances",
                                        describe_simulation(splits.simulated), splits.train.n, splits.val.n,
                                        splits.test.n)
    results, module = run(cfg, method=method, splits=splits, return_model=True)
    model = CalMRLModel(module.encoder, module.calibrator, splits.names, splits.standardization)
    model.results = results
    return model
