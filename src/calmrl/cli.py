"""Command line: ``calmrl train | eval | calibrate | impute | export | bench | embed | retrieve | verify``.

Library errors (bad data, config, checkpoints, a locked output directory) print one line
``error: ...`` and exit with status 2; ``--debug`` shows the traceback.

``calmrl train --config FILE [--method a,b,...] [--set key=value ...] [--resume]`` trains
each method (same data split, encoders, budget) and prints a summary table.
``calmrl eval --checkpoint CKPT`` re-evaluates a checkpoint on its test split.
``calmrl impute --checkpoint CKPT --store DIR --out DIR`` fills the missing modalities of
a feature store with the calibrator's imputations (in the shared embedding space).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path


def _default_config() -> str:
    return str(resources.files("calmrl") / "configs" / "uci_mfeat.yaml")


def _print_tables(results: list[dict], eval_only: bool = False, said: set | None = None):
    from .train.results import format_table

    print()
    print("Cross-modal retrieval on the test split (average over all ordered view pairs, each over the")
    print("instances observing both), fused queries (the other observed views -> one view), kNN accuracy")
    print("of the fused embedding, and the anchor shift (degrees) on the training split: observed columns")
    print("vs observed + imputed.")
    print(format_table(results, eval_only=eval_only))
    seen = set(said or ())
    for r in results:
        g = r.get("guard") or {}
        shown = "validation" if r.get("evaluated_on") == "validation" else "test"    # data.test_fraction=0: no test
        guard = ([f"guard: imputed columns took part, so the observed-only path was trained too; validation "
                  f"R@1 calibrated {g['val_R@1']['calibrated']:.2f} vs observed-only "
                  f"{g['val_R@1']['observed-only']:.2f}: the {g['kept']} run is kept and shown "
                  f"({shown} R@1 {g['test_R@1']['calibrated']:.2f} vs {g['test_R@1']['observed-only']:.2f})"]
                 if g.get("alternative_trained") else [])
        if r.get("gate") == "none" and r.get("guard") is not None:
            guard.append("gate: imputed columns at weight 1 throughout (method.gate none, or auto continuing from a "
                         "checkpoint calibrated on complete data)")
        elif r.get("gate_history"):
            last = r["gate_history"][-1]
            names = r.get("names") or [str(i) for i in range(len(last["weights"]))]
            guard.append(f"gate: weights of imputed columns at the last calibrated epoch {last['epoch']}: " + ", ".join(
                f"{n} {w:.2f}" for n, w in zip(names, last["weights"])) + " (0 = left out)")
        a = r.get("auto")
        if a:
            if a.get("search") == "halving":
                keep = a.get("halving_keep") or "none"
                guard.append(f"auto: successive halving over {len(a['candidates'])} candidates, rungs of "
                             f"{a['rungs']} epochs" + (f", the best of each {keep.replace('both', 'structure and objective')} "
                                                       "kept to the last rung" if keep != "none" else "")
                             + f"; {a['candidate_epochs']} candidate-epochs for a {a['kept_epochs']}-epoch model "
                               f"({a['cost_ratio']:.2f}x; the table below)")
            else:
                guard.append("auto: candidates by validation R@1 " + ", ".join(
                    f"{k} {v:.2f} ({shown} {a['test_R@1'][k]:.2f})" for k, v in a["val_R@1"].items()
                    if k in a["test_R@1"]))
            for k, err in (a.get("failed") or {}).items():
                guard.append(f"auto: candidate {k} failed: {err}")
            guard.append(f"auto: kept {a['chosen']} ({a['checkpoint']})")
        for note in r.get("notes", []) + r.get("data_notes", []) + guard:
            if note not in seen:
                seen.add(note)
                print(f"note ({r['method']}): {note}")
        if a and a.get("search") == "halving" and a.get("rungs"):
            from .train.results import search_table
            print(f"auto's search (validation R@1 at each rung; curves: {Path(a['checkpoint']).parent.parent / 'search.png'}):")
            print(search_table(a))


def _load_cfg(path, overrides):
    """The run configuration: ``--config FILE`` if given; otherwise the tuned defaults, plus the
    bundled UCI demo (MCAR 0.5 simulated on its training split) when the data is the bundled
    UCI set. A user's own data is never given simulated gaps unless their config asks."""
    from .config import load_config, refuse_repeated_keys

    refuse_repeated_keys(overrides)
    if path:
        return load_config(path, overrides)
    cfg = load_config(None, overrides)
    return load_config(_default_config(), overrides) if cfg.data.dataset == "uci_mfeat" else cfg


