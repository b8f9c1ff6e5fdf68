"""method.name=auto: every candidate objective trained on the same splits, the best on
validation kept (never chosen on test); init_from across methods that share encoders."""

from __future__ import annotations

import json

import numpy as np
import torch

from helpers import SIM
from calmrl.train import load_config, run
from calmrl.train.runner import load_checkpoint

BASE = SIM + ["model.embed_dim=16", "model.hidden_dim=32", "train.epochs=3", "train.progress=false",
              "train.check_val_every=50", "train.threads=1", "calibrator.warmup_epochs=1",
              "data.views=[fourier, karhunen, zernike]"]


def test_auto_keeps_the_candidate_best_on_validation_and_equals_its_separate_run(tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = load_config(None, BASE + ["method.candidates=[pmrl-drop, pairwise-infonce]", f"output_dir={tmp_path / 'a'}"])
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
                                    f"output_dir={tmp_path}"])
    res = run(cfg, method="auto")
    assert set(res["auto"]["val_R@1"]) == {"pmrl-drop-lr0.0001", "pmrl-drop-lr0.002"}
    lr = load_checkpoint(tmp_path / "auto" / "checkpoints" / "kept.ckpt")["calmrl_config"]["train"]["lr"]
    assert f"lr{lr:g}" in res["auto"]["chosen"]


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
