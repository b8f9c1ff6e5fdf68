"""Real searches against the replay: ``python -m calmrl.experiments.curves.agree``.

For each cell given, the default ``calmrl train`` search (``method.name=auto`` with the default
schedule, through :func:`calmrl.train.run`, as the command line runs it) is trained on the
cell's data, setting and seed, and its choice, candidate-epochs and validation R@1 at each rung
are compared with the replay of the same schedule over the cell's curves in the table. Writes
``agree.json`` and ``agree.md`` beside the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["agree"]


def _schedule_of(cfg):
    from .replay import Bracket, Schedule

    m = cfg.method
    return Schedule("default", (Bracket(m.halving_min_epochs, m.halving_eta, m.halving_keep),))


def agree(table: Path, cells: list[tuple[str, str, int]], overrides=(), log=print) -> list[dict]:
    import torch

    from ...train import run
    from ...train.config import apply_overrides, load_config
    from ..suite.plan import _setting_cfg
    from ..suite.run import _names
    from .replay import replay
    from .table import record_path

    torch.set_num_threads(1)
    out = []
    for dataset, setting, seed in cells:
        rec = json.loads(record_path(table, dataset, setting, seed).read_text())
        cfg = load_config(None, [f"train.epochs={rec['epochs']}", "train.lr=0.002", *overrides])
        cfg = apply_overrides(cfg, [f"data.dataset={dataset}", f"train.seed={seed}", "train.progress=false",
                                    "train.threads=1"])
        cfg = _setting_cfg(cfg, setting, _names(dataset))
        rep = replay(rec, _schedule_of(cfg))
        t0 = time.time()
        res = run(apply_overrides(cfg, [f"output_dir={Path(table) / 'agree-runs' / dataset / setting.replace(' ', '_')}"
                                        f"/seed{seed}"]), method="auto")
        a = res["auto"]
        pairs = []                       # (candidate, real rung score, the table's score at that epoch)
        for k, c in a["candidates"].items():
            src = rec["candidates"].get(k, {})
            src = rec["candidates"][src["same_run_as"]] if src.get("same_run_as") else src
            for r in c["rungs"]:
                if src.get("curve") and "val_R@1" in r:
                    pairs.append((k, r["val_R@1"], src["curve"][r["epochs"] - 1]["val"]))
        differ = sorted({k for k, x, y in pairs if x != y})
        same_rungs = not differ
        row = {"dataset": dataset, "setting": setting, "seed": seed, "real": a["chosen"], "replay": rep["choice"],
               "real_candidate_epochs": a["candidate_epochs"], "replay_candidate_epochs": rep["candidate_epochs"],
               "rung_scores_equal": same_rungs, "rung_scores": len(pairs),
               "rung_scores_differ": sum(x != y for _, x, y in pairs),
               "max_rung_difference": max((abs(x - y) for _, x, y in pairs), default=0.0),
               "candidates_differ": differ, "real_test_R@1": res["pairs"]["average"]["R@1"],
               "replay_test_R@1": rep["test"], "real_seconds": time.time() - t0,
               "real_train_seconds": res["train_seconds"]}
        out.append(row)
        log(f"  {dataset} {setting} seed {seed}: real {row['real']} / replay {row['replay']}; "
            f"candidate-epochs {row['real_candidate_epochs']} / {row['replay_candidate_epochs']}; "
            f"rung scores equal: {len(pairs) - row['rung_scores_differ']} of {len(pairs)}"
            + (f" (differ: {', '.join(differ)}; at most {row['max_rung_difference']:.2f})" if differ else ""))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calmrl.experiments.curves.agree", description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="docs/bench/curves")
    ap.add_argument("--cells", default="wdbc:mcar 0.5:0,wdbc:paired:0,wdbc:never-complete:0,"
                                       "vowels:mcar 0.5:0,vowels:paired:0,vowels:never-complete:0")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    cells = [(d, s, int(k)) for d, s, k in (c.split(":") for c in a.cells.split(","))]
    rows = agree(Path(a.table), cells, a.set)
    t = Path(a.table)
    (t / "agree.json").write_text(json.dumps(rows, indent=1))
    lines = ["# The default's real runs against the replay", "",
             "`python -m calmrl.experiments.curves.agree`: a real `calmrl train` search (the default schedule) per "
             "cell, and the replay of that schedule over the cell's curves.", "",
             "| dataset | setting | seed | real choice | replayed choice | candidate-epochs real / replay | "
             "rung scores equal to the table's | candidates whose scores differ (largest difference) | "
             "test R@1 real / replay | search seconds (training) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        big = f" ({r['max_rung_difference']:.2f})" if r["candidates_differ"] else ""
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['seed']} | `{r['real']}` | `{r['replay']}` | "
                     f"{r['real_candidate_epochs']} / {r['replay_candidate_epochs']} | "
                     f"{r['rung_scores'] - r['rung_scores_differ']} of {r['rung_scores']} | "
                     f"{', '.join(r['candidates_differ']) or '-'}"
                     f"{big} | "
                     f"{r['real_test_R@1']:.2f} / "
                     f"{r['replay_test_R@1']:.2f} | {r['real_seconds']:.0f} ({r['real_train_seconds']:.0f}) |")
    (t / "agree.md").write_text("\n".join(lines) + "\n")
    print(f"written {t / 'agree.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