class Interrupted(Exception):
    """Training stopped by SIGINT / SIGTERM (raised from the signal handler, so that Lightning
    tears down and re-raises it instead of exiting with its own status)."""

    def __init__(self, signum: int):
        import signal
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM during training raise :class:`Interrupted`; the previous handlers
    come back afterwards."""
    import signal

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def cmd_train(args) -> int:
    from .train.outdir import output_lock
    from .train.runner import run
    from .train.splits import describe_simulation, prepare_data

    extra = ([f"train.threads={args.threads}"] if args.threads else []) + \
        ([f"output_dir={args.output_dir}"] if args.output_dir else []) + _short_flags(args)
    cfg = _load_cfg(args.config, args.set + extra)
    methods = args.method.split(",") if args.method else [cfg.method.name]
    from dataclasses import replace

    from .objectives import get as get_objective
    from .objectives import names as objective_names
    from .objectives import parse_method

    METHODS = ("auto", *objective_names())        # read now: objectives registered after import count too

    def known(m):           # 'X+cal' as every table prints it: objective X with calibration plugged in
        base, cal = parse_method(m)
        return base in METHODS and (not cal or (base != "auto" and get_objective(base).calibration == "plug-in"))
    bad = [m for m in methods if not known(m)]
    if bad:
        cal_ok = [f"{n}+cal" for n in METHODS if n != "auto" and get_objective(n).calibration == "plug-in"]
        print(f"error: unknown method(s) {bad}; valid: {list(METHODS) + cal_ok}", file=sys.stderr)
        return 2
    from .train.trainer import check_accelerator
    check_accelerator(cfg)                     # before any data is read
    results = []
    first = prepare_data(cfg, parse_method(methods[0])[0])      # every data check before anything is written
    done, current, said = [], None, set()
    rank0 = int(os.environ.get("RANK", "0") or 0) == 0
    try:
        with output_lock(cfg.output_dir), _stop_on_signals():
            for i, m in enumerate(methods):
                current = m
                base, cal = parse_method(m)
                splits = first if i == 0 else prepare_data(cfg, base)
                what = f"candidates {', '.join(cfg.method.candidates)}, kept on validation" if m == "auto" else m
                if rank0:
                    print(f"== training {what} on {_data_name(cfg)}: {describe_simulation(splits.simulated)}; train "
                          f"{splits.train.n}, val {splits.val.n}, "
                          + ("no test split" if splits.test_is_validation else f"test {splits.test.n} instances")
                          + " ==", flush=True)
                for note in splits.notes:              # each note once, before training (rank 0 only)
                    if note not in said and rank0:
                        said.add(note)
                        print(f"note: {note}", flush=True)
                if cal:      # X+cal: its own run directory beside a plain X of the same invocation
                    results.append(run(replace(cfg, method=replace(cfg.method, calibrate=True)), method=base,
                                       resume=args.resume, splits=splits, run_name=m))
                else:
                    results.append(run(cfg, method=m, resume=args.resume, splits=splits))
                done.append(m)
    except Interrupted as e:
        left = methods[methods.index(current) + 1:] if current in methods else []
        current = current or "?"
        if getattr(e, "candidate", None):
            current = f"{current} (candidate {e.candidate})"
        print(f"interrupted by {e} while training {current} at epoch {getattr(e, 'epoch', '?')}; the checkpoint of "
              f"each finished epoch is kept under {Path(cfg.output_dir)}; resume with --resume"
              + (f" (not yet run: {', '.join(left)})" if left else ""), file=sys.stderr)
        return 128 + e.signum
    if not rank0:                                   # under torchrun only rank 0 prints and writes the summary
        return 0
    _print_tables(results, said=said)
    out = Path(cfg.output_dir)
    summary = out / "summary.json"
    if summary.exists():           # an earlier invocation's summary is kept beside, as its runs are
        summary.replace(out / f"summary.prev-{time.strftime('%Y%m%d-%H%M%S')}.json")
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(summary)
    print(f"\nresults, logs (CSV, TensorBoard) and checkpoints under {out}/<method>/")
    return 0


def _short_flags(args) -> list[str]:
    """``--epochs / --lr / --data`` as the config overrides they stand for."""
    out = []
    if getattr(args, "epochs", None) is not None:
        out.append(f"train.epochs={args.epochs}")
    if getattr(args, "lr", None) is not None:
        out.append(f"train.lr={args.lr}")
    data = getattr(args, "data", None)
    if data:
        from .data.suite import SUITE
        if data == "uci_mfeat" or data in SUITE:
            out.append(f"data.dataset={data}")
        elif Path(data).is_dir():
            out += ["data.dataset=store", f"data.path={data}"]
        else:
            raise ValueError(f"--data {data}: neither a feature-store directory nor a dataset (uci_mfeat, "
                             f"{', '.join(SUITE)})")
    return out


def cmd_config(args) -> int:
    """``calmrl config show``: the resolved configuration (defaults, --config, --set) as YAML; with
    ``--keys`` every key with its default and help."""
    from .train.config import config_reference
    from .train.results import to_yaml

    if args.keys or args.objectives:
        if args.keys:
            table = config_reference()
        else:
            from .objectives import registry_table
            table = registry_table()
        if args.write:
            _replace_table(Path(args.write), table)
            print(f"wrote the table into {args.write}")
        else:
            print(table)
        return 0
    if args.write:
        raise ValueError("--write goes with --keys or --objectives")
    cfg = _load_cfg(args.config, args.set)
    from .train.config import config_to_dict
    print(to_yaml(config_to_dict(cfg)), end="")
    return 0


def _replace_table(page: Path, table: str) -> None:
    """Put ``table`` in place of the Markdown table in ``page`` that has its header line (a
    generated page: the text around the table is kept), atomically."""
    text = page.read_text()
    header = table.splitlines()[0]
    start = text.find(header)
    if start < 0:
        raise ValueError(f"{page} has no table with the header {header!r} to replace")
    lines = text[start:].split("\n")
    n = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    end = start + len("\n".join(lines[:n]))
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(text[:start] + table + text[end:])
    tmp.replace(page)


def _data_name(cfg) -> str:
    d = cfg.data
    return {"store": f"store {d.path}", "tables": f"tables {list(d.tables)}"}.get(d.dataset, d.dataset)


def _resolve_checkpoint(path: str) -> str:
    """A checkpoint file as given, or a run directory -> the model it keeps (``kept.ckpt`` where
    a guard or auto chose one, else ``last.ckpt``), said in a note; a ``last.ckpt`` given while a
    different kept model lies beside it is used as asked, with a note."""
    from .model.checkpoint import kept_checkpoint

    p = Path(path)
    if p.is_dir():
        ck = kept_checkpoint(p)
        if not ck.exists() and (p / "candidates").is_dir():
            cands = sorted(c.name for c in (p / "candidates").iterdir() if (c / "checkpoints").is_dir())
            raise ValueError(f"{p} is an auto run that has kept no model yet (unfinished); resume it with --resume, "
                             f"or give one candidate's run directory: {', '.join(str(p / 'candidates' / c) for c in cands[:4])}"
                             + (", ..." if len(cands) > 4 else ""))
        if not ck.exists():
            raise ValueError(f"{p} holds no checkpoint (looked for {ck}); give a .ckpt file or a run directory")
        print(f"note: using {ck} ({'the model the run kept' if ck.name == 'kept.ckpt' else 'its last checkpoint'})",
              file=sys.stderr)
        return str(ck)
    kept = p.with_name("kept.ckpt")
    if p.name == "last.ckpt" and kept.exists():
        import filecmp
        if not filecmp.cmp(p, kept, shallow=False):
            print(f"note: {kept} beside it holds the model this run kept (the guard's choice); using {p} as asked",
                  file=sys.stderr)
    return str(p)


def _say_if_unfinished(ckpt: dict, cfg, path) -> None:
    """A checkpoint of a run that stopped before its last epoch (interrupted, or a candidate auto
    left behind at a rung) is used as asked, saying which epoch it holds."""
    epoch = ckpt.get("epoch")
    if epoch is not None and int(epoch) + 1 < cfg.train.epochs:
        print(f"note: {path} is unfinished: it holds epoch {int(epoch) + 1} of {cfg.train.epochs} (an interrupted "
              "run, or a candidate auto stopped at a rung)", file=sys.stderr)


def _load_run(ckpt_path: str, with_data: bool = True):
    from .data.fingerprint import compare
    from .model.checkpoint import load_checkpoint, model_from_loaded
    from .train.splits import prepare_data

    ckpt_path = _resolve_checkpoint(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    cfg, model = model_from_loaded(ckpt, ckpt_path)
    model.checkpoint_path = str(ckpt_path)
    _say_if_unfinished(ckpt, cfg, ckpt_path)
    if with_data:
        cfg = _data_paths_from_training(cfg, ckpt.get("calmrl_cwd"), ckpt_path)
    splits = prepare_data(cfg) if with_data else None
    if splits is not None and ckpt.get("calmrl_fingerprint"):
        diff = compare(ckpt["calmrl_fingerprint"], splits.fingerprint)
        if diff:
            raise ValueError(f"the data at {_data_name(cfg)} is not what {ckpt_path} was trained on "
                             f"({'; '.join(diff)}); its test split cannot be rebuilt: evaluate new data with --store")
    return cfg, splits, model


def _data_paths_from_training(cfg, cwd_then: str | None, ckpt_path):
    """The run's data paths, read as training read them: a relative ``data.path`` or table
    path is relative to the directory training ran in (kept in the checkpoint); where that
    directory is known and the path is not found from here, it is taken from there, with a
    note; where it is found nowhere, one line names both places."""
    from .train.config import apply_overrides

    here = Path.cwd()
    then = Path(cwd_then) if cwd_then else None
    sets = []

    def resolve(p: str, key: str):
        q = Path(p).expanduser()
        if not p or q.is_absolute() or q.exists():
            return None
        if then is not None and (then / q).exists():
            return str(then / q)
        raise ValueError(f"{key} '{p}' of {ckpt_path} is relative to the directory training ran in"
                         + (f" ({then})" if then else "") + f" and is found neither there nor here ({here}); "
                         "run eval from that directory, or evaluate a store with --store PATH")

    if cfg.data.dataset == "store" and (p := resolve(cfg.data.path, "data.path")):
        sets.append(f"data.path={p}")
    if cfg.data.dataset == "tables" and cfg.data.tables:
        tables = {k: resolve(v, f"data.tables.{k}") or v for k, v in cfg.data.tables.items()}
        if tables != cfg.data.tables:
            sets.append("data.tables={" + ", ".join(f"{k}: '{v}'" for k, v in tables.items()) + "}")
    if not sets:
        return cfg
    print(f"note: the run's relative data paths read from the directory training ran in ({then})")
    return apply_overrides(cfg, sets)


def _store_for_model(store: str, names: list[str] | None, partial_views: str, columns: dict | None = None):
    """A feature store, checked: exactly the model's modalities ``names`` in the model's order
    (any store when ``None``), partial views resolved by ``partial_views``. Returns ``(data,
    partial-view report)``."""
    from .data import FeatureStore

    data = FeatureStore(store).read(validate=False, inputs_only=True)
    if names is not None:
        if sorted(data.names) != sorted(names):
            raise ValueError(f"store modalities {data.names} differ from the model's {names}")
        data = data.select(names)
    from .data.tables import check_columns
    check_columns(columns, data, f"store {store}")
    data, report = data.resolve_partial_views(partial_views)
    return data.validate(), report


def _store_split(store: str, model, cfg):
    """A new feature store as a test split: the model's modalities, standardised with the
    training split's statistics saved in the checkpoint."""
    from .train.splits import Splits

    data, _ = _store_for_model(store, model.names, cfg.data.partial_views, getattr(model, "columns", None))
    if model.standardization is not None:
        data, _ = data.standardize(model.standardization)
    return Splits(data, data, data, data, list(model.names), data.dims, model.standardization)


