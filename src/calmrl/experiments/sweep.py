"""``calmrl bench``: the paper's claims measured side by side, with a report and plots.

Sweep: missingness settings (MCAR rates and a paired-subset pattern) x methods x seeds on
one dataset, with the same encoders, budget and hyperparameters for every method. The
oracle does not depend on the missingness, so it is trained once per seed. Writes
``report.md``, ``records.json`` and PNG plots into the report folder.

A second part fits the calibrator alone on synthetic data with known parameters and
records the EM log-likelihood per iteration against the likelihood of the true parameters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..core import SharedLatentCalibrator
from ..data import mcar_mask, synthetic_multiview
from ..train import Config, run

__all__ = ["run_sweep", "em_synthetic", "write_report", "bench", "result_record"]

FULL = {"rates": [0.0, 0.3, 0.5, 0.7], "paired": True,
        "methods": ["calmrl", "pmrl-drop", "pmrl-meanfill", "pmrl-truefill", "gram", "triangle", "pairwise-infonce",
                    "anchor-infonce", "oracle"], "seeds": [0, 1, 2]}
QUICK = {"rates": [0.3, 0.5], "paired": False, "methods": ["calmrl", "pmrl-drop", "oracle"], "seeds": [0]}


def _settings(cfg: Config, rates, paired: bool) -> list[tuple[str, float | None, Config]]:
    out = []
    for r in rates:
        miss = dataclasses.replace(cfg.data.missing, kind="mcar" if r > 0 else "none", rate=float(r))
        out.append((f"mcar {r:.1f}", float(r), dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, missing=miss))))
    if paired:
        names = cfg.data.views or ["fourier", "profile", "karhunen", "pixel", "zernike", "morphological"]
        hub = names[3] if len(names) > 3 else names[0]
        subsets = [[hub, n] for n in names if n != hub]
        miss = dataclasses.replace(cfg.data.missing, kind="paired", subsets=subsets, complete_fraction=0.1)
        out.append(("paired", None, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, missing=miss))))
    return out


def result_record(res: dict) -> dict:
    """The figures of one run's ``results.json`` that the reports tabulate."""
    an = res["anchor"]
    return {
        "R@1": res["pairs"]["average"]["R@1"], "R@5": res["pairs"]["average"]["R@5"],
        "own_R@1": res.get("pairs_own", res["pairs"])["average"]["R@1"],
        "MedR": res["pairs"]["average"]["MedR"], "val_R@1": res["val_average"]["R@1"],
        "fused_R@1": res["fused"]["average"]["R@1"], "knn": res.get("knn_accuracy", float("nan")),
        "shift_observed": an["shift_observed_deg"], "shift_calibrated": an["shift_calibrated_deg"],
        "imputation_cosine": an.get("imputation_cosine", float("nan")),
        "imputation_identification": an.get("imputation_identification", float("nan")),
        "fallback_identification": an.get("fallback_identification", float("nan")),
        "missing_fraction": res.get("missing_fraction_train", 0.0),
        "loss_history": res.get("loss_history", []), "em_history": res.get("em_history", []),
        "gate_history": res.get("gate_history", []),
        "pairs_R@1": {k: v["R@1"] for k, v in res["pairs"].items() if k != "average"},
    }


def run_sweep(cfg: Config, *, rates, paired: bool, methods, seeds, out_dir: Path, epochs: int | None = None,
              log=print) -> list[dict]:
    """Train every (setting, method, seed); returns one record per run."""
    records = []
    oracle_cache: dict[int, dict] = {}
    for label, rate, scfg in _settings(cfg, rates, paired):
        for seed in seeds:
            for method in methods:
                rcfg = dataclasses.replace(scfg, train=dataclasses.replace(scfg.train, seed=seed, progress=False,
                                                                        epochs=epochs or scfg.train.epochs),
                                           output_dir=str(out_dir / "runs" / label.replace(" ", "_") / f"seed{seed}"))
                if method == "oracle" and seed in oracle_cache:
                    res = oracle_cache[seed]
                else:
                    t0 = time.time()
                    res = run(rcfg, method=method)
                    log(f"  {label:9s} seed {seed} {method:15s} test R@1 {res['pairs']['average']['R@1']:6.2f} "
                        f"val R@1 {res['val_average']['R@1']:6.2f} ({time.time() - t0:.0f}s)")
                    if method == "oracle":
                        oracle_cache[seed] = res
                records.append({"setting": label, "rate": rate, "method": method, "seed": seed,
                                **result_record(res)})
    return records


