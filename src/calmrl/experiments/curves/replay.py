"""Replaying a search schedule over the table of full learning curves, with no training.

A *schedule* is one or more brackets of successive halving (Hyperband's brackets when there
are several). A bracket is ``Bracket(min_epochs, eta, keep)``:

- rungs ``r_k = r_0 eta^k`` as :func:`calmrl.train.schedule.halving_rungs` sizes them for the
  cell's number of arms, ``r_0 >= min_epochs`` (a grace period when it is large);
- at each rung every arm still in is scored by its validation R@1 at that epoch, and
  :func:`calmrl.train.schedule.promote` keeps the best ``ceil(n / eta)`` (the best one at the
  rung before the last), and with ``keep`` also the best arm of each encoder structure
  (``structure``: one shared encoder or not), of each objective (``objective``) or of both;
- the arms of the last rung train to the full budget.

This is the code auto runs (:mod:`calmrl.train.auto` calls the same two functions), so a
replayed choice is the choice a real run makes on the same curves. A calibrated candidate's
observed-only twin is its calibrated run until an imputed column takes part (as in auto):
it costs nothing and scores as its twin until a rung at or after the epoch where the gate
opened (``took_part_epoch`` of the table), and trains from scratch from there.

The choice of a schedule is the candidate with the highest validation R@1 at the full budget
among the arms that reached it (ties keep the earlier candidate); its *regret* is the test
R@1 of the candidate a full-budget search keeps on validation minus the test R@1 of that
choice; its *price* is the seconds of training (and per-epoch validation) of every epoch any
candidate trains, an epoch trained once even when several brackets reach it, over the seconds
of the kept model's own training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...train.schedule import halving_rungs, promote

__all__ = ["Bracket", "Schedule", "SCHEDULES", "cell_curves", "replay", "replay_all"]


@dataclass(frozen=True)
class Bracket:
    min_epochs: int = 1
    eta: int = 3
    keep: str = "none"        # none | structure | objective | both


@dataclass(frozen=True)
class Schedule:
    name: str
    brackets: tuple = ()      # () = exhaustive: every candidate to the full budget
    runnable: bool = True     # auto runs it (one bracket, or exhaustive); Hyperband's brackets are replayed only


def _schedules() -> dict[str, Schedule]:
    out = {"exhaustive": Schedule("exhaustive")}
    for keep in ("none", "structure", "objective", "both"):
        for r0 in (1, 2, 3, 5, 7, 10):
            for eta in (2, 3, 4):
                name = f"halving r0={r0} eta={eta}" + (f" keep={keep}" if keep != "none" else "")
                out[name] = Schedule(name, (Bracket(r0, eta, keep),))
    for r0s in ((1, 5), (1, 10), (2, 7), (3, 10), (1, 3, 10)):
        name = "hyperband r0=" + "+".join(map(str, r0s))
        out[name] = Schedule(name, tuple(Bracket(r, 3, "none") for r in r0s), runnable=False)
    return out


SCHEDULES = _schedules()


def cell_curves(rec: dict) -> dict:
    """Per candidate (in the space's order): ``val``, ``test`` and ``seconds`` per epoch as
    arrays, ``twin_of``, ``virtual`` (the same run as its twin throughout), ``took_part``
    (the epoch its twin's imputations first took part), ``shared`` and ``objective``."""
    cands = rec["candidates"]
    order = [c for c in rec["meta"]["order"] if c in cands]
    out = {}
    for label in order:
        e = cands[label]
        src = cands[e["same_run_as"]] if e.get("same_run_as") else e
        curve = src.get("curve") or []
        if e.get("error") or src.get("error") or len(curve) < rec["epochs"]:
            continue                                         # a failed candidate: recorded, never chosen
        parent = cands.get(e.get("twin_of") or "", {})
        out[label] = {"val": np.array([r["val"] for r in curve]), "test": np.array([r["test"] for r in curve]),
                      "seconds": np.array([r["train_seconds"] + r["val_seconds"] for r in curve]),
                      "twin_of": e.get("twin_of"), "virtual": bool(e.get("same_run_as")),
                      "took_part": parent.get("took_part_epoch"), "shared": bool(e["shared"]),
                      "objective": e["method"].replace("pmrl-drop", "calmrl")}
    return out


def _groups(c: dict, keep: str) -> tuple:
    return {"none": (), "structure": (("shared", c["shared"]),), "objective": (("objective", c["objective"]),),
            "both": (("shared", c["shared"]), ("objective", c["objective"]))}[keep]


def _bracket(curves: dict, epochs: int, b: Bracket, warmup: int) -> tuple[list[str], dict[str, int]]:
    """The labels that reach the full budget, and the epochs each candidate trained."""
    arms = [k for k, c in curves.items() if c["twin_of"] is None or c["twin_of"] not in curves]
    rungs = halving_rungs(len(arms), epochs, b.eta, b.min_epochs)
    alive = list(curves)
    trained = {k: 0 for k in curves}
    real = {k: not c["twin_of"] or c["twin_of"] not in curves for k, c in curves.items()}
    for k, budget in enumerate(rungs):
        score = {}
        for lab in alive:
            c = curves[lab]
            if not real[lab]:        # the twin becomes a run of its own once its twin's imputations took part
                tp = c["took_part"]
                if not c["virtual"] and tp is not None and budget > warmup and tp <= budget:
                    real[lab] = True
            if real[lab]:
                trained[lab] = budget
            score[lab] = c["val"][budget - 1]
        ranked = sorted(alive, key=lambda lab: -score[lab])               # stable: ties keep the earlier
        if k == len(rungs) - 1:
            return ranked, trained
        virtual = {lab for lab in ranked if not real[lab]}
        kept = promote([lab for lab in ranked if lab not in virtual], last=k == len(rungs) - 2, eta=b.eta,
                       groups={lab: _groups(curves[lab], b.keep) for lab in ranked})
        alive = [lab for lab in ranked if lab in kept or (lab in virtual and curves[lab]["twin_of"] in kept)]
    return alive, trained


def replay(rec: dict, schedule: Schedule, warmup: int = 2) -> dict | None:
    """One schedule on one cell of the table: its choice, regret and price (module docstring)."""
    curves = cell_curves(rec)
    if not curves:
        return None
    E = rec["epochs"]
    labels = list(curves)
    best_full = max(labels, key=lambda lab: (curves[lab]["val"][E - 1], -labels.index(lab)))
    if not schedule.brackets:
        finalists, trained = labels, {k: (0 if curves[k]["virtual"] else E) for k in labels}
        for k, c in curves.items():      # exhaustive trains a twin only where the guard would (gate opened)
            if c["twin_of"] in curves and not c["virtual"]:
                trained[k] = E
    else:
        finalists, trained = [], {k: 0 for k in labels}
        for b in schedule.brackets:
            f, t = _bracket(curves, E, b, warmup)
            finalists += [x for x in f if x not in finalists]
            trained = {k: max(trained[k], t[k]) for k in labels}
    choice = max(finalists, key=lambda lab: (curves[lab]["val"][E - 1], -labels.index(lab)))
    seconds = sum(curves[k]["seconds"][:trained[k]].sum() for k in labels)
    own = curves[choice]["seconds"].sum()
    return {"choice": choice, "reference": best_full, "test": float(curves[choice]["test"][E - 1]),
            "reference_test": float(curves[best_full]["test"][E - 1]),
            "regret": float(curves[best_full]["test"][E - 1] - curves[choice]["test"][E - 1]),
            "candidate_epochs": int(sum(trained.values())), "price_epochs": sum(trained.values()) / E,
            "price": float(seconds / own), "shared": curves[choice]["shared"],
            "objective": curves[choice]["objective"]}


def replay_all(records: list[dict], schedules=None, warmup: int = 2) -> list[dict]:
    """Every schedule on every cell: one row per (schedule, dataset, setting, seed)."""
    rows = []
    for s in (schedules or SCHEDULES.values()):
        for rec in records:
            r = replay(rec, s, warmup)
            if r is not None:
                rows.append({"schedule": s.name, "dataset": rec["dataset"], "setting": rec["setting"],
                             "seed": rec["seed"], **r})
    return rows
