from helpers import SIM  # noqa: E402
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.data import (FeatureStore, MultiViewData, load_uci_mfeat, mcar_mask, paired_subsets_mask,
                         stratified_split, synthetic_multiview)
from calmrl.train import CheckpointError, ConfigError, load_checkpoint, load_config
from calmrl.train.checkpoints import AtomicCheckpointIO


def test_uci_loader_reads_all_views():
    d = load_uci_mfeat()
    assert d.names == ["fourier", "profile", "karhunen", "pixel", "zernike", "morphological"]
    assert d.dims == [76, 216, 64, 240, 47, 6] and d.n == 2000
    assert np.bincount(d.labels).tolist() == [200] * 10
    with pytest.raises(ValueError, match="unknown UCI view"):
        load_uci_mfeat(views=["pixels"])


def test_split_is_stratified_and_disjoint():
    d = load_uci_mfeat(views=["pixel"])
    tr, va, te = stratified_split(d.n, d.labels, 0.15, 0.15, 0)
    assert len(set(tr) | set(va) | set(te)) == 2000 and len(tr) == 1400
    assert np.bincount(d.labels[te]).tolist() == [30] * 10


@settings(max_examples=40, deadline=None)
@given(n=st.integers(8, 300), classes=st.integers(1, 6), share=st.floats(0.05, 0.6), seed=st.integers(0, 10_000),
       stratify=st.booleans(), skew=st.floats(0.0, 2.0))
def test_the_split_draws_are_scikit_learns_train_test_split(n, classes, share, seed, stratify, skew):
    """calmrl draws its splits itself (reading a split back imports no scikit-learn), the same
    draws as scikit-learn's train_test_split, stratified or not, or the same refusal."""
    from sklearn.model_selection import train_test_split

    from calmrl.data.sources import shuffle_split

    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(classes))
    y = rng.choice(classes, size=n, p=p / p.sum()) if stratify else None
    try:
        ref = train_test_split(np.arange(n), test_size=share, random_state=seed, stratify=y)
    except ValueError:
        with pytest.raises(ValueError):
            shuffle_split(n, share, seed, y)
        return
    got = shuffle_split(n, share, seed, y)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_mcar_rate_and_floor():
    m = mcar_mask(5000, 6, 0.5, min_observed=2, seed=0)
    assert m.sum(1).min() >= 2
    assert 0.45 < 1 - m.mean() < 0.5
    m0 = mcar_mask(100, 4, 0.0)
    assert m0.all()
    with pytest.raises(ValueError, match="missing rate"):
        mcar_mask(10, 3, 1.0)


def test_paired_subsets():
    m = paired_subsets_mask(1000, 3, [[0, 1], [0, 2]], complete_fraction=0.1, seed=1)
    rows = {tuple(r) for r in m.astype(int).tolist()}
    assert rows == {(1, 1, 0), (1, 0, 1), (1, 1, 1)}
    with pytest.raises(ValueError, match="modality indices"):
        paired_subsets_mask(10, 3, [[0, 5]])


def test_synthetic_generator_has_ground_truth():
    data, truth = synthetic_multiview(n=300, dims=(8, 6), latent_dim=3, seed=0)
    assert data.dims == [8, 6] and truth["beta"].shape == (300, 3)


def test_feature_store_roundtrip_and_errors(tmp_path):
    data, _ = synthetic_multiview(n=50, dims=(4, 3), latent_dim=2)
    mask = data.mask.copy()
    mask[::4, 1] = False
    data = data.with_mask(mask)
    FeatureStore.write(tmp_path / "s", data)
    back = FeatureStore(tmp_path / "s").read()
    assert back.names == data.names and (back.mask == mask).all()
    np.testing.assert_allclose(np.asarray(back.views[0]), data.views[0])
    assert isinstance(back.views[0], np.memmap)
    np.save(tmp_path / "s" / "view1.npy", np.zeros((49, 3), np.float32))
    with pytest.raises(ValueError, match="view1.npy is damaged: checksum mismatch"):
        FeatureStore(tmp_path / "s").read()
    with pytest.raises(ValueError, match="view1.npy has shape"):       # a store written without checksums
        FeatureStore(tmp_path / "s").read(verify=False)
    (tmp_path / "s" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is damaged"):
        FeatureStore(tmp_path / "s").read()
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore(tmp_path / "nothing").read()


def test_batched_fetch_equals_per_item_collate(tmp_path):
    from torch.utils.data import DataLoader
    from calmrl.data.dataset import MultiViewDataset, collate_views
    data, _ = synthetic_multiview(n=40, dims=(4, 3, 5), latent_dim=2)
    mask = data.mask.copy()
    mask[::3, 1] = False
    mask[1::5, 2] = False
    FeatureStore.write(tmp_path / "s", data.with_mask(mask))
    stored = FeatureStore(tmp_path / "s").read()                       # memory-mapped views
    for d in (data.with_mask(mask), stored):
        ds = MultiViewDataset(d)
        idx = [7, 3, 39, 0, 12, 3]
        a, b = ds.__getitems__(idx), collate_views([ds[i] for i in idx])
        for x, y in zip(a["views"], b["views"]):
            assert x.dtype == y.dtype == torch.float32
            torch.testing.assert_close(x, y, atol=0, rtol=0)
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["index"], b["index"])
        assert float(a["views"][1][~a["mask"][:, 1]].abs().sum()) == 0.0   # missing cells are zeros
        batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate_views)))   # uses __getitems__
        torch.testing.assert_close(batch["views"][2], collate_views([ds[i] for i in range(8)])["views"][2])