def em_synthetic(*, n: int = 3000, dims=(32, 32, 32, 32), latent: int = 8, rate: float = 0.5, iters: int = 60,
                 seed: int = 0) -> dict:
    """EM on synthetic data with known ground truth: per-iteration mean log-likelihood, the
    likelihood under the true parameters, and imputation cosine of fitted vs true parameters."""
    data, truth = synthetic_multiview(n, dims, latent, noise=0.5, seed=seed)
    Z = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in data.views], 1)
    mask = torch.as_tensor(mcar_mask(n, len(dims), rate, min_observed=1, seed=seed + 1))
    M, D = len(dims), max(dims)
    true = SharedLatentCalibrator(M, D, latent, dtype=torch.float64)
    # the generator's latent has class structure (mean 0 over classes, not unit covariance):
    # whiten it so that the true model is expressed in the calibrator's N(0, I) convention.
    beta = truth["beta"].double()
    mean, cov = beta.mean(0), torch.cov(beta.T, correction=0)
    Lc = torch.linalg.cholesky(cov)
    true.W.copy_(torch.stack([W.double() @ Lc for W in truth["W"]]))
    true.mu.copy_(torch.stack([m.double() + W.double() @ mean for W, m in zip(truth["W"], truth["mu"])]))
    true.sigma2.fill_(truth["sigma2"])
    true.initialized.fill_(True)
    fit = SharedLatentCalibrator(M, D, latent, dtype=torch.float64).fit(Z, mask, n_iter=iters, tol=0.0)
    hidden = ~mask

    def cos(c):
        imp = c.impute(Z, mask).values
        return float(torch.nn.functional.cosine_similarity(imp, Z, dim=-1)[hidden].mean())

    return {"history": fit.history_, "true_loglik": true.score(Z, mask), "imputation_cosine_fit": cos(fit),
            "imputation_cosine_true": cos(true), "rate": rate, "n": n}


def continual_experiment(cfg: Config, out_dir: Path, *, seeds=(0,), epochs: int | None = None, log=print) -> list[dict]:
    """Phase 1: train calmrl on the first half of the training split, complete. Phase 2: add the
    second half, where every instance carries only 2 of the modalities (paired subsets), and
    continue from the phase-1 checkpoint with calmrl or pmrl-drop. Measures retrieval on the
    *earlier* data (phase-1 training instances, complete) and on the test split."""
    from ..train.evaluate import embed_data, retrieval_table
    from ..train.module import CalMRLModule
    from ..train.checkpoints import load_checkpoint
    from ..train.splits import prepare_data

    views = cfg.data.views or ["fourier", "profile", "karhunen", "pixel", "zernike", "morphological"]
    hub = views[3] if len(views) > 3 else views[0]
    subsets = [[hub, v] for v in views if v != hub]
    rows = []

    def earlier_r1(run_dir: Path, c: Config) -> float:
        c1 = dataclasses.replace(c, data=dataclasses.replace(c.data, train_part=[0, 2],
                                                              missing=dataclasses.replace(c.data.missing, kind="none")))
        sp = prepare_data(c1)
        model = CalMRLModule(c1, sp.dims, sp.names)
        model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"])
        A, _ = embed_data(model.encoder, sp.train)
        return retrieval_table(A[:300], sp.names)["average"]["R@1"]

    for seed in seeds:
        tr = dataclasses.replace(cfg.train, seed=seed, progress=False, epochs=epochs or cfg.train.epochs)
        c1 = dataclasses.replace(cfg, train=tr, output_dir=str(out_dir / "continual" / f"seed{seed}" / "phase1"),
                                 data=dataclasses.replace(cfg.data, train_part=[0, 2],
                                                          missing=dataclasses.replace(cfg.data.missing, kind="none")))
        r1 = run(c1, method="calmrl")
        ck = Path(c1.output_dir) / "calmrl" / "checkpoints" / "last.ckpt"
        before = earlier_r1(Path(c1.output_dir) / "calmrl", c1)
        row = {"seed": seed, "phase1_test_R@1": r1["pairs"]["average"]["R@1"], "phase1_earlier_R@1": before,
               "part_order": cfg.data.train_part_order}
        for method in ("calmrl", "pmrl-drop"):
            c2 = dataclasses.replace(
                cfg, output_dir=str(out_dir / "continual" / f"seed{seed}" / "phase2"),
                train=dataclasses.replace(tr, init_from=str(ck)),
                data=dataclasses.replace(cfg.data, train_part=[1, 2], missing=dataclasses.replace(
                    cfg.data.missing, kind="paired", subsets=subsets, complete_fraction=0.0)))
            r2 = run(c2, method=method)
            row[f"{method}_test_R@1"] = r2["pairs"]["average"]["R@1"]
            row[f"{method}_earlier_R@1"] = earlier_r1(Path(c2.output_dir) / method, c2)
        log(f"  continual seed {seed}: earlier-data R@1 after phase 1 {before:.2f}; after phase 2 calmrl "
            f"{row['calmrl_earlier_R@1']:.2f}, pmrl-drop {row['pmrl-drop_earlier_R@1']:.2f}")
        rows.append(row)
    return rows