def cmd_eval(args) -> int:
    import time

    from .train.evaluate import embed_data, evaluate_embeddings
    from .train.config import OWN_SIMILARITY
    from .train.evaluate import evaluate_model

    t0 = time.time()
    cfg, splits, model = _load_run(args.checkpoint, with_data=not args.store)
    if args.store:
        sp = _store_split(args.store, model, cfg)
        A, mask = embed_data(model.encoder, sp.test)
        e = cfg.eval
        res = evaluate_embeddings(A, sp.names, mask, ks=tuple(e.ks), chunk_size=e.chunk_size, backend=e.backend,
                                  similarity=OWN_SIMILARITY.get(cfg.method.name, "cosine"),
                                  gallery_size=e.gallery_size, galleries=e.galleries)
        res["anchor"] = {"shift_observed_deg": float("nan"), "shift_calibrated_deg": float("nan")}
        res["notes"] = [f"evaluated on every instance of {args.store} ({sp.test.n}); anchor shift needs "
                        "training data and is not computed"]
    else:
        res = evaluate_model(model, splits, cfg)
        res["data_notes"] = list(splits.notes)       # as train says them (e.g. a split evaluated on a sample)
        if splits.test_is_validation:                # data.test_fraction=0: said as train says it
            res.update(evaluated_on="validation", n_val=splits.val.n, n_test=0)
    from . import objectives
    label = objectives.method_label(cfg.method.name, cfg.method.calibrate)
    resolved = Path(model.checkpoint_path)
    if resolved.parent.parent.name == "auto" and resolved.name == "kept.ckpt":
        res["chosen_method"], label = label, "auto"          # named as train named it
    res.update({"method": label, "train_seconds": float("nan"), "eval_seconds": time.time() - t0})
    _print_tables([res], eval_only=True)
    if args.out:
        _write_out(args.out, json.dumps(res, indent=2))
    return 0


