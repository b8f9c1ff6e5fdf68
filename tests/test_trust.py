"""Results a user can trust: each test injects one of the faults that used to give a silently
wrong figure (tied scores, a reused output directory, changed data, data changed without a
word) on real files or a real process, and asserts what was kept and what was printed."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cli_args
from calmrl.cli import main
from calmrl.core.metrics import retrieval_ranks
from calmrl.data import FeatureStore, MultiViewData, load_tables, load_uci_mfeat

TINY = ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=2", "train.progress=false",
        "train.check_val_every=50", "train.threads=1", "train.batch_size=128"]
VIEWS = ["fourier", "karhunen", "zernike"]


def _args(out, *sets):
    return cli_args(out, *TINY, *sets)


def _store(path, n=600, transform=None):
    d = load_uci_mfeat(views=VIEWS).subset(np.linspace(0, 1999, n).astype(int))
    views = [np.array(v) for v in d.views]
    if transform:
        views = transform(views)
    FeatureStore.write(path, MultiViewData.unchecked(views, d.names, d.mask, d.ids, d.labels, {}))
    return path


# ---------------------------------------------------------------- 1. ties count against the query
def _loop_ranks(q, g):
    """Brute force: 1 + the number of *other* gallery items scoring at least the target's score."""
    s = q.double() @ g.double().T
    return torch.tensor([1 + sum(1 for j in range(len(g)) if j != i and s[i, j] >= s[i, i]) for i in range(len(q))])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 3), st.integers(0, 10_000))
def test_tied_scores_rank_against_the_query_on_every_backend(n, d, levels, seed):
    g = torch.Generator().manual_seed(seed)
    # few distinct small-integer vectors: many exact ties (a categorical view)
    q = torch.randint(0, levels + 1, (n, d), generator=g).float()
    gal = torch.randint(0, levels + 1, (n, d), generator=g).float()
    ref = _loop_ranks(q, gal)
    for kw in ({}, {"chunk_size": 3}, {"backend": "faiss", "max_rank": 2 * n}):
        got = retrieval_ranks(q, gal, **kw)
        assert torch.equal(got, ref), kw


def test_constant_and_categorical_views_score_no_better_than_chance():
    n = 191
    q = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    const = torch.zeros(n, 8)
    const[:, 0] = 1
    cat = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)[torch.arange(n) % 3]
    for kw in ({}, {"backend": "faiss", "max_rank": 100}):
        assert (retrieval_ranks(q, const, **kw) > 1).all()            # before: R@1 100, MedR 1
        r = retrieval_ranks(cat, cat, **kw)
        assert float((r == 1).float().mean()) == 0.0                  # before: 59.7 with torch, 1.3 with faiss
    assert torch.equal(retrieval_ranks(cat, cat), retrieval_ranks(cat, cat, backend="faiss", max_rank=200))
    nan = q.clone()
    nan[0] = float("nan")
    assert retrieval_ranks(nan, q)[0] == n                            # a NaN score ranks last, not first


# ---------------------------------------------------------------- 2. a used output directory
def test_second_run_into_a_used_directory_moves_the_first_aside_and_resume_refuses_other_settings(tmp_path, capsys,
                                                                                                 caplog):
    store = _store(tmp_path / "store")
    out = tmp_path / "out"
    base = ["data.dataset=store", f"data.path={store}"]
    assert main(["train", "--method", "pmrl-drop"] + _args(out, *base)) == 0
    first = json.loads((out / "pmrl-drop" / "results.json").read_text())
    assert main(["train", "--method", "pmrl-drop"] + _args(out, *base, "train.seed=1")) == 0
    err = capsys.readouterr().err + caplog.text
    assert "held an earlier finished run; moved it to" in err
    aside = [p for p in out.iterdir() if p.name.startswith("pmrl-drop.prev-")]
    assert len(aside) == 1 and json.loads((aside[0] / "results.json").read_text()) == first   # nothing lost
    assert not list((out / "pmrl-drop" / "checkpoints").glob("last-v*.ckpt"))   # before: last-v1 beside the old last
    from calmrl.train.runner import load_checkpoint
    assert load_checkpoint(out / "pmrl-drop" / "checkpoints" / "last.ckpt")["calmrl_config"]["train"]["seed"] == 1
    # --resume under other settings is refused, naming them; the run on disk is untouched
    before = (out / "pmrl-drop" / "checkpoints" / "last.ckpt").read_bytes()
    rc = main(["train", "--method", "pmrl-drop", "--resume"] + _args(out, *base, "train.seed=1", "train.lr=0.5",
                                                                      "model.dropout=0.5"))
    err = capsys.readouterr().err
    assert rc == 2 and "train.lr: 0.002 -> 0.5" in err and "model.dropout" in err
    assert (out / "pmrl-drop" / "checkpoints" / "last.ckpt").read_bytes() == before


