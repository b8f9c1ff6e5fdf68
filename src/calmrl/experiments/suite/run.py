"""Running the suite: units of work on worker processes, records written atomically, the
learning rate chosen per dataset and objective family on validation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ...train import Config, run
from ...train.config import apply_overrides
from ..sweep import result_record
from .plan import SHARED, _plan, _setting_cfg, _unit_key, _variant_overrides, family, _hub

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
    g = res.get("guard") or {}
    rec = {**result_record(res), "guard": g.get("kept"), "guard_trained": bool(g.get("alternative_trained")),
           "seconds": time.time() - t0}
    if "auto" in res:      # a real auto run: its search, cost and choice
        a = res["auto"]
        rec["auto"] = {k: a.get(k) for k in ("chosen", "search", "rungs", "candidate_epochs", "kept_epochs",
                                             "cost_ratio", "val_R@1", "failed")}
    return rec


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
        from ...train.calibrate import calibrate_checkpoint

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


def _load_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*/*/*/seed*.json"))]


def _names(dataset: str) -> list[str]:
    from ...data import UCI_VIEWS
    from ...data.suite import load

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
