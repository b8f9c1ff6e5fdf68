"""Every command of the README's "Bring your own data" block and of docs/absorb.md runs, as
written, on tables built from the bundled data (the only change: a few epochs, so that the
suite stays fast; a later --set wins)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from calmrl.cli import main
from calmrl.data import load_uci_mfeat

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.epochs=2", "--set", "model.hidden_dim=32", "--set", "model.embed_dim=16",
        "--set", "train.progress=false", "--set", "train.threads=1", "--set", "calibrator.em_iters=2"]


def _blocks(path: Path, after: str = "") -> list[str]:
    text = path.read_text()
    if after:
        text = text[text.index(after):]
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell lines, continuations joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _run(line: str, env: dict) -> None:
    if re.match(r"^[A-Z_]+=", line):                          # CONFIG=... LR=...
        for k, v in (kv.split("=", 1) for kv in shlex.split(line)):
            env[k] = v
        return
    line = re.sub(r'\$\(python -c "print\(\$LR/4\)"\)', lambda m: repr(float(env["LR"]) / 4), line)
    line = re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], line)
    args = shlex.split(line, comments=True)
    assert args[0] == "calmrl", line
    args = args[1:]
    if args[0] == "train":                                  # FAST's values replace the page's (one key once)
        fast = {FAST[i + 1].split("=", 1)[0] for i in range(0, len(FAST), 2)}
        kept, i = [], 0
        while i < len(args):
            if args[i] == "--set" and i + 1 < len(args) and args[i + 1].split("=", 1)[0] in fast:
                i += 2
                continue
            kept.append(args[i])
            i += 1
        args = kept + FAST
    rc = main(args)
    assert rc == 0, f"documented command failed (rc {rc}): {line}"


@pytest.mark.slow
def test_the_readme_bring_your_own_data_block_runs(tmp_path, monkeypatch):
    d = load_uci_mfeat(views=["pixel", "fourier"]).subset(np.arange(0, 2000, 5))
    ids = np.array([f"d{i:04d}" for i in range(d.n)])
    rng = np.random.default_rng(0)
    import pandas as pd
    keep_img, keep_txt = rng.random(d.n) > 0.2, rng.random(d.n) > 0.2
    keep_txt |= ~keep_img
    img = pd.DataFrame(np.asarray(d.views[0]), columns=[f"p{j}" for j in range(240)])
    img.insert(0, "id", ids)
    txt = pd.DataFrame(np.asarray(d.views[1]), columns=[f"f{j}" for j in range(76)])
    txt.insert(0, "id", ids)
    txt["label"] = d.labels
    monkeypatch.chdir(tmp_path)
    img[keep_img].to_parquet("img.parquet", index=False)
    txt[keep_txt].to_csv("txt.csv", index=False)
    img[keep_img].iloc[:20].to_csv("queries.csv", index=False)
    env = dict(os.environ)
    for block in _blocks(ROOT / "README.md", after="## Bring your own data")[:1]:
        for line in _commands(block):
            _run(line, env)
    assert Path("hits.jsonl").read_text().count("\n") == 20


@pytest.mark.slow
def test_the_absorb_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "uci_mfeat.yaml").write_text((ROOT / "configs" / "uci_mfeat.yaml").read_text())
    env = dict(os.environ)
    for block in _blocks(ROOT / "docs" / "absorb.md"):
        for line in _commands(block):
            _run(line, env)
    assert Path("runs/absorb/calmrl/results.json").exists()
