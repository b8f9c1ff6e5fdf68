"""Glyphs: the same character drawn by five typefaces, and its Unicode name (N >= 5000).

Source: the DejaVu and STIX fonts that ship inside the ``matplotlib`` wheel (PyPI; DejaVu:
Bitstream Vera licence; STIX: SIL OFL 1.1). Each instance is one named code point that at
least one of the fonts draws. Views: ``sans``, ``sans_bold``, ``serif``, ``mono``, ``stix``
-- the glyph rendered by FreeType (matplotlib's ``ft2font``) at 20 px and centred in a 24x24
grey-level image (576 values in [0, 1]) -- and ``text``, the MiniLM embedding of the
character's Unicode name. A font without the glyph leaves that cell missing (serif and mono
cover little more than half). Labels: the Unicode general category's major class (L, M, N, P,
S; separators and control characters are left out: they draw nothing).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np

from ._common import embed_texts

FONTS = {"sans": "DejaVuSans.ttf", "sans_bold": "DejaVuSans-Bold.ttf", "serif": "DejaVuSerif.ttf",
         "mono": "DejaVuSansMono.ttf", "stix": "STIXGeneral.ttf"}
GRID, PX = 24, 20


def render(font, cp: int, grid: int = GRID) -> np.ndarray | None:
    """The glyph of code point ``cp`` in ``font`` (an ``FT2Font`` sized to ``PX``), centred in a
    ``grid x grid`` float image in [0, 1] (cropped if larger); ``None`` if it draws nothing."""
    font.clear()
    font.set_text(chr(cp), 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    if img.size == 0 or img.max() <= 0:
        return None
    ys, xs = np.nonzero(img > 0)
    img = img[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1][:grid, :grid]
    out = np.zeros((grid, grid), np.float32)
    h, w = img.shape
    out[(grid - h) // 2:(grid - h) // 2 + h, (grid - w) // 2:(grid - w) // 2 + w] = img
    return out


def build(*, log=print, codepoints=None):
    """The dataset; ``codepoints`` restricts it to those code points (tests use small slices)."""
    import matplotlib
    from matplotlib import ft2font

    from ..dataset import MultiViewData

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = {}
    for k, f in FONTS.items():
        if not (ttf / f).exists():
            raise ValueError(f"matplotlib {matplotlib.__version__} does not ship {f}")
        fonts[k] = ft2font.FT2Font(str(ttf / f))
        fonts[k].set_size(PX, 72)
    cmaps = {k: set(f.get_charmap()) for k, f in fonts.items()}
    pool = set().union(*cmaps.values()) if codepoints is None else set(codepoints)
    points = sorted(cp for cp in pool
                    if cp > 32 and unicodedata.name(chr(cp), "") and unicodedata.category(chr(cp))[0] not in "CZ")
    n, names = len(points), list(FONTS)
    log(f"rendering {n} code points in {len(names)} fonts")
    views = [np.zeros((n, GRID * GRID), np.float32) for _ in names]
    mask = np.zeros((n, len(names) + 1), bool)
    mask[:, -1] = True
    for j, k in enumerate(names):
        for i, cp in enumerate(points):
            if cp in cmaps[k]:
                g = render(fonts[k], cp)
                if g is not None:
                    views[j][i], mask[i, j] = g.ravel(), True
    keep = mask[:, :-1].any(1)          # drawn by at least one font
    idx = np.nonzero(keep)[0]
    texts = [unicodedata.name(chr(points[i])).lower() for i in idx]
    log(f"embedding {len(idx)} Unicode names with MiniLM")
    views = [v[idx] for v in views] + [embed_texts(texts)]
    labels = np.array([unicodedata.category(chr(points[i]))[0] for i in idx])
    ids = np.array([f"U+{points[i]:04X}" for i in idx])
    return MultiViewData(views, [*names, "text"], mask[idx], ids, labels,
                         {"source": f"matplotlib {matplotlib.__version__} fonts"})
