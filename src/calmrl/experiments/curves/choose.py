"""Choosing auto's schedule on the table of curves, by leave-one-dataset-out:
``python -m calmrl.experiments.curves.choose``.

**The rule** (one rule, applied alike to every fold): a schedule *holds* on a dataset when, in
every setting of that dataset, its regret (mean over seeds; :mod:`.replay`) is at most half the
seed standard deviation of the test R@1 of the candidate a full-budget search keeps (the seed
noise of the best candidate). Among the schedules that hold on every dataset it is chosen on,
the cheapest (mean price over those datasets' cells) is chosen; where none holds, the one
whose worst regret in units of that noise is smallest.

Only schedules auto runs are chosen (one bracket of successive halving with ``method.halving_*``,
or exhaustive); Hyperband's brackets are replayed for comparison.

**Leave-one-dataset-out.** For each dataset D the rule chooses on all the others, and the
choice is scored on D, which it never saw. The default is the rule applied to every dataset,
kept only where every fold's choice also holds on the dataset it left out.

**Where rankings stop crossing.** For each cell, the first epoch from which the encoder
structure (one shared encoder or not) of the best candidate on validation is the one it is
at the full budget, and the same for the objective.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .replay import SCHEDULES, cell_curves, replay_all
from .table import load_records

__all__ = ["noise", "summarize", "choose", "lodo", "crossing", "versus_previous", "write_report"]

#: the default before the table (exhaustive over calmrl, pairwise-infonce+cal and anchor-infonce+cal
#: with their observed-only guards, one rate, no shared encoders): the candidates it trained
PREVIOUS = {"calmrl-lr0.002", "pmrl-drop-lr0.002", "pairwise-infonce+cal-lr0.002", "pairwise-infonce-lr0.002",
            "anchor-infonce+cal-lr0.002", "anchor-infonce-lr0.002"}


def noise(records: list[dict]) -> dict:
    """``(dataset, setting) -> `` half the seed std of the full-budget choice's test R@1."""
    by = defaultdict(list)
    for rec in records:
        c = cell_curves(rec)
        if not c:
            continue
        E = rec["epochs"]
        labels = list(c)
        best = max(labels, key=lambda k: (c[k]["val"][E - 1], -labels.index(k)))
        by[(rec["dataset"], rec["setting"])].append(c[best]["test"][E - 1])
    return {k: 0.5 * float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in by.items()}


