"""Paired comparisons over seeds."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["paired_difference"]


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    r"""Mean of :math:`d_s = a_s - b_s` over paired seeds with a Student-t interval
    :math:`\bar d \pm t_{n-1, (1+\text{level})/2}\, s_d/\sqrt n` and the count of seeds with
    :math:`d_s > 0`. With one seed the interval is undefined (NaN); with none, everything is."""
    from scipy.stats import t

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "above": 0, "n": 0}
    m = float(d.mean())
    if n == 1:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "above": int(d[0] > 0), "n": 1}
    half = float(t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return {"mean": m, "lo": m - half, "hi": m + half, "above": int((d > 0).sum()), "n": n}
