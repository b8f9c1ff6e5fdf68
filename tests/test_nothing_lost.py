"""Nothing calmrl did not create is deleted or overwritten; failures of the environment are not
taken for a candidate's; a moved run resumes into its own files; a resume that would change the
learning-rate schedule is refused."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from helpers import SIM
from calmrl.data import FeatureStore, MultiViewData

TINY = SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.progress=false", "train.threads=1",
              "calibrator.warmup_epochs=1", "data.views=[fourier, karhunen, zernike]"]


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return MultiViewData([rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)],
                         ["a", "b"], np.ones((n, 2), bool), np.arange(n), None, {})


def test_a_store_write_never_touches_a_users_files_named_like_its_temporaries(tmp_path):
    (tmp_path / "s.tmp").mkdir()
    (tmp_path / "s.tmp" / "precious.npy").write_bytes(b"mine")
    (tmp_path / "s.old").write_text("mine too")
    FeatureStore.write(tmp_path / "s", _data())
    FeatureStore.write(tmp_path / "s", _data(seed=1))                 # over its own earlier store: allowed
    assert (tmp_path / "s.tmp" / "precious.npy").read_bytes() == b"mine"
    assert (tmp_path / "s.old").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.old", "s.tmp"]     # no temporaries left
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s").read().views[0], _data(seed=1).views[0])


def test_a_store_write_refuses_a_directory_that_is_not_a_store_and_a_taken_output(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "paper.tex").write_text("draft")
    with pytest.raises(FileExistsError, match="not a calmrl feature store"):
        FeatureStore.write(tmp_path / "results", _data())
    assert (tmp_path / "results" / "paper.tex").read_text() == "draft"
    FeatureStore.write(tmp_path / "one", _data())
    with pytest.raises(FileExistsError, match="not empty"):              # data import: never replaces a store
        FeatureStore.write(tmp_path / "one", _data(seed=1), replace=False)
    np.testing.assert_array_equal(FeatureStore(tmp_path / "one").read().views[0], _data().views[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "results"]


def test_impute_into_a_name_beside_its_input_keeps_the_input(tmp_path, capsys):
    from calmrl.cli import main

    src = tmp_path / "mystore.tmp"
    d = _data(40)
    d.mask[::3, 1] = False
    FeatureStore.write(src, d)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert main(["impute", "--store", str(src), "--space", "input", "--latent-dim", "1", "--out",
                 str(tmp_path / "mystore")]) == 0
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_export_refuses_a_users_directory_and_follows_the_umask(tmp_path):
    from calmrl.core import SharedLatentCalibrator
    from calmrl.model.encoders import MultiModalEncoder
    from calmrl.model.export import export_model
    from calmrl.train import load_config

    cfg = load_config(None, TINY)
    enc = MultiModalEncoder.mlp([3, 2], ["a", "b"], 16, 32, 2, 0.0)
    cal = SharedLatentCalibrator(2, 16, 4, names=["a", "b"])
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match="not an earlier calmrl export"):
        export_model(enc, cal, cfg, [3, 2], proj)
    assert json.loads((proj / "config.json").read_text()) == {"mine": 1} and len(list(proj.iterdir())) == 1
    old = os.umask(0o022)
    try:
        out = export_model(enc, cal, cfg, [3, 2], tmp_path / "m")
        export_model(enc, cal, cfg, [3, 2], out)                         # over its own export: allowed
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert {oct((out / f).stat().st_mode & 0o777) for f in ("config.json", "model.safetensors")} == {"0o644"}


def test_a_full_disk_stops_the_search_resumable_and_eliminates_no_candidate(tmp_path, monkeypatch):
    import calmrl.train.auto as auto
    from calmrl.train import load_config, run

    torch.set_num_threads(1)
    over = TINY + ["train.epochs=2", "method.candidates=[pmrl-drop, pairwise-infonce]", "method.lr_factors=[1]",
                   f"output_dir={tmp_path}"]
    real = auto.train_one
    calls = []

    def full_disk(cfg, *a, **k):
        calls.append(cfg.method.name)
        if cfg.method.name == "pairwise-infonce":
            raise OSError(28, "No space left on device")
        return real(cfg, *a, **k)

    monkeypatch.setattr(auto, "train_one", full_disk)
    with pytest.raises(auto.SearchStopped, match="no candidate was eliminated.*--resume"):
        run(load_config(None, over), method="auto")
    assert (tmp_path / "auto" / "candidates" / "pmrl-drop").is_dir()      # the search stays, resumable
    monkeypatch.setattr(auto, "train_one", real)
    res = run(load_config(None, over), method="auto", resume=True)
    assert not res["auto"]["failed"] and set(res["auto"]["val_R@1"]) == {"pmrl-drop", "pairwise-infonce"}


def test_a_moved_run_resumes_into_its_own_last_checkpoint_and_other_epochs_are_refused(tmp_path):
    from calmrl.train import load_checkpoint, load_config, run
    from calmrl.train.checkpoints import CheckpointError

    torch.set_num_threads(1)
    cfg = load_config(None, TINY + ["train.epochs=3", f"output_dir={tmp_path / 'Q'}"])
    run(cfg, method="pmrl-drop", max_epochs=1)                           # stopped after its first epoch
    shutil.move(tmp_path / "Q", tmp_path / "Q2")
    moved = load_config(None, TINY + ["train.epochs=3", f"output_dir={tmp_path / 'Q2'}"])
    res = run(moved, method="pmrl-drop", resume=True)
    ck = tmp_path / "Q2" / "pmrl-drop" / "checkpoints"
    assert load_checkpoint(ck / "last.ckpt")["epoch"] == 2 and res["epochs"] == 3
    assert not list(ck.glob("*-v*.ckpt"))
    longer = load_config(None, TINY + ["train.epochs=5", f"output_dir={tmp_path / 'Q2'}"])
    with pytest.raises(CheckpointError, match="train.epochs: 3 -> 5"):
        run(longer, method="pmrl-drop", resume=True)


def test_checksums_cover_what_gives_the_tensors_their_meaning(tmp_path, monkeypatch):
    """A store's names and dims in another order, one character of an export's config.json, an
    edited search.json, a checkpoint without its checksum key: each refused, naming the file."""
    from calmrl.core import SharedLatentCalibrator
    from calmrl.integrity import DamagedFileError, UnverifiedFileError, seal_json
    from calmrl.model.encoders import MultiModalEncoder
    from calmrl.model.export import export_model, load_exported
    from calmrl.model.verify import verify_path
    from calmrl.train import load_config

    FeatureStore.write(tmp_path / "s", _data())
    meta_f = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_f.read_text())
    meta_f.write_text(json.dumps({**meta, "names": ["b", "a"], "dims": [2, 3]}))
    with pytest.raises(DamagedFileError, match="another meaning"):
        FeatureStore(tmp_path / "s").read()
    meta.pop("meta_sha256")
    meta_f.write_text(json.dumps(meta))
    with pytest.raises(UnverifiedFileError, match="CALMRL_ALLOW_UNVERIFIED"):
        FeatureStore(tmp_path / "s").read()
    assert verify_path(tmp_path / "s")[0][1].startswith("unverified")
    monkeypatch.setenv("CALMRL_ALLOW_UNVERIFIED", "1")
    FeatureStore(tmp_path / "s").read()                                   # read, but never called verified
    assert verify_path(tmp_path / "s")[0][1].startswith("unverified")
    monkeypatch.delenv("CALMRL_ALLOW_UNVERIFIED")

    cfg = load_config(None, TINY)
    out = export_model(MultiModalEncoder.mlp([3, 2], ["a", "b"], 16, 32, 2, 0.0),
                       SharedLatentCalibrator(2, 16, 4, names=["a", "b"]), cfg, [3, 2], tmp_path / "m")
    load_exported(out)
    (out / "config.json").write_text((out / "config.json").read_text().replace('"a"', '"c"', 1))
    with pytest.raises(DamagedFileError, match="config.json is damaged or was edited"):
        load_exported(out)

    state = seal_json({"rungs": [1, 3], "done": 0, "alive": ["x"], "candidates": {}})
    from calmrl.integrity import check_json
    assert check_json(state, "search.json", "redo")
    with pytest.raises(DamagedFileError, match="search.json is damaged or was edited"):
        check_json({**state, "alive": ["worst"]}, "search.json", "redo")

    from calmrl.train import load_checkpoint
    from calmrl.train.checkpoints import CheckpointError
    ck = tmp_path / "c.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ck)                 # no checksum key
    with pytest.raises(CheckpointError, match="carries no checksum"):
        load_checkpoint(ck)
    assert verify_path(ck)[0][1].startswith("unverified")