def cmd_impute(args) -> int:
    import numpy as np

    from .data import FeatureStore, MultiViewData
    from .train.impute import impute_embeddings, impute_inputs

    if args.space == "embedding" and not args.checkpoint:
        raise ValueError("--space embedding needs --checkpoint (the trained encoders and calibrator)")
    src, dst = Path(args.store).resolve(), Path(args.out).resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"--out {args.out} would overwrite the input store {args.store}; imputations are written to "
                         "a new store, never over the input: choose another --out")
    if dst.exists() and any(dst.iterdir()):
        meta = dst / "meta.json"
        if not (meta.exists() and "imputed_from" in json.loads(meta.read_text())):
            raise ValueError(f"--out {args.out} exists and is not an earlier imputation output; choose a new "
                             "directory (nothing was written)")
    model = cfg = None
    if args.checkpoint:
        cfg, _, model = _load_run(args.checkpoint, with_data=False)
    data, report = _store_for_model(args.store, model.names if model is not None else None, args.partial_views,
                                    getattr(model, "columns", None))
    if report:
        print(f"note: partial views treated per --partial-views={args.partial_views}: {report}")
    stats = model.standardization if model is not None else None
    if stats is not None or args.space == "input":
        std, stats = data.standardize(stats)      # the training split's statistics, or the store's own
    else:
        std = data
    if args.space == "embedding":
        values, mask, conf = impute_embeddings(model, std, em_iters=cfg.calibrator.em_iters * 3)
        views = [values[:, m] for m in range(values.shape[1])]
    else:
        views, mask, conf = impute_inputs(std, stats, args.latent_dim, args.em_iters, args.noise_floor_rel)
    out = MultiViewData(views, data.names, np.ones_like(data.mask), data.ids, data.labels,
                        {"imputed_from": str(args.store), "space": args.space})
    FeatureStore.write(args.out, out, extra={"observed_mask": data.mask, "confidence": conf})
    n_missing = int((~mask).sum())
    print(f"imputed {n_missing} missing cells of {data.n} instances in the {args.space} space into {args.out} "
          f"(mean confidence of imputed cells {float(conf[~mask].mean()) if n_missing else 1.0:.3f})")
    return 0


def cmd_export(args) -> int:
    from .model.export import export_model

    cfg, _, model = _load_run(args.checkpoint, with_data=False)
    out = export_model(model.encoder, model.calibrator, cfg, model.dims, args.out, model.standardization,
                       extra={"columns": getattr(model, "columns", None)})
    print(f"exported encoders and calibrator to {out}/model.safetensors (+ config.json)")
    return 0