def test_dataset_validation_errors():
    v = np.random.rand(5, 3).astype(np.float32)
    with pytest.raises(ValueError, match="has 4 rows"):
        MultiViewData([v, v[:4]], ["a", "b"], np.ones((5, 2), bool))
    bad = v.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="'b' row 2"):
        MultiViewData([v, bad], ["a", "b"], np.ones((5, 2), bool))
    m = np.ones((5, 2), bool)
    m[3] = False
    with pytest.raises(ValueError, match="no observed modality"):
        MultiViewData([v, v], ["a", "b"], m)
    with pytest.raises(ValueError, match="labels has 4"):
        MultiViewData([v, v], ["a", "b"], np.ones((5, 2), bool), labels=np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        MultiViewData([v[:0], v[:0]], ["a", "b"], np.ones((0, 2), bool))


def test_config_validation_messages(tmp_path):
    cfg = load_config(None, SIM + ["method.name=gram", "train.epochs=3"])
    assert cfg.method.name == "gram" and cfg.train.epochs == 3
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['train.epoch'\].*'epochs'"):
        load_config(None, SIM + ["train.epoch=3"])
    with pytest.raises(ConfigError, match="choose one of .*'calmrl'"):
        load_config(None, SIM + ["method.name=pmrl"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, SIM + ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="below its minimum"):
        load_config(None, SIM + ["train.batch_size=1"])
    p = tmp_path / "c.yaml"
    p.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_atomic_checkpoint_and_corrupt_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert load_checkpoint(path)["state_dict"]["w"].sum() == 3
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)
    # a failed write leaves the previous checkpoint intact
    path.write_bytes(good)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"state_dict": {}, "x": Boom()}, path)
    assert load_checkpoint(path)["state_dict"]["w"].sum() == 3


def test_from_tables_joins_modalities_on_ids():
    a = (["x", "y", "z"], np.arange(6, dtype=np.float32).reshape(3, 2))
    b = (["z", "w"], np.ones((2, 4), np.float32))
    d = MultiViewData.from_tables({"a": a, "b": b}, labels={"x": 0, "y": 1, "z": 2, "w": 3})
    assert list(d.ids) == ["x", "y", "z", "w"] and d.dims == [2, 4]
    assert d.mask.tolist() == [[True, False], [True, False], [True, True], [False, True]]
    assert d.meta["missing_by_join"] == {"a": 1, "b": 2}
    np.testing.assert_array_equal(d.views[0][2], [4, 5])
    with pytest.raises(ValueError, match="more than once"):
        MultiViewData.from_tables({"a": (["x", "x"], np.zeros((2, 2)))})
    with pytest.raises(ValueError, match="2 ids for 3 rows"):
        MultiViewData.from_tables({"a": (["x", "y"], np.zeros((3, 2)))})
    part = MultiViewData.from_tables({"a": a}, labels={"x": 0})          # partly labelled: said, not refused
    assert list(part.labels) == [0, "", ""] and "labels for 1 of 3 instances" in part.meta["notes"][0]


def test_thread_policy(monkeypatch):
    from calmrl.train import threads as runner   # the thread policy's module
    cfg = load_config(None, SIM + [])
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(runner, "busy_cores", lambda window=0.25: 0.1)
    assert runner.choose_threads(cfg) == 4                       # idle machine: every core
    monkeypatch.setattr(runner, "busy_cores", lambda window=0.25: 2.7)
    assert runner.choose_threads(cfg) == 1                       # 3 cores busy elsewhere
    monkeypatch.setattr(runner, "busy_cores", lambda window=0.25: 0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runner.choose_threads(cfg) == 2                       # shared among the node's processes
    assert runner.choose_threads(load_config(None, SIM + ["train.threads=3"])) == 3
    assert 0.0 <= runner.busy_cores(0.05) <= (runner.os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, SIM + ["train.threads=-1"])
