"""method.name=auto: every candidate objective trained on the same splits, the best on
validation kept (never chosen on test); init_from across methods that share encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import SIM
from calmrl.train import load_config, run
from calmrl.train.runner import load_checkpoint

BASE = SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3", "train.progress=false",
              "train.check_val_every=50", "train.threads=1", "calibrator.warmup_epochs=1",
              "data.views=[fourier, karhunen, zernike]"]


def test_auto_keeps_the_candidate_best_on_validation_and_equals_its_separate_run(tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = load_config(None, BASE + ["method.candidates=[pmrl-drop, pairwise-infonce]", f"output_dir={tmp_path / 'a'}",
                                    "method.search=exhaustive", "method.lr_factors=[1]"])
    res = run(cfg, method="auto")
    a = res["auto"]
    assert set(a["val_R@1"]) == {"pmrl-drop", "pairwise-infonce"}
    assert a["chosen"] == max(a["val_R@1"], key=a["val_R@1"].get) == res["chosen_method"]
    assert res["val_average"]["R@1"] == a["val_R@1"][a["chosen"]]                  # the kept run's own figures
    assert res["pairs"]["average"]["R@1"] == a["test_R@1"][a["chosen"]]
    kept = tmp_path / "a" / "auto" / "checkpoints" / "kept.ckpt"
    src = tmp_path / "a" / "auto" / "candidates" / a["chosen"] / "checkpoints" / "last.ckpt"
    assert kept.read_bytes() == src.read_bytes()
    assert json.loads((tmp_path / "a" / "auto" / "results.json").read_text())["auto"]["chosen"] == a["chosen"]
    assert "auto: kept" in caplog.text
    # the candidate trained alone is the same run (the suite composes auto's records from its candidates')
    alone = run(load_config(None, BASE + [f"output_dir={tmp_path / 'b'}"]), method="pairwise-infonce")
    assert alone["val_average"]["R@1"] == a["val_R@1"]["pairwise-infonce"]
    assert alone["pairs"]["average"]["R@1"] == a["test_R@1"]["pairwise-infonce"]


def test_auto_with_learning_rates_tries_each_candidate_at_each(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(None, BASE + ["train.epochs=1", "method.candidates=[pmrl-drop]", "method.auto_lrs=[1e-4, 2e-3]",
                                    f"output_dir={tmp_path}", "method.search=exhaustive"])
    res = run(cfg, method="auto")
    assert set(res["auto"]["val_R@1"]) == {"pmrl-drop-lr0.0001", "pmrl-drop-lr0.002"}
    lr = load_checkpoint(tmp_path / "auto" / "checkpoints" / "kept.ckpt")["calmrl_config"]["train"]["lr"]
    assert f"lr{lr:g}" in res["auto"]["chosen"]


def test_halving_keeps_the_best_at_the_last_rung_and_its_model_is_the_straight_run(tmp_path, caplog):
    """Successive halving: 4 candidates, rungs of 2 and 6 epochs; the survivor continues from its own
    checkpoint, so the kept model is bit for bit the candidate trained alone for 6 epochs."""
    torch.set_num_threads(1)
    over = BASE + ["train.epochs=6", "method.candidates=[pmrl-drop, pairwise-infonce]", "method.auto_lrs=[2e-3, 5e-4]",
                   "method.halving_min_epochs=2", "method.halving_eta=3", "method.halving_keep=none"]
    res = run(load_config(None, over + [f"output_dir={tmp_path / 'h'}"]), method="auto")
    a = res["auto"]
    assert a["search"] == "halving" and a["rungs"] == [2, 6]
    first = {k: v["rungs"][0]["val_R@1"] for k, v in a["candidates"].items()}
    assert all(len(v["rungs"]) >= 1 and v["rungs"][0]["epochs"] == 2 for v in a["candidates"].values())
    assert a["chosen"] == max(first, key=first.get)               # the best at the rung is the one that went on
    assert [len(v["rungs"]) for v in a["candidates"].values()].count(2) == 1
    assert a["candidate_epochs"] == 4 * 2 + 4 and a["cost_ratio"] == 2.0
    assert "auto: rung 1 of 2 (2 epochs): best " in caplog.text and "1 of 4 continue" in caplog.text
    assert set(a["test_R@1"]) == {a["chosen"]}                     # the losers never see the test split
    base, lr = a["chosen"].rsplit("-lr", 1)
    alone = run(load_config(None, over + ["train.lr=" + lr, f"output_dir={tmp_path / 's'}"]), method=base)
    assert alone["val_average"]["R@1"] == res["val_average"]["R@1"]
    kept = load_checkpoint(tmp_path / "h" / "auto" / "checkpoints" / "kept.ckpt")["state_dict"]
    straight = load_checkpoint(tmp_path / "s" / base / "checkpoints" / "last.ckpt")["state_dict"]
    for k in straight:
        torch.testing.assert_close(kept[k], straight[k], rtol=0, atol=0)


def test_halving_folds_the_guard_in_the_observed_only_twin_trains_only_where_imputations_took_part(tmp_path):
    torch.set_num_threads(1)
    over = BASE + ["train.epochs=3", "method.candidates=[calmrl]", "method.lr_factors=[1]"]
    # a gate that never opens: the calibrated run is the observed-only run, so the twin is not trained
    shut = run(load_config(None, over + ["method.gate_alpha=1e-9", f"output_dir={tmp_path / 'g'}"]), method="auto")
    c = shut["auto"]["candidates"]
    assert set(c) == {"calmrl", "pmrl-drop"} and c["pmrl-drop"]["rungs"][-1]["same_run_as"] == "calmrl"
    assert shut["auto"]["candidate_epochs"] == 3 and not (tmp_path / "g" / "auto" / "candidates" / "pmrl-drop").exists()
    # imputations at weight 1 from the first calibrated epoch: the twin trains, validation decides
    opened = run(load_config(None, over + ["method.gate=none", f"output_dir={tmp_path / 'n'}"]), method="auto")
    a = opened["auto"]
    assert "same_run_as" not in a["candidates"]["pmrl-drop"]["rungs"][-1] and a["candidate_epochs"] == 6
    assert a["chosen"] == max(a["val_R@1"], key=a["val_R@1"].get)


def test_an_interrupted_halving_resumes_to_the_same_choice_and_model(tmp_path):
    """Interrupted in the middle of the second rung (as a SIGTERM would), --resume continues from
    the saved search: the same rungs, choice and kept weights as an uninterrupted search."""
    import lightning as L

    torch.set_num_threads(1)
    over = BASE + ["train.epochs=6", "method.candidates=[pmrl-drop, pairwise-infonce]", "method.auto_lrs=[2e-3, 5e-4]",
                   "method.halving_min_epochs=2", "method.halving_eta=3", "method.halving_keep=none"]

    class Stop(Exception):
        signum = 15

    class StopAt(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 3:          # the second rung, after a candidate's first epoch of it
                raise Stop()

    whole = run(load_config(None, over + [f"output_dir={tmp_path / 'w'}"]), method="auto")
    cfg = load_config(None, over + [f"output_dir={tmp_path / 'i'}"])
    with pytest.raises(Stop):
        run(cfg, method="auto", extra_callbacks=[StopAt()])
    assert json.loads((tmp_path / "i" / "auto" / "search.json").read_text())["done"] == 0
    back = run(cfg, method="auto", resume=True)
    assert back["auto"]["chosen"] == whole["auto"]["chosen"] and back["auto"]["rungs"] == whole["auto"]["rungs"]
    strip = lambda c: {k: [{f: x for f, x in r.items() if f != "seconds"} for r in v["rungs"]]  # noqa: E731
                       for k, v in c.items()}
    assert strip(back["auto"]["candidates"]) == strip(whole["auto"]["candidates"])     # all but the timings
    a = load_checkpoint(tmp_path / "w" / "auto" / "checkpoints" / "kept.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "i" / "auto" / "checkpoints" / "kept.ckpt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="records a search over other candidates"):
        run(load_config(None, over + [f"output_dir={tmp_path / 'i'}", "method.auto_lrs=[2e-3, 1e-3]"]), method="auto",
            resume=True)


def test_a_failing_candidate_is_recorded_and_resume_reuses_the_finished_ones(tmp_path, caplog):
    torch.set_num_threads(1)
    over = BASE + ["train.epochs=2", "method.candidates=[pmrl-drop]", "method.search=exhaustive",
                   f"output_dir={tmp_path}"]
    res = run(load_config(None, over + ["method.auto_lrs=[2e-3, 1e6]"]), method="auto")
    a = res["auto"]
    assert "pmrl-drop-lr1e+06" in a["failed"] and a["chosen"] == "pmrl-drop-lr0.002"
    assert "candidate pmrl-drop-lr1e+06 failed" in caplog.text
    caplog.clear()
    again = run(load_config(None, over + ["method.auto_lrs=[2e-3, 1e-3]"]), method="auto", resume=True)
    assert again["auto"]["val_R@1"]["pmrl-drop-lr0.002"] == a["val_R@1"]["pmrl-drop-lr0.002"]
    assert "resuming" not in caplog.text or "epoch 2 of 2" in caplog.text
    assert set(again["auto"]["val_R@1"]) == {"pmrl-drop-lr0.002", "pmrl-drop-lr0.001"} and not again["auto"]["failed"]


def test_init_from_works_across_objectives_sharing_encoders(tmp_path, caplog):
    torch.set_num_threads(1)
    pre = run(load_config(None, BASE + ["data.missing.kind=none", f"output_dir={tmp_path / 'p'}"]), method="pmrl-drop")
    ck = tmp_path / "p" / "pmrl-drop" / "checkpoints" / "last.ckpt"
    res = run(load_config(None, BASE + [f"train.init_from={ck}", f"output_dir={tmp_path / 'c'}"]),
              method="pairwise-infonce")                       # before: refused, missing temperature.log_tau
    assert "has no ['temperature']; they start from their defaults" in caplog.text
    assert np.isfinite(res["pairs"]["average"]["R@1"]) and np.isfinite(pre["pairs"]["average"]["R@1"])
    back = tmp_path / "c" / "pairwise-infonce" / "checkpoints" / "last.ckpt"
    run(load_config(None, BASE + [f"train.init_from={back}", f"output_dir={tmp_path / 'd'}"]), method="pmrl-drop")
    assert "which pmrl-drop does not use; left out" in caplog.text


def test_the_hub_objectives_anchor_at_the_view_every_subset_shares():
    from calmrl.train.runner import resolve_anchor
    from calmrl.train.splits import prepare_data

    cfg = load_config(None, BASE + ["data.missing.kind=paired", "data.missing.complete_fraction=0.0",
                                    "data.missing.subsets=[[zernike, fourier], [zernike, karhunen]]"])
    sp = prepare_data(cfg, "anchor-infonce")
    assert resolve_anchor("", sp) == "zernike"                    # not the first view, fourier
    assert resolve_anchor("karhunen", sp) == "karhunen"
    import pytest
    with pytest.raises(ValueError, match="method.anchor 'pixel' is not a modality"):
        resolve_anchor("pixel", sp)


def test_results_say_what_the_embedding_adds_over_a_knn_on_the_raw_features(tmp_path):
    """Beside the embedding's kNN accuracy, the same kNN on the standardised raw features (a
    missing view at its mean), and a note saying which is higher."""
    from calmrl.data import load_uci_mfeat
    from calmrl.train.evaluate import raw_knn_accuracy

    torch.set_num_threads(1)
    res = run(load_config(None, BASE + ["train.epochs=1", f"output_dir={tmp_path}"]), method="pmrl-drop")
    raw = res["raw_knn_accuracy"]
    assert 10.0 < raw <= 100.0                                  # 10 digit classes: chance 10%
    assert any(n.startswith("kNN on the raw features") for n in res["notes"]), res["notes"]
    # the baseline by hand on two views of UCI: equal to scikit-learn on the same matrix
    d = load_uci_mfeat(views=["fourier", "karhunen"]).subset(np.arange(0, 2000, 4))
    d.labels = np.asarray(d.labels).astype(int)
    tr, te = d.subset(np.arange(0, 400)), d.subset(np.arange(400, 500))
    from sklearn.neighbors import KNeighborsClassifier
    X = lambda s: np.concatenate([np.asarray(v, float) for v in s.views], 1)
    ref = 100 * KNeighborsClassifier(5).fit(X(tr), tr.labels).score(X(te), te.labels)
    assert raw_knn_accuracy(tr, te, 5) == pytest.approx(ref)


def test_a_knn_figure_from_too_few_neighbours_is_na_with_a_note(tmp_path):
    torch.set_num_threads(1)
    res = run(load_config(None, BASE + ["train.epochs=1", "eval.max_instances=3", f"output_dir={tmp_path}"]),
              method="pmrl-drop")
    assert res["knn_accuracy"] != res["knn_accuracy"]                   # NaN, printed n/a
    assert any("kNN accuracy n/a: 10-NN needs at least 10 labelled training instances" in n for n in res["notes"])


def test_validation_on_a_large_split_is_scored_on_a_bounded_sample_everywhere_alike(tmp_path):
    """A validation split larger than eval.val_gallery_size: every epoch's score, the search's
    rung scores and val_average read one fixed sample of that size, and agree with each other;
    the test split is scored as before."""
    from calmrl.train.evaluate import retrieval_table, validation_table

    torch.set_num_threads(1)
    cfg = load_config(None, BASE + ["train.epochs=1", "train.check_val_every=1", "eval.val_gallery_size=50",
                                    f"output_dir={tmp_path}"])
    g = torch.Generator().manual_seed(0)
    A = torch.nn.functional.normalize(torch.randn(300, 3, 8, generator=g), dim=-1)
    mask = torch.ones(300, 3, dtype=torch.bool)
    assert validation_table(A, ["a", "b", "c"], mask, cfg.eval)["a->b"]["n"] == 50
    small = load_config(None, ["eval.val_gallery_size=500"]).eval
    assert validation_table(A, ["a", "b", "c"], mask, small) == retrieval_table(A, ["a", "b", "c"], mask)
    import lightning as L

    seen = []

    class Count(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(len(batch["mask"]))

    res = run(cfg, method="pmrl-drop", extra_callbacks=[Count()])
    assert sum(seen) == 50                       # the epoch's validation embeds only the rows its score reads
    assert res["val_curve"][-1][1] == pytest.approx(res["val_average"]["R@1"], abs=1e-9)
    whole = run(load_config(None, BASE + ["train.epochs=1", "eval.val_gallery_size=0",
                                          f"output_dir={tmp_path / 'w'}"]), method="pmrl-drop")
    assert whole["val_average"]["R@1"] < res["val_average"]["R@1"]     # 300 candidates are harder than 50
    assert whole["pairs"] == res["pairs"]                                # the test split is scored as before


def test_a_search_shows_one_progress_bar_counting_every_candidates_epochs(tmp_path, capfd):
    """In a notebook or a terminal, auto shows one bar for the whole search (tqdm.auto), not
    Lightning's bars per candidate; it ends at the epochs the search trained."""
    torch.set_num_threads(1)
    over = [o for o in BASE if not o.startswith("train.progress")] + [
        "train.progress=true", "train.epochs=2", "method.candidates=[pmrl-drop, pairwise-infonce]",
        "method.lr_factors=[1]", "method.halving_min_epochs=1", "method.halving_keep=none",
        f"output_dir={tmp_path}"]
    res = run(load_config(None, over), method="auto")
    err = capfd.readouterr().err
    n = res["auto"]["candidate_epochs"]
    assert n == 2 * 1 + 1
    assert f"{n}/{n}" in err and "auto rung 2/2: " in err and "best val R@1" in err
    assert "calmrl: auto: rung 1 of 2 (1 epochs): best " in err          # the rung's line, above the bar
    assert "Epoch 0" not in err and "epoch 0" not in err                  # no candidate's own bar