def cmd_calibrate(args) -> int:
    import yaml

    from .train.calibrate import calibrate_checkpoint

    out, summary = calibrate_checkpoint(_resolve_checkpoint(args.checkpoint), args.out, em_iters=args.em_iters)
    print(f"fitted the calibrator on {summary['instances']} training embeddings ({summary['used']}) in "
          f"{summary['em_iterations']} EM iterations (mean log-likelihood {summary['final_loglik']:.2f}); "
          f"parameters and running statistics written to {out}")
    cfg = summary["config"]
    conf = out.with_suffix(".yaml")           # the pretrained run's settings (its data among them)
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    root = Path(cfg.get("output_dir") or "runs")
    print(f"continue on the incomplete data as the suite's absorb recipe does (step schedule, no warm-up, a quarter "
          f"of the learning rate), e.g.:\n  calmrl train --config {conf} --method calmrl --set train.init_from={out} "
          f"--set calibrator.schedule=step --set calibrator.warmup_epochs=0 --set train.lr={cfg['train']['lr'] / 4:g} "
          f"--set data.missing.kind=none --output-dir {root.parent / (root.name + '-absorb')}\n(point data.* at the "
          "incomplete data: the config holds the pretraining data)")
    return 0


def cmd_bench(args) -> int:
    from .experiments import bench

    cfg = _load_cfg(args.config, args.set)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    if args.suite:
        return _bench_suite(args, cfg, seeds)
    cmd = "calmrl bench" + (" --quick" if args.quick else "") + "".join(f" --set {s}" for s in args.set)
    path = bench(cfg, Path(args.out), quick=args.quick, seeds=seeds, command=cmd)
    print(f"report written to {path}")
    return 0


def _bench_suite(args, cfg, seeds) -> int:
    import platform
    import subprocess
    import time

    from .data.suite import SUITE
    from .experiments import SUITE_FULL, SUITE_QUICK, run_suite, write_suite_report
    from .experiments.suite import SETTINGS, VARIANTS

    plan = json.loads(json.dumps(SUITE_QUICK if args.quick else SUITE_FULL))
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # noqa: E731
    if args.datasets:
        plan["datasets"] = split(args.datasets)
    if args.settings:
        plan["settings"] = split(args.settings)
    if args.variants:
        chosen = split(args.variants)
        from .experiments.suite.plan import MAIN as main
        plan["main"] = [v for v in chosen if v.removesuffix("+shared") in main]
        plan["extra"] = [v for v in chosen if v.removesuffix("+shared") not in main]
    if seeds:
        plan["main_seeds"] = seeds
        plan["extra_seeds"] = [s for s in plan["extra_seeds"] if s in seeds] or seeds[:3]
    if args.epochs:
        plan["epochs"] = args.epochs
    bad = ([f"dataset '{d}'" for d in plan["datasets"] if d not in SUITE and d != "uci_mfeat"]
           + [f"setting '{s}'" for s in plan["settings"] if s not in SETTINGS]
           + [f"variant '{v}'" for v in plan["main"] + plan["extra"] if v.removesuffix("+shared") not in VARIANTS])
    if bad:
        raise ValueError(f"unknown {', '.join(bad)}; datasets: {', '.join([*SUITE, 'uci_mfeat'])}; settings: "
                         f"{', '.join(SETTINGS)}; variants: {', '.join(VARIANTS)}")
    out = Path("reports/suite" if args.out == "reports/bench" else args.out)
    t0 = time.time()
    records = run_suite(cfg, out, plan=plan, jobs=args.jobs)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except Exception:
        commit = "unknown"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.jobs} worker(s) of 1 thread"
    cmd = "calmrl bench --suite" + " ".join(a for a in [""] + sys.argv[3:] if a != "--suite")
    path = write_suite_report(records, out, plan, command=cmd.strip(), commit=commit, machine=machine,
                              seconds=time.time() - t0)
    print(f"suite report written to {path}")
    return 0


def cmd_data(args) -> int:
    from .data.suite import SUITE, load, store_path

    if args.action == "import":
        return _data_import(args)
    names = [x for x in (args.names or "").split(",") if x] or list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise ValueError(f"unknown suite dataset(s) {unknown}; valid: {', '.join(SUITE)}")
    for n in names:
        if args.action == "list":
            there = (store_path(n) / "meta.json").exists()
            print(f"{n:8s} {'cached' if there else 'not built'}  {SUITE[n].source}; licence: {SUITE[n].licence}")
            continue
        d = load(n, rebuild=args.rebuild)
        print(f"{n}: {d.n} instances; views " + ", ".join(f"{k} ({w}, {100 * d.mask[:, j].mean():.0f}% observed)"
                                                         for j, (k, w) in enumerate(zip(d.names, d.dims)))
              + f"; {store_path(n)}")
    return 0


