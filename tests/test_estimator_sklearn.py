"""The estimator as a data scientist checks it: pandas by index, scikit-learn's own base
classes, a loaded estimator that is the one saved, and errors that name what is wrong."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def fitted():
    import pandas as pd
    from sklearn.datasets import load_digits

    import calmrl

    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400]
    idx = [f"d{i}" for i in range(len(y))]
    frames = {"left": pd.DataFrame(X[:, :32], index=idx), "right": pd.DataFrame(X[:, 32:], index=idx)}
    est = calmrl.CalMRL(method="pairwise-infonce", epochs=2, embed_dim=8, hidden_dim=16, threads=1)
    est.fit(frames, pd.Series(y, index=idx))
    return est, frames, y


def test_sklearn_base_classes_clone_and_check_is_fitted(fitted):
    from sklearn.base import BaseEstimator, TransformerMixin, clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    import calmrl

    est, _, _ = fitted
    assert isinstance(est, BaseEstimator) and isinstance(est, TransformerMixin)
    check_is_fitted(est)
    fresh = clone(est)
    assert fresh.get_params() == est.get_params() and not hasattr(fresh, "model_")
    with pytest.raises(NotFittedError):
        check_is_fitted(calmrl.CalMRL())
    assert "epochs=2" in repr(est)


def test_dataframes_are_paired_by_their_index(fitted):
    est, frames, _ = fitted
    Z = est.transform(frames)
    shuffled = {"left": frames["left"], "right": frames["right"].sample(frac=1.0, random_state=0)}
    np.testing.assert_array_equal(est.transform(shuffled), Z)           # rows follow the labels, not positions
    partial = {"left": frames["left"], "right": frames["right"].iloc[::2]}      # an absent label: right missing
    emb = est.embed(partial)
    assert (emb["mask"][:, 1] == (np.arange(len(Z)) % 2 == 0)).all()
    dup = {"left": frames["left"], "right": frames["right"].iloc[[0, 0, 1]]}
    with pytest.raises(ValueError, match="more than once"):
        est.transform(dup)
    with pytest.raises(ValueError, match="DataFrames .paired by index. and .* arrays"):
        est.transform({"left": frames["left"], "right": frames["right"].to_numpy()[::-1]})
    assert est.transform({"left": frames["left"].iloc[:0], "right": None}).shape == (0, 8)


def test_a_loaded_estimator_is_the_one_saved(fitted, tmp_path):
    import calmrl

    est, frames, _ = fitted
    back = calmrl.CalMRL.load(est.save(tmp_path / "m"))
    assert back.get_params() == est.get_params()
    assert back.results_["pairs"]["average"]["R@1"] == pytest.approx(est.results_["pairs"]["average"]["R@1"])
    np.testing.assert_allclose(back.transform(frames), est.transform(frames), atol=1e-6)


def test_errors_name_what_is_wrong(fitted):
    import pandas as pd

    import calmrl

    est, frames, y = fitted
    with pytest.raises(ValueError, match="reads no labels"):
        est.score(frames, y)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        est.retrieve(frames, est.transform(frames), k=-1)
    bad = frames["left"].astype(object)
    bad.iloc[3, 2] = "abc"
    with pytest.raises(ValueError, match="modality 'left', column 2,"):
        est.transform({"left": bad, "right": frames["right"]})
    y_nan = np.asarray(y, float)
    y_nan[5] = np.nan
    with pytest.raises(ValueError, match="y holds NaN for 1 instance"):
        calmrl.CalMRL(epochs=1).fit({k: v.to_numpy() for k, v in frames.items()}, y_nan)


def test_cross_validation_on_one_dataframe_with_modality_columns(fitted):
    import pandas as pd
    from sklearn.model_selection import cross_val_score

    import calmrl

    _, frames, _ = fitted
    X = pd.concat(frames, axis=1)                         # columns (modality, feature)
    scores = cross_val_score(calmrl.CalMRL(method="pairwise-infonce", epochs=1, embed_dim=8, hidden_dim=16,
                                           threads=1), X, cv=2)
    assert scores.shape == (2,) and np.isfinite(scores).all() and (scores > 0).all()


def test_retrieve_answers_every_query_row_and_marks_those_with_nothing_observed(fitted):
    """A query batch by one modality where some rows lack it: the others are answered as alone,
    the empty rows get NaN scores and index -1; k beyond the gallery is refused."""
    est, frames, _ = fitted
    left = frames["left"].to_numpy().astype(float)
    gallery = est.transform(frames)
    q = left[:6].copy()
    q[[1, 4]] = np.nan
    s, i = est.retrieve({"left": q}, gallery, k=3)
    assert s.shape == i.shape == (6, 3)
    assert np.isnan(s[[1, 4]]).all() and (i[[1, 4]] == -1).all()
    s_ok, i_ok = est.retrieve({"left": q[[0, 2, 3, 5]]}, gallery, k=3)
    np.testing.assert_array_equal(i[[0, 2, 3, 5]], i_ok)
    np.testing.assert_array_equal(s[[0, 2, 3, 5]], s_ok)
    with pytest.raises(ValueError, match="more than the gallery"):
        est.retrieve({"left": q}, gallery[:2], k=3)


def test_transform_is_bit_identical_across_calls_and_batch_sizes(fitted):
    """An instance's embedding does not depend on the batch around it (inference runs in
    float64, rounded to float32 at the end), nor on earlier calls."""
    est, frames, _ = fitted
    arrays = {k: v.to_numpy().astype(float) for k, v in frames.items()}
    arrays["right"][::3] = np.nan                                        # some rows miss a view
    batch = est.transform(arrays)
    assert np.array_equal(batch, est.transform(arrays))
    for i in (0, 1, 2, 7):
        one = est.transform({k: v[i:i + 1] for k, v in arrays.items()})
        assert np.array_equal(one[0], batch[i]), i


def test_the_estimator_holds_back_validation_only_and_says_its_figures_are_validations(fitted):
    """Its own data policy: a validation split for the choices, no test split held back (the
    user scores on data of their own); ``test_fraction`` restores one."""
    import calmrl
    from calmrl.data.sources import stratified_split

    est, frames, y = fitted
    r = est.results_
    assert est.get_params()["test_fraction"] == 0.0
    assert r["evaluated_on"] == "validation" and r["n_test"] == 0 and r["n_train"] + r["n_val"] == len(y)
    assert any("no test split (data.test_fraction=0)" in n for n in r["data_notes"])
    assert est.config_.train.plots is False           # no figures drawn into the temporary directory it removes
    tr, va, te = stratified_split(400, y, 0.15, 0.0, 0)
    assert len(te) == 0 and len(va) == 60 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 400
    held = calmrl.CalMRL(method="pairwise-infonce", epochs=1, embed_dim=8, hidden_dim=16, threads=1,
                         test_fraction=0.15).fit(frames)
    assert held.results_["evaluated_on"] == "test" and held.results_["n_test"] == 60


def test_scikit_learns_check_estimator_passes_but_for_the_listed_choices():
    """scikit-learn's own checks on a 2-D table cut into views: each fails only where it is
    listed, with its reason (a check that starts to pass, or a new failure, fails this test)."""
    from sklearn.utils.estimator_checks import check_estimator

    import calmrl
    from calmrl.estimator import EXPECTED_FAILED_CHECKS

    est = calmrl.CalMRL(method="pairwise-infonce", epochs=1, embed_dim=4, hidden_dim=8, threads=1, views=2,
                        val_fraction=0.3, partial_views="missing")
    out = check_estimator(est, on_fail=None)
    failed = {r["check_name"]: str(r["exception"]).splitlines()[0] for r in out if r["status"] == "failed"}
    assert set(failed) == set(EXPECTED_FAILED_CHECKS), failed
    assert sum(r["status"] == "passed" for r in out) >= 40


def test_one_table_with_views_is_cut_into_modalities_and_checked_against_the_fit(fitted, tmp_path):
    import pandas as pd

    import calmrl

    est0, frames, y = fitted
    table = pd.concat([frames["left"], frames["right"]], axis=1)
    table.columns = [f"f{i}" for i in range(64)]
    est = calmrl.CalMRL(method="pairwise-infonce", epochs=1, embed_dim=8, hidden_dim=16, threads=1,
                        views={"left": 32, "right": 32}).fit(table)
    assert est.n_features_in_ == 64 and list(est.feature_names_in_) == list(table.columns)
    assert est.names_ == ["left", "right"]
    np.testing.assert_array_equal(est.transform(table), est.transform(frames))      # the same instances
    s_raw, i_raw = est.retrieve(table.iloc[:5], table, k=3)                          # a table as wide as fitted: raw
    s_emb, i_emb = est.retrieve(table.iloc[:5], est.transform(table), k=3)           # embeddings
    np.testing.assert_array_equal(i_raw, i_emb)
    assert i_raw.shape == (5, 3)
    with pytest.raises(ValueError, match="X has 63 features, but CalMRL is expecting 64"):
        with pytest.warns(UserWarning, match="X does not have valid feature names"):     # an array after a frame
            est.transform(table.to_numpy()[:, :63])
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing:\n- f63"):
        est.transform(table.iloc[:, :63])
    est.save(tmp_path / "m")
    back = calmrl.CalMRL.load(tmp_path / "m")                    # the width and names are checked after load too
    assert back.n_features_in_ == 64 and list(back.feature_names_in_) == list(table.columns)
    np.testing.assert_array_equal(back.transform(table), est.transform(table))
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing:\n- f63"):
        back.transform(table.iloc[:, :63])
    with pytest.raises(ValueError, match=r"views=\[40, 20\] add up to 60 columns; X has 64"):
        calmrl.CalMRL(views=[40, 20]).fit(table.to_numpy())
    with pytest.raises(TypeError, match="Sparse data was passed"):
        import scipy.sparse as sp
        est.transform(sp.csr_matrix(table.to_numpy()))
