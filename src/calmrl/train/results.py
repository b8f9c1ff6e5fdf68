"""What a run leaves for its user: ``results.json`` (atomic, rank 0), the gate plot, the
summary table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.distributed import rank as process_rank

__all__ = ['write_results', 'plot_gate', 'plot_search', 'search_table', 'to_yaml', 'format_table']


def write_results(run_dir: Path, results: dict):
    """``results.json`` written atomically (rank 0 only under DDP)."""
    if process_rank() != 0:
        return
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, run_dir / "results.json")


# settings that a resumed run may change: where and how fast it runs, not what it computes
def plot_gate(history: list[dict], names: list[str], path: Path):
    """Gate weights of each modality's imputed columns over the epochs (``method.gate``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for m, name in enumerate(names):
        ax.plot(epochs, [h["weights"][m] for h in history], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight of imputed columns")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("informativeness gate (validation identification gain)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_search(choice: dict, path: Path):
    """auto's search: each candidate's validation R@1 at every epoch it trained, an x where it was
    cut, the kept candidate drawn thick, the rungs as dotted lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    same = choice.get("same_run_as") or {}
    final = (choice.get("rungs") or [0])[-1]
    for label, curve in choice["curves"].items():
        if label in same or not curve:
            continue
        ep = [e for e, _ in curve]
        val = [v for _, v in curve]
        kept = label == choice["chosen"]
        line, = ax.plot(ep, val, marker=".", ms=3, lw=2.6 if kept else 1.0, alpha=1.0 if kept else 0.7, zorder=3 if kept else 2,
                        ls="-" if "+shared" not in label else "--", label=label + (" (kept)" if kept else ""))
        if ep[-1] < final:
            ax.plot(ep[-1], val[-1], "x", color=line.get_color(), ms=6)
    for r in choice.get("rungs") or []:
        ax.axvline(r, color="grey", lw=0.6, ls=":", zorder=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation R@1 (%)")
    ax.set_title(f"auto: {choice.get('search')} search, kept {choice['chosen']} (x: cut; dashed: shared encoders)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_table(choice: dict) -> str:
    """The search in a few lines: each candidate's validation R@1 at each rung, where it stopped, and
    the one kept (``results.json`` ``auto``; the curves themselves are in ``auto/search.png``)."""
    rungs = choice.get("rungs") or []
    width = max([len(k) for k in choice["candidates"]] + [9])
    head = f"{'candidate':<{width}}" + "".join(f"{f'{r} ep':>9}" for r in rungs) + "  status"
    lines = [head]
    order = sorted(choice["candidates"], key=lambda k: (-len(choice["candidates"][k]["rungs"]),
                                                       -(choice["val_R@1"].get(k) or float("-inf"))))
    for k in order:
        c = choice["candidates"][k]
        at = {r["epochs"]: r for r in c["rungs"]}
        cells = "".join(f"{at[r]['val_R@1']:>9.2f}" if r in at else f"{'':>9}" for r in rungs)
        if c["error"]:
            status = "failed: " + c["error"][:60]
        elif k == choice["chosen"]:
            status = "kept"
        elif c["rungs"] and c["rungs"][-1]["epochs"] == (rungs[-1] if rungs else None):
            status = "finalist"
        else:
            status = f"cut after {c['rungs'][-1]['epochs']} ep" if c["rungs"] else "not trained"
        if k in (choice.get("same_run_as") or {}):
            status += f" (the same run as {choice['same_run_as'][k]}: no imputed column took part)"
        lines.append(f"{k:<{width}}{cells}  {status}")
    return "\n".join(lines)


def to_yaml(d: dict) -> str:
    import yaml
    return yaml.safe_dump(d, sort_keys=False)


def format_table(results: list[dict], eval_only: bool = False) -> str:
    """One row per method: pairwise retrieval average (by cosine, and by the method's own
    similarity), fused queries, kNN and anchor shift; the last column is the training time
    (the evaluation time with ``eval_only``)."""
    head = (f"{'method':<25}{'R@1':>7}{'own R@1':>9}{'R@5':>7}{'R@10':>7}{'MedR':>7}{'fused R@1':>11}{'kNN acc':>9}"
            f"{'shift obs':>11}{'shift cal':>11}{'imp cos':>9}{'imp id%':>9}{'obs id%':>9}"
            f"{'eval s' if eval_only else 'train s':>8}")
    lines = [head, "-" * len(head)]

    def num(x, width: int, fmt: str) -> str:       # n/a where nothing was measured
        return f"{'n/a':>{width}}" if x is None or x != x else f"{x:>{width}{fmt}}"

    for r in results:
        a, f, an = r["pairs"]["average"], r["fused"]["average"], r["anchor"]
        own = r.get("pairs_own", r["pairs"])["average"]["R@1"]
        name = f"auto: {r['chosen_method']}" if r["method"] == "auto" else r["method"]
        lines.append(f"{name:<25}{a['R@1']:>7.2f}{own:>9.2f}{a['R@5']:>7.2f}{a['R@10']:>7.2f}{a['MedR']:>7.1f}"
                     f"{f['R@1']:>11.2f}{num(r.get('knn_accuracy'), 9, '.2f')}"
                     f"{num(an['shift_observed_deg'], 11, '.2f')}{num(an['shift_calibrated_deg'], 11, '.2f')}"
                     f"{num(an.get('imputation_cosine'), 9, '.3f')}"
                     f"{num(an.get('imputation_identification'), 9, '.1f')}"
                     f"{num(an.get('fallback_identification'), 9, '.1f')}"
                     f"{num(r.get('eval_seconds' if eval_only else 'train_seconds'), 8, '.1f')}")
    n_test = {r.get("n_test") for r in results if r.get("n_test")}
    on_val = {r.get("n_val") for r in results if r.get("evaluated_on") == "validation"}
    if on_val:
        lines.append("(no test split, data.test_fraction=0: these figures are on the validation split, which chose "
                     "the model)")
        n_test = set(on_val)
    gal = {(r.get("gallery") or {}).get("size") for r in results} - {None}
    if len(gal) == 1:
        g = gal.pop()
        draws = (results[0].get("gallery") or {}).get("draws")
        lines.append(f"(retrieval on galleries of {g} test instances, {draws} drawn and averaged (eval.gallery_size); "
                     f"chance R@1 at most {100 / g:.2f}%; n/a: not measured)")
    elif len(n_test) == 1:
        n = n_test.pop()
        lines.append(f"(chance R@1: {100 / n:.2f}%, one correct item among the {n} {'validation' if on_val else 'test'} instances; n/a: not measured)")
    return "\n".join(lines)
