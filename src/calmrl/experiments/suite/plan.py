"""What the suite runs: settings, variants and their objective families, the plans, and the
configuration of one (dataset, setting)."""

from __future__ import annotations

import dataclasses
import json

from ... import objectives
from ...data.suite import SUITE
from ...train import Config
from ...train.config import CALIBRATABLE

SETTINGS = ("mcar 0.3", "mcar 0.5", "mcar 0.7", "paired", "never-complete", "absorb")
# every objective of the registry, and 'X+cal' for those calibration plugs into; then the ablations
VARIANTS = {name: (objectives.parse_method(name)[0], ["method.calibrate=true"] if objectives.parse_method(name)[1]
                   else []) for name in [*objectives.names(), *(f"{o}+cal" for o in CALIBRATABLE)]}
VARIANTS.update({"calmrl-ungated": ("calmrl", ["method.gate=none", "method.guard=none"]),
                 "calmrl-gated": ("calmrl", ["method.gate=identification"]),
                 "calmrl-mlp": ("calmrl", ["calibrator.backend=mlp"]),
                 "calmrl-mvae": ("calmrl", ["calibrator.backend=mvae"]),
                 "calmrl-mopoe": ("calmrl", ["calibrator.backend=mopoe"]),
                 # the default as a user runs it: successive halving over its default space (both of the
                 # suite's learning rates: train.lr 2e-3 x method.lr_factors [1, 0.25])
                 "auto-halving": ("auto", ["method.search=halving", "train.lr=0.002"])})
# the objective family of a variant (the registry's): its learning rate is tuned, and its absorb
# pretraining run, per family; the PMRL family pretrains as oracle
FAMILY = {v: objectives.get(base).family for v, (base, _) in VARIANTS.items() if base in objectives.REGISTRY}
# the variants of the main table (every registered candidate objective, plain and calibrated)
MAIN = tuple(objectives.candidate_names())
# method.name=auto's default candidates; its suite record is composed from theirs (same seed, data and
# config make the same runs: tests/test_auto.py), the one with the highest validation R@1 per seed
AUTO_CANDIDATES = ("calmrl", "pairwise-infonce+cal", "anchor-infonce+cal")
AUTO_PLAIN = ("calmrl", "pairwise-infonce", "anchor-infonce")     # the candidates before calibration was plugged in


SHARED = "+shared"    # a variant suffix: the dataset's view groups served by one encoder each (model.shared_encoders)


def family(variant: str) -> str:
    return FAMILY.get(variant.removesuffix(SHARED), "pmrl")    # (unknown names are PMRL ablations)


def _unit_key(variant: str) -> tuple[str, bool]:
    """Variants that can share one unit of work: one learning rate and one absorb pretraining."""
    return family(variant), variant.endswith(SHARED)


def _variant_overrides(variant: str, dataset: str) -> tuple[str, list[str]]:
    """``(method, overrides)`` of a variant on a dataset."""
    base = variant.removesuffix(SHARED)
    method, sets = VARIANTS[base]
    if variant.endswith(SHARED):
        groups = [list(g) for g in SUITE[dataset].groups] if dataset in SUITE else []
        if not groups:
            raise ValueError(f"variant {variant}: dataset {dataset} declares no view groups")
        sets = sets + [f"model.shared_encoders={json.dumps(groups)}"]
    return method, sets
HUBS = {"uci_mfeat": "pixel"}

SUITE_FULL = {"datasets": [*SUITE, "uci_mfeat"], "settings": list(SETTINGS),
              "main": ["calmrl", "pmrl-drop", "pairwise-infonce", "anchor-infonce"],
              "main_seeds": [0, 1, 2, 3, 4], "extra": ["calmrl-ungated", "pmrl-truefill", "oracle"],
              "extra_seeds": [0, 1, 2], "epochs": 20, "lrs": [5e-4, 2e-3]}
SUITE_QUICK = {"datasets": ["cells"], "settings": ["mcar 0.5", "never-complete"], "main": ["calmrl", "pmrl-drop"],
               "main_seeds": [0, 1], "extra": [], "extra_seeds": [], "epochs": 3, "lrs": [2e-3]}


def _hub(cfg: Config) -> str:
    return HUBS.get(cfg.data.dataset) or SUITE[cfg.data.dataset].hub


def _setting_cfg(cfg: Config, setting: str, names: list[str]) -> Config:
    d = cfg.data
    if setting.startswith("mcar"):
        miss = dataclasses.replace(d.missing, kind="mcar", rate=float(setting.split()[1]))
    elif setting in ("paired", "never-complete"):
        hub = _hub(cfg)
        miss = dataclasses.replace(d.missing, kind="paired", subsets=[[hub, n] for n in names if n != hub],
                                   complete_fraction=0.1 if setting == "paired" else 0.0)
    else:
        raise ValueError(f"unknown setting '{setting}'")
    # the hub is the anchor of the hub objectives (anchor-infonce, gram, triangle) in every setting
    return dataclasses.replace(cfg, data=dataclasses.replace(d, missing=miss),
                               method=dataclasses.replace(cfg.method, anchor=_hub(cfg)))


def _plan(plan: dict) -> list[tuple[str, str, list[str], int]]:
    """(dataset, setting, variants, seed) units, most important first: the main pair on every
    cell, seed by seed, then the extra variants; the oracle once per dataset and seed."""
    units = []
    keys = list(dict.fromkeys(_unit_key(v) for v in plan["main"]))
    for seed in plan["main_seeds"]:
        for d in plan["datasets"]:
            for s in plan["settings"]:
                for k in keys:          # one unit per objective family: its own learning rate and pretraining
                    vs = [v for v in plan["main"] if _unit_key(v) == k and (not k[1] or (d in SUITE and SUITE[d].groups))]
                    if vs:
                        units.append((d, s, vs, seed))
    for seed in plan["extra_seeds"]:
        for d in plan["datasets"]:
            extra = [v for v in plan["extra"] if v != "oracle"]
            for s in plan["settings"]:
                ex = [v for v in extra if not (s == "absorb" and v == "pmrl-truefill")]
                if ex:
                    units.append((d, s, ex, seed))
            if "oracle" in plan["extra"]:
                units.append((d, "mcar 0.5", ["oracle"], seed))
    return units