# ---------------------------------------------------------------- 3. eval on changed data
def test_eval_refuses_data_that_changed_since_training(tmp_path, capsys):
    store = _store(tmp_path / "store")
    out = tmp_path / "out"
    assert main(["train", "--method", "pmrl-drop"] + _args(out, "data.dataset=store", f"data.path={store}")) == 0
    ckpt = out / "pmrl-drop" / "checkpoints" / "last.ckpt"
    assert main(["eval", "--checkpoint", str(ckpt)]) == 0                  # same data: fine
    capsys.readouterr()
    d = FeatureStore(store).read(mmap=False)
    FeatureStore.write(store, d.subset(np.arange(100, d.n)))               # 100 rows deleted
    assert main(["eval", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "not what" in err and "600 instances then, 500 now" in err
    FeatureStore.write(store, d.subset(np.random.default_rng(0).permutation(d.n)))   # same rows, reordered
    assert main(["eval", "--checkpoint", str(out / "pmrl-drop")]) == 2     # a run directory resolves to its model
    assert "ids or their order differ" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. user data as given
def _tables(tmp_path, label_header="label", index=False, ids=None):
    d = load_uci_mfeat(views=["fourier", "karhunen"]).subset(np.linspace(0, 1999, 400).astype(int))
    ids = ids or [f"{i:06d}" for i in range(d.n)]
    files = {}
    for m, name in enumerate(d.names):
        rows = [(["", "id"] if index else ["id"]) + [f"f{j}" for j in range(d.dims[m])] + [label_header]]
        for i in range(d.n):
            if name == "karhunen" and i % 4 == 0:
                continue                                                      # the user's own gaps: 25%
            rows.append(([str(i)] if index else []) + [ids[i]] + [f"{x:.6g}" for x in d.views[m][i]]
                        + [str(int(d.labels[i]))])
        p = tmp_path / f"{name}.csv"
        p.write_text("\n".join(",".join(r) for r in rows) + "\n")
        files[name] = p
    return files, d


def test_tables_keep_ids_labels_and_gaps_as_given(tmp_path, capsys):
    files, d = _tables(tmp_path)
    with pytest.raises(ValueError, match=r"column 'label' named like class labels; name it as the label column \(--label-column label, or data.label_column=label"):
        load_tables(files)
    with pytest.raises(ValueError, match="data.label_column 'klass' is not a column of any table"):
        load_tables(files, label_column="klass")
    data = load_tables(files, label_column="label")
    assert data.dims == [76, 64] and data.ids[0] == "000000" and data.labels is not None   # never a feature
    # a saved pandas index is dropped with a note; zero-padded ids stay strings, '7' and '007' differ
    files, _ = _tables(tmp_path, index=True, ids=[str(i) if i % 2 else f"{i:03d}" for i in range(400)])
    data = load_tables(files, label_column="label")
    assert data.dims == [76, 64] and any("pandas index" in n for n in data.meta["notes"])
    assert "000" in set(data.ids) and "7" in set(data.ids) and "007" not in set(data.ids)
    # training on the user's tables simulates nothing unless asked, and says so
    files, _ = _tables(tmp_path / "t2" if (tmp_path / "t2").mkdir() is None else tmp_path)
    sets = ["data.dataset=tables", "data.label_column=label"] + [f"data.tables.{k}={v}" for k, v in files.items()]
    out = tmp_path / "run"
    assert main(["train", "--method", "pmrl-drop"] + _args(out, *sets)) == 0
    text = capsys.readouterr().out
    assert "no cell hidden (the data's own gaps only)" in text
    res = json.loads((out / "pmrl-drop" / "results.json").read_text())
    assert res["simulated"] is None and abs(res["missing_fraction_train"] - 0.125) < 0.03   # 25% of one of 2 views


def test_fit_uses_arrays_as_given_and_reports_constant_features(tmp_path):
    import calmrl

    d = load_uci_mfeat(views=VIEWS).subset(np.linspace(0, 1999, 500).astype(int))
    X = {n: np.array(v, dtype=np.float32) for n, v in zip(d.names, d.views)}
    X["zernike"][::4] = np.nan                    # the user's own gaps
    X["karhunen"][:, 3] = 1.5                     # a constant feature
    model = calmrl.fit(X, labels=d.labels, method="pmrl-drop", output_dir=str(tmp_path),
                       overrides=["train.epochs=1", "train.progress=false", "train.threads=1"])
    r = model.results
    assert r["simulated"] is None
    assert abs(r["missing_fraction_train"] - 0.25 / 3) < 0.02
    assert any("'karhunen': 1 of 64 feature(s) constant" in n for n in r["data_notes"])


def test_partial_views_fill_works_on_the_store_route(tmp_path):
    from calmrl.train import load_config
    from calmrl.train.runner import prepare_data

    def holes(views):
        views[0][5:40, 2] = np.nan
        return views
    store = _store(tmp_path / "store", transform=holes)
    cfg = load_config(None, ["data.dataset=store", f"data.path={store}", "data.partial_views=fill"])
    sp = prepare_data(cfg, "pmrl-drop")
    assert all(np.isfinite(np.asarray(v)).all() for v in sp.train.views)
    assert any("filled with training-split feature means" in n and "'rows': 35" in n for n in sp.notes)


# ---------------------------------------------------------------- 5. / 6. inputs never overwritten or reused stale
def test_impute_never_overwrites_its_input_store(tmp_path, capsys):
    store = _store(tmp_path / "store")
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    assert main(["impute", "--store", str(store), "--out", str(store), "--space", "input"]) == 2
    assert "would overwrite the input store" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before


def test_embed_resume_refuses_an_input_edited_in_place(tmp_path):
    from calmrl.train.embed import _resume_manifest

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "v": [1, 2]}\n')
    part = tmp_path / "out.partial"
    _resume_manifest(part, src, ["v"], 64, 1)
    src.write_text('{"id": 1, "v": [3, 4]}\n')               # same size, other content
    with pytest.raises(ValueError, match="other input"):
        _resume_manifest(part, src, ["v"], 64, 1)


# ---------------------------------------------------------------- 7. signals on a real training process
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_training_stops_cleanly_with_a_resumable_checkpoint(tmp_path, sig, code, capsys):
    """The signal is sent by the OS to this very process while `calmrl train` trains in it (no
    second interpreter to start), once the first epoch's checkpoint is written."""
    import threading

    store = _store(tmp_path / "store")
    out = tmp_path / "out"
    ck = out / "pmrl-drop" / "checkpoints" / "last.prev.ckpt"

    def send():
        t0 = time.time()
        while not ck.exists() and time.time() - t0 < 120:
            time.sleep(0.02)
        os.kill(os.getpid(), sig)
    threading.Thread(target=send, daemon=True).start()
    rc = main(["train", "--method", "pmrl-drop,pairwise-infonce"] +
              _args(out, "data.dataset=store", f"data.path={store}", "train.epochs=400", "train.batch_size=32"))
    err = capsys.readouterr().err
    assert rc == code, err[-2000:]
    assert "interrupted by SIG" in err and "resume with --resume" in err and "not yet run: pairwise-infonce" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # handlers given back
    assert not (out / "pmrl-drop" / "results.json").exists()
    from calmrl.train.runner import load_checkpoint
    assert load_checkpoint(out / "pmrl-drop" / "checkpoints" / "last.ckpt")["epoch"] >= 1    # kept, whole


# ---------------------------------------------------------------- 9. one-line errors that name the cause
def test_errors_name_their_cause(tmp_path, capsys):
    from calmrl.train.runner import AtomicCheckpointIO

    class Full:
        def __reduce__(self):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(OSError, match="no space left on device while writing .*last.ckpt; nothing already written"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "x": Full()}, path)
    assert torch.load(path)["state_dict"]["w"].sum() == 2
    assert main(["train", "--set", "train.seed=-1", "--output-dir", str(tmp_path / "o")]) == 2
    assert "train.seed = -1 is below its minimum 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--set", "train.accelerator=gpu", "--output-dir", str(tmp_path / "o")]) == 2
        assert "no GPU is visible" in capsys.readouterr().err
    assert main(["train", "--method", "pmrl-drop"] + _args(tmp_path / "d", "data.views=[fourier, karhunen, zernike]",
                                                          "train.lr=1e6")) == 2
    assert "training diverged at epoch" in (e := capsys.readouterr().err) and "try a smaller train.lr" in e, e
    a = tmp_path / "a.csv"
    a.write_text("id,x\nimg-00568,1\nimg-00569,2\nimg-00568,3\n")
    with pytest.raises(ValueError, match=r"a.csv lists id img-00568 more than once \(data rows 1 and 3\)"):
        load_tables({"a": a})


