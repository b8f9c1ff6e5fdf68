"""Inputs read with their meaning or refused with the file, the line and the next step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calmrl.data import FeatureStore, MultiViewData, load_tables


def _csv(path, text: str | bytes):
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def test_a_row_with_a_field_more_than_its_header_is_refused_with_its_line(tmp_path):
    f = _csv(tmp_path / "a.csv", "id,x,y\n1,0.5,2\n2,1,234.5,3\n")          # an unquoted 1,234.5
    with pytest.raises(ValueError, match=r"a.csv: line 3 has 4 fields, the header 3"):
        load_tables({"a": f})


def test_bom_non_utf8_null_ids_and_labels(tmp_path):
    ok = load_tables({"a": _csv(tmp_path / "bom.csv", "\ufeffid,x\n1,0.5\n2,1.5\n")})
    assert list(ok.ids) == ["1", "2"]
    with pytest.raises(ValueError, match=r"latin.csv: line 3 is not UTF-8"):
        load_tables({"a": _csv(tmp_path / "latin.csv", b"id,x\n1,0.5\n2\xe9,1.5\n")})
    for bad in ("", "None", "nan"):
        with pytest.raises(ValueError, match="data row 2 has an empty or null id"):
            load_tables({"a": _csv(tmp_path / "ids.csv", f"id,x\n1,0.5\n{bad},1.5\n")})
    d = load_tables({"a": _csv(tmp_path / "lab.csv", "id,x,label\n1,0.5,3\n2,1.5,nan\n3,2.5,\n4,1.0,4\n")},
                    label_column="label")
    labels = dict(zip(d.ids, d.labels))
    assert labels["1"] in (3, "3") and labels["4"] in (4, "4")
    assert "nan" not in {str(v).lower() for v in d.labels}                # NaN is unlabelled, never a class


def test_yaml_integers_as_yaml_1_2_and_duplicate_overrides_refused():
    from calmrl.config import ConfigError, load_config, strict_yaml

    assert strict_yaml("a: 012\nb: 0o17\nc: 0x1f") == {"a": 12, "b": 15, "c": 31}
    assert load_config(None, ["train.epochs=012"]).train.epochs == 12
    assert load_config(None, ["train.epochs=3", "train.epochs=4"]).train.epochs == 4   # Python lists: in order
    from calmrl.cli import main
    assert main(["train", "--set", "train.epochs=3", "--set", "train.epochs=4", "--output-dir", "/nonexistent/x"]) == 2


def test_retrieve_refuses_a_store_of_embeddings_and_writes_its_output_whole(tmp_path, capsys):
    from calmrl.cli import main
    from calmrl.core import SharedLatentCalibrator
    from calmrl.model.encoders import MultiModalEncoder
    from calmrl.model.export import export_model
    from calmrl.train import load_config

    rng = np.random.default_rng(0)
    n = 30
    views = [rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)]
    FeatureStore.write(tmp_path / "q", MultiViewData(views, ["a", "b"], np.ones((n, 2), bool), np.arange(n), None, {}))
    FeatureStore.write(tmp_path / "emb", MultiViewData(views, ["a", "b"], np.ones((n, 2), bool), np.arange(n), None,
                                                       {"space": "embedding"}))
    export_model(MultiModalEncoder.mlp([3, 2], ["a", "b"], 8, 16, 2, 0.0), SharedLatentCalibrator(2, 8, 2, names=["a", "b"]),
                 load_config(None, ["model.embed_dim=8", "model.hidden_dim=16"]), [3, 2], tmp_path / "m")
    (tmp_path / "hits.jsonl").write_text("earlier\n")
    assert main(["retrieve", "--model", str(tmp_path / "m"), "--query", str(tmp_path / "q"), "--gallery",
                 str(tmp_path / "emb"), "--gallery-modality", "b", "--out", str(tmp_path / "hits.jsonl")]) == 2
    assert "holds embeddings" in capsys.readouterr().err
    assert (tmp_path / "hits.jsonl").read_text() == "earlier\n"
    assert main(["retrieve", "--model", str(tmp_path / "m"), "--query", str(tmp_path / "q"), "--gallery",
                 str(tmp_path / "q"), "--gallery-modality", "b", "--k", "3", "--out", str(tmp_path / "hits.jsonl")]) == 0
    lines = (tmp_path / "hits.jsonl").read_text().splitlines()
    assert len(lines) == n and len(json.loads(lines[0])["gallery_ids"]) == 3
    assert not list(tmp_path.glob(".hits.jsonl.*"))


def test_method_x_plus_cal_is_accepted_where_tables_print_it(tmp_path, capsys):
    from helpers import SIM, cli_args
    from calmrl.cli import main

    sets = [s for s in SIM if not s.startswith("method.name")] + [
        "model.embed_dim=16", "model.hidden_dim=32", "train.epochs=1", "train.progress=false", "train.threads=1",
        "data.views=[fourier, karhunen]"]
    assert main(["train", "--method", "pairwise-infonce+cal"] + cli_args(tmp_path, *sets)) == 0
    assert "pairwise-infonce+cal" in capsys.readouterr().out
    res = json.loads((tmp_path / "pairwise-infonce+cal" / "results.json").read_text())
    assert res["method"] == "pairwise-infonce+cal"
    assert main(["train", "--method", "pmrl-drop+cal"] + cli_args(tmp_path / "x", *sets)) == 2
