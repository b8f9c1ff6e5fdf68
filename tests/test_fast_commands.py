"""Commands that do not train never import Lightning (their fixed cost is the trainer's import
otherwise: benchmarks/bench_fixed_cost.py), and the model package imports neither Lightning
nor the trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import SIM

PROBE = """
import sys
from calmrl.cli import main
import contextlib, io
try:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code or 0
bad = sorted(m for m in sys.modules if m == "lightning" or m.startswith(("lightning.", "pytorch_lightning",
                                                                        "calmrl.train.module", "calmrl.train.trainer")))
print("IMPORTED", bad)
sys.exit(rc)
"""


def _probe(*args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("IMPORTED", 1)[1].strip()


@pytest.mark.slow
def test_eval_export_impute_and_the_model_package_never_import_lightning(tmp_path):
    from calmrl.train import load_config, run

    out = tmp_path / "o"
    run(load_config(None, SIM + ["model.embed_dim=8", "model.hidden_dim=16", "train.epochs=1", "train.progress=false",
                                 "train.threads=1", "data.views=[fourier,karhunen,zernike]", f"output_dir={out}"]),
        method="calmrl")
    run_dir = str(out / "calmrl")
    assert _probe("eval", "--checkpoint", run_dir) == "[]"
    assert _probe("export", "--checkpoint", run_dir, "--out", str(tmp_path / "m")) == "[]"
    assert _probe("verify", str(tmp_path / "m")) == "[]"
    assert _probe("--help") == "[]"
    code = ("import sys, calmrl.model, calmrl.inference, calmrl.estimator; "
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'calmrl.train'))))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert got == "[]", got