# ---------------------------------------------------------------- a newcomer's path, CLI only
def test_newcomer_path_from_csv_tables_to_retrieval_with_an_incomplete_query(tmp_path, capsys):
    files, d = _tables(tmp_path)
    store, run_dir = tmp_path / "store", tmp_path / "runs"
    tables = [f"--table={k}={v}" for k, v in files.items()]
    assert main(["data", "import", *tables, "--label-column", "label", "--out", str(store)]) == 0
    assert "wrote 400 instances" in capsys.readouterr().out
    assert main(["data", "import", *tables, "--label-column", "label", "--out", str(store)]) == 2   # never over a store
    assert main(["train"] + _args(run_dir, "data.dataset=store", f"data.path={store}", "train.epochs=10")) == 0  # auto
    out = capsys.readouterr().out
    assert "no cell hidden" in out and "auto: successive halving over" in out and "auto: kept" in out
    assert main(["export", "--checkpoint", str(run_dir / "auto"), "--out", str(tmp_path / "model")]) == 0
    # queries that carry only one of the two modalities, from a table of their own
    q = tmp_path / "q.csv"
    q.write_text(files["fourier"].read_text().split("\n", 1)[0].replace(",label", "") + "\n" + "\n".join(
        ",".join(line.split(",")[:-1]) for line in files["fourier"].read_text().splitlines()[1:21]) + "\n")
    assert main(["data", "import", f"--table=fourier={q}", "--out", str(tmp_path / "qstore")]) == 0
    hits = tmp_path / "hits.jsonl"
    assert main(["retrieve", "--model", str(tmp_path / "model"), "--query", str(tmp_path / "qstore"), "--gallery",
                 str(store), "--gallery-modality", "karhunen", "--k", "5000", "--out", str(hits)]) == 0
    said = capsys.readouterr().out
    assert "--k 5000 asked; the gallery holds 300 items" in said
    rows = [json.loads(x) for x in hits.read_text().splitlines()]
    assert len(rows) == 20 and all(len(r["gallery_ids"]) == 300 and isinstance(r["query_id"], str) for r in rows)
    found = [r["gallery_ids"].index(r["query_id"]) + 1 for r in rows if r["query_id"] in r["gallery_ids"]]
    assert len(found) == 15 and np.median(found) <= 30, found     # 15 queries have a match; chance median 150


