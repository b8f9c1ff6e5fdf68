"""Integrity end to end: damaged files refused naming them (checkpoints, exported models,
feature stores; `calmrl verify`), strict inputs (duplicate columns, duplicate YAML keys),
every check before anything is moved, a failed run puts the earlier one back."""

from __future__ import annotations

import json
import random
import zipfile

import numpy as np
import pytest
import torch

from helpers import SIM
from calmrl.cli import main
from calmrl.data import FeatureStore
from calmrl.data.tables import load_tables
from calmrl.integrity import DamagedFileError
from calmrl.train import AtomicCheckpointIO, CheckpointError, load_checkpoint, load_config, run
from calmrl.train.config import ConfigError

TINY = SIM + ["model.embed_dim=8", "model.hidden_dim=16", "train.epochs=2", "train.progress=false",
              "train.check_val_every=50", "train.threads=1", "data.views=[fourier, karhunen, zernike]"]


def _model_checkpoint(tmp_path):
    from calmrl.train.module import CalMRLModule
    cfg = load_config(None, ["model.embed_dim=8", "model.hidden_dim=16", "method.name=pmrl-drop"])
    m = CalMRLModule(cfg, [12, 9, 6], ["a", "b", "c"])
    path = tmp_path / "kept.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": m.state_dict(), "epoch": 3, "calmrl_names": ["a", "b", "c"]},
                                         path)
    return path


