"""``method.name=auto``: a search over candidate objectives, the best on validation kept.

The objective moves retrieval more than anything else (pairwise InfoNCE, hub InfoNCE and PMRL
each win on some data of the suite), so the default trains candidates on the same splits,
seed and encoders and keeps the one with the highest validation R@1 (averaged over ordered
view pairs; a tie keeps the earlier candidate). The test split is never looked at for the choice.

**The space.** Each name of ``method.candidates`` (``X+cal``: objective X with calibration
plugged in, :func:`calmrl.objectives.parse_method`) x each learning rate (``train.lr`` times
each of ``method.lr_factors``, or ``method.auto_lrs`` when set) x the encoders: as declared
(``model.shared_encoders``), and, with ``method.auto_shared``, also with every group of
undeclared views of one input width sharing an encoder (validation decides).

**The search** (``method.search``):

- ``halving`` (successive halving, Jamieson & Talwalkar 2016): every candidate trains
  ``r_0`` epochs; the best ``ceil(n / eta)`` on validation continue from their own
  checkpoint (no epoch is trained twice) to ``eta`` times the budget, and so on; the last
  survivor trains to ``train.epochs`` and alone is evaluated on test. The learning-rate
  schedule is always the full run's, so the kept model is exactly the model a single run
  of its candidate gives. Rungs: ``r_k = r_0 eta^k`` with ``r_0 = max(method.halving_min_epochs,
  train.epochs / eta^s)``, ``s = ceil(log_eta n)`` rungs before the last, which only the best
  candidate trains. A calibrated candidate's observed-only path (the guard's) is a candidate
  of the same search, not a second full training.
- ``exhaustive``: every candidate to the end, each calibrated one with its guard (the
  behaviour before halving; to compare the two).

A candidate that fails (diverges, a setting met only in training) is recorded with its error
and the others go on; ``--resume`` reuses every candidate whose settings are unchanged and
trains only what is new or unfinished.

Layout under ``<output_dir>/auto/``: ``candidates/<label>/`` (each a run directory),
``checkpoints/kept.ckpt`` (a copy of the kept model) and ``results.json`` (the kept run's
figures, with ``auto``: every candidate's budget and validation R@1 at each rung, failures,
and the choice).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import objectives
from ..integrity import DamagedFileError, check_json, seal_json
from ..model.checkpoint import CheckpointError, kept_checkpoint
from .config import calibrates
from .encoders import equal_width_groups
from .guard import guard, imputations_took_part
from .outdir import copy_kept, replacing
from .progress import SearchBar
from .results import plot_search, write_results
from .schedule import halving_rungs, promote
from .single import train_one

__all__ = ["run_auto", "kept_checkpoint", "candidate_space", "halving_rungs"]

log = logging.getLogger("calmrl")


class SearchStopped(RuntimeError):
    """A failure of the environment, not of a candidate (I/O, integrity, resume): the search stops resumable."""
    resumable = True


@dataclass(eq=False)
class Candidate:
    label: str
    cfg: object
    rungs: list = field(default_factory=list)        # [{"epochs", "val_R@1"}]
    error: str | None = None
    results: dict | None = None
    model: object = None
    twin_of: "Candidate | None" = None     # halving: the calibrated candidate whose observed-only path this is
    took_part: bool = False                 # halving: imputed columns took part in its training so far
    trained: int = 0                        # epochs trained (its last checkpoint)
    last: dict | None = None                # the results of its last rung
    curve: list = field(default_factory=list)   # [[epoch, validation R@1]] of every epoch it trained


def _groups(c: "Candidate", keep: str) -> tuple:
    """The groups whose best arm ``method.halving_keep`` keeps to the last rung (:func:`promote`)."""
    shared = ("shared", bool(c.label.endswith("+shared")))
    objective = ("objective", c.cfg.method.name.replace("pmrl-drop", "calmrl"))
    return {"none": (), "structure": (shared,), "objective": (objective,), "both": (shared, objective)}[keep]


def _label(method: str, lr, shared: bool, show_lr: bool) -> str:
    return method + (f"-lr{lr:g}" if show_lr else "") + ("+shared" if shared else "")


def candidate_space(cfg, splits, search: str | None = None) -> list[Candidate]:
    """The candidates of the module docstring, in a fixed order (ties keep the earlier one)."""
    search = search or cfg.method.search
    names = list(cfg.method.candidates)
    if search == "halving":      # the guard folded in: each calibrated candidate's observed-only path
        for m in list(names):
            base, cal = objectives.parse_method(m)
            obj = objectives.get(base)
            if (cal or obj.calibration == "always") and obj.observed_only not in names:
                names.insert(names.index(m) + 1, obj.observed_only)
    lrs = list(cfg.method.auto_lrs) or [cfg.train.lr * f for f in cfg.method.lr_factors]
    declared = [list(g) for g in cfg.model.shared_encoders]
    options = [(declared, False)]
    extra = equal_width_groups(splits.names, splits.dims, declared) if cfg.method.auto_shared else []
    if extra:
        options.append((declared + extra, True))
    out, by_key = [], {}
    for m in names:
        base, cal = objectives.parse_method(m)
        for lr in lrs:
            for groups, shared in options:
                c = replace(cfg, method=replace(cfg.method, name=base, calibrate=cal,
                                                guard=cfg.method.guard if search == "exhaustive" else "none"),
                            train=replace(cfg.train, lr=float(lr)),
                            model=replace(cfg.model, shared_encoders=groups))
                cand = Candidate(_label(m, lr, shared, bool(cfg.method.auto_lrs) or len(lrs) > 1), c)
                by_key[(base, cal, lr, shared)] = cand
                out.append(cand)
    if search == "halving":       # each observed-only path knows its calibrated twin
        for (base, cal, lr, shared), cand in by_key.items():
            obj = objectives.get(base)
            if cal or obj.calibration == "always":
                twin = by_key.get((obj.observed_only, False, lr, shared))
                if twin is not None and twin is not cand:
                    twin.twin_of = cand
    return out


def _save(path: Path, rungs, done: int, alive, cands, schedule: dict) -> None:
    """The search's state after rung ``done``, atomically: a resumed search continues from the
    next rung with the same survivors and never ranks candidates trained to different budgets."""
    from .outdir import process_rank
    if process_rank() != 0:
        return
    state = {"rungs": rungs, "done": done, "alive": [c.label for c in alive], "schedule": schedule,
             "candidates": {c.label: {"rungs": c.rungs, "error": c.error, "trained": c.trained,
                                      "took_part": c.took_part, "curve": c.curve} for c in cands}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(seal_json(state), indent=1))     # its own digest: an edited state is refused
    tmp.replace(path)


def _restore(path: Path, cands, rungs, schedule: dict) -> tuple[list, int]:
    """``(alive, first rung to run)`` from a saved state; refuses a state of another search."""
    redo = "rerun the search without --resume (its candidates' checkpoints are reused only by a search that recorded them)"
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path} is damaged: not valid JSON ({e}); {redo}") from None
    check_json(state, path, redo)
    missing = [k for k in ("rungs", "done", "alive", "candidates") if k not in state]
    if missing:
        raise DamagedFileError(f"{path} lacks {', '.join(missing)}; {redo}")
    labels = [c.label for c in cands]
    if state.get("rungs") != rungs or sorted(state.get("candidates", {})) != sorted(labels):
        raise ValueError(f"--resume: {path} records a search over other candidates or rungs ({state.get('rungs')} "
                         f"epochs, {len(state.get('candidates', {}))} candidates; now {rungs}, {len(labels)}); "
                         "resuming would rank candidates trained to different budgets: rerun without --resume")
    if state.get("schedule", schedule) != schedule:
        diff = ", ".join(f"method.halving_{k}: {state['schedule'].get(k)} -> {v}" for k, v in schedule.items()
                         if state["schedule"].get(k) != v)
        raise ValueError(f"--resume: {path} records a search with another schedule ({diff}); resuming would mix "
                         "two schedules' survivors: rerun without --resume, or resume with the recorded settings")
    by = {c.label: c for c in cands}
    for label, st in state["candidates"].items():
        c = by[label]
        c.rungs, c.error, c.trained, c.took_part = st["rungs"], st["error"], st["trained"], st["took_part"]
        c.curve = st.get("curve", [])
    log.warning("auto: resuming the search after rung %d of %d", state["done"] + 1, len(rungs))
    return [by[x] for x in state["alive"]], state["done"] + 1


def _virtual(c: Candidate) -> bool:
    """An observed-only path not trained so far: its calibrated twin's run stands for it."""
    return bool(c.rungs) and "same_run_as" in c.rungs[-1]


