"""Calibration overhead inside the Lightning trainer, end to end.

Same synthetic data (M=4 views of 512 features, 8192 training instances, 50% MCAR), same
2-layer MLP heads (512 -> 512 -> d=256), batch 512, PMRL loss: seconds per training epoch
of ``pmrl-drop`` (no calibration) against ``calmrl`` with each calibrator schedule
(``step``, the default: stochastic EM inside the training steps, M-step every 4 batches
or every batch; ``epoch``: an EM refit
over the re-embedded training set before every epoch, ``em_iters`` iterations), for
k = d/8 and d/2.
Calibration starts at the first epoch (no warm-up); validation is off. Median epoch time
after the first epoch (everything in the epoch: steps, M-steps, refits), best of 2
interleaved runs, and its overhead against pmrl-drop.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import lightning as L

from calmrl.train import load_config, run
from common import machine

BASE = ["data.dataset=synthetic", "data.synthetic_n=11704", "data.synthetic_dims=[512,512,512,512]",
        "data.synthetic_latent=32", "model.embed_dim=256", "model.hidden_dim=512", "train.batch_size=512",
        "train.progress=false", "train.check_val_every=1000", "calibrator.warmup_epochs=0", "train.epochs=6"]


class EpochTimer(L.Callback):
    """Wall time of every training epoch: data, forward, calibration, backward, optimiser,
    the step schedule's M-steps after the steps, and the epoch schedule's refit at its start."""

    def __init__(self):
        self.epochs: list[float] = []
        self.steps = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(time.perf_counter() - self._t)
        self.steps = trainer.num_training_batches


def measure(overrides: list[str], method: str) -> tuple[float, int]:
    """(median epoch time in seconds after the first epoch, steps per epoch)."""
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, BASE + overrides + [f"output_dir={out}"])
        run(cfg, method=method, extra_callbacks=[timer])
    return statistics.median(timer.epochs[1:]), timer.steps


def main(repeats: int = 2):
    print(machine())
    runs = [("pmrl-drop (no calibration)", "pmrl-drop", [])]
    for k in (32, 128):
        runs += [(f"calmrl k={k:3d} step schedule (default)", "calmrl", [f"calibrator.latent_dim={k}"]),
                 (f"calmrl k={k:3d} step schedule, M-step every batch", "calmrl",
                  [f"calibrator.latent_dim={k}", "calibrator.m_step_every=1"]),
                 (f"calmrl k={k:3d} epoch schedule, em_iters=10", "calmrl",
                  [f"calibrator.latent_dim={k}", "calibrator.schedule=epoch", "calibrator.em_iters=10"]),
                 (f"calmrl k={k:3d} epoch schedule, em_iters=1", "calmrl",
                  [f"calibrator.latent_dim={k}", "calibrator.schedule=epoch", "calibrator.em_iters=1"])]
    # interleaved repeats, best of each: the machine's load drifts between runs
    best, steps = {}, 1
    for _ in range(repeats):
        for name, method, extra in runs:
            epoch, steps = measure(extra, method)
            best[name] = min(best.get(name, float("inf")), epoch)
    base = best[runs[0][0]]
    for name, _, _ in runs:
        print(f"{name:52s} epoch {best[name]:5.2f} s = {best[name] / steps * 1e3:5.1f} ms per step "
              f"({100 * (best[name] / base - 1):+6.1f}%)")


if __name__ == "__main__":
    main()
