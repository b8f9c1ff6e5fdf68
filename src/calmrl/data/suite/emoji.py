"""Emoji: the same emoji drawn by four vendors, and its name (image + text, natural gaps).

Source: the npm packages ``emoji-datasource-{apple,google,twitter,facebook}@16.0.0``
(iamcal/emoji-data; code MIT; images under their vendors' licences, see the README).
Each instance is one emoji (1911). Views: ``apple``, ``google``, ``twitter``, ``facebook``
-- the 32 px drawing from the vendor's sprite sheet, composited on white, as 32x32x3 = 3072
values in [0, 1] -- and ``text``, the MiniLM embedding (384) of its Unicode name and short
names. A vendor that has no drawing of an emoji leaves that cell missing (``has_img_<vendor>``
false: 3 for Apple, 51 for Facebook). Labels: the Unicode category (9; the 5 "Component"
swatches go with "People & Body").
"""

from __future__ import annotations

import io
import json

import numpy as np

from ._common import embed_texts, npm_package

VERSION = "16.0.0"
VENDORS = ("apple", "google", "twitter", "facebook")
SIZE, PAD = 32, 1


def sheet_cells(sheet: np.ndarray, xy: np.ndarray, size: int = SIZE, pad: int = PAD) -> np.ndarray:
    """Crop ``(n, size, size, C)`` cells at sheet positions ``xy`` (``(n, 2)``: column, row) from a
    sprite sheet whose cells are ``size`` px with ``pad`` px of padding on each side."""
    step = size + 2 * pad
    rows = (xy[:, 1, None] * step + pad + np.arange(size))[:, :, None]      # (n, size, 1)
    cols = (xy[:, 0, None] * step + pad + np.arange(size))[:, None, :]      # (n, 1, size)
    return sheet[rows, cols]


def rgba_on_white(cells: np.ndarray) -> np.ndarray:
    """``(n, h, w, 4)`` uint8 RGBA -> ``(n, h*w*3)`` float32 RGB in [0, 1], composited on white."""
    c = cells.astype(np.float32) / 255.0
    rgb = c[..., :3] * c[..., 3:] + (1.0 - c[..., 3:])
    return rgb.reshape(len(c), -1)


def _read(tar, member: str) -> bytes:
    try:
        return tar.extractfile(member).read()
    except KeyError:
        raise ValueError(f"{tar.name} lacks {member}") from None


def build(*, log=print):
    from PIL import Image

    from ..dataset import MultiViewData

    sheets, table = {}, None
    for v in VENDORS:
        with npm_package(f"emoji-datasource-{v}@{VERSION}", log=log) as tar:
            if table is None:
                table = json.loads(_read(tar, "package/emoji.json"))
            img = Image.open(io.BytesIO(_read(tar, f"package/img/{v}/sheets-clean/{SIZE}.png"))).convert("RGBA")
            sheets[v] = np.asarray(img)
    table = sorted(table, key=lambda e: e["sort_order"])
    n = len(table)
    xy = np.array([[e["sheet_x"], e["sheet_y"]] for e in table])
    mask = np.array([[bool(e.get(f"has_img_{v}")) for v in VENDORS] + [True] for e in table])
    views = [np.where(mask[:, j, None], rgba_on_white(sheet_cells(sheets[v], xy)), 0.0).astype(np.float32)
             for j, v in enumerate(VENDORS)]
    texts = [f"{e['name'].lower()}: {', '.join(s.replace('_', ' ') for s in e['short_names'])}" for e in table]
    log(f"embedding {n} emoji names with MiniLM")
    views.append(embed_texts(texts))
    labels = np.array(["People & Body" if e["category"] == "Component" else e["category"] for e in table])
    ids = np.array([e["unified"] for e in table])
    return MultiViewData(views, [*VENDORS, "text"], mask, ids, labels, {"source": f"emoji-datasource@{VERSION}"})
