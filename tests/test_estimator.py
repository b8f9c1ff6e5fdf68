"""The estimator as a researcher uses it from a notebook: public API only, numpy in and numpy
out, NaN rows for missing modalities in every modality, scikit-learn's conventions."""

from __future__ import annotations

import os

import numpy as np
import pytest


def _digits():
    """scikit-learn's digits split into three views (left, middle, right columns), each view
    missing (a row of NaN) in a quarter of the instances, never all three."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    img = X.reshape(-1, 8, 8)
    views = {"left": img[:, :, :3].reshape(len(X), -1), "middle": img[:, :, 3:5].reshape(len(X), -1),
             "right": img[:, :, 5:].reshape(len(X), -1)}
    rng = np.random.default_rng(0)
    miss = rng.random((len(X), 3)) < 0.25
    miss[miss.all(1), 0] = False
    out = {}
    for m, (k, v) in enumerate(views.items()):
        v = v.astype(np.float64).copy()
        v[miss[:, m]] = np.nan
        out[k] = v
    return out, y, miss


@pytest.mark.slow
def test_the_estimator_from_a_notebook(tmp_path):
    import calmrl

    cwd = os.getcwd()
    os.chdir(tmp_path)                                  # nothing may be written here
    try:
        X, y, miss = _digits()
        est = calmrl.CalMRL(method="pairwise-infonce", epochs=8, embed_dim=16, hidden_dim=64, threads=1)
        assert est.get_params()["epochs"] == 8 and est.set_params(lr=3e-3) is est and est.lr == 3e-3
        with pytest.raises(ValueError, match="(?i)invalid parameter 'epochz'"):
            est.set_params(epochz=3)
        est.fit(X, y)
        assert os.listdir(tmp_path) == []                     # no runs/ in the working directory
        Z = est.transform(X)
        assert isinstance(Z, np.ndarray) and Z.shape == (len(y), 16)
        np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
        emb = est.embed(X)
        assert emb["mask"].dtype == bool and (emb["mask"] == ~miss).all()      # NaN rows are the missing cells
        # a query with only one view retrieves its own instance among galleries of another view
        both = np.nonzero(~miss[:, 0] & ~miss[:, 2])[0][:300]
        n = len(both)
        q = {"left": X["left"][both], "middle": None, "right": None}
        scores, idx = est.retrieve(q, {"right": X["right"][both]}, k=10)
        assert isinstance(idx, np.ndarray) and idx.shape == (n, 10) and (np.diff(scores, axis=1) <= 1e-6).all()
        hit10 = np.mean([i in row for i, row in enumerate(idx)])
        assert hit10 > 4 * 10 / n                          # well above chance (10 of n)
        with pytest.raises(ValueError, match="have no observed modality"):
            est.transform({"left": X["left"][miss[:, 0]][:3]})
        r1 = est.score(X)
        assert 10 * 100 / len(y) < r1 <= 100.0 and r1 == pytest.approx(est.score(X))   # 10x chance
        # save / load in the exported format (checksummed), the same embeddings back
        path = est.save(tmp_path / "model")
        back = calmrl.CalMRL.load(path)
        np.testing.assert_allclose(back.transform(X), Z, atol=1e-6)
        assert calmrl.fit is not None and repr(est).startswith("CalMRL(")
    finally:
        os.chdir(cwd)


def test_estimator_errors_speak_python():
    from sklearn.exceptions import NotFittedError

    import calmrl

    with pytest.raises(NotFittedError, match="not fitted yet"):
        calmrl.CalMRL().transform({"a": np.zeros((2, 3))})
    with pytest.raises(TypeError, match="unknown parameter"):
        from calmrl.estimator import overrides_of
        overrides_of({"epochz": 1})
