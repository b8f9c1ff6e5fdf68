"""What a run leaves for its user: ``results.json`` (atomic, rank 0), the gate plot, the
summary table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.distributed import rank as process_rank

__all__ = ['write_results', 'plot_gate', 'to_yaml', 'format_table']


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
    gal = {(r.get("gallery") or {}).get("size") for r in results} - {None}
    if len(gal) == 1:
        g = gal.pop()
        draws = (results[0].get("gallery") or {}).get("draws")
        lines.append(f"(retrieval on galleries of {g} test instances, {draws} drawn and averaged (eval.gallery_size); "
                     f"chance R@1 at most {100 / g:.2f}%; n/a: not measured)")
    elif len(n_test) == 1:
        n = n_test.pop()
        lines.append(f"(chance R@1: {100 / n:.2f}%, one correct item among the {n} test instances; n/a: not measured)")
    return "\n".join(lines)
