"""Whether more objectives earn a place in auto's space, decided on learning curves:
``python -m calmrl.experiments.curves.extend --extra docs/bench/curves-siglip-symile``.

The *extra* table holds the curves of the objectives in question (made by
:mod:`.table` with ``--set method.candidates=[...]``) on the same datasets, settings, seeds and
splits as the *base* table of auto's default space. For each cell the two records are merged
(the extra candidates appended to the space) and the default schedule (``method.halving_*``)
is replayed over the base space and over the merged one.

**The rule** (the one of :mod:`.choose`, as a gain): an objective enters auto's default space
when adding it raises the test R@1 of the schedule's choice (mean over seeds) by more than half
the seed std of the best candidate in at least one dataset x setting cell and lowers it by more
than that in none. The price of the schedule over the larger space is reported beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .choose import noise
from .replay import Bracket, Schedule, replay
from .table import load_records

__all__ = ["merge", "compare", "write_report"]


def merge(base: dict, extra: dict) -> dict:
    """One cell's record with ``extra``'s candidates appended to ``base``'s space."""
    if (base["dataset"], base["setting"], base["seed"], base["epochs"]) != (
            extra["dataset"], extra["setting"], extra["seed"], extra["epochs"]):
        raise ValueError("records of different cells")
    out = copy.deepcopy(base)
    clash = set(out["candidates"]) & set(extra["candidates"])
    if clash:
        raise ValueError(f"the extra table repeats candidates of the base one: {sorted(clash)[:3]}")
    out["candidates"].update(copy.deepcopy(extra["candidates"]))
    out["meta"]["order"] = list(base["meta"]["order"]) + list(extra["meta"]["order"])
    return out


def _default_schedule() -> Schedule:
    from ...train.config import load_config

    m = load_config(None, []).method
    return Schedule("default", (Bracket(m.halving_min_epochs, m.halving_eta, m.halving_keep),))


def only(record: dict, objective: str) -> dict:
    """``record`` with only the candidates of ``objective`` (calibrated and plain)."""
    out = copy.deepcopy(record)
    out["candidates"] = {k: v for k, v in record["candidates"].items() if v["method"] == objective}
    out["meta"]["order"] = [k for k in record["meta"]["order"] if k in out["candidates"]]
    return out


def compare(base_records: list[dict], extra_records: list[dict], schedule: Schedule | None = None,
            objective: str | None = None) -> list[dict]:
    """Per cell: the schedule's choice, test R@1 and price over the base space and over the merged
    one (with only ``objective``'s candidates of the extra table, when given)."""
    schedule = schedule or _default_schedule()
    extra = {(r["dataset"], r["setting"], r["seed"]): (only(r, objective) if objective else r)
             for r in extra_records if r.get("done")}
    rows = []
    for b in base_records:
        key = (b["dataset"], b["setting"], b["seed"])
        if not b.get("done") or key not in extra:
            continue
        m = merge(b, extra[key])
        rb, rm = replay(b, schedule), replay(m, schedule)
        best = max(extra[key]["candidates"], key=lambda k: (extra[key]["candidates"][k].get("curve") or
                                                            [{"val": -1}])[-1]["val"])
        rows.append({"dataset": key[0], "setting": key[1], "seed": key[2], "base_choice": rb["choice"],
                     "merged_choice": rm["choice"], "base_test": rb["test"], "merged_test": rm["test"],
                     "gain": rm["test"] - rb["test"], "base_price": rb["price"], "merged_price": rm["price"],
                     "merged_regret": rm["regret"],
                     "extra_chosen": rm["choice"] in extra[key]["candidates"],
                     "best_extra": best,
                     "best_extra_val": extra[key]["candidates"][best]["curve"][-1]["val"],
                     "best_extra_test": extra[key]["candidates"][best]["curve"][-1]["test"]})
    return rows


def _section(rows: list[dict], half: dict, title: str) -> tuple[list[str], bool]:
    cells = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], r["setting"])].append(r)
    lines = [f"## {title}", "",
             "| dataset | setting | seeds | half seed std | gain (per seed) | extra chosen | price base -> merged | "
             "the base choice: test R@1 | best extra candidate on validation: val / test R@1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    up = down = 0
    for cell in sorted(cells):
        rs = cells[cell]
        g = float(np.mean([r["gain"] for r in rs]))
        h = half.get(cell, 0.0)
        up += g > h + 1e-9
        down += g < -h - 1e-9
        per_seed = ", ".join(f"{r['gain']:+.2f}" for r in rs)
        lines.append(f"| {cell[0]} | {cell[1]} | {len(rs)} | {h:.2f} | {g:+.2f} ({per_seed}) | "
                     f"{sum(r['extra_chosen'] for r in rs)} of {len(rs)} | "
                     f"{np.mean([r['base_price'] for r in rs]):.2f}x -> {np.mean([r['merged_price'] for r in rs]):.2f}x | "
                     f"{np.mean([r['base_test'] for r in rs]):.2f} | "
                     f"{np.mean([r['best_extra_val'] for r in rs]):.2f} / {np.mean([r['best_extra_test'] for r in rs]):.2f} |")
    enters = up > 0 and down == 0
    worst = max(float(np.mean([r["merged_regret"] for r in rs])) - half.get(c, 0.0) for c, rs in cells.items())
    lines += ["", f"Over the merged space the schedule's regret against that space's full-budget search stays "
              f"within half a seed std in every cell: {'yes' if worst <= 1e-9 else f'no (by up to {worst:.2f})'}."]
    lines += ["", f"Cells with a gain beyond half a seed std: {up}; with a loss beyond it: {down}. "
              f"**By the rule: {'it enters' if enters else 'it stays out of'} auto's default space.**", ""]
    return lines, enters


def write_report(base: Path, extra: Path, out: Path | None = None, objectives=None) -> Path:
    """The report of the module docstring, one section per objective of the extra table."""
    base_records = [r for r in load_records(base) if r.get("done")]
    extra_records = load_records(extra)
    objectives = objectives or sorted({c["method"] for r in extra_records for c in r["candidates"].values()})
    half = noise(base_records)
    lines = ["# More objectives in auto's space?", "",
             f"The default schedule replayed over auto's space and over the space with one objective of the extra "
             f"table ({extra}) added, calibrated and plain, both learning rates, with and without shared encoders; "
             "per cell, mean over the seeds recorded (`python -m calmrl.experiments.curves.extend`). Gain: test R@1 "
             "of the merged space's choice minus that of the base space's. The rule: the objective enters where the "
             "gain exceeds half the seed std of the base's best candidate in at least one cell and the loss does so "
             "in none.", ""]
    verdicts, all_rows = {}, {}
    for obj in objectives:
        rows = compare(base_records, extra_records, objective=obj)
        sec, verdicts[obj] = _section(rows, half, obj)
        lines += sec
        all_rows[obj] = rows
    out = Path(out or extra)
    (out / "extend.md").write_text("\n".join(lines))
    (out / "extend.json").write_text(json.dumps({"rows": all_rows, "enters": verdicts}, indent=0))
    return out / "extend.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calmrl.experiments.curves.extend", description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="docs/bench/curves")
    ap.add_argument("--extra", required=True)
    a = ap.parse_args(argv)
    print(f"report written to {write_report(Path(a.base), Path(a.extra))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
