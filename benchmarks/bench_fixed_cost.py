"""The fixed cost of a command: what ``calmrl`` spends outside training, before and after a change.

Two source trees side by side in one run, the same virtualenv (``PYTHONPATH`` picks the tree):
``--before DIR`` (a checkout of an earlier commit) and this tree. For each, the median of
``--repeat`` fresh processes of:

- ``import trainer``: ``import calmrl.cli, calmrl.train.runner`` (what ``calmrl train`` imports);
- ``import inference``: ``import calmrl.train.export`` (what loading an exported model for
  ``calmrl retrieve`` imports);
- ``calmrl --version``;
- ``calmrl train`` on the bundled UCI demo, one epoch of pmrl-drop, and its parts from
  ``results.json``: the training loop (``train_seconds``), evaluation (``eval_seconds``) and the
  rest (import, data loading and preparation, set-up, checkpoints): wall - train - eval;
- ``calmrl eval`` and ``calmrl export`` of that run's checkpoint, and ``calmrl --help``.

Prints the ratio before / after per line.

    python benchmarks/bench_fixed_cost.py --before /path/to/checkout-of-21d13da
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parents[1]


def _run(tree: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(tree: Path, repeat: int) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(repeat):
            out.setdefault("import trainer", []).append(
                _run(tree, ["-c", "import calmrl.cli, calmrl.train.runner"], tmp))
            out.setdefault("import inference", []).append(_run(tree, ["-c", "import calmrl.train.export"], tmp))
            out.setdefault("calmrl --version", []).append(_run(tree, ["-m", "calmrl.cli", "--version"], tmp))
            run_dir = tmp / f"run{r}"
            wall = _run(tree, ["-m", "calmrl.cli", "train", "--method", "pmrl-drop", "--set", "train.epochs=1",
                               "--set", "train.progress=false", "--set", "train.threads=1",
                               "--output-dir", str(run_dir)], tmp)
            res = json.loads((run_dir / "pmrl-drop" / "results.json").read_text())
            out.setdefault("calmrl train, 1 epoch: wall", []).append(wall)
            out.setdefault("  training loop", []).append(res["train_seconds"])
            out.setdefault("  evaluation", []).append(res["eval_seconds"])
            out.setdefault("  the rest (import, data, set-up, checkpoints)", []).append(
                wall - res["train_seconds"] - res["eval_seconds"])
            # the commands that do not train, on the run just made
            ck = str(run_dir / "pmrl-drop" / "checkpoints" / "last.ckpt")
            out.setdefault("calmrl eval (test split of the bundled data)", []).append(
                _run(tree, ["-m", "calmrl.cli", "eval", "--checkpoint", ck], tmp))
            out.setdefault("calmrl export", []).append(
                _run(tree, ["-m", "calmrl.cli", "export", "--checkpoint", ck, "--out", str(tmp / f"exp{r}")], tmp))
            out.setdefault("calmrl --help", []).append(_run(tree, ["-m", "calmrl.cli", "--help"], tmp))
    return {k: statistics.median(v) for k, v in out.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True, help="a checkout of the earlier commit")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    print(machine(), f"load average {os.getloadavg()[0]:.2f}")
    before = measure(Path(a.before).resolve(), a.repeat)
    after = measure(HERE, a.repeat)
    print(f"{'':48s}{'before':>9s}{'after':>9s}{'before/after':>14s}")
    for k in before:
        print(f"{k:48s}{before[k]:9.2f}{after[k]:9.2f}{before[k] / after[k]:13.2f}x")


if __name__ == "__main__":
    main()
