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
- ``calmrl eval`` and ``calmrl export`` of that run's checkpoint, and ``calmrl --help``;
- ``python -c "import torch"``, the yardstick of ``eval`` (target: at most 2x);
- the estimator in a fresh process: what ``fit`` imports, then the first ``fit`` on 200 rows
  of scikit-learn's digits in two views (30% of rows missing one), pairwise-infonce and auto,
  5 epochs each (target: the first fit at most the imports plus 3 s).

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


FIT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from calmrl.estimator import CalMRL
import calmrl.train.runner, calmrl.train.splits, calmrl.inference
t1 = time.perf_counter()
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
X, y = X[:200], y[:200]
rng = np.random.default_rng(0)
views = {"left": X[:, :32].copy(), "right": X[:, 32:].copy()}
gone = rng.random(200) < 0.3
views["left"][gone & (np.arange(200) % 2 == 0)] = np.nan
views["right"][gone & (np.arange(200) % 2 == 1)] = np.nan
out = {"estimator: imports": t1 - t0}
for method in ("pairwise-infonce", "auto"):
    t = time.perf_counter()
    CalMRL(method=method, epochs=5, threads=1).fit(views, y)
    out[f"estimator: first fit, {method}"] = time.perf_counter() - t
print(json.dumps(out))
"""


def _fit(tree: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", FIT], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


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
            out.setdefault("python -c 'import torch'", []).append(_run(tree, ["-c", "import torch"], tmp))
            for k, v in _fit(tree, tmp).items():
                out.setdefault(k, []).append(v)
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
    for name, m in (("before", before), ("after", after)):
        ev, torch_ = m["calmrl eval (test split of the bundled data)"], m["python -c 'import torch'"]
        print(f"{name}: eval / import torch {ev / torch_:.2f}x (target <= 2); first fit - imports budget: "
              f"pairwise-infonce {m['estimator: first fit, pairwise-infonce']:.2f} s, auto "
              f"{m['estimator: first fit, auto']:.2f} s (target <= 3 s)")


if __name__ == "__main__":
    main()