def test_a_table_with_its_columns_in_another_order_is_refused_by_eval_impute_and_retrieve(tmp_path, capsys):
    """Checkpoints and exports keep each view's feature column names: a store imported from tables
    whose columns come in another order (same names) would be read with the wrong meaning."""
    files, _ = _tables(tmp_path)
    store = tmp_path / "store"
    tables = [f"--table={k}={v}" for k, v in files.items()]
    assert main(["data", "import", *tables, "--label-column", "label", "--out", str(store)]) == 0
    assert main(["train", "--method", "pmrl-drop"] + _args(tmp_path / "runs", "data.dataset=store",
                                                           f"data.path={store}", "train.epochs=1")) == 0
    run = tmp_path / "runs" / "pmrl-drop"
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "model")]) == 0
    # the same tables, the fourier columns f1 and f0 swapped (header and values: a consistent table)
    swapped = {}
    for k, p in files.items():
        rows = [r.split(",") for r in p.read_text().splitlines()]
        if k == "fourier":
            for r in rows:
                r[1], r[2] = r[2], r[1]
        q = tmp_path / f"swapped_{k}.csv"
        q.write_text("\n".join(",".join(r) for r in rows) + "\n")
        swapped[k] = q
    other = tmp_path / "other"
    assert main(["data", "import", *[f"--table={k}={v}" for k, v in swapped.items()], "--label-column", "label",
                 "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--store", str(store)]) == 0        # the same columns: fine
    capsys.readouterr()
    for argv in (["eval", "--checkpoint", str(run), "--store", str(other)],
                 ["impute", "--checkpoint", str(run), "--store", str(other), "--out", str(tmp_path / "imp")],
                 ["retrieve", "--model", str(tmp_path / "model"), "--query", str(other), "--gallery", str(store),
                  "--gallery-modality", "karhunen", "--out", str(tmp_path / "hits.jsonl")]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert "modality 'fourier' has the training columns in another order (position 0: 'f1' where training " \
               "had 'f0')" in err, err
    assert not (tmp_path / "imp").exists() and not (tmp_path / "hits.jsonl").exists()


def test_eval_from_another_directory_reads_the_runs_relative_data_path(tmp_path, capsys, monkeypatch):
    """A relative data.path is relative to where training ran: eval from elsewhere reads it from
    there, with a note; where it is found nowhere, one line says so and what to do."""
    (tmp_path / "proj").mkdir()
    _store(tmp_path / "proj" / "store1", n=300)
    monkeypatch.chdir(tmp_path / "proj")
    assert main(["train", "--method", "pmrl-drop"] + _args(tmp_path / "proj" / "runs", "data.dataset=store",
                                                           "data.path=store1", "train.epochs=1")) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "../proj/runs/pmrl-drop"]) == 0
    assert "relative data paths read from the directory training ran in" in capsys.readouterr().out
    (tmp_path / "proj" / "store1").rename(tmp_path / "proj" / "moved")
    assert main(["eval", "--checkpoint", "../proj/runs/pmrl-drop"]) == 2
    assert "data.path 'store1' of" in capsys.readouterr().err


def test_without_a_test_split_train_and_eval_say_their_figures_are_validations(tmp_path, capsys):
    """data.test_fraction=0 (the estimator's default): no test split is held back, and every
    table says its figures are the validation split's, which chose the model."""
    out = tmp_path / "o"
    assert main(["train", "--method", "calmrl"] + _args(out, "data.test_fraction=0", "train.epochs=1",
                                                        "data.views=[fourier, karhunen]", "method.gate=none",
                                                        "calibrator.warmup_epochs=0")) == 0
    text = capsys.readouterr().out
    assert "val 300, no test split ==" in text
    assert "is kept and shown (validation R@1" in text               # the guard's line names the split too
    for said in (text, (main(["eval", "--checkpoint", str(out / "calmrl")]), capsys.readouterr().out)[1]):
        assert "these figures are on the validation split, which chose the model" in said
        assert "one correct item among the 300 validation instances" in said
    res = json.loads((out / "calmrl" / "results.json").read_text())
    assert res["evaluated_on"] == "validation" and res["n_test"] == 0
