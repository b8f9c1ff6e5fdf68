"""Calibration overhead per training step (B=512, d=256, M=4, 2-layer MLP heads).

Way A: one encoder training step (forward of 4 MLP heads, PMRL loss, backward, AdamW).
Way B: the calibration work of the same step, as ``CalMRLModule.training_step`` does it in the
``step`` schedule: one E-step, imputation of the missing columns from it, sufficient
statistics from the same posterior, M-step. Also the ``epoch`` schedule's per-step work
(E-step + imputation; its M-steps run once per epoch). Prints B / A.
"""

from __future__ import annotations

import torch

from calmrl.core import SharedLatentCalibrator, pmrl_loss
from calmrl.train.config import MethodConfig
from calmrl.train.methods import fill_missing
from calmrl.train.encoders import MultiModalEncoder
from common import best_time, machine


def main(B=512, d=256, M=4, d_in=512, hidden=512, k=128):
    torch.manual_seed(0)
    enc = MultiModalEncoder.mlp([d_in] * M, [f"m{i}" for i in range(M)], d, hidden, 2)
    opt = torch.optim.AdamW(enc.parameters(), 1e-3)
    views = [torch.randn(B, d_in) for _ in range(M)]
    mask = torch.rand(B, M) > 0.5
    mask[:, 0] = True
    cal = SharedLatentCalibrator(M, d, k)
    with torch.no_grad():
        cal.init_from_data(enc(views, mask), mask)

    def train_step():
        A = enc(views, mask)
        loss = pmrl_loss(A, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    A = enc(views, mask).detach()

    method = MethodConfig(name="calmrl")

    def calibration(m_step_every=1):
        """``m_step_every`` consecutive steps of the step schedule (0: the epoch schedule's
        per-step work, no statistics and no M-step)."""
        with torch.no_grad():
            total = None
            for _ in range(max(1, m_step_every)):
                post = cal.posterior(A, mask, validate=False)      # factors cached between M-steps
                fill_missing(A, mask, cal, method, posterior=post)
                if m_step_every:
                    st = cal.sufficient_stats(A, mask, post, validate=False)
                    total = st if total is None else total + st
            if m_step_every:
                cal.m_step(total)

    t_step = best_time(train_step, 10)
    t_cal, t_epoch = best_time(calibration, 20), best_time(lambda: calibration(0), 20)
    t_cal4 = best_time(lambda: calibration(4), 10) / 4
    print(machine()) if k == 32 else None
    print(f"B={B} d={d} M={M} k={k}, MLP {d_in}->{hidden}->{d}: training step {t_step * 1e3:.1f} ms; "
          f"step schedule: calibration {t_cal * 1e3:.1f} ms = {100 * t_cal / t_step:.1f}% of a step "
          f"(M-step every 4 batches: {t_cal4 * 1e3:.1f} ms = {100 * t_cal4 / t_step:.1f}%); "
          f"epoch schedule per step (E-step + imputation): {t_epoch * 1e3:.1f} ms = {100 * t_epoch / t_step:.1f}%")


if __name__ == "__main__":
    for k in (32, 128):
        main(k=k)
