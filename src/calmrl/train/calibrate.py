"""Step (b) of the absorb workflow: fit a checkpoint's calibrator on its complete training data."""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoints import AtomicCheckpointIO, load_checkpoint, model_from_loaded
from .splits import prepare_data

__all__ = ['calibrate_checkpoint']


def calibrate_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None, *, em_iters: int = 200,
                         complete_only: bool = True) -> tuple[Path, dict]:
    """Step (b) of the absorb workflow: embed the training split of a checkpoint's own
    configuration with its encoders (no simulated missingness; complete instances only when
    there are enough of them), fit the calibrator by EM to convergence and seed the step
    schedule's running statistics (:meth:`CalMRLModule.seed_calibrator`). Writes a new
    checkpoint (default: ``calibrated.ckpt`` beside the input) for ``train.init_from``;
    returns its path and a summary (with the run's ``config``, as a dict)."""
    from .evaluate import embed_data

    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg, model = model_from_loaded(ckpt, path)
    splits = prepare_data(cfg, "oracle")                    # the training split as it is, nothing hidden
    A, mask = embed_data(model.encoder, splits.train)
    complete = mask.all(1)
    used = "complete instances"
    if complete_only and int(complete.sum()) >= max(10, 2 * model.calibrator.k):
        A, mask = A[complete], mask[complete]
    else:
        used = "all instances, missing cells handled by EM (too few complete ones)"
    history = model.seed_calibrator(A, mask, em_iters)
    state = model.state_dict()
    for key in list(ckpt["state_dict"]):
        if key.startswith("calibrator.") or key in ("running_stats", "running_valid"):
            ckpt["state_dict"][key] = state[key].detach().clone()
    summary = {"source": str(path), "instances": int(A.shape[0]), "used": used, "em_iterations": len(history),
               "final_loglik": history[-1] if history else None}
    ckpt["calmrl_calibrated"] = summary
    out = Path(out) if out else path.with_name("calibrated.ckpt")
    AtomicCheckpointIO().save_checkpoint(ckpt, out)
    return out, {**summary, "config": ckpt["calmrl_config"]}
