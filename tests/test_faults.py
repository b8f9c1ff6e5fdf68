"""The new user's faults, one test each: bad input gives one clear error and changes nothing on
disk; exported models standardise raw inputs as training did; never-complete data trains and
evaluates; resume keeps logs; tables, partial views, in-memory API, input-space imputation."""

from __future__ import annotations

from helpers import cli_args, SIM  # noqa: E402
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from calmrl.cli import main
from calmrl.data import FeatureStore, MultiViewData, load_tables, load_uci_mfeat

TINY = ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3", "train.progress=false",
        "calibrator.warmup_epochs=1", "train.check_val_every=50", "train.threads=1",
        "train.batch_size=64"]
VIEWS = ["fourier", "karhunen", "zernike"]


def _args(out, *sets):
    return cli_args(out, *TINY, *sets)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _uci_store(path, views=VIEWS, n=None, **mods):
    d = load_uci_mfeat(views=views)
    if n is not None:              # n rows spread over the classes (the file is sorted by class)
        d = d.subset(np.linspace(0, 1999, n).astype(int))
    views_ = [np.array(v) for v in d.views]
    mask = d.mask.copy()
    labels = d.labels
    if "mask" in mods:
        mask = mods["mask"](mask)
    if "transform" in mods:
        views_ = mods["transform"](views_)
    if "labels" in mods:
        labels = mods["labels"](labels)
    FeatureStore.write(path, MultiViewData.unchecked(views_, d.names, mask, d.ids, labels, {}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny calmrl run on a UCI store, shared by the export / eval tests."""
    root = tmp_path_factory.mktemp("trained")
    store = _uci_store(root / "store")
    out = root / "run"
    assert main(["train", "--method", "calmrl"] + _args(out, "data.dataset=store", f"data.path={store}")) == 0
    return {"root": root, "store": store, "out": out, "ckpt": out / "calmrl" / "checkpoints" / "last.ckpt"}


def test_exported_model_embeds_raw_features_as_training_did(trained, tmp_path):
    from calmrl.inference import CalMRLModel
    from calmrl.train.evaluate import embed_data
    from calmrl.train.runner import model_from_checkpoint

    # the training store is gone: export needs only the checkpoint
    moved = tmp_path / "elsewhere"
    os.replace(trained["store"], moved)
    try:
        assert main(["export", "--checkpoint", str(trained["ckpt"]), "--out", str(tmp_path / "model")]) == 0
    finally:
        os.replace(moved, trained["store"])
    model = CalMRLModel.load(tmp_path / "model")
    raw = FeatureStore(trained["store"]).read()
    cfg, module = model_from_checkpoint(trained["ckpt"])
    std, _ = raw.standardize(module.standardization)              # what training fed the encoders
    ref, _ = embed_data(module.encoder, std)
    got = model.embed({n: np.asarray(v) for n, v in zip(raw.names, raw.views)})   # raw numpy input
    assert isinstance(got.embeddings, np.ndarray) and isinstance(got.fused, np.ndarray)    # numpy in, numpy out
    torch.testing.assert_close(torch.as_tensor(got.embeddings), ref, atol=1e-5, rtol=0)
    unstd = model.embed({n: torch.as_tensor(np.asarray(v)) for n, v in zip(std.names, std.views)}).embeddings
    assert isinstance(unstd, torch.Tensor)                                             # torch in, torch out
    assert (unstd - ref).abs().max() > 0.1          # feeding standardised data twice would be wrong


def test_eval_on_a_new_store(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained["ckpt"]), "--store", str(trained["store"])]) == 0
    out = capsys.readouterr().out
    assert "eval s" in out and "evaluated on every instance" in out
    row = next(line for line in out.splitlines() if line.startswith("calmrl"))
    assert float(row.split()[5]) < 700         # median rank among 2000 instances (chance: 1000)


def test_never_complete_store_trains_and_evaluates(tmp_path, capsys):
    """The paper's setting: a fourier-karhunen set plus a fourier-zernike set, no instance complete."""
    half = np.arange(2000) % 2 == 0
    store = _uci_store(tmp_path / "store", mask=lambda m: np.stack([np.ones(2000, bool), half, ~half], 1))
    for method in ("calmrl", "pmrl-drop"):
        rc = main(["train", "--method", method] + _args(tmp_path / "out", "data.dataset=store", "train.epochs=6",
                                                        f"data.path={store}", "data.missing.kind=none"))
        assert rc == 0
        res = json.loads((tmp_path / "out" / method / "results.json").read_text())
        pairs = res["pairs"]
        assert "karhunen->zernike" not in pairs                       # never observed together
        assert pairs["fourier->karhunen"]["n"] + pairs["fourier->zernike"]["n"] == res["n_test"]
        assert pairs["average"]["R@1"] > 3.0                          # chance about 1%
        assert res["test_complete_fraction"] == 0.0
    assert "no training instance is complete" in capsys.readouterr().out


def _logged_epochs(run_dir):
    import csv
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return sorted(int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("train/loss"))


def test_resume_keeps_metrics_and_history_and_falls_back_to_the_previous_checkpoint(tmp_path):
    import dataclasses

    from calmrl.train import CheckpointError, load_config, run
    cfg = load_config(None, SIM + TINY + ["data.views=[fourier, karhunen]", f"output_dir={tmp_path}"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=6))
    import logging
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("calmrl").addHandler(handler)
    try:       # stopped after 3 of its 6 epochs
        assert run(cfg, resume=True, max_epochs=3)["resumed_from_epoch"] is None   # nothing to resume: said
    finally:
        logging.getLogger("calmrl").removeHandler(handler)
    assert any("no checkpoint under" in r.getMessage() and "starting from epoch 0" in r.getMessage() for r in records)
    d = tmp_path / "calmrl"
    assert _logged_epochs(d) == [0, 1, 2]
    res = run(cfg, resume=True, max_epochs=5)
    assert res["resumed_from_epoch"] == 3 and len(res["loss_history"]) == 5
    assert _logged_epochs(d) == [0, 1, 2, 3, 4]                   # old rows kept, none doubled
    # last.ckpt damaged: the previous checkpoint is used, with a note
    last = d / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    res = run(cfg, resume=True)
    assert res["resumed_from_epoch"] == 4 and res["epochs"] == 6
    # every checkpoint damaged: a clear error, and the logs are untouched
    for f in ("last.ckpt", "last.prev.ckpt"):
        (d / "checkpoints" / f).write_bytes(b"junk")
    before = _snapshot(d / "logs")
    with pytest.raises(CheckpointError, match="cannot resume"):
        run(cfg, resume=True)
    assert _snapshot(d / "logs") == before


def _bad_inputs(tmp_path):
    """(name, argv) of inputs that must fail with one clear line before anything is written."""
    nan = _uci_store(tmp_path / "s_nan", transform=lambda v: [v[0], v[1], np.where(np.arange(2000)[:, None] == 7,
                                                                              np.nan, v[2])])
    tiny = _uci_store(tmp_path / "s_tiny", n=20)
    fewclass = _uci_store(tmp_path / "s_few", n=200, labels=lambda y: np.where(np.arange(len(y)) == 3, 99, y))
    empty_mod = _uci_store(tmp_path / "s_empty", mask=lambda m: np.stack([m[:, 0], m[:, 1], np.zeros(2000, bool)], 1))
    ckdir_blocked = tmp_path / "blocked"
    (ckdir_blocked / "calmrl").mkdir(parents=True)
    (ckdir_blocked / "calmrl" / "checkpoints").write_text("a file where the checkpoint directory should be")
    s = ["data.dataset=store"]
    return [
        ("nan", ["train"] + _args(tmp_path / "o", *s, f"data.path={nan}"), "NaN/inf"),
        ("20 rows", ["train"] + _args(tmp_path / "o", *s, f"data.path={tiny}"), "cannot stratify"),
        ("one-member class", ["train"] + _args(tmp_path / "o", *s, f"data.path={fewclass}"), "cannot stratify"),
        ("modality never observed", ["train"] + _args(tmp_path / "o", *s, f"data.path={empty_mod}"),
         "never observed"),
        ("devices", ["train"] + _args(tmp_path / "o", "train.devices=foo"), "train.devices"),
        ("strategy", ["train"] + _args(tmp_path / "o", "train.strategy=bogus"), "train.strategy"),
        ("unwritable checkpoints", ["train", "--method", "calmrl"] + _args(ckdir_blocked), "cannot write checkpoints"),
    ]


def test_bad_inputs_give_one_clear_line_and_change_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run's file")
    for name, argv, expected in _bad_inputs(tmp_path):
        before = _snapshot(tmp_path / "o")
        blocked = _snapshot(tmp_path / "blocked")
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        err = [e for e in err if not e.startswith("calmrl: ")]     # progress notes are not errors
        assert rc == 2, name
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (name, err)
        assert _snapshot(tmp_path / "o") == before, name
        assert _snapshot(tmp_path / "blocked") == blocked, name


def test_second_run_into_a_locked_output_dir_is_refused(tmp_path, capsys):
    # another process holding the lock as output_lock does: flock on .calmrl.lock holding its pid
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
                               "print('locked', flush=True)\ntime.sleep(60)",
                               str(tmp_path / ".calmrl.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = main(["train"] + _args(tmp_path))
        err = capsys.readouterr().err
        assert rc == 2 and f"in use by another calmrl run (pid {holder.pid})" in err
        assert not (tmp_path / "calmrl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_yaml_float_without_dot_string_labels_and_version(tmp_path, capsys):
    from calmrl.train import load_config
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n")
    assert load_config(tmp_path / "c.yaml").train.lr == 1e-3
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    store = _uci_store(tmp_path / "s", labels=lambda y: names[y])
    assert main(["train", "--method", "pmrl-drop"] + _args(tmp_path / "o", "data.dataset=store",
                                                           f"data.path={store}", "train.epochs=2")) == 0
    res = json.loads((tmp_path / "o" / "pmrl-drop" / "results.json").read_text())
    assert res["knn_accuracy"] > 50
    assert main(["--version"]) == 0                           # printed without importing torch
    from calmrl import __version__
    assert f"calmrl {__version__}" in capsys.readouterr().out


def test_partial_views_policies_report_counts():
    d = load_uci_mfeat(views=["fourier", "karhunen"])
    v = np.array(d.views[1])
    v[[3, 5], 0] = np.nan
    v[5, 1] = np.nan
    data = MultiViewData.unchecked([d.views[0], v], d.names, d.mask, d.ids, d.labels)
    with pytest.raises(ValueError, match=r"'karhunen' has NaN/inf in 3 feature\(s\) of 2 observed row"):
        data.resolve_partial_views("error")
    miss, rep = data.resolve_partial_views("missing")
    assert rep == {"karhunen": {"rows": 2, "cells": 3}} and miss.mask[:, 1].sum() == 1998
    fill, _ = data.resolve_partial_views("fill", fill_rows=np.arange(1000))
    fv = np.asarray(fill.views[1])
    assert np.isfinite(fv).all() and fill.mask.all()
    np.testing.assert_allclose(fv[3, 0], np.nanmean(v[:1000, 0]), rtol=1e-6)
    assert fv[3, 1] == v[3, 1]                                     # finite features untouched


def test_csv_and_parquet_tables_join_on_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = load_uci_mfeat(views=["fourier", "morphological"])
    rng = np.random.default_rng(0)
    a_rows = rng.permutation(2000)[:1500]                        # fourier for 1500 instances, shuffled
    b_rows = np.arange(2000)[500:]                              # morphological for the last 1500
    with open(tmp_path / "fourier.csv", "w") as f:
        f.write("id,label," + ",".join(f"f{j}" for j in range(76)) + "\n")
        for i in a_rows:
            f.write(f"{i},{d.labels[i]}," + ",".join(repr(float(x)) for x in d.views[0][i]) + "\n")
    cols = {"id": pa.array(b_rows), "label": pa.array(d.labels[b_rows]),
            **{f"m{j}": pa.array(d.views[1][b_rows, j]) for j in range(6)}}
    pq.write_table(pa.table(cols), tmp_path / "morph.parquet")
    data = load_tables({"fourier": tmp_path / "fourier.csv", "morphological": tmp_path / "morph.parquet"},
                       label_column="label")
    data.validate()
    order = np.asarray(data.ids)
    both = np.intersect1d(a_rows, b_rows)
    assert data.n == 2000 - len(np.setdiff1d(np.arange(500), a_rows))
    assert data.mask.all(1).sum() == len(both)
    pos = {int(i): r for r, i in enumerate(order)}
    for i in both[:20]:
        np.testing.assert_allclose(data.views[0][pos[i]], d.views[0][i], rtol=1e-6)
        np.testing.assert_allclose(data.views[1][pos[i]], d.views[1][i], rtol=1e-6)


def test_fit_in_memory_returns_a_model():
    import calmrl
    d = load_uci_mfeat(views=["fourier", "karhunen"])
    X = {n: np.array(v) for n, v in zip(d.names, d.views)}
    X["karhunen"][::3] = np.nan                                   # a third of the rows lack karhunen
    model = calmrl.fit(X, labels=d.labels, method="pmrl-drop", epochs=4, overrides=TINY)   # keywords, as a user types
    r = model.results              # the estimator keeps no test split: figures on validation, said so
    assert r["evaluated_on"] == "validation" and r["n_test"] == 0 and r["n_train"] + r["n_val"] == 2000
    assert r["pairs"]["average"]["MedR"] < 0.3 * r["n_val"]    # chance: 0.5
    out = model.embed({"fourier": d.views[0][:5], "karhunen": None})
    assert out.fused.shape == (5, 16) and not out.mask[:, 1].any()
    assert isinstance(out.fused, np.ndarray) and out.fused.dtype == np.float32       # numpy in, numpy out
    scores, idx = model.retrieve({"fourier": d.views[0][:5]}, out.fused, k=2)
    assert isinstance(idx, np.ndarray) and idx[:, 0].tolist() == list(range(5))


def test_impute_in_input_space_beats_mean_fill(tmp_path, capsys):
    d = load_uci_mfeat(views=["fourier", "karhunen", "zernike"])
    rng = np.random.default_rng(1)
    mask = rng.random((2000, 3)) > 0.3
    mask[np.arange(2000), rng.integers(0, 3, 2000)] = True
    _uci_store(tmp_path / "s", views=["fourier", "karhunen", "zernike"], mask=lambda m: mask)
    assert main(["impute", "--space", "input", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "f"),
                 "--em-iters", "30"]) == 0
    filled = FeatureStore(tmp_path / "f").read()
    for m in range(3):
        truth, got = np.asarray(d.views[m]), np.asarray(filled.views[m])
        np.testing.assert_allclose(got[mask[:, m]], truth[mask[:, m]], rtol=1e-4, atol=1e-4)   # observed kept
        hid = ~mask[:, m]
        mean = truth[mask[:, m]].mean(0)
        sse_model = ((got[hid] - truth[hid]) ** 2).sum()
        sse_mean = ((mean - truth[hid]) ** 2).sum()
        assert sse_model < 0.8 * sse_mean, (d.names[m], sse_model / sse_mean)


def _embed_stopped_after_two_chunks(tmp_path, monkeypatch, rows, fields):
    """``calmrl embed`` of ``rows`` (chunks of 10) stopped by a full disk after its second chunk;
    returns the module and the input file."""
    from calmrl.train import embed as embed_mod
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    real, calls = np.savez, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk full")
        return real(*a, **k)
    monkeypatch.setattr(embed_mod.np, "savez", failing)
    with pytest.raises(OSError):
        embed_mod.embed_jsonl(src, tmp_path / "s", vector_fields=fields, batch_size=10, progress=False)
    monkeypatch.setattr(embed_mod.np, "savez", real)
    return embed_mod, src


def test_embed_rerun_with_another_batch_size_resumes(tmp_path, monkeypatch):
    rows = [{"id": i, "a": [float(i), 1.0], "b": None if i % 4 == 0 else [float(-i)]} for i in range(50)]
    embed_mod, src = _embed_stopped_after_two_chunks(tmp_path, monkeypatch, rows, ["a", "b"])
    store = embed_mod.embed_jsonl(src, tmp_path / "s", vector_fields=["a", "b"], batch_size=7, progress=False)
    data = store.read()
    assert data.n == 50 and data.mask[:, 1].sum() == 37
    np.testing.assert_array_equal(np.asarray(data.views[0])[:, 0], np.arange(50))
    with pytest.raises(ValueError, match="other input or fields"):
        (tmp_path / "s.partial").mkdir()
        (tmp_path / "s.partial" / "manifest.json").write_text(json.dumps({"input": "x"}))
        embed_mod.embed_jsonl(src, tmp_path / "s", vector_fields=["a"], batch_size=7, progress=False)


def test_a_damaged_embed_chunk_is_named_and_its_rows_alone_are_redone(tmp_path, monkeypatch):
    rows = [{"id": i, "a": [float(i), 1.0]} for i in range(30)]
    embed_mod, src = _embed_stopped_after_two_chunks(tmp_path, monkeypatch, rows, ["a"])
    chunk = tmp_path / "s.partial" / "chunk_000001.npz"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                          # one byte flipped in a finished chunk
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"chunk_000001.npz \(a finished chunk of this embedding\) is damaged"):
        embed_mod.embed_jsonl(src, tmp_path / "s", vector_fields=["a"], batch_size=10, progress=False)
    chunk.unlink()                                                      # as the message says
    data = embed_mod.embed_jsonl(src, tmp_path / "s", vector_fields=["a"], batch_size=10, progress=False).read()
    np.testing.assert_array_equal(np.asarray(data.views[0])[:, 0], np.arange(30))