def _data_ranges(path):
    """Byte ranges of the tensors' data records inside a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        out = []
        for info in z.infolist():
            if "/data/" in info.filename and info.file_size > 0:
                with open(path, "rb") as f:       # the local header: 30 bytes + name + extra
                    f.seek(info.header_offset + 26)
                    n, e = np.frombuffer(f.read(4), "<u2")
                start = info.header_offset + 30 + int(n) + int(e)
                out.append((start, start + info.file_size))
    return out


def test_a_corrupted_byte_anywhere_in_the_weights_is_refused_naming_the_file(tmp_path):
    path = _model_checkpoint(tmp_path)
    good = path.read_bytes()
    assert load_checkpoint(path)["epoch"] == 3
    ranges = _data_ranges(path)
    total = sum(b - a for a, b in ranges)
    rng = random.Random(0)
    refused = 0
    for _ in range(100):
        k = rng.randrange(total)
        for a, b in ranges:
            if k < b - a:
                off = a + k
                break
            k -= b - a
        bad = bytearray(good)
        bad[off] ^= 1 << rng.randrange(8)              # one bit of one byte
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="kept.ckpt is damaged: checksum mismatch"):
            load_checkpoint(path)
        refused += 1
    assert refused == 100
    path.write_bytes(good)
    assert load_checkpoint(path)["epoch"] == 3


@pytest.mark.slow
def test_damaged_kept_model_export_and_store_are_refused_and_verify_names_them(tmp_path, capsys):
    out = tmp_path / "o"
    run(load_config(None, TINY + [f"output_dir={out}"]), method="pmrl-drop")
    ck = out / "pmrl-drop" / "checkpoints" / "last.ckpt"
    assert main(["verify", str(out)]) == 0
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "exp")]) == 0
    assert main(["verify", str(tmp_path / "exp")]) == 0
    # zeros inside the largest weight: evaluated silently before; now refused, never blamed on the data
    a, b = max(_data_ranges(ck), key=lambda r: r[1] - r[0])
    raw = bytearray(ck.read_bytes())
    raw[a: a + 64] = b"\x7f" * 64
    ck.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt is damaged: checksum mismatch" in err and "other checkpoints there" in err and "NaN" not in err
    assert main(["verify", str(out)]) == 2
    assert "damaged" in capsys.readouterr().out
    st = tmp_path / "exp" / "model.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-5] ^= 0xFF
    st.write_bytes(bytes(raw))
    from calmrl.inference import CalMRLModel
    with pytest.raises(DamagedFileError, match="model.safetensors is damaged"):
        CalMRLModel.load(tmp_path / "exp")


def test_duplicate_column_names_are_refused_in_csv_and_parquet(tmp_path):
    (tmp_path / "a.csv").write_text("id,f0,f1,f1,f2\n1,2,3,4,5\n")
    (tmp_path / "b.csv").write_text("id,g0,id\n1,2,x\n")
    (tmp_path / "c.csv").write_text("id,h\n1,2\n")
    with pytest.raises(ValueError, match=r"a.csv has duplicate column name\(s\) \['f1'\]"):
        load_tables({"a": tmp_path / "a.csv", "c": tmp_path / "c.csv"})
    with pytest.raises(ValueError, match=r"duplicate column name\(s\) \['id'\]"):
        load_tables({"b": tmp_path / "b.csv", "c": tmp_path / "c.csv"})
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_arrays([pa.array(["1"]), pa.array([1.0]), pa.array([2.0])], names=["id", "x", "x"]),
                   tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"duplicate column name\(s\) \['x'\]"):
        load_tables({"p": tmp_path / "p.parquet", "c": tmp_path / "c.csv"})


def test_ids_with_spaces_are_stripped_with_a_note_counting_them(tmp_path):
    (tmp_path / "a.csv").write_text("id,f\n x ,1\ny,2\n")
    (tmp_path / "b.csv").write_text("id,g\nx,3\n y,4\n")
    data = load_tables({"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"})
    assert data.n == 2 and data.mask.all()
    assert any("1 id(s) had spaces around them, stripped" in n for n in data.meta["notes"])


def test_yaml_duplicate_keys_and_a_non_mapping_top_level_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\nmodel:\n  embed_dim: 8\ntrain:\n  epochs: 40\n")
    with pytest.raises(ConfigError, match="key 'train' appears twice in one section \\(lines 1 and 5\\)"):
        load_config(p)
    p.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="key 'epochs' appears twice"):
        load_config(p)
    p.write_text("- train\n- model\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(p)
    with pytest.raises(ConfigError, match="finite positive"):
        load_config(None, ["method.auto_lrs=[.inf]"])
    with pytest.raises(ConfigError, match="method.candidates lists calmrl more than once"):
        load_config(None, ["method.candidates=[calmrl, calmrl]"])


@pytest.mark.slow
def test_checks_run_before_anything_moves_and_a_failed_run_puts_the_earlier_one_back(tmp_path, caplog):
    out = tmp_path / "o"
    first = run(load_config(None, TINY + [f"output_dir={out}"]), method="pmrl-drop")
    done = out / "pmrl-drop" / "results.json"
    assert done.exists()
    with pytest.raises(ValueError, match="have different widths"):
        run(load_config(None, TINY + [f"output_dir={out}", "model.shared_encoders=[[fourier, karhunen]]"]),
            method="pmrl-drop")
    with pytest.raises(ValueError, match="one modality"):
        run(load_config(None, TINY + [f"output_dir={out}", "data.views=[fourier]"]), method="pmrl-drop")
    assert done.exists() and not list(out.glob("pmrl-drop.prev-*"))          # nothing moved
    with pytest.raises(FloatingPointError, match="diverged"):
        run(load_config(None, TINY + [f"output_dir={out}", "train.lr=1e6"]), method="pmrl-drop")
    assert json.loads(done.read_text())["pairs"]["average"]["R@1"] == first["pairs"]["average"]["R@1"]
    assert not list(out.glob("pmrl-drop.prev-*")) and len(list(out.glob("pmrl-drop.failed-*"))) == 1
    assert "the earlier run is back in" in caplog.text


def test_feature_store_damage_is_refused_and_writes_leave_nothing_partial(tmp_path):
    from calmrl.data import synthetic_multiview
    data, _ = synthetic_multiview(n=30, dims=(4, 3), latent_dim=2)
    FeatureStore.write(tmp_path / "s", data)
    f = tmp_path / "s" / "view0.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x10
    f.write_bytes(bytes(raw))
    with pytest.raises(DamagedFileError, match="view0.npy is damaged"):
        FeatureStore(tmp_path / "s").read()
    bad = data.with_mask(data.mask)
    bad.views = [data.views[0], "not an array"]
    with pytest.raises(Exception):
        FeatureStore.write(tmp_path / "t", bad)
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.tmp").exists()


@pytest.mark.slow
def test_unfinished_runs_are_named_as_such_and_summaries_are_kept(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["train", "--output-dir", str(out), "--method", "auto", "--set", "method.candidates=[pmrl-drop]",
            "--set", "method.lr_factors=[1, 0.5]", "--set", "model.embed_dim=8", "--set", "model.hidden_dim=16",
            "--set", "train.epochs=4", "--set", "train.progress=false", "--set", "train.threads=1",
            "--set", "data.views=[fourier,karhunen,zernike]", "--set", "method.halving_min_epochs=1"]
    assert main(args) == 0
    assert main(args) == 0                                   # a second invocation: the first summary kept
    assert (out / "summary.json").exists() and len(list(out.glob("summary.prev-*.json"))) == 1
    res = json.loads((out / "auto" / "results.json").read_text())["auto"]
    loser = next(k for k, v in res["candidates"].items() if v["rungs"][-1]["epochs"] < 4)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "auto" / "candidates" / loser)]) == 0
    assert "is unfinished: it holds epoch 2 of 4" in capsys.readouterr().err
    (out / "auto" / "checkpoints" / "kept.ckpt").unlink()      # as if auto had not finished
    assert main(["eval", "--checkpoint", str(out / "auto")]) == 2
    assert "an auto run that has kept no model yet" in capsys.readouterr().err


def test_a_store_of_embeddings_is_refused_by_name(tmp_path):
    from calmrl.data import synthetic_multiview
    data, _ = synthetic_multiview(n=30, dims=(4, 3), latent_dim=2)
    data.meta["space"] = "embedding"
    FeatureStore.write(tmp_path / "e", data)
    with pytest.raises(ValueError, match="holds embeddings \\(meta.json space: embedding"):
        FeatureStore(tmp_path / "e").read(inputs_only=True)


def test_partly_labelled_tables_import_with_labels_where_present(tmp_path):
    (tmp_path / "a.csv").write_text("id,f,label\n1,1,x\n2,2,y\n3,3,x\n")
    (tmp_path / "b.csv").write_text("id,g\n1,3\n4,4\n")
    data = load_tables({"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"}, label_column="label")
    assert list(data.labels) == ["x", "y", "x", ""]
    assert any("labels for 3 of 4 instances" in n for n in data.meta["notes"])
    from calmrl.train.splits import _encode_labels
    enc, classes = _encode_labels(data)
    assert classes == ["x", "y"] and list(enc.labels) == [0, 1, 0, -1]


def test_one_class_and_an_oversized_batch_are_said(caplog):
    import calmrl
    from calmrl.data import load_uci_mfeat

    d = load_uci_mfeat(views=["fourier", "karhunen"]).subset(np.arange(0, 2000, 10))
    X = {n: np.asarray(v) for n, v in zip(d.names, d.views)}
    model = calmrl.fit(X, labels=np.zeros(d.n, int), method="pmrl-drop", epochs=1, batch_size=100000, embed_dim=8,
                       hidden_dim=16, threads=1)
    assert any("kNN accuracy is 100 by construction" in n for n in model.results["notes"])
    assert "every step sees the whole training split" in caplog.text
