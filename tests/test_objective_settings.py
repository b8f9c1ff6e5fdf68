"""Objectives own their settings: declared once with the objective (``Setting``), they become
config keys ``method.<objective>.<key>`` (checked, documented, saved) and reach the loss as
``ctx.settings``; a setting's earlier key still loads; registration checks the declaration."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from calmrl import objectives
from calmrl.config import ConfigError, _build, config_reference, config_to_dict
from calmrl.objectives import LossContext, Objective, Setting, register, symile_loss
from calmrl.train.config import Config, MethodConfig, load_config


def _batch(seed=0, B=6, M=3, d=4):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, M, d, generator=g, dtype=torch.float64), dim=-1), torch.ones(B, M, dtype=torch.bool)


def test_an_objectives_own_key_reaches_its_loss_and_is_checked_like_every_key():
    A, mask = _batch()
    for neg in ("n", "n_squared", "joint"):
        cfg = load_config(None, [f"method.symile.negatives={neg}"]).method
        obj = objectives.get("symile")
        params = obj.make_parameters(cfg).double()
        torch.manual_seed(3)
        got = obj.loss(A, mask, LossContext(cfg, params=params))[0].detach()
        torch.manual_seed(3)
        assert float(got) == float(symile_loss(A, mask, tau=params.tau.detach(), negatives=neg)), neg
    with pytest.raises(ConfigError, match=r"method.symile.negatives = 'x' is not valid; choose one of \['n', "):
        load_config(None, ["method.symile.negatives=x"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["method.symile.temperature=2"])
    p = objectives.get("siglip").make_parameters(load_config(None, ["method.siglip.t_init=5",
                                                                   "method.siglip.bias_init=-3"]).method)
    assert abs(float(p.tau.detach()) - 0.2) < 1e-6 and float(p.bias.detach()) == -3.0
    with pytest.raises(ConfigError, match="method.siglip.t_init = 0.0 is below its minimum"):
        load_config(None, ["method.siglip.t_init=0"])


def test_every_declared_setting_is_a_documented_config_key_with_its_default():
    ref = config_reference()
    cfg = MethodConfig()
    for o in objectives.REGISTRY.values():
        for s in o.settings:
            assert f"| `method.{o.section}.{s.name}` | `{s.default!r}` |" in ref
            assert getattr(getattr(cfg, o.section), s.name) == s.default
    assert "symile_negatives" not in ref


def test_a_key_an_earlier_release_kept_elsewhere_still_loads_and_is_saved_where_it_lives_now():
    old = config_to_dict(Config())
    del old["method"]["symile"]
    old["method"]["symile_negatives"] = "joint"          # a checkpoint's config of the earlier release
    cfg = _build(Config, old)
    assert cfg.method.symile.negatives == "joint"
    assert config_to_dict(cfg)["method"]["symile"] == {"negatives": "joint"}
    assert load_config(None, ["method.symile_negatives=n_squared"]).method.symile.negatives == "n_squared"
    with pytest.raises(ConfigError, match="one key .it moved.; give it once, as method.symile.negatives"):
        load_config(None, ["method.symile_negatives=joint", "method.symile.negatives=n"])


def test_registration_checks_the_settings_it_is_given():
    def loss(A, mask, ctx):
        return A.sum() * 0.0, {}

    bad = [((Setting("k", "a", "help", choices=("b",)),), "not one of its choices"),
           ((Setting("k", 1, ""),), "needs a help line"),
           ((Setting("k", 1, "h"), Setting("k", 2, "h")), "given once"),
           ((Setting("my key", 1, "h"),), "Python identifier"),
           ((Setting("k", [1], "h"),), "bool, int, float or str"),
           ((Setting("k", 5, "h", lo=0, hi=1),), "outside"),
           (("k",), "Setting")]
    for settings, msg in bad:
        with pytest.raises(ValueError, match=msg):
            register(Objective("settings-probe", "probe", "probe", fn=loss, settings=settings))
    assert "settings-probe" not in objectives.REGISTRY


def test_an_objective_registered_later_is_a_method_and_reads_its_declared_defaults():
    seen = {}

    def loss(A, mask, ctx):
        seen["margin"] = ctx.settings.margin
        return (A.sum() * 0.0) + ctx.settings.margin, {}

    register(Objective("late-probe", "late-probe", "a probe registered after calmrl.config", fn=loss,
                       settings=(Setting("margin", 0.25, "a margin", lo=0.0),)))
    try:
        cfg = load_config(None, ["method.name=late-probe"])         # accepted as method.name, not only as candidate
        A, mask = _batch()
        out, _ = objectives.get("late-probe").loss(A, mask, LossContext(cfg.method))
        assert seen["margin"] == 0.25 and float(out) == 0.25
        assert "late-probe" in objectives.registry_table()
    finally:
        objectives.REGISTRY.pop("late-probe", None)


def test_the_method_config_is_a_dataclass_with_a_section_per_objective_that_declares_settings():
    sections = {f.name for f in dataclasses.fields(MethodConfig) if dataclasses.is_dataclass(f.type)}
    assert sections == {o.section for o in objectives.REGISTRY.values() if o.settings} >= {"siglip", "symile"}
    import pickle

    cfg = load_config(None, ["method.symile.negatives=joint"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_a_hyphenated_objectives_section_is_spelled_either_way_and_overrides_merge_key_by_key():
    """Registered before calmrl.config is imported (as its module would be), an objective named
    with a hyphen gets method.<name with _>; the hyphen spelling reaches the same section, and a
    later override of one key keeps the others."""
    import subprocess
    import sys

    code = """
from calmrl.objectives import Objective, Setting, register
register(Objective("my-loss", "my-loss", "a probe", fn=lambda A, mask, ctx: (A.sum() * 0.0, {}),
                   settings=(Setting("margin", 0.2, "a margin"), Setting("scale", 1.0, "a scale"))))
from calmrl.config import apply_overrides, load_config
cfg = load_config(None, ["method.my-loss.margin=0.5"])
assert cfg.method.my_loss.margin == 0.5, cfg.method.my_loss
cfg2 = apply_overrides(cfg, ["method.my-loss.scale=2.0"])
assert (cfg2.method.my_loss.margin, cfg2.method.my_loss.scale) == (0.5, 2.0), cfg2.method.my_loss
cfg3 = apply_overrides(cfg2, ["method.my_loss.margin=0.1"])
assert (cfg3.method.my_loss.margin, cfg3.method.my_loss.scale) == (0.1, 2.0), cfg3.method.my_loss
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