def _val(c: Candidate) -> float:
    return c.rungs[-1]["val_R@1"] if c.rungs else float("-inf")


def _train(c: Candidate, splits, run_dir: Path, *, resume, max_epochs, final, extra_callbacks):
    """One candidate up to ``max_epochs``; a failure is recorded, not raised (signals are)."""
    try:
        res, model = train_one(c.cfg, splits, run_dir / "candidates" / c.label, resume=resume,
                               max_epochs=max_epochs, extra_callbacks=extra_callbacks, final=final,
                               role=f"candidate {c.label}")
        if final and calibrates(c.cfg.method) and c.cfg.method.guard == "validation":
            res, model = guard(c.cfg, res, model, run_dir / "candidates" / c.label, resume, splits, max_epochs,
                               extra_callbacks)
    except Exception as e:        # KeyboardInterrupt and the CLI's signals are not Exceptions of this kind
        if hasattr(e, "signum"):
            e.candidate = c.label
            raise
        if isinstance(e, (OSError, CheckpointError, DamagedFileError)):
            # not the candidate's own failure (a full disk, a damaged or foreign checkpoint, a resume with
            # other settings): the search stops, its saved state is that of the last finished rung
            raise SearchStopped(f"auto: stopped while training candidate {c.label}: {str(e).splitlines()[0]} "
                                f"({type(e).__name__}); no candidate was eliminated for it: remove the cause and "
                                "rerun the same command with --resume") from e
        c.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log.warning("auto: candidate %s failed (%s); the others go on", c.label, c.error)
        return False
    epochs = int(max_epochs or c.cfg.train.epochs)
    c.curve = [list(x) for x in res.get("val_curve", [])]
    g = res.get("guard") or {}
    c.rungs.append({"epochs": epochs, "val_R@1": float(res["val_average"]["R@1"]),
                    "seconds": float(res.get("train_seconds", 0.0)),
                    **({"guard_epochs": epochs} if g.get("alternative_trained") else {})})
    if final:
        c.results, c.model = res, model
    c.last = res
    return True


