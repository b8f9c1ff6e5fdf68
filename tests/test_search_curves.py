"""auto's schedule as pure functions, the replay over learning curves, and a real search that
makes the replay's choice on the same curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import SIM
from calmrl.experiments.curves.replay import Bracket, Schedule, SCHEDULES, replay
from calmrl.train.schedule import halving_rungs, promote


def test_rungs_and_promotion_of_plain_halving():
    assert halving_rungs(12, 20, 3, 1) == [1, 3, 9, 20]
    assert halving_rungs(12, 20, 3, 5) == [5, 15, 20]
    assert halving_rungs(1, 20, 3, 1) == [20]
    ranked = list("abcdefg")
    assert promote(ranked, last=False, eta=3) == ["a", "b", "c"]
    assert promote(ranked, last=True, eta=3) == ["a"]
    groups = {x: (("shared", x in "ab"),) for x in ranked}          # a, b one structure; c..g the other
    assert promote(ranked, last=True, eta=3, groups=groups) == ["a", "c"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), eta=st.integers(2, 5), last=st.booleans(), kinds=st.integers(1, 4), seed=st.integers(0, 99))
def test_promotion_keeps_the_top_and_the_best_of_every_group(n, eta, last, kinds, seed):
    rng = np.random.default_rng(seed)
    ranked = [f"c{i}" for i in rng.permutation(n)]
    groups = {x: (("g", int(rng.integers(kinds))),) for x in ranked}
    kept = promote(ranked, last=last, eta=eta, groups=groups)
    assert kept == [x for x in ranked if x in kept]                  # order kept, a subset
    top = 1 if last else -(-n // eta)
    assert kept[:top] == ranked[:top] or set(ranked[:top]) <= set(kept)
    for g in {v for v in groups.values()}:                             # each group's best goes on
        assert next(x for x in ranked if groups[x] == g) in kept
    assert len(kept) <= top + kinds


def _record(curves: dict, epochs: int) -> dict:
    """A table cell from ``{label: (val curve, test curve, shared, objective)}``, one second an epoch."""
    cands = {k: {"method": obj, "calibrate": False, "lr": 2e-3, "shared": sh, "twin_of": None,
                 "curve": [{"epoch": e + 1, "val": v[e], "test": t[e], "train_seconds": 1.0, "val_seconds": 0.0}
                           for e in range(epochs)]} for k, (v, t, sh, obj) in curves.items()}
    return {"dataset": "d", "setting": "s", "seed": 0, "epochs": epochs, "candidates": cands,
            "meta": {"order": list(curves)}}


def test_replay_halving_cuts_a_slow_starter_that_keeping_each_structure_saves():
    """The failure of the first rung: one shared encoder leads after an epoch, the unshared curve
    crosses it later; halving at 1 epoch keeps the worse model, keeping each structure does not."""
    E = 9
    ep = np.arange(1, E + 1)
    curves = {"fast+shared": (list(6 + 0.3 * ep), list(6 + 0.3 * ep), True, "pairwise-infonce"),
              "slow": (list(1.5 * ep), list(1.5 * ep), False, "pairwise-infonce")}
    for i in range(4):                     # weaker arms of both kinds
        curves[f"weak{i}"] = (list(0.5 * ep), list(0.5 * ep), bool(i % 2), "calmrl")
    rec = _record(curves, E)
    plain = replay(rec, Schedule("h", (Bracket(1, 3, "none"),)))
    kept = replay(rec, Schedule("k", (Bracket(1, 3, "structure"),)))
    full = replay(rec, SCHEDULES["exhaustive"])
    assert full["choice"] == full["reference"] == "slow" and full["regret"] == 0
    assert plain["choice"] == "fast+shared" and plain["regret"] == pytest.approx(13.5 - 8.7)
    assert kept["choice"] == "slow" and kept["regret"] == 0
    # price: every epoch any candidate trained, over the kept model's own 9 epochs (one second each)
    assert full["price"] == pytest.approx(6.0) and full["candidate_epochs"] == 54
    assert plain["price"] < kept["price"] < full["price"]


def test_a_real_search_makes_the_replayed_choice_on_the_same_curves(tmp_path):
    """The table's curves of a small space, replayed with auto's schedule, give the candidate,
    the validation R@1 at each rung and the candidate-epochs of a real ``calmrl train`` search."""
    from calmrl.experiments.curves.table import AS_GIVEN, run_cell
    from calmrl.train import load_config, run

    torch.set_num_threads(1)
    over = SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=4", "train.progress=false",
                  "train.threads=1", "calibrator.warmup_epochs=1", "data.views=[fourier, karhunen, zernike]",
                  "method.candidates=[pmrl-drop, pairwise-infonce]", "method.auto_lrs=[2e-3, 5e-4]",
                  "method.halving_min_epochs=2", "method.halving_keep=objective"]
    cfg = load_config(None, over)
    rec = run_cell(cfg, "uci_mfeat", AS_GIVEN, 0, tmp_path / "table", ["fourier", "karhunen", "zernike"],
                   log=lambda *a: None)
    assert rec["done"] and all(len(c["curve"]) == 4 for c in rec["candidates"].values())
    rep = replay(rec, Schedule("as configured", (Bracket(2, 3, "objective"),)))
    res = run(load_config(None, over + [f"output_dir={tmp_path / 'real'}"]), method="auto")
    a = res["auto"]
    assert a["chosen"] == rep["choice"] and a["candidate_epochs"] == rep["candidate_epochs"]
    for label, c in a["candidates"].items():
        for r in c["rungs"]:
            assert r["val_R@1"] == rec["candidates"][label]["curve"][r["epochs"] - 1]["val"]
    # the curves kept by the search are the table's, epoch by epoch, for every epoch each candidate trained
    for label, curve in a["curves"].items():
        assert [v for _, v in curve] == [r["val"] for r in rec["candidates"][label]["curve"][:len(curve)]]
    assert (tmp_path / "real" / "auto" / "search.png").stat().st_size > 0
    assert json.loads((tmp_path / "real" / "auto" / "results.json").read_text())["auto"]["curves"] == \
        json.loads(json.dumps(a["curves"]))


def test_the_rule_chooses_the_cheapest_schedule_within_seed_noise_and_lodo_scores_the_left_out():
    from calmrl.experiments.curves.choose import choose, lodo

    half = {("a", "s"): 0.5, ("b", "s"): 0.5, ("c", "s"): 0.5}
    summ = {"halving r0=1 eta=3": {("a", "s"): {"regret": 0.0, "price": 2.0}, ("b", "s"): {"regret": 0.1, "price": 2.0},
                                   ("c", "s"): {"regret": 3.0, "price": 2.0}},
            "halving r0=1 eta=3 keep=structure": {c: {"regret": 0.2, "price": 3.0} for c in half},
            "exhaustive": {c: {"regret": 0.0, "price": 9.0} for c in half}}
    assert choose(summ, half, ["a", "b"]) == "halving r0=1 eta=3"                 # holds on a, b; cheapest
    assert choose(summ, half, ["a", "b", "c"]) == "halving r0=1 eta=3 keep=structure"
    folds = {f["left_out"]: f for f in lodo(summ, half, ["a", "b", "c"])}
    assert folds["c"]["chosen"] == "halving r0=1 eta=3" and not folds["c"]["holds"]  # chosen without c, fails on c
    assert folds["a"]["chosen"] == "halving r0=1 eta=3 keep=structure" and folds["a"]["holds"]


def test_extend_gains_only_where_the_added_objective_is_chosen_and_better():
    """Adding candidates from a second table: where the added one wins on validation and on test,
    the gain is its test R@1 over the base choice's; where it wins on validation only, a loss;
    a candidate repeated in both tables is refused."""
    from calmrl.experiments.curves.extend import compare, merge

    E = 9
    ep = np.arange(1, E + 1)
    base = _record({"a": (list(ep), list(ep), False, "pairwise-infonce"),
                    "b": (list(0.5 * ep), list(0.5 * ep), False, "calmrl")}, E)
    better = _record({"s": (list(1.2 * ep), list(1.3 * ep), False, "siglip")}, E)
    overfit = _record({"s": (list(1.2 * ep), list(0.8 * ep), False, "siglip")}, E)
    sched = Schedule("h", (Bracket(3, 2, "objective"),))
    for extra, gain in ((better, 1.3 * E - E), (overfit, 0.8 * E - E)):
        for r in (base, extra):
            r["done"] = True
        (row,) = compare([base], [extra], sched)
        assert row["extra_chosen"] and row["gain"] == pytest.approx(gain)
    with pytest.raises(ValueError, match="repeats candidates"):
        merge(base, base)