def summarize(rows: list[dict]) -> dict:
    """``schedule -> (dataset, setting) -> {regret, price, price_epochs, n}`` (means over seeds)."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[r["schedule"]][(r["dataset"], r["setting"])].append(r)
    return {s: {cell: {"regret": float(np.mean([r["regret"] for r in rs])),
                       "price": float(np.mean([r["price"] for r in rs])),
                       "price_epochs": float(np.mean([r["price_epochs"] for r in rs])), "n": len(rs)}
                for cell, rs in cells.items()} for s, cells in acc.items()}


def _holds(summary: dict, half_std: dict, datasets) -> tuple[bool, float, float]:
    """``(holds on every dataset, worst regret / noise, mean price)`` of one schedule."""
    cells = {c: v for c, v in summary.items() if c[0] in datasets}
    worst = max((v["regret"] / max(half_std[c], 1e-9) for c, v in cells.items()), default=0.0)
    ok = all(v["regret"] <= half_std[c] + 1e-9 for c, v in cells.items())
    return ok, worst, float(np.mean([v["price"] for v in cells.values()])) if cells else float("inf")


def choose(summaries: dict, half_std: dict, datasets) -> str:
    """The rule of the module docstring on ``datasets``, among the schedules auto can run."""
    scored = {s: _holds(v, half_std, datasets) for s, v in summaries.items() if SCHEDULES[s].runnable}
    holding = [s for s, (ok, _, _) in scored.items() if ok]
    if holding:
        return min(holding, key=lambda s: (scored[s][2], s))
    return min(scored, key=lambda s: (scored[s][1], scored[s][2], s))


def lodo(summaries: dict, half_std: dict, datasets) -> list[dict]:
    """One row per dataset left out: the schedule chosen on the others and how it does on it."""
    out = []
    for d in datasets:
        rest = [x for x in datasets if x != d]
        s = choose(summaries, half_std, rest)
        cells = {c: v for c, v in summaries[s].items() if c[0] == d}
        out.append({"left_out": d, "chosen": s, "holds": _holds(summaries[s], half_std, [d])[0],
                    "cells": {c[1]: {**v, "half_std": half_std[c]} for c, v in cells.items()}})
    return out


def crossing(records: list[dict]) -> list[dict]:
    """Per cell: the first epoch from which the best candidate's structure, and its objective,
    are those of the full budget (module docstring)."""
    out = []
    for rec in records:
        c = cell_curves(rec)
        if not c:
            continue
        E = rec["epochs"]
        labels = list(c)
        V = np.stack([c[k]["val"] for k in labels])          # (candidates, epochs)
        best = [labels[int(np.argmax(V[:, e]))] for e in range(E)]
        row = {"dataset": rec["dataset"], "setting": rec["setting"], "seed": rec["seed"]}
        ref = c[best[-1]]["test"][E - 1]
        for what in ("shared", "objective"):
            final = c[best[-1]][what]
            wrong = [e for e in range(E) if c[best[e]][what] != final]
            row[what] = (max(wrong) + 2) if wrong else 1          # 1-based epoch from which it holds
            # deciding it at epoch e (the kind of the best candidate then), the rest at the full budget:
            # the test R@1 that decision loses against the full-budget choice, per epoch
            regret = []
            for e in range(E):
                kind = c[best[e]][what]
                pool = [i for i, k in enumerate(labels) if c[k][what] == kind]
                pick = labels[max(pool, key=lambda i: (V[i, E - 1], -i))]
                regret.append(float(ref - c[pick]["test"][E - 1]))
            row[f"{what}_regret"] = regret
        out.append(row)
    return out


def versus_previous(records: list[dict], rows: list[dict], schedule: str) -> list[dict]:
    """Per (dataset, setting): the test R@1 of ``schedule``'s choice minus that of the previous
    default's (:data:`PREVIOUS`, the best of them on validation at the full budget), paired by
    seed, with the mean, a 95% t interval over the seeds and the half seed std of the cell."""
    from scipy import stats

    mine = {(r["dataset"], r["setting"], r["seed"]): r["test"] for r in rows if r["schedule"] == schedule}
    diffs = defaultdict(list)
    for rec in records:
        c = cell_curves(rec)
        E = rec["epochs"]
        prev = [k for k in c if k in PREVIOUS]
        key = (rec["dataset"], rec["setting"], rec["seed"])
        if not prev or key not in mine:
            continue
        pick = max(prev, key=lambda k: (c[k]["val"][E - 1], -list(c).index(k)))
        diffs[key[:2]].append(mine[key] - float(c[pick]["test"][E - 1]))
    out = []
    for cell, d in sorted(diffs.items()):
        d = np.array(d)
        half = (stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out.append({"dataset": cell[0], "setting": cell[1], "diffs": d.tolist(), "mean": float(d.mean()),
                    "ci": [float(d.mean() - half), float(d.mean() + half)]})
    return out


def _figure(summaries: dict, half_std: dict, datasets, chosen: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for s, v in summaries.items():
        _, worst, price = _holds(v, half_std, datasets)
        kind = ("exhaustive" if s == "exhaustive" else "hyperband" if s.startswith("hyperband")
                else "halving, keep" if "keep=" in s else "halving")
        color = {"exhaustive": "k", "hyperband": "tab:purple", "halving, keep": "tab:green", "halving": "tab:blue"}[kind]
        ax.scatter(price, max(worst, 0.0), s=60 if s == chosen else 14, c=color, marker="*" if s == chosen else "o",
                   label=kind, alpha=0.8, zorder=3 if s == chosen else 2)
        if s == chosen:
            ax.annotate(s, (price, max(worst, 0.0)), textcoords="offset points", xytext=(6, 6), fontsize=7)
    ax.axhline(1.0, color="grey", ls=":", lw=0.8)
    h, lab = ax.get_legend_handles_labels()
    uniq = dict(zip(lab, h))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("price: search seconds / the kept model's own training (mean over cells)")
    ax.set_ylabel("worst cell regret / (half the seed std)")
    ax.set_title("schedules replayed over the curve table (below the dotted line: within seed noise everywhere)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(table: Path, out: Path | None = None) -> Path:
    """Replay every schedule over the table under ``table``, choose by the rule and by LODO, and
    write ``report.md``, ``replay.json`` and ``schedules.png`` beside it."""
    table = Path(table)
    out = Path(out or table)
    records = [r for r in load_records(table) if r.get("done")]
    datasets = sorted({r["dataset"] for r in records})
    rows = replay_all(records)
    summaries = summarize(rows)
    half = noise(records)
    chosen = choose(summaries, half, datasets)
    folds = lodo(summaries, half, datasets)
    cross = crossing(records)
    _figure(summaries, half, datasets, chosen, out / "schedules.png")
    (out / "replay.json").write_text(json.dumps({"rows": rows, "chosen": chosen, "lodo": folds,
                                                 "crossing": cross}, indent=0))
    n_cells = len(records)
    lines = ["# Auto's schedule, chosen on the table of learning curves", "",
             f"{n_cells} cells ({', '.join(datasets)} x settings x seeds; `records/`), every candidate of auto's "
             "default space trained to the full budget with validation and test R@1 at every epoch "
             "(`python -m calmrl.experiments.curves.table`); every schedule of "
             "`calmrl.experiments.curves.replay.SCHEDULES` replayed over them, chosen by the rule of "
             "`calmrl.experiments.curves.choose` (`python -m calmrl.experiments.curves.choose`).", "",
             f"**Chosen on every dataset: `{chosen}`.**", "",
             "## Leave-one-dataset-out", "",
             "| left out | chosen on the others | holds on the left-out dataset | its cells: regret (half seed std), price |",
             "|---|---|---|---|"]
    for f in folds:
        cells = "; ".join(f"{s} {v['regret']:+.2f} ({v['half_std']:.2f}), {v['price']:.2f}x"
                          for s, v in sorted(f["cells"].items()))
        lines.append(f"| {f['left_out']} | `{f['chosen']}` | {'yes' if f['holds'] else '**no**'} | {cells} |")
    lines += ["", "## The chosen schedule and its neighbours, per cell (mean over seeds)", "",
              "Regret: test R@1 of the full-budget search's choice minus that of the schedule's (R@1 points; "
              "negative: the schedule kept a candidate that did better on test). Price: seconds of every epoch "
              "trained and validated / the kept model's own.", ""]
    show = [chosen, "halving r0=1 eta=3", "exhaustive"]
    show = list(dict.fromkeys(show))
    lines.append("| dataset | setting | half seed std | " + " | ".join(f"`{s}` regret, price" for s in show) + " |")
    lines.append("|---|---|---|" + "---|" * len(show))
    for cell in sorted(half):
        lines.append(f"| {cell[0]} | {cell[1]} | {half[cell]:.2f} | " + " | ".join(
            f"{summaries[s][cell]['regret']:+.2f}, {summaries[s][cell]['price']:.2f}x" for s in show) + " |")
    prices = [v["price"] for v in summaries[chosen].values()]
    lines += ["", f"`{chosen}`: price {np.mean(prices):.2f}x on average over the cells "
                  f"(from {min(prices):.2f}x to {max(prices):.2f}x).", "",
              "## Where the rankings stop crossing", "",
              "The first epoch from which the best candidate on validation has the encoder structure "
              "(shared or not) and the objective it has at the full budget (max and median over the "
              "dataset's cells):", "", "| dataset | structure: max, median | objective: max, median |", "|---|---|---|"]
    for d in datasets:
        rs = [r for r in cross if r["dataset"] == d]
        lines.append(f"| {d} | {max(r['shared'] for r in rs)}, {np.median([r['shared'] for r in rs]):.0f} | "
                     f"{max(r['objective'] for r in rs)}, {np.median([r['objective'] for r in rs]):.0f} |")
    E = records[0]["epochs"]
    marks = [e for e in (1, 2, 3, 5, 7, 10, 15, E) if e <= E]
    lines += ["", "Where near-equal candidates trade places, a crossing costs nothing; what a decision costs is "
              "the regret of deciding it at epoch e (the kind of the candidate best on validation then), the rest at "
              "the full budget, mean over the dataset's cells (R@1 points; in brackets the largest of the dataset's "
              "half seed std):", "",
              "| dataset | decided | " + " | ".join(f"epoch {e}" for e in marks) + " |",
              "|---|---|" + "---|" * len(marks)]
    for d in datasets:
        rs = [r for r in cross if r["dataset"] == d]
        noise_d = max(v for (dd, _), v in half.items() if dd == d)
        for what, name in (("shared", "structure"), ("objective", "objective")):
            lines.append(f"| {d} ({noise_d:.2f}) | {name} | " + " | ".join(
                f"{np.mean([r[f'{what}_regret'][e - 1] for r in rs]):+.2f}" for e in marks) + " |")
    prev = versus_previous(records, rows, chosen)
    lines += ["", "## Against the previous default", "",
              "Test R@1 of the chosen schedule's choice minus that of the default before the table (exhaustive over "
              "calmrl, pairwise-infonce+cal and anchor-infonce+cal with their observed-only guards, lr 2e-3, no "
              "shared encoders), paired by seed, replayed on the same curves; 95% t interval over the seeds. "
              "An interval that holds 0 is a tie.", "",
              "| dataset | setting | per seed | mean [95% CI] | verdict |", "|---|---|---|---|---|"]
    for r in prev:
        lo, hi = r["ci"]
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "tie"
        lines.append(f"| {r['dataset']} | {r['setting']} | {', '.join(f'{x:+.2f}' for x in r['diffs'])} | "
                     f"{r['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {verdict} |")
    lines += ["", "![regret against price](schedules.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calmrl.experiments.curves.choose", description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="docs/bench/curves")
    a = ap.parse_args(argv)
    print(f"report written to {write_report(Path(a.table))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