def _ablations(d: int) -> dict[str, list[str]]:
    return {
        "calmrl (default)": [],
        "renormalised imputations": ["method.renormalize_imputed=true"],
        "gradients through imputations": ["method.impute_grad=true"],
        "confidence-weighted imputations": ["method.confidence_weighting=true"],
        "EM refit per epoch (10 iterations)": ["calibrator.schedule=epoch", "calibrator.em_iters=10"],
        "M-step after every batch": ["calibrator.schedule=step", "calibrator.m_step_every=1"],
        "stochastic EM, momentum 0.5": ["calibrator.schedule=step", "calibrator.momentum=0.5"],
        "calibrator frozen after warm-up": ["calibrator.schedule=frozen"],
        f"latent k = {max(1, d // 8)} (d/8)": [f"calibrator.latent_dim={max(1, d // 8)}"],
        f"latent k = {d} (d)": [f"calibrator.latent_dim={d}"],
        "no warm-up": ["calibrator.warmup_epochs=0"],
    }


def ablation(cfg: Config, out_dir: Path, *, seeds=(0,), rate: float = 0.5, log=print) -> list[dict]:
    """calmrl variants at one MCAR rate (validation and test R@1, anchor shift), next to pmrl-drop."""
    from ..train.config import apply_overrides

    rows = []
    variants = [("pmrl-drop (reference)", None)] + list(_ablations(cfg.model.embed_dim).items())
    for v, (name, sets) in enumerate(variants):
        for seed in seeds:
            run_dir = out_dir / "ablation" / f"variant{v}" / f"seed{seed}"
            c = apply_overrides(cfg, ["data.missing.kind=mcar", f"data.missing.rate={rate}", f"train.seed={seed}",
                                      "train.progress=false", f"output_dir={run_dir}"] + (sets or []))
            r = run(c, method="pmrl-drop" if sets is None else "calmrl")
            rows.append({"variant": name, "seed": seed, "val_R@1": r["val_average"]["R@1"],
                         "R@1": r["pairs"]["average"]["R@1"], "shift_observed": r["anchor"]["shift_observed_deg"],
                         "shift_calibrated": r["anchor"]["shift_calibrated_deg"],
                         "imputation_cosine": r["anchor"].get("imputation_cosine", float("nan"))})
        last = [x for x in rows if x["variant"] == name]
        log(f"  ablation {name:40s} val R@1 {np.mean([x['val_R@1'] for x in last]):6.2f}")
    return rows


def _agg(records, key, setting, method):
    v = [r[key] for r in records if r["setting"] == setting and r["method"] == method]
    return (float(np.mean(v)), float(np.std(v)), len(v)) if v else (float("nan"), float("nan"), 0)


