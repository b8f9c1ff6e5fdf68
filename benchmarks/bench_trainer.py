"""Calibration overhead inside the Lightning trainer, end to end.

Same synthetic data (M=4 views of 512 features, 8192 training instances, 50% MCAR), same
2-layer MLP heads (512 -> 512 -> d=256), batch 512, PMRL loss: seconds per training epoch
of ``pmrl-drop`` (no calibration) against ``calmrl`` with each calibrator schedule
(``epoch``: an EM refit over the cached embeddings before every epoch, ``em_iters``
iterations; ``step``: stochastic EM inside every training step), for k = d/8 and d/2.
Calibration starts at the first epoch (no warm-up); validation is off. Prints the
overhead of each as a fraction of the baseline epoch.
"""

from __future__ import annotations

import tempfile

from calmrl.train import load_config, run
from common import machine

BASE = ["data.dataset=synthetic", "data.synthetic_n=11704", "data.synthetic_dims=[512,512,512,512]",
        "data.synthetic_latent=32", "model.embed_dim=256", "model.hidden_dim=512", "train.batch_size=512",
        "train.progress=false", "train.check_val_every=1000", "calibrator.warmup_epochs=0", "train.epochs=3"]


def seconds_per_epoch(overrides: list[str], method: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, BASE + overrides + [f"output_dir={out}"])
        res = run(cfg, method=method)
    return res["train_seconds"] / res["epochs"]


def main():
    print(machine())
    base = seconds_per_epoch([], "pmrl-drop")
    print(f"pmrl-drop (no calibration): {base:.2f} s per epoch of {8192 // 512} steps")
    for k in (32, 128):
        for name, extra in (("epoch schedule, em_iters=10 (default)", ["calibrator.em_iters=10"]),
                            ("epoch schedule, em_iters=1", ["calibrator.em_iters=1"]),
                            ("step schedule", ["calibrator.schedule=step"])):
            t = seconds_per_epoch([f"calibrator.latent_dim={k}"] + extra, "calmrl")
            print(f"calmrl k={k:3d} {name:40s} {t:.2f} s per epoch, overhead {100 * (t / base - 1):5.1f}%")


if __name__ == "__main__":
    main()
