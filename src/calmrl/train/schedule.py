"""Successive halving's two decisions, as pure functions: the rungs, and who goes on.

Both auto (:mod:`calmrl.train.auto`) and the replay over the table of learning curves
(:mod:`calmrl.experiments.curves.replay`) call these, so that a schedule chosen on replayed
curves is the schedule a real search runs.

- :func:`halving_rungs`: with ``n`` arms, ``s = ceil(log_eta n)`` rungs come before the last,
  at ``r_k = r_0 eta^k`` epochs, ``r_0 = max(min_epochs, ceil(epochs / eta^s))``; the last rung
  is the full budget.
- :func:`promote`: of the arms ranked best first, the best ``ceil(n / eta)`` go on (the best
  one at the rung before the last), and every group (an encoder structure, an objective) keeps
  its own best arm, so that a kind of candidate that learns slowly is not cut before its curve
  can cross the others'.
"""

from __future__ import annotations

import math

__all__ = ["halving_rungs", "promote"]


def halving_rungs(n: int, epochs: int, eta: int, min_epochs: int) -> list[int]:
    """Epoch budgets of the rungs for ``n`` arms (module docstring); the last is ``epochs``."""
    if n <= 1:
        return [epochs]
    s = max(1, math.ceil(math.log(n) / math.log(eta) - 1e-9))   # rungs before the last
    r0 = max(min_epochs, math.ceil(epochs / eta ** s))
    rungs = []
    r = r0
    while r < epochs and len(rungs) < s:
        rungs.append(r)
        r *= eta
    return rungs + [epochs]


def promote(ranked: list, *, last: bool, eta: int, groups: dict | None = None) -> list:
    """The arms of ``ranked`` (best first) that go on to the next rung: the best ``ceil(n / eta)``,
    or the best one when the next rung is the last; plus the best arm of each group of ``groups``
    (``arm -> tuple of group keys``; empty: no group is kept apart). Order of ``ranked`` kept."""
    if not ranked:
        return []
    top = 1 if last else max(1, math.ceil(len(ranked) / eta))
    kept = set(ranked[:top])
    seen = set()
    for arm in ranked:
        for g in (groups or {}).get(arm, ()):
            if g not in seen:
                seen.add(g)
                kept.add(arm)
    return [a for a in ranked if a in kept]
