"""Commands that do not train never import Lightning, nor scikit-learn and scipy (their fixed
cost is those imports otherwise: benchmarks/bench_fixed_cost.py; scikit-learn's alone is 1.7 s),
and the model package imports neither Lightning nor the trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import SIM

PROBE = """
import contextlib, io, json, sys
from calmrl.cli import main
rc = 0
for args in json.loads(sys.argv[1]):          # several commands in one interpreter
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = rc or main(args)
    except SystemExit as e:
        rc = rc or (e.code or 0)
bad = sorted(m for m in sys.modules if m in ("lightning", "sklearn", "scipy") or m.startswith((
    "lightning.", "pytorch_lightning", "calmrl.train.module", "calmrl.train.trainer", "sklearn.", "scipy.")))
print("IMPORTED", bad)
sys.exit(rc)
"""


def _probe(*commands):
    import json
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(commands))], capture_output=True, text=True)
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
    assert _probe(["eval", "--checkpoint", run_dir], ["export", "--checkpoint", run_dir, "--out", str(tmp_path / "m")],
                  ["verify", str(tmp_path / "m")], ["--help"]) == "[]"
    assert (tmp_path / "m" / "model.safetensors").exists()
    code = ("import sys, calmrl.model, calmrl.inference, calmrl.estimator; "
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'calmrl.train'))))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert got == "[]", got