def _plots(records, em, out: Path, methods) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    mcar = sorted({r["rate"] for r in records if r["rate"] is not None})
    for key, ylabel, fname, title in [
            ("R@1", "average cross-modal R@1 on test (%)", "r1_vs_missing.png",
             "Retrieval vs missing rate (UCI Multiple Features, mean ± std over seeds)"),
            ("shift_observed", "anchor shift, observed vs complete (deg)", "shift_vs_missing.png",
             "Anchor shift vs missing rate (training split, each method's own space)")]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            ms = [_agg(records, key, f"mcar {r:.1f}", m) for r in mcar]
            ax.errorbar(mcar, [a for a, _, _ in ms], yerr=[s for _, s, _ in ms], marker="o", capsize=3, label=m)
        if key == "shift_observed":
            ms = [_agg(records, "shift_calibrated", f"mcar {r:.1f}", "calmrl") for r in mcar]
            ax.errorbar(mcar, [a for a, _, _ in ms], yerr=[s for _, s, _ in ms], marker="s", ls="--", capsize=3,
                        color="black", label="calmrl, observed + imputed")
        ax.set_xlabel("fraction of training cells hidden (MCAR)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        files.append(fname)
    # EM log-likelihood per iteration
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(range(1, len(em["history"]) + 1), em["history"], marker=".", label="EM (fitted)")
    axes[0].axhline(em["true_loglik"], color="red", ls="--", label="true parameters")
    axes[0].set_xlabel("EM iteration")
    axes[0].set_ylabel("mean log-likelihood per instance")
    axes[0].set_title(f"Calibrator EM on synthetic data ({int(em['rate'] * 100)}% cells missing)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    hist = [r for r in records if r["method"] == "calmrl" and r["em_history"]]
    hist = [r for r in hist if r["setting"] == "mcar 0.5"] or hist
    if hist:
        h = hist[0]["em_history"]
        per_epoch = len({e for e, _ in h}) == len(h)          # step schedule: one value per epoch
        axes[1].plot([e + 1 for e, _ in h] if per_epoch else range(1, len(h) + 1), [v for _, v in h], marker=".")
        what = "one value per epoch (step schedule: its batches, before their M-steps)" if per_epoch else "EM refits"
        axes[1].set_title(f"Calibrator during training (calmrl, {hist[0]['setting']}, seed {hist[0]['seed']};\n"
                          f"{what})", fontsize=10)
        axes[1].set_xlabel("epoch" if per_epoch else "EM iteration (all refits, in order)")
    axes[1].set_ylabel("mean log-likelihood per instance (embeddings)")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "em_loglik.png", dpi=120)
    plt.close(fig)
    files.append("em_loglik.png")
    # loss curves at the middle setting
    mid = "mcar 0.5" if any(r["setting"] == "mcar 0.5" for r in records) else records[0]["setting"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        rs = [r for r in records if r["setting"] == (mid if m != "oracle" else r["setting"]) and r["method"] == m]
        if rs and rs[0]["loss_history"]:
            ax.plot(range(1, len(rs[0]["loss_history"]) + 1), rs[0]["loss_history"], label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (each method's own objective)")
    ax.set_title(f"Training loss per epoch ({mid}, seed {records[0]['seed']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    files.append("loss_curves.png")
    return files


def write_report(records, em, out: Path, methods, *, command: str, commit: str, seconds: float,
                 continual: list[dict] | None = None, ablations: list[dict] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps({"records": records, "em_synthetic": em, "continual": continual,
                                                  "ablations": ablations}, indent=2))
    files = _plots(records, em, out, methods)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    L = ["# calmrl bench report", "", f"Produced by `{command}` at commit `{commit}` in {seconds / 60:.1f} min.",
         "Mean ± std over seeds; test split complete; hyperparameters identical for all methods.", ""]
    for key, title in [("R@1", "Average cross-modal R@1 (%) on the test split"),
                       ("own_R@1", "Average cross-modal R@1 (%) on the test split, scored by each method's own "
                                   "similarity (GRAM: two-vector volume; TRIANGLE: two-vertex area; others: cosine)"),
                       ("shift_observed", "Anchor shift (deg), observed columns vs complete, training split"),
                       ("imputation_identification", "Hidden training cells whose imputation (a calibrator refitted "
                                                     "in each method's space) retrieves its own instance (%)"),
                       ("val_R@1", "Average cross-modal R@1 (%) on the validation split")]:
        L += [f"## {title}", "", "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for m in methods:
            cells = []
            for s in settings:
                a, sd, n = _agg(records, key, s, m)
                cells.append(f"{a:.2f} ± {sd:.2f}" if n and np.isfinite(a) else "–")
            L.append(f"| {m} | " + " | ".join(cells) + " |")
        extra = {"shift_observed": ("shift_calibrated", "calmrl, observed + imputed"),
                 "imputation_identification": ("fallback_identification", "calmrl, observed-only fallback")}
        if key in extra and "calmrl" in methods:
            field_, label_ = extra[key]
            cells = []
            for s in settings:
                a, sd, n = _agg(records, field_, s, "calmrl")
                cells.append(f"{a:.2f} ± {sd:.2f}" if n and np.isfinite(a) else "–")
            L.append(f"| {label_} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["## Targets", ""]
    for s in settings:
        if s == "mcar 0.0":
            continue
        c, d, o = (_agg(records, "R@1", s, m)[0] for m in ("calmrl", "pmrl-drop", "oracle"))
        sc, sd_ = _agg(records, "shift_calibrated", s, "calmrl")[0], _agg(records, "shift_observed", s, "pmrl-drop")[0]
        if np.isfinite(c) and np.isfinite(d):
            frac = (c - d) / (o - d) if np.isfinite(o) and o != d else float("nan")
            L.append(f"- {s}: calmrl − pmrl-drop = {c - d:+.2f} R@1; fraction of the oracle gap recovered "
                     f"{frac:.2f} (target ≥ 0.5 at mcar 0.5: {'met' if frac >= 0.5 else 'not met'}); "
                     f"anchor shift calibrated {sc:.2f}° vs pmrl-drop {sd_:.2f}° "
                     f"({'below' if sc < sd_ else 'not below'}).")
    L += ["", "## EM on synthetic data with known parameters", "",
          f"{em['n']} instances, {int(em['rate'] * 100)}% of cells missing: final mean log-likelihood "
          f"{em['history'][-1]:.3f} (true parameters: {em['true_loglik']:.3f}); monotone: "
          f"{all(b >= a - 1e-9 for a, b in zip(em['history'], em['history'][1:]))}; imputation cosine of hidden "
          f"cells {em['imputation_cosine_fit']:.3f} (true parameters {em['imputation_cosine_true']:.3f}).", "",
          ""]
    if ablations:
        L += ["## Why calibration does (not) help here: calmrl variants at MCAR 0.5", "",
              "Selected on the **validation** split (test shown for completeness only). Imputation cosine: "
              "hidden training cells vs the calibrator's imputations in the method's own space.", "",
              "| variant | val R@1 | test R@1 | shift observed (deg) | shift calibrated (deg) | imputation cosine |",
              "|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["variant"] for r in ablations):
            rs = [r for r in ablations if r["variant"] == name]
            f = lambda k: f"{np.mean([r[k] for r in rs]):.2f} ± {np.std([r[k] for r in rs]):.2f}"  # noqa: E731
            L.append(f"| {name} | {f('val_R@1')} | {f('R@1')} | {f('shift_observed')} | {f('shift_calibrated')} | "
                     f"{f('imputation_cosine')} |")
        L.append("")
    if continual:
        L += ["## Continual training: adding a dataset with missing modalities", "",
              "Phase 1: calmrl on the first half of the training split, complete. Phase 2: continue from that "
              f"checkpoint on the second half (halves drawn {'by class: class-incremental' if continual[0].get('part_order') == 'class' else 'at random, stratified by class'}; `data.train_part_order`), where each instance carries only two modalities (a hub view paired "
              "with one other). Average R@1 (%) on the earlier data (300 phase-1 training instances, complete) and on "
              "the test split.", "",
              "| seed | earlier data after phase 1 | earlier, phase 2 calmrl | earlier, phase 2 pmrl-drop | "
              "test after phase 1 | test, phase 2 calmrl | test, phase 2 pmrl-drop |", "|---|---|---|---|---|---|---|"]
        for r in continual:
            L.append(f"| {r['seed']} | {r['phase1_earlier_R@1']:.2f} | {r['calmrl_earlier_R@1']:.2f} | "
                     f"{r['pmrl-drop_earlier_R@1']:.2f} | {r['phase1_test_R@1']:.2f} | {r['calmrl_test_R@1']:.2f} | "
                     f"{r['pmrl-drop_test_R@1']:.2f} |")
        L.append("")
    L += ["## Plots", ""] + [f"![{f}]({f})" for f in files]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path


def bench(cfg: Config, out: Path, *, quick: bool = False, seeds=None, command: str = "calmrl bench",
          log=print) -> Path:
    import subprocess

    plan = dict(QUICK if quick else FULL)
    if seeds:
        plan["seeds"] = seeds
    t0 = time.time()
    log(f"sweep: settings {plan['rates']}{' + paired' if plan['paired'] else ''}, methods {plan['methods']}, "
        f"seeds {plan['seeds']}")
    records = run_sweep(cfg, rates=plan["rates"], paired=plan["paired"], methods=plan["methods"], seeds=plan["seeds"],
                        out_dir=out, epochs=plan.get("epochs"), log=log)
    em = em_synthetic(iters=30 if quick else 100)
    continual = continual_experiment(cfg, out, seeds=plan["seeds"][:1] if quick else plan["seeds"], log=log)
    ablations = None if quick else ablation(cfg, out, seeds=plan["seeds"], log=log)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except Exception:
        commit = "unknown"
    return write_report(records, em, out, plan["methods"], command=command, commit=commit, seconds=time.time() - t0,
                        continual=continual, ablations=ablations)
