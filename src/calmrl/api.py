"""In-memory Python API: train on arrays, get a model back.

>>> import calmrl
>>> model = calmrl.fit({"image": X_img, "text": X_txt}, labels=y,      # NaN rows = missing modality
...                    overrides=["train.epochs=20"])          # method "auto": the best objective on validation
>>> model.embed({"image": X_img[:5], "text": None}).fused    # raw features, as in training
>>> model.results["pairs"]["average"]["R@1"]
"""

from __future__ import annotations

import logging
from typing import Sequence


from .estimator import CalMRL, as_multiview
from .inference import CalMRLModel

__all__ = ["fit", "as_multiview"]


def fit(data, config=None, *, labels=None, ids=None, method: str | None = None,
        overrides: Sequence[str] = (), output_dir: str | None = None, **params) -> CalMRLModel:
    """Train ``method`` (default: the config's, ``auto``) on in-memory data and return the trained
    :class:`~calmrl.inference.CalMRLModel` (raw inputs standardised as in training); its
    ``results`` attribute holds the evaluation on the validation split (the estimator keeps no
    test split: ``test_fraction=0.15`` holds one out and reports it instead), and
    ``results["simulated"]`` what was hidden (``None``: nothing). ``config``: a
    :class:`~calmrl.train.Config`, a YAML path or ``None`` (the bundled defaults); keyword
    hyperparameters (``epochs=20``, ``lr=1e-3``, ``embed_dim=128``, ...: the keys of
    :data:`calmrl.estimator.PARAMS`) and ``overrides`` (``key=value`` strings as on the command
    line) change it. Runs are written to ``output_dir``, or to a temporary directory removed
    afterwards. A shortcut for ``calmrl.CalMRL(...).fit(data, labels).model_``."""
    est = CalMRL(method, config=config, overrides=overrides, output_dir=output_dir, progress=params.pop("progress", None),
                 **params)
    est.fit(data, labels, ids=ids)
    model = est.model_
    model.results = est.results_
    logging.getLogger("calmrl").info("calmrl.fit: %s", describe(est.results_))
    return model


def describe(results: dict) -> str:
    from .train.splits import describe_simulation

    test = ("no test split (figures on validation)" if results.get("evaluated_on") == "validation"
            else f"test {results['n_test']}")
    return (f"{describe_simulation(results.get('simulated'))}; train {results['n_train']}, val {results['n_val']}, "
            f"{test} instances")