def _data_import(args) -> int:
    """``calmrl data import --table image=img.parquet --table text=txt.csv --out store``: the
    tables joined on their ids exactly as ``data.dataset=tables`` reads them, written as a
    feature store for ``eval --store``, ``impute`` and ``retrieve``."""
    from .data import FeatureStore, load_tables

    if not args.table or not args.out:
        raise ValueError("data import needs --table MODALITY=FILE (one per modality) and --out DIR")
    bad = [t for t in args.table if "=" not in t]
    if bad:
        raise ValueError(f"--table {bad[0]!r} must look like MODALITY=FILE")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new directory (nothing was written)")
    tables = dict(t.split("=", 1) for t in args.table)
    data = load_tables(tables, args.id_column, args.label_column)
    if args.partial_views != "fill":       # fill needs the training split's means: it happens at training
        data, report = data.resolve_partial_views(args.partial_views)
        if report:
            print(f"note: rows with some NaN features treated as missing (--partial-views missing): {report}")
    for note in data.meta.get("notes", []):
        print(f"note: {note}")
    data.meta.pop("notes", None)
    FeatureStore.write(out, data, replace=False)      # a store another import wrote meanwhile is kept
    print(f"wrote {data.n} instances, modalities " + ", ".join(
        f"{n} ({w} features, {100 * data.mask[:, m].mean():.0f}% observed)" for m, (n, w) in
        enumerate(zip(data.names, data.dims))) + (f", labels from '{args.label_column}'" if args.label_column else "")
        + f" to {out}")
    return 0


def cmd_embed(args) -> int:
    from .train.embed import embed_jsonl

    split = lambda s: [x for x in (s or "").split(",") if x]  # noqa: E731
    store = embed_jsonl(args.input, args.out, text_fields=split(args.text_fields),
                        vector_fields=split(args.vector_fields), id_field=args.id_field,
                        label_field=args.label_field, batch_size=args.batch_size, model_path=args.model)
    data = store.read()
    print(f"wrote {data.n} instances, modalities {dict(zip(data.names, data.dims))}, "
          f"observed cells {int(data.mask.sum())}/{data.mask.size} to {args.out}")
    return 0