def run_auto(cfg, splits, *, resume: bool = False, max_epochs=None, extra_callbacks=()):
    """The search of the module docstring on prepared ``splits``; returns ``(results, model)``."""
    bar = SearchBar(enabled=cfg.train.progress)
    try:
        return _run_auto(cfg, splits, bar, resume=resume, max_epochs=max_epochs,
                         extra_callbacks=(*extra_callbacks, bar))
    finally:
        bar.close()


def _say(bar: SearchBar, msg: str, *args) -> None:
    """A short line of the search: above the bar where one is shown, else to the log."""
    if not bar.write("calmrl: " + msg % args):
        log.warning(msg, *args)


def _run_auto(cfg, splits, bar: SearchBar, *, resume, max_epochs, extra_callbacks):
    run_dir = Path(cfg.output_dir) / "auto"
    search = cfg.method.search
    cands = candidate_space(cfg, splits, search)
    if cfg.train.progress:      # one bar for the search (SearchBar) instead of Lightning's per candidate
        for c in cands:
            c.cfg = replace(c.cfg, train=replace(c.cfg.train, progress=False))
    epochs = max_epochs or cfg.train.epochs
    with replacing(run_dir, keep=resume):
        if search == "exhaustive":
            rungs = [epochs]
            bar.plan(len(cands) * epochs, "exhaustive")
            for c in cands:
                bar.candidate(c.label)
                if bar.bar is None:                 # no bar to name it
                    log.warning("auto: training candidate %s", c.label)
                if _train(c, splits, run_dir, resume=resume, max_epochs=max_epochs, final=True,
                          extra_callbacks=extra_callbacks):
                    bar.scored(_val(c))
            alive = [c for c in cands if c.error is None]
        else:
            arms = [c for c in cands if c.twin_of is None]
            rungs = halving_rungs(len(arms), epochs, cfg.method.halving_eta, cfg.method.halving_min_epochs)
            warmup = cfg.calibrator.warmup_epochs
            alive, start = list(cands), 0
            state_file = run_dir / "search.json"
            schedule = {"eta": cfg.method.halving_eta, "keep": cfg.method.halving_keep,
                        "min_epochs": cfg.method.halving_min_epochs}
            if resume and state_file.exists():
                alive, start = _restore(state_file, cands, rungs, schedule)
            for k, budget in enumerate(rungs):
                if k < start:
                    continue
                final = k == len(rungs) - 1
                arms_now = [c for c in alive if c.twin_of is None or c.trained]
                eta = cfg.method.halving_eta     # later rungs: an estimate, set again when they start
                bar.plan(sum(budget - c.trained for c in arms_now)
                         + sum(-(-len(arms_now) // eta ** (j - k)) * (rungs[j] - rungs[j - 1])
                               for j in range(k + 1, len(rungs))), f"rung {k + 1}/{len(rungs)}")
                for c in alive:
                    parent = c.twin_of
                    if parent is not None and parent in alive and not parent.error and not parent.took_part \
                            and parent.rungs and parent.rungs[-1]["epochs"] == budget and not c.trained:
                        # no imputed column has taken part in the calibrated twin: it is this run (the guard's rule)
                        c.rungs.append({"epochs": budget, "val_R@1": parent.rungs[-1]["val_R@1"],
                                        "same_run_as": parent.label})
                        c.curve = [list(x) for x in parent.curve]
                        if final:
                            c.results, c.model = parent.results, parent.model
                        continue
                    bar.candidate(c.label)
                    if _train(c, splits, run_dir, resume=resume or c.trained > 0, max_epochs=budget, final=final,
                              extra_callbacks=extra_callbacks):
                        c.trained = budget
                        bar.scored(_val(c))
                        res = c.results if final else c.last
                        c.took_part = budget > warmup and calibrates(c.cfg.method) and imputations_took_part(res)
                ranked = sorted([c for c in alive if c.error is None], key=lambda c: -_val(c))   # stable on ties
                if final:
                    alive = ranked
                    break
                arms_alive = [c for c in ranked if not _virtual(c)]
                kept = promote(arms_alive, last=k == len(rungs) - 2, eta=cfg.method.halving_eta,
                               groups={c: _groups(c, cfg.method.halving_keep) for c in arms_alive})
                alive = [c for c in ranked if c in kept or (_virtual(c) and c.twin_of in kept)]
                _say(bar, "auto: rung %d of %d (%d epochs): best %s %.2f; %d of %d continue", k + 1, len(rungs),
                     budget, ranked[0].label if ranked else "-", _val(ranked[0]) if ranked else float("nan"),
                     len(kept), len(arms_alive))
                log.debug("auto: rung %d scores: %s", k + 1,
                         ", ".join(f"{c.label} {_val(c):.2f}" + (" (=)" if _virtual(c) else "") for c in ranked))
                _save(state_file, rungs, k, alive, cands, schedule)
                if not alive:
                    break
            alive = [c for c in alive if not _virtual(c) or c.twin_of not in alive] if len(alive) > 1 else alive
        if not alive:
            raise RuntimeError("auto: every candidate failed: " + "; ".join(f"{c.label}: {c.error}" for c in cands))
        best = max(alive, key=_val)           # the first of the highest: a tie keeps the earlier candidate
        sub = run_dir / "candidates" / best.label
        res = best.results
        n_train = splits.train.n
        # epochs trained by every candidate (a guard's observed-only run counted too)
        cost = sum(max((r["epochs"] for r in c.rungs if "same_run_as" not in r), default=0)
                   + sum(r.get("guard_epochs", 0) for r in c.rungs) for c in cands)
        choice = {"chosen": best.label, "search": search,
                  "rule": "highest validation R@1 (average over ordered view pairs)",
                  "rungs": rungs, "eta": cfg.method.halving_eta if search == "halving" else None,
                  "candidates": {c.label: {"rungs": c.rungs, "error": c.error} for c in cands},
                  "val_R@1": {c.label: _val(c) for c in cands if c.rungs},
                  "test_R@1": {c.label: c.results["pairs"]["average"]["R@1"] for c in cands if c.results},
                  "failed": {c.label: c.error for c in cands if c.error},
                  "kept_by_guard": {c.label: c.results["guard"]["kept"] for c in cands
                                    if c.results and c.results.get("guard")},
                  "curves": {c.label: c.curve for c in cands if c.curve},
                  "same_run_as": {c.label: c.twin_of.label for c in cands if c.rungs and "same_run_as" in c.rungs[-1]},
                  "halving_keep": cfg.method.halving_keep if search == "halving" else None,
                  "candidate_epochs": cost, "kept_epochs": epochs,
                  "cost_ratio": cost / epochs, "instance_epochs": cost * n_train,
                  "checkpoint": str(run_dir / "checkpoints" / "kept.ckpt"),
                  "source_checkpoint": str(kept_checkpoint(sub))}
        copy_kept(kept_checkpoint(sub), run_dir)
        # train_seconds: what the whole search trained (every candidate's rungs), not the kept run's last rung
        choice["train_seconds_kept_last_rung"] = res.get("train_seconds")
        search_seconds = sum(r.get("seconds", 0.0) for c in cands for r in c.rungs)
        results = {**res, "method": "auto", "chosen_method": res["method"], "auto": choice,
                   "train_seconds": search_seconds}
        write_results(run_dir, results)
        from .outdir import process_rank
        if process_rank() == 0 and choice["curves"] and cfg.train.plots:
            plot_search(choice, run_dir / "search.png")
    _say(bar, "auto: kept %s (validation R@1 %.2f; %d candidate-epochs for a %d-epoch model, %.2fx; every "
         "candidate's curve in %s)", best.label, _val(best), cost, epochs, cost / epochs,
         run_dir / "search.png" if cfg.train.plots else "the results' auto.curves")
    return results, best.model

