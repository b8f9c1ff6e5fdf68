"""model.shared_encoders: views of one kind and width served by one encoder (issue: views that
never occur together)."""

from __future__ import annotations

import pytest
import torch

from calmrl.train.encoders import MultiModalEncoder
from calmrl.train.export import export_model, load_exported
from calmrl.train import load_config
from calmrl.core import SharedLatentCalibrator


def test_a_group_is_served_by_one_head_and_survives_export(tmp_path):
    torch.manual_seed(0)
    enc = MultiModalEncoder.mlp([8, 8, 5], ["a", "b", "t"], 4, hidden=16, shared=[["a", "b"]])
    assert enc.encoders[0] is enc.encoders[1] and enc.encoders[2] is not enc.encoders[0]
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in enc.encoders[0].parameters()) + \
        sum(p.numel() for p in enc.encoders[2].parameters())            # the optimiser sees each weight once
    x = torch.randn(6, 8)
    mask = torch.ones(6, 3, dtype=torch.bool)
    A = enc([x, x, torch.randn(6, 5)], mask)
    assert torch.allclose(A[:, 0], A[:, 1])                              # the same input, the same embedding
    cfg = load_config(None, ["model.embed_dim=4", "model.hidden_dim=16", "model.shared_encoders=[[a, b]]"])
    out = export_model(enc, SharedLatentCalibrator(3, 4, 2, names=["a", "b", "t"]), cfg, [8, 8, 5], tmp_path)
    enc2, _, _ = load_exported(out)
    assert enc2.encoders[0] is enc2.encoders[1]
    assert torch.allclose(enc2.eval()([x, x, torch.zeros(6, 5)], mask)[:, :2], enc.eval()([x, x, torch.zeros(6, 5)],
                                                                                      mask)[:, :2])


def test_bad_groups_name_the_problem():
    with pytest.raises(ValueError, match="unknown modality"):
        MultiModalEncoder.mlp([8, 8], ["a", "b"], 4, shared=[["a", "c"]])
    with pytest.raises(ValueError, match="different widths"):
        MultiModalEncoder.mlp([8, 6], ["a", "b"], 4, shared=[["a", "b"]])
    with pytest.raises(ValueError, match="in two groups"):
        MultiModalEncoder.mlp([8, 8, 8], ["a", "b", "c"], 4, shared=[["a", "b"], ["b", "c"]])
