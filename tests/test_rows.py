"""Splits of a store on disk without a second copy: RowView against in-memory arrays, chunked
moments against numpy, and a run on a memory-mapped store against the same data in memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from calmrl.config import Config
from calmrl.data import FeatureStore, MultiViewData
from calmrl.data import rows as rows_mod
from calmrl.data.rows import RowView, bounded_sample, observed_summary
from calmrl.train.splits import prepare_data


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_rowview_equals_indexing_and_standardising_a_copy(n, d, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)).astype(np.float32) * 5 + 3
    idx = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
    mean, std = rng.normal(size=d), rng.uniform(0.1, 3, size=d)
    v = RowView(base, idx, mean, std)
    ref = ((base[idx].astype(np.float64) - mean) / std).astype(np.float32)
    assert v.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(v), ref)              # bit for bit
    sub = rng.choice(len(idx), size=max(1, len(idx) // 2), replace=False)
    np.testing.assert_array_equal(v[sub], ref[sub])
    np.testing.assert_array_equal(v[1:], ref[1:])
    np.testing.assert_array_equal(v[-1], ref[-1])
    np.testing.assert_array_equal(RowView(v, sub)[:], ref[sub])    # a view of a view: the row maps compose
    with pytest.raises(ValueError, match="standardised again"):
        RowView(v, None, mean, std)


def test_chunked_moments_and_range_match_numpy(monkeypatch):
    monkeypatch.setattr(rows_mod, "CHUNK_BYTES", 7 * 32)          # pieces of 7 rows of 4 float64 features
    monkeypatch.setattr(rows_mod, "EXACT_BYTES", 0)               # never one piece
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 4)) * [1, 1e3, 1e-3, 10] + [0, 1e6, 5, -3]).astype(np.float32)
    rows = np.sort(rng.choice(500, 333, replace=False))
    mean, std, lo, hi = observed_summary(x, rows)
    np.testing.assert_allclose(mean, x[rows].astype(np.float64).mean(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(std, x[rows].astype(np.float64).std(0), rtol=1e-9)
    np.testing.assert_array_equal(lo, x[rows].min(0))
    np.testing.assert_array_equal(hi, x[rows].max(0))


def test_bounded_sample():
    assert bounded_sample(100, 0, 0) is None and bounded_sample(100, 100, 0) is None
    s = bounded_sample(1000, 50, 3, 1)
    assert len(s) == 50 and len(np.unique(s)) == 50 and (np.diff(s) > 0).all()
    np.testing.assert_array_equal(s, bounded_sample(1000, 50, 3, 1))
    assert not np.array_equal(s, bounded_sample(1000, 50, 3, 2))


def _store(tmp_path, n=600):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, 3))
    views = [(z @ rng.normal(size=(3, w)) + 0.3 * rng.normal(size=(n, w))).astype(np.float32) for w in (5, 8, 6)]
    mask = rng.random((n, 3)) > 0.3
    mask[~mask.any(1), 0] = True
    data = MultiViewData(views, ["a", "b", "c"], mask, np.arange(n), rng.integers(0, 3, n))
    return data, FeatureStore.write(tmp_path / "store", data)


def test_splits_of_a_store_stay_on_disk_and_equal_the_in_memory_ones(tmp_path):
    data, store = _store(tmp_path)
    cfg = Config()
    cfg.data.dataset, cfg.data.path = "store", str(store.path)
    cfg.method.name = "pairwise-infonce"
    lazy = prepare_data(cfg)
    eager = prepare_data(cfg, data=data)
    for part in ("train", "train_full", "val", "test"):
        a, b = getattr(lazy, part), getattr(eager, part)
        assert all(isinstance(v, RowView) for v in a.views), part        # a row map over the store, no copy
        assert all(isinstance(v, np.ndarray) for v in b.views)
        np.testing.assert_array_equal(a.mask, b.mask)
        for va, vb in zip(a.views, b.views):
            np.testing.assert_array_equal(np.asarray(va), vb)             # the same numbers, bit for bit
    assert lazy.notes == eager.notes and lazy.fingerprint == eager.fingerprint


def test_eval_max_instances_caps_validation_and_test_with_a_note(tmp_path):
    data, _ = _store(tmp_path)
    cfg = Config()
    cfg.method.name = "pairwise-infonce"
    cfg.eval.max_instances = 40
    s = prepare_data(cfg, data=data)
    assert s.val.n == 40 and s.test.n == 40
    assert any("validation split has 90 instances: evaluated on a random sample of 40" in n for n in s.notes)
    assert any("test split has 90 instances" in n for n in s.notes)
    again = prepare_data(cfg, data=data)
    np.testing.assert_array_equal(s.test.ids, again.test.ids)          # the same sample every time
    cfg.eval.max_instances = 0
    assert prepare_data(cfg, data=data).test.n == 90


def test_training_diagnostics_read_a_bounded_aligned_sample(tmp_path):
    from calmrl.train.evaluate import diagnostic_split

    data, _ = _store(tmp_path)
    cfg = Config()
    cfg.method.name = "pairwise-infonce"
    s = prepare_data(cfg, data=data)
    train, full, note = diagnostic_split(s, cfg)
    assert train is s.train and full is s.train_full and note is None        # under the cap: everything, as before
    cfg.eval.max_instances = 50
    train, full, note = diagnostic_split(s, cfg)
    assert train.n == full.n == 50 and f"50 of the {s.train.n} training instances" in note
    np.testing.assert_array_equal(train.ids, full.ids)                       # the same instances on both sides
    assert (full.mask | ~train.mask).all()                                   # hidden cells are known in full


def test_map_per_core_keeps_the_order_and_the_values(monkeypatch):
    from calmrl import parallel

    items = list(range(23))
    monkeypatch.setattr(parallel, "cores", lambda: 4)
    assert parallel.map_per_core(lambda x: x * x, items) == [x * x for x in items]
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert parallel.map_per_core(lambda x: -x, items) == [-x for x in items]


def test_a_sampled_test_split_is_said_by_train_and_by_eval_and_rebuilt_the_same(tmp_path, capsys):
    from calmrl.cli import main

    _, store = _store(tmp_path)
    args = ["--method", "pairwise-infonce", "--data", str(store.path), "--epochs", "1", "--set", "eval.max_instances=40",
            "--set", f"output_dir={tmp_path / 'out'}", "--set", "train.progress=false", "--set", "train.threads=1"]
    assert main(["train", *args]) == 0
    trained = capsys.readouterr()
    ckpt = tmp_path / "out" / "pairwise-infonce" / "checkpoints" / "last.ckpt"
    assert main(["eval", "--checkpoint", str(ckpt)]) == 0
    evaluated = capsys.readouterr().out
    said = "the test split has 90 instances: evaluated on a random sample of 40"
    assert said in trained.out + trained.err and said in evaluated
    row = lambda text: next(l for l in text.splitlines() if l.startswith("pairwise-infonce")).split()[:4]  # noqa: E731
    assert row(trained.out) == row(evaluated)                 # the same sample, the same figures