def _write_out(path, text: str) -> None:
    """``--out`` written whole or not at all: a temporary file of this process's own beside it,
    renamed into place; on a failure (a full disk) nothing is left and the error names the path."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {'no space left on device' if e.errno == 28 else e.strerror or e}; "
                      "nothing was written there (an earlier file of that name is unchanged)") from None


def cmd_retrieve(args) -> int:
    from .data import FeatureStore
    from .inference import CalMRLModel, retrieve_stores

    model = CalMRLModel.load(args.model)
    # stores of inputs only: an embedding-space store (impute --space embedding) is refused, as eval refuses it
    q, g = FeatureStore(args.query).read(inputs_only=True), FeatureStore(args.gallery).read(inputs_only=True)
    from .data.tables import check_columns
    check_columns(model.columns, q, f"query store {args.query}")
    check_columns(model.columns, g, f"gallery store {args.gallery}")
    hits, rows, empty = retrieve_stores(model, q, g, args.gallery_modality, args.k,
                                        query_name=f"query store {args.query}",
                                        gallery_name=f"gallery store {args.gallery}")
    k = min(args.k, len(rows))
    _write_out(args.out, "".join(json.dumps({"query_id": q.ids[i].item() if hasattr(q.ids[i], "item") else q.ids[i],
                                             "gallery_ids": [g.ids[rows[t]].item() for t in top],
                                             "scores": [round(x, 6) for x in sc]}) + "\n" for i, top, sc in hits))
    print(f"wrote top-{k} {args.gallery_modality} items for {q.n} queries to {args.out}"
          + (f" (--k {args.k} asked; the gallery holds {len(rows)} items)" if k < args.k else "")
          + (f"; {empty} queries observe no modality and have no items" if empty else ""))
    return 0


def cmd_verify(args) -> int:
    """Check the checksums of what calmrl wrote; exit 2 if anything is damaged."""
    from .model.verify import verify_path

    rows = verify_path(args.path)
    for f, status in rows:
        print(status if status.startswith(("damaged", "unverified:")) else f"{status}: {f}")
    bad = sum(s.startswith("damaged") for _, s in rows)
    unver = sum(s.startswith("unverified") for _, s in rows)
    ok = len(rows) - bad - unver
    print(f"{ok} of {len(rows)} file(s) verified" + (f"; {bad} damaged" if bad else "")
          + (f"; {unver} unverified (no checksum)" if unver else ""))
    return 2 if bad or unver else 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one to show (not None / [] / False, not already said)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if d is None or d is False or d == [] or d is argparse.SUPPRESS or "default" in h:
            return h
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An epilog may be a function, called when the help is shown: ``train``'s lists the
    registry's objectives, which imports torch; ``calmrl --help`` and every parse need not."""

    def format_help(self):
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _train_epilog() -> str:
    from . import objectives

    return ("methods: auto (the default: a search over method.candidates, the best on validation kept), "
            + ", ".join(objectives.names()) + "; 'X+cal' in method.candidates plugs calibration into "
            + ", ".join(o for o in objectives.names() if objectives.get(o).calibratable)
            + ". Most used keys (--set KEY=VALUE): train.epochs, train.lr, train.batch_size, train.seed, "
            "model.embed_dim, method.candidates, method.search (halving | exhaustive), model.shared_encoders, "
            "data.missing.kind; every key with its help and default: calmrl config show --keys (docs/config.md)")


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    if list(sys.argv[1:] if argv is None else argv) in (["--version"], ["-V"]):    # without importing torch
        print(f"calmrl {__version__}")
        return 0

    fmt = _DefaultsFormatter
    p = _Parser(prog="calmrl", description="Multimodal representation learning with missing "
                                "modalities, calibrated by a shared-latent model (CalMRL).", epilog=(
                                    "start here: calmrl train (the bundled UCI demo); your own tables: calmrl data "
                                    "import --table image=img.csv --table text=txt.csv --out store, then calmrl "
                                    "train --data store. Each command has --help."))
    p.add_argument("--version", action="version", version=f"calmrl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    t = sub.add_parser("train", help="train one or several methods and print the retrieval table", parents=[common],
                       formatter_class=fmt, epilog=_train_epilog)
    t.add_argument("--output-dir", default=None, help="where to write (output_dir; default runs/<dataset>)")
    t.add_argument("--config", default=None, help="YAML config (default: the bundled UCI Multiple Features one)")
    t.add_argument("--method", default=None, help="comma-separated methods, e.g. auto,calmrl,pmrl-drop,oracle "
                   "(default: method.name, auto)")
    t.add_argument("--data", default=None, metavar="STORE_OR_DATASET", help="a feature-store directory (from "
                   "calmrl data import / embed) or a dataset name (uci_mfeat, a suite dataset); default: the config's")
    t.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's, 40)")
    t.add_argument("--lr", type=float, default=None, help="train.lr (default: the config's, 2e-3)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--resume", action="store_true", help="continue from <output_dir>/<method>/checkpoints/last.ckpt")
    t.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (train.threads; 0 = auto)")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint on its test split, or on a new feature store",
                       parents=[common], formatter_class=fmt)
    e.add_argument("--checkpoint", required=True, help="a run directory (its kept model) or a .ckpt file")
    e.add_argument("--store", default=None, help="evaluate on every instance of this feature store instead "
                   "(standardised with the training split's statistics from the checkpoint)")
    e.add_argument("--out", default=None, help="write the metrics as JSON here")
    e.set_defaults(fn=cmd_eval)
    i = sub.add_parser("impute", help="fill the missing modalities of a feature store (embedding or input space)",
                       parents=[common], formatter_class=fmt)
    i.add_argument("--checkpoint", default=None, help="a trained checkpoint (needed for --space embedding; for "
                   "--space input it supplies the training split's standardisation)")
    i.add_argument("--store", required=True, help="input feature-store directory")
    i.add_argument("--out", required=True, help="output feature-store directory")
    i.add_argument("--space", choices=("embedding", "input"), default="embedding",
                   help="embedding: the calibrator's imputations in the shared space; input: a shared-latent "
                        "model fitted by EM on the input features, imputations in the input units")
    i.add_argument("--latent-dim", type=int, default=0, help="--space input: latent size k (0 = chosen by "
                   "held-out log-likelihood among 1, 2, 4, ..., 32)")
    i.add_argument("--noise-floor-rel", type=float, default=0.01, help="--space input: each view's noise variance "
                   "kept >= this share of its feature variance")
    i.add_argument("--em-iters", type=int, default=50, help="--space input: EM iterations")
    i.add_argument("--partial-views", choices=("error", "missing", "fill"), default="error",
                   help="rows of a view with some NaN features: refuse naming them, treat as missing, or mean-fill "
                        "(the same default in every command)")
    i.set_defaults(fn=cmd_impute)
    b = sub.add_parser("bench", help="sweep missing rates x methods x seeds; write report.md and plots", parents=[common], formatter_class=fmt)
    b.add_argument("--config", default=None)
    b.add_argument("--quick", action="store_true", help="one setting, three methods, one seed (about 1 min on 2 cores)")
    b.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    b.add_argument("--out", default="reports/bench")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (train.threads; 0 = auto)")
    b.add_argument("--suite", action="store_true", help="every suite dataset x setting x variant x seed (resumable; "
                   "with --quick: one small dataset, two settings, two seeds, 3 epochs)")
    b.add_argument("--datasets", default="", help="--suite: comma-separated datasets (default: all)")
    b.add_argument("--settings", default="", help="--suite: comma-separated settings (default: all)")
    b.add_argument("--variants", default="", help="--suite: comma-separated variants (default: all)")
    b.add_argument("--epochs", type=int, default=0, help="--suite: epochs per run (default: the plan's)")
    b.add_argument("--jobs", type=int, default=1, help="--suite: runs in parallel, one thread each")
    b.set_defaults(fn=cmd_bench)
    dt = sub.add_parser("data", help="import your tables into a feature store (data import), or list / fetch the "
                        "benchmark suite's datasets", parents=[common], formatter_class=fmt,
                        description="calmrl data import: per-modality CSV / Parquet tables joined on an id column "
                                    "-> a feature store; calmrl data list / fetch: the benchmark suite's datasets",
                        epilog="calmrl data import --table image=img.csv --table text=txt.parquet --label-column "
                               "label --out my_store")
    dt.add_argument("action", choices=("list", "fetch", "import"),
                    help="list / fetch: the suite's datasets; import: per-modality tables -> a feature store")
    dt.add_argument("names", nargs="?", default="", help="comma-separated (default: all)")
    dt.add_argument("--rebuild", action="store_true", help="build again even if cached")
    dt.add_argument("--table", action="append", default=[], metavar="MODALITY=FILE",
                    help="import: a CSV / Parquet table of one modality (repeat per modality)")
    dt.add_argument("--id-column", default="id", help="import: the column holding each row's instance id, in every "
                    "table (rows of different tables with one id are one instance)")
    dt.add_argument("--label-column", default="", help="import: a column holding class labels (never a feature)")
    dt.add_argument("--out", default=None, help="import: the feature-store directory to write (must not exist)")
    dt.add_argument("--partial-views", choices=("error", "missing", "fill"), default="error",
                    help="import: a row with some NaN features: refuse naming it, treat that view as missing in "
                         "the row, or keep it for training to fill with the training split's means (data."
                         "partial_views; the same default in every command)")
    dt.set_defaults(fn=cmd_data)
    em = sub.add_parser("embed", help="raw inputs (JSON lines) -> feature store; resumable", parents=[common], formatter_class=fmt)
    em.add_argument("--input", required=True, help="JSON lines, one instance per line")
    em.add_argument("--out", required=True, help="feature-store directory to write")
    em.add_argument("--text-fields", default="", help="comma-separated text fields (embedded by a sentence model)")
    em.add_argument("--vector-fields", default="", help="comma-separated numeric-vector fields (stored as is)")
    em.add_argument("--id-field", default="id")
    em.add_argument("--label-field", default=None)
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--model", default=None, help="sentence-transformers model directory (default: bundled MiniLM)")
    em.set_defaults(fn=cmd_embed)
    r = sub.add_parser("retrieve", help="top-k gallery items for queries with any subset of modalities", parents=[common], formatter_class=fmt)
    r.add_argument("--model", required=True, help="directory written by calmrl export")
    r.add_argument("--query", required=True, help="feature store of queries (missing cells allowed)")
    r.add_argument("--gallery", required=True, help="feature store of the gallery")
    r.add_argument("--gallery-modality", required=True, help="the modality of the gallery items to rank")
    r.add_argument("--k", type=int, default=10, help="items returned per query (capped at the gallery's size)")
    r.add_argument("--out", required=True, help="JSON lines: query_id, gallery_ids, scores")
    r.set_defaults(fn=cmd_retrieve)
    c = sub.add_parser("calibrate", help="fit the calibrator of a checkpoint by EM on its training embeddings "
                       "(absorb workflow: pretrain complete, calibrate, continue incomplete)", parents=[common], formatter_class=fmt)
    c.add_argument("--checkpoint", required=True, help="a run directory (its kept model) or a .ckpt file")
    c.add_argument("--out", default=None, help="checkpoint to write (default: calibrated.ckpt beside the input)")
    c.add_argument("--em-iters", type=int, default=200, help="EM iterations at most (stops at convergence)")
    c.set_defaults(fn=cmd_calibrate)
    x = sub.add_parser("export", help="write model.safetensors + config.json for inference", parents=[common], formatter_class=fmt)
    x.add_argument("--checkpoint", required=True, help="a run directory (its kept model) or a .ckpt file")
    x.add_argument("--out", required=True, help="directory to write model.safetensors and config.json into")
    x.set_defaults(fn=cmd_export)
    v = sub.add_parser("verify", help="check the SHA-256 checksums of a run directory, checkpoint, feature store "
                       "or exported model", parents=[common], formatter_class=fmt)
    v.add_argument("path", help="a run or output directory, a .ckpt file, a feature store or an exported model")
    v.set_defaults(fn=cmd_verify)
    cf = sub.add_parser("config", help="print the resolved configuration (or every key with its help)",
                        parents=[common], formatter_class=fmt)
    cf.add_argument("action", choices=("show",), help="show: print it")
    cf.add_argument("--config", default=None, help="YAML config (default: the bundled UCI demo's)")
    cf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    cf.add_argument("--keys", action="store_true", help="every key with its type, default and help instead")
    cf.add_argument("--objectives", action="store_true",
                    help="every registered objective (temperature, calibration, guard, own settings) instead")
    cf.add_argument("--write", default=None, metavar="PAGE",
                    help="with --keys / --objectives: replace the table in this Markdown page (make docs)")
    cf.set_defaults(fn=cmd_config)
    args = p.parse_args(argv)
    if getattr(args, "fn", None) is None:       # `calmrl` alone: the help, not an error
        p.print_help()
        return 0
    import logging

    logging.basicConfig(format="calmrl: %(message)s", stream=sys.stderr)
    logging.getLogger("calmrl").setLevel(logging.INFO)
    if getattr(args, "debug", False):
        return args.fn(args)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:  # one line for the user; --debug shows the traceback
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        if not _is_library_error(err):
            print(f"({type(err).__name__}; rerun with --debug for the traceback)", file=sys.stderr)
        return 2


def _is_library_error(err: BaseException) -> bool:
    """Errors the library raises on purpose, with a message meant for the user."""
    from .model.checkpoint import CheckpointError
    from .train.outdir import RunLockedError
    if isinstance(err, RuntimeError) and str(err).startswith("auto: every candidate failed"):
        return True
    return isinstance(err, (ValueError, OSError, CheckpointError, RunLockedError, FloatingPointError))


if __name__ == "__main__":
    sys.exit(main())
