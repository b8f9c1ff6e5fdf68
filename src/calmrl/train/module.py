"""Lightning module implementing the bi-step schedule.

Step 1 (encoders fixed, no gradient): E-step, sufficient statistics, closed-form M-step of
the calibrator -- per batch as stochastic EM (``schedule: step``, the default: the batch's
statistics, from the same E-step as its imputations, blended into running statistics by
an EMA; the M-step follows the optimiser step), once per epoch over the re-embedded
training data (``schedule: epoch``, ``em_iters`` EM iterations), or once after the warm-up
(``schedule: frozen``). Statistics are summed over processes before each M-step, so the
update is the same as on one process holding the global data.

Step 2 (calibrator fixed): the alignment loss over observed + imputed columns trains the
encoders by back-propagation.
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.distributed as dist

from .. import objectives
from ..core import MaskedCompleter, MultimodalVAE, SharedLatentCalibrator, family_z, gate_weights, imputation_gain
from ..core.distributed import all_reduce_stats, gather_nograd, gather_with_grad, global_loss_scale, is_distributed
from .config import Config, calibrates, config_to_dict
from .encoders import MultiModalEncoder
from .evaluate import validation_table
from .methods import alignment_loss, fill_missing

__all__ = ["CalMRLModule", "resolve_gate"]


def resolve_gate(gate: str, init_ckpt: dict | None) -> str:
    """``method.gate=auto``: ``none`` when continuing from a checkpoint whose calibrator was fitted
    on complete data by :func:`~calmrl.train.calibrate.calibrate_checkpoint` (its imputations carry
    cross-modal relations learned where nothing was missing, which the incomplete data cannot
    measure), else ``identification``. Chosen on the validation splits of the benchmark suite (README)."""
    if gate != "auto":
        return gate
    return "none" if init_ckpt is not None and init_ckpt.get("calmrl_calibrated") else "identification"


class CalMRLModule(L.LightningModule):
    def __init__(self, cfg: Config, dims: list[int], names: list[str], encoder: MultiModalEncoder | None = None):
        super().__init__()
        self.cfg = cfg
        self.names = list(names)
        self.dims = [int(x) for x in dims]
        d = cfg.model.embed_dim
        self.encoder = encoder or MultiModalEncoder.mlp(dims, names, d, cfg.model.hidden_dim, cfg.model.layers,
                                                        cfg.model.dropout, shared=cfg.model.shared_encoders)
        k = cfg.calibrator.latent_dim or max(1, d // 2)
        self.calibrator = SharedLatentCalibrator(len(names), d, k, names=names, jitter=cfg.calibrator.jitter,
                                                 sigma2_floor=cfg.calibrator.sigma2_floor,
                                                 sigma2_floor_rel=cfg.calibrator.sigma2_floor_rel,
                                                 w_prior=cfg.calibrator.w_prior)
        M = len(names)
        c = cfg.calibrator
        self.completer = None            # a nonlinear completion backend in place of the linear model
        if calibrates(cfg.method) and c.backend == "mlp":
            self.completer = MaskedCompleter(M, d, c.mlp_hidden, hide_rate=c.hide_rate)
        elif calibrates(cfg.method) and c.backend in ("mvae", "mopoe"):
            self.completer = MultimodalVAE(M, d, k, c.mlp_hidden, kind=c.backend, hide_rate=c.hide_rate)
        n_stats = M + M * d + M * d * k + M * k + M * k * k + M
        self.register_buffer("running_stats", torch.zeros(n_stats))
        self.register_buffer("running_valid", torch.tensor(False))
        # informativeness gate (method.gate): weight of each modality's imputed columns, 0 until measured
        self.register_buffer("impute_weight", torch.zeros(M))
        self.gate_history: list[dict] = []
        # "auto" with no checkpoint to continue from; the runner resolves it before building the
        # module, with the checkpoint of train.init_from
        self.gate = resolve_gate(cfg.method.gate, None)
        self.gate_loader = None   # a DataLoader over the validation split for the gate
        self.anchor_index = names.index(cfg.method.anchor) if cfg.method.anchor else 0
        # the objective's own parameters (a learned temperature tau = exp(log_tau) >= 0.01; SigLIP's bias)
        self.temperature = objectives.get(cfg.method.name).make_parameters(cfg.method)
        self._val_A: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.standardization = None   # [(mean, std)] per modality, set by the runner; saved in checkpoints
        self._batch_ll = None   # step schedule: (sum, count) of this epoch's batch log-likelihoods
        self._pending = None    # step schedule: (summed statistics, number of batches) awaiting an M-step
        self._epoch_sums: dict[str, torch.Tensor] = {}   # training logs of this epoch, x batch size
        self._epoch_count = 0

    # ------------------------------------------------------------------ schedule
    @property
    def uses_calibrator(self) -> bool:
        return calibrates(self.cfg.method)

    @property
    def calibrated(self) -> bool:
        if not self.uses_calibrator or self.current_epoch < self.cfg.calibrator.warmup_epochs:
            return False
        return self.completer is not None or bool(self.calibrator.initialized)

    @torch.no_grad()
    def seed_calibrator(self, A: torch.Tensor, mask: torch.Tensor, em_iters: int = 200, tol: float = 1e-7) -> list[float]:
        """The absorb workflow's step (b): fit the calibrator by EM to convergence on embeddings
        ``A`` (e.g. the complete training data of a pretrained model), then seed the running
        statistics of the step schedule with that fit's statistics, scaled to one batch, so
        that stochastic EM continues *from* the fit instead of replacing it with the first
        batch's statistics. Returns the EM log-likelihood history."""
        cal = self.calibrator
        A = A.to(cal.W.dtype)
        cal.fit(A, mask, n_iter=em_iters, tol=tol, init=None if bool(cal.initialized) else "pca")
        stats, _ = cal.accumulate(A, mask)
        per_batch = stats.scale(min(self.cfg.train.batch_size, A.shape[0]) / A.shape[0])
        self.running_stats.copy_(per_batch.flatten().to(self.running_stats.dtype))
        self.running_valid.fill_(True)
        return list(cal.history_)

    def _broadcast_params(self):
        if is_distributed():
            for t in (self.calibrator.W, self.calibrator.mu, self.calibrator.sigma2):
                dist.broadcast(t, 0)
            self.calibrator.invalidate_cache()

    def _embed_batches(self, loader):
        for batch in loader:
            views = [v.to(self.device) for v in batch["views"]]
            mask = batch["mask"].to(self.device)
            yield self.encoder(views, mask).to(self.calibrator.W.dtype), mask

    @torch.no_grad()
    def refit_calibrator(self, loader, em_iters: int) -> list[float]:
        """Bi-step (1): embed the training set with frozen encoders, then ``em_iters`` EM iterations.

        Embeddings are cached for the refit when ``N*M*d <= calibrator.max_cached``; otherwise
        every EM iteration re-embeds the data batch by batch, so memory stays flat in N.
        Statistics and likelihoods are summed over processes before each M-step."""
        was = self.encoder.training
        self.encoder.eval()
        cal = self.calibrator
        n_local = len(loader.dataset) if hasattr(loader, "dataset") else None
        cached = n_local is not None and n_local * cal.M * cal.D <= self.cfg.calibrator.max_cached
        if cached:
            A, mask = (torch.cat(t) for t in zip(*self._embed_batches(loader)))
            passes = lambda: [(A, mask)]  # noqa: E731
        else:
            passes = lambda: self._embed_batches(loader)  # noqa: E731
        if not bool(cal.initialized):
            first = [(a, m) for a, m in passes()] if cached else []
            if not cached:
                for a, m in passes():
                    first.append((a, m))
                    if sum(x.shape[0] for x, _ in first) >= 20000:
                        break
            cal.init_from_data(torch.cat([a for a, _ in first]), torch.cat([m for _, m in first]))
            self._broadcast_params()
        history = []
        for _ in range(em_iters):
            total, ll, n = None, 0.0, 0
            for a, m in passes():
                st, l_ = cal.accumulate(a, m, batch_size=8192)
                total = st if total is None else total + st
                ll, n = ll + l_, n + a.shape[0]
            t = torch.tensor([ll, float(n)], dtype=torch.float64, device=self.device)
            if is_distributed():
                dist.all_reduce(t)
            history.append(float(t[0] / t[1]))
            cal.m_step(all_reduce_stats(total))
        self.encoder.train(was)
        return history

    def on_train_epoch_start(self):
        # Every epoch's randomness (dropout, EM subsampling) is a function of (seed, epoch, rank)
        # alone, so a run resumed from a checkpoint repeats the uninterrupted run exactly.
        torch.manual_seed(self.cfg.train.seed * 100_003 + self.current_epoch * 1009 + self.global_rank)
        c = self.cfg.calibrator
        refit = self.uses_calibrator and self.completer is None and c.schedule != "step" and self.current_epoch >= c.warmup_epochs \
            and not (c.schedule == "frozen" and bool(self.calibrator.initialized))
        if refit:
            iters = c.em_iters * (5 if c.schedule == "frozen" else 1)
            history = self.refit_calibrator(self.trainer.train_dataloader, iters)
            self.em_history = getattr(self, "em_history", []) + [(self.current_epoch, h) for h in history]
            self.log("calib/loglik", history[-1], on_epoch=True, sync_dist=False)
            self.log("calib/sigma2_mean", float(self.calibrator.sigma2.mean()), on_epoch=True)
        if self.completer is not None and self.uses_calibrator and self.current_epoch >= c.warmup_epochs:
            loss = self.refit_completer(self.trainer.train_dataloader, c.mlp_epochs)
            self.em_history = getattr(self, "em_history", []) + [(self.current_epoch, -loss)]
            self.log("calib/completion_loss", loss, on_epoch=True, sync_dist=False)
        self._update_gate()

    def refit_completer(self, loader, passes: int, batch_size: int = 256, lr: float = 1e-3) -> float:
        """Bi-step (1) for the ``mlp`` backend: embed the training set with frozen encoders and
        train the completer by masked completion for ``passes`` passes over it (Adam, warm-started
        from its previous fit); rank 0's parameters are broadcast. Returns the last pass's mean loss."""
        was = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            A, mask = (torch.cat(t) for t in zip(*self._embed_batches(loader)))
        self.encoder.train(was)
        A = A.float()
        comp = self.completer
        opt = torch.optim.Adam(comp.parameters(), lr=lr)
        g = torch.Generator(device=A.device).manual_seed(self.cfg.train.seed * 7919 + self.current_epoch)
        last = 0.0
        with torch.enable_grad():
            for _ in range(passes):
                order = torch.randperm(A.shape[0], generator=g, device=A.device)
                tot, nb = 0.0, 0
                for s in range(0, A.shape[0], batch_size):
                    idx = order[s: s + batch_size]
                    loss = comp.completion_loss(A[idx], mask[idx], generator=g)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot, nb = tot + float(loss.detach()), nb + 1
                last = tot / max(nb, 1)
        if is_distributed():
            for p_ in comp.parameters():
                dist.broadcast(p_.data, 0)
        return last

    def _update_gate(self):
        """Informativeness gate (``method.gate = identification``): measure on the validation
        split how much better each modality's imputations identify their instances than the
        observed-only fallback (:func:`calmrl.core.gate.imputation_gain`) and set the weights
        of imputed columns; rank 0's measurement is broadcast."""
        if self.gate != "identification" or not self.calibrated:
            return
        loader = self.gate_loader         # the validation split, set by the runner
        if loader is None:
            loaders = self.trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            return
        was = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            parts = [(self.encoder([v.to(self.device) for v in b["views"]], b["mask"].to(self.device)).float().cpu(),
                      b["mask"].cpu()) for b in loader]
        self.encoder.train(was)
        A, mask = torch.cat([a for a, _ in parts]), torch.cat([m for _, m in parts])
        gain = imputation_gain(self.calibrator if self.completer is None else self.completer.cpu(), A, mask)
        if self.completer is not None:
            self.completer.to(self.device)
        # one family of tests per run: M modalities at each calibrated epoch
        n_tests = len(self.names) * max(1, self.cfg.train.epochs - self.cfg.calibrator.warmup_epochs)
        z = family_z(self.cfg.method.gate_alpha, n_tests)
        w = gate_weights(gain, z=z).to(self.impute_weight)
        if is_distributed():
            w = w.to(self.device)
            dist.broadcast(w, 0)
        self.impute_weight.copy_(w.to(self.impute_weight))
        self.gate_history.append({"epoch": int(self.current_epoch), "weights": w.tolist(),
                                  "id_imputed": gain["id_imputed"].tolist(), "id_fallback": gain["id_fallback"].tolist(),
                                  "id_se": gain["id_se"].tolist(), "z": z})
        for m, name in enumerate(self.names):
            self.log(f"gate/{name}", float(w[m]), on_epoch=True, sync_dist=False)

    def _stochastic_m_step(self, stats, n_batches: int = 1):
        r"""Step schedule: sum the statistics of the last ``n_batches`` batches over processes,
        blend their per-batch mean into the running statistics with weight
        :math:`1-(1-\eta)^n` (as ``n`` EMA updates of weight :math:`\eta` would give it), and
        take the closed-form M-step (which is invariant to a common scale of the statistics)."""
        stats = all_reduce_stats(stats)
        if n_batches > 1:
            stats = stats.scale(1.0 / n_batches)
        if bool(self.running_valid):
            running = stats.unflatten_like(self.running_stats.to(stats.n.dtype))
            stats = running.ema(stats, 1.0 - (1.0 - self.cfg.calibrator.momentum) ** n_batches)
        self.running_stats.copy_(stats.flatten().to(self.running_stats.dtype))
        self.running_valid.fill_(True)
        self.calibrator.m_step(stats)

    # ------------------------------------------------------------------ steps
    def forward(self, views, mask):
        return self.encoder(views, mask)

    def on_train_batch_start(self, batch, batch_idx):
        # dropout masks depend on (seed, step, rank) only: resumed runs repeat exactly
        seed = self.cfg.train.seed * 100_003 + self.global_step * 7919 + self.global_rank + 1
        # the generators dropout draws from, seeded directly: torch.manual_seed also queues a lazy
        # seeding of every CUDA device, capturing a stack trace each time (2 ms a step on CPU)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def training_step(self, batch, batch_idx):
        views, mask = batch["views"], batch["mask"]
        A = self.encoder(views, mask)
        if "known" in batch:   # pmrl-truefill: hidden cells get the true embeddings of their inputs, detached
            hidden = batch["known"] & ~mask
            if bool(hidden.any()):
                with torch.no_grad():
                    A_hidden = self.encoder(views, hidden)
                A = torch.where(hidden[..., None], A_hidden.to(A.dtype), A)
            mask = batch["known"]
        cal, c = self.calibrator, self.cfg.calibrator
        stepwise = self.uses_calibrator and self.completer is None and c.schedule == "step" and self.current_epoch >= c.warmup_epochs
        if stepwise and not bool(cal.initialized):
            cal.init_from_data(A.detach().to(cal.W.dtype), mask)
            self._broadcast_params()
        weights = None
        calibrated = self.calibrated
        if self.completer is not None:   # a nonlinear backend: fitted at the epoch's start (refit_completer)
            if calibrated:
                with torch.no_grad():
                    pred = self.completer(A.detach(), mask).to(A.dtype)
                A = torch.where(mask[..., None], A, pred)
            calibrated_linear = False
        else:
            calibrated_linear = calibrated
        if calibrated_linear:
            # bi-step (2) on this process's rows: one E-step under the current parameters serves
            # the imputation and, in the step schedule, the statistics of the M-step that follows
            # the optimiser step (on_train_batch_end)
            src = A if self.cfg.method.impute_grad else A.detach()
            post = cal.posterior(src.to(cal.W.dtype), mask, validate=False)
            if stepwise:
                A_det = A.detach().to(cal.W.dtype)
                stats = cal.sufficient_stats(A_det, mask, post, validate=False)
                pending = self._pending
                self._pending = (stats, 1) if pending is None else (pending[0] + stats, pending[1] + 1)
                with torch.no_grad():   # of the batch, before its M-step (post may carry a graph)
                    ll = cal.log_likelihood(A_det, mask, post, validate=False)
                step = torch.stack([ll.sum(), ll.new_tensor(float(ll.numel()))])
                self._batch_ll = step if self._batch_ll is None else self._batch_ll + step
            A, weights = fill_missing(A, mask, cal, self.cfg.method, posterior=post)
        if calibrated and self.gate != "none":    # imputed columns (any backend) weighted by their measured gain
            gate = torch.where(mask, torch.ones_like(mask, dtype=A.dtype), self.impute_weight.to(A.dtype))
            weights = gate if weights is None else weights * gate
        # contrastive terms see the global batch: other ranks' rows enter as constants, and the
        # loss is scaled by the world size so that DDP's gradient average is the global gradient
        A_all, mask_all = gather_with_grad(A), gather_nograd(mask)
        weights_all = gather_nograd(weights) if weights is not None else None
        loss, logs = alignment_loss(A_all, mask_all, self.cfg.method, anchor=self.anchor_index,
                                    calibrated=calibrated, column_weights=weights_all, params=self.temperature)
        if self.temperature is not None:
            logs["tau"] = self.temperature.tau.detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at epoch {self.current_epoch}, step {batch_idx}")
        # the epoch's batch-size-weighted means, summed here and logged once at the epoch's end:
        # what self.log(on_epoch=True, batch_size=bs) reports, without its ~1.5 ms per call and step
        bs = mask_all.shape[0]
        sums = self._epoch_sums
        for k, v in (("loss", loss.detach()), *logs.items()):
            term = torch.as_tensor(v).detach().float() * bs
            sums[k] = term if k not in sums else sums[k] + term
        self._epoch_count += bs
        return loss * global_loss_scale()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pending = self._pending
        if pending is None:
            return
        # bi-step (1), step schedule: after the encoders' update, every m_step_every batches and
        # at the end of the epoch (so that nothing is pending when a checkpoint is written)
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if pending[1] >= self.cfg.calibrator.m_step_every or last:
            self._pending = None
            self._stochastic_m_step(*pending)

    def on_train_epoch_end(self):
        if self._batch_ll is not None:   # step schedule: mean log-likelihood of this epoch's batches
            mean_ll = float(self._batch_ll[0] / self._batch_ll[1])
            self.em_history = getattr(self, "em_history", []) + [(self.current_epoch, mean_ll)]
            self.log("calib/loglik", mean_ll, on_epoch=True, sync_dist=False)
            self.log("calib/sigma2_mean", float(self.calibrator.sigma2.mean()), on_epoch=True)
        self._batch_ll = None
        sums, n = self._epoch_sums, self._epoch_count
        self._epoch_sums, self._epoch_count = {}, 0
        for k, total in sums.items():
            self.log(f"train/{k}", total / n, prog_bar=k == "loss", on_step=False, on_epoch=True, sync_dist=False)
        if "loss" in sums:
            self.loss_history = getattr(self, "loss_history", []) + [float(sums["loss"] / n)]

    def validation_step(self, batch, batch_idx):
        self._val_A.append((self.encoder(batch["views"], batch["mask"]).detach().float().cpu(), batch["mask"].cpu()))

    def on_validation_epoch_end(self):
        if not self._val_A:
            return
        A = torch.cat([a for a, _ in self._val_A])
        mask = torch.cat([m for _, m in self._val_A])
        self._val_A = []
        if is_distributed():
            A = self.all_gather(A.to(self.device)).reshape(-1, *A.shape[1:]).cpu()
            mask = self.all_gather(mask.to(self.device)).reshape(-1, mask.shape[1]).cpu()
        e = self.cfg.eval         # scored as validation_score scores it (bounded galleries included)
        table = validation_table(A, self.names, mask, e)
        # the learning curve (epoch, validation R@1), kept in the checkpoint: auto's curves read it
        self.val_history = [*getattr(self, "val_history", []), (int(self.current_epoch) + 1,
                                                                 float(table["average"]["R@1"]))]
        self.log("val/R@1", table["average"]["R@1"], prog_bar=True, sync_dist=False)
        self.log("val/R@5", table["average"]["R@5"], sync_dist=False)

    def configure_optimizers(self):
        t = self.cfg.train
        groups = [{"params": list(self.encoder.parameters())}]
        if self.temperature is not None:        # the loss's own parameters: no weight decay on them
            own = [p for p in self.temperature.parameters() if p.requires_grad]
            if own:
                groups.append({"params": own, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.epochs))
        return {"optimizer": opt, "lr_scheduler": sched}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["calmrl_config"] = config_to_dict(self.cfg)
        checkpoint["calmrl_names"] = self.names
        checkpoint["calmrl_dims"] = self.dims
        # what inference needs without the training data: the training split's standardisation
        checkpoint["calmrl_standardization"] = self.standardization
        # what it was trained on (eval refuses other data), and the label values in code order
        checkpoint["calmrl_fingerprint"] = getattr(self, "data_fingerprint", None)
        checkpoint["calmrl_classes"] = getattr(self, "classes", None)
        checkpoint["calmrl_columns"] = getattr(self, "columns", None)    # each view's feature column names
        checkpoint["calmrl_cwd"] = os.getcwd()          # relative data paths of the config are relative to it
        checkpoint["calmrl_history"] = {"loss": list(getattr(self, "loss_history", [])),
                                        "em": list(getattr(self, "em_history", [])), "gate": list(self.gate_history),
                                        "val": [list(x) for x in getattr(self, "val_history", [])]}

    def on_load_checkpoint(self, checkpoint):
        hist = checkpoint.get("calmrl_history") or {}
        self.loss_history = list(hist.get("loss", []))
        self.em_history = [tuple(x) for x in hist.get("em", [])]
        self.gate_history = list(hist.get("gate", []))
        self.val_history = [tuple(x) for x in hist.get("val", [])]
        self.columns = checkpoint.get("calmrl_columns")
