"""End-to-end runs: data preparation, Lightning ``Trainer`` set-up, evaluation, results.

``run(cfg)`` trains one method and returns (and writes) its results; it resumes from
``<output_dir>/<method>/checkpoints/last.ckpt`` when ``resume=True``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from ..data import (FeatureStore, MultiViewData, MultiViewDataset, collate_views, load_uci_mfeat, mcar_mask,
                    paired_subsets_mask, stratified_split, synthetic_multiview)
from .config import OWN_SIMILARITY, Config, config_to_dict
from .evaluate import anchor_report, embed_data, evaluate_embeddings, knn_accuracy
from .module import CalMRLModule

__all__ = ["Splits", "prepare_data", "run", "AtomicCheckpointIO", "CheckpointError", "load_checkpoint"]

log = logging.getLogger("calmrl")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.tmp`` then ``os.replace``s it: a crash mid-write never damages the
    previous checkpoint. Loading a corrupt file raises :class:`CheckpointError`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path, map_location)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                              "use an earlier checkpoint") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no model state (not a calmrl checkpoint)")
    return ckpt


@dataclass
class Splits:
    train: MultiViewData        # with the simulated missingness
    train_full: MultiViewData   # the same instances, complete (for diagnostics only)
    val: MultiViewData
    test: MultiViewData
    names: list[str]
    dims: list[int]
    standardization: list | None = None  # per-modality (mean, std) of the training split, or None


def _load_source(cfg: Config) -> MultiViewData:
    d = cfg.data
    if d.dataset == "uci_mfeat":
        return load_uci_mfeat(d.path or None, d.views or None)
    if d.dataset == "synthetic":
        data, _ = synthetic_multiview(d.synthetic_n, d.synthetic_dims, d.synthetic_latent, d.synthetic_noise,
                                      seed=cfg.train.seed)
        return data
    data = FeatureStore(d.path).read()
    if d.views:
        idx = [data.index(v) for v in d.views]
        data = MultiViewData([data.views[i] for i in idx], [data.names[i] for i in idx], data.mask[:, idx],
                             data.ids, data.labels, data.meta)
    return data


def prepare_data(cfg: Config, method: str | None = None) -> Splits:
    """Split (stratified), standardise on the training split, simulate missingness on the
    training split only (none for ``oracle``). Val/test keep their complete instances."""
    method = method or cfg.method.name
    data = _load_source(cfg)
    seed = cfg.train.seed
    tr, va, te = stratified_split(data.n, data.labels, cfg.data.val_fraction, cfg.data.test_fraction, seed)
    train, val, test = data.subset(tr), data.subset(va), data.subset(te)
    # evaluation needs complete instances
    val = val.subset(np.nonzero(val.mask.all(1))[0])
    test = test.subset(np.nonzero(test.mask.all(1))[0])
    if test.n < 2:
        raise ValueError("the test split has fewer than 2 complete instances; retrieval cannot be evaluated")
    stats = None
    if cfg.data.standardize:
        train, stats = train.standardize()
        val, _ = val.standardize(stats)
        test, _ = test.standardize(stats)
    if cfg.data.train_part:
        i, n_parts = cfg.data.train_part
        train = train.subset(np.array_split(np.arange(train.n), n_parts)[i])
    M = len(data.names)
    miss = cfg.data.missing
    train_full = train
    if method != "oracle" and miss.kind != "none":
        if miss.kind == "mcar":
            sim = mcar_mask(train.n, M, miss.rate, min_observed=min(miss.min_observed, M), seed=seed + 1)
        else:
            subsets = [[data.index(n) if isinstance(n, str) else int(n) for n in s] for s in miss.subsets]
            sim = paired_subsets_mask(train.n, M, subsets, complete_fraction=miss.complete_fraction, seed=seed + 1)
        mask = train.mask & sim
        keep = mask.any(1)
        train = train.with_mask(mask).subset(np.nonzero(keep)[0])
        train_full = train_full.subset(np.nonzero(keep)[0])
    never = [data.names[m] for m in range(M) if not train.mask[:, m].any()]
    if never:
        raise ValueError(f"modality(ies) {never} are never observed in the training split")
    return Splits(train, train_full, val, test, list(data.names), data.dims, stats)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``; Lightning calls
    :meth:`set_epoch` each epoch, so a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def _loader(data: MultiViewData, cfg: Config, shuffle: bool) -> DataLoader:
    sampler = EpochShuffleSampler(data.n, cfg.train.seed) if shuffle else None
    return DataLoader(MultiViewDataset(data), batch_size=cfg.train.batch_size, sampler=sampler,
                      collate_fn=collate_views, num_workers=cfg.train.num_workers,
                      drop_last=shuffle and data.n > cfg.train.batch_size,
                      persistent_workers=cfg.train.num_workers > 0)


def _quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")


def build_trainer(cfg: Config, run_dir: Path, *, max_epochs: int | None = None, extra_callbacks=()) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = cfg.train
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True)
    loggers = [CSVLogger(run_dir, name="logs", version="")]
    try:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ModuleNotFoundError:
        pass
    return L.Trainer(
        max_epochs=max_epochs or t.epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, logger=loggers, callbacks=[ckpt, *extra_callbacks],
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress, enable_model_summary=False,
        check_val_every_n_epoch=t.check_val_every, log_every_n_steps=1, deterministic=False,
        num_sanity_val_steps=0)


def busy_cores(window: float = 0.25) -> float:
    """Cores kept busy by *other* processes over a short window: the machine's busy time from
    ``/proc/stat`` minus this process's CPU time (0 where ``/proc/stat`` is absent)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4], time.process_time()
    try:
        t0, i0, p0 = snap()
        time.sleep(window)
        t1, i1, p1 = snap()
    except (OSError, ValueError):
        return 0.0
    if t1 <= t0:
        return 0.0
    ncpu = os.cpu_count() or 1
    busy = ncpu * (1 - (i1 - i0) / (t1 - t0))            # cores busy, all processes
    return max(0.0, busy - (p1 - p0) / window)


def choose_threads(cfg: Config) -> int:
    """Intra-op threads for this process: ``train.threads`` if set; else the cores this process
    may use that other processes are not keeping busy right now, divided among the processes
    of its node (at least 1). On a shared machine, threads that compete with a busy core wait
    on each other at every parallel region (OpenMP), which made training 16x slower than one
    thread; on an idle one all cores are used (``benchmarks/bench_threads.py``)."""
    if cfg.train.threads:
        return cfg.train.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if isinstance(cfg.train.devices, int) and cfg.train.accelerator == "cpu":
        local = max(local, cfg.train.devices)
    free = cores - int(round(busy_cores()))
    return max(1, free // max(1, local))


def run(cfg: Config, *, method: str | None = None, resume: bool = False, splits: Splits | None = None,
        max_epochs: int | None = None, extra_callbacks=()) -> dict:
    """Train one method and evaluate it; writes ``results.json`` under ``output_dir/method``."""
    _quiet_lightning()
    method = method or cfg.method.name
    cfg = replace(cfg, method=replace(cfg.method, name=method))
    run_dir = Path(cfg.output_dir) / method
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    splits = splits or prepare_data(cfg, method)
    torch.set_num_threads(choose_threads(cfg))
    model = CalMRLModule(cfg, splits.dims, splits.names)
    if cfg.train.init_from:
        # continual training: encoders, calibrator parameters and statistics warm-started
        state = load_checkpoint(cfg.train.init_from)["state_dict"]
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # size mismatches
            raise CheckpointError(f"{cfg.train.init_from} does not fit this model: {str(e)[:300]}") from None
        if missing or unexpected:
            raise CheckpointError(f"{cfg.train.init_from} does not fit this model (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}): modalities or sizes differ")
    trainer = build_trainer(cfg, run_dir, max_epochs=max_epochs, extra_callbacks=extra_callbacks)
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    resume_from = None
    if resume and ckpt_path.exists():
        resume_from = str(ckpt_path)
    (run_dir / "config.yaml").write_text(_yaml(config_to_dict(cfg)))
    t0 = time.time()
    trainer.fit(model, _loader(splits.train, cfg, True), _loader(splits.val, cfg, False), ckpt_path=resume_from)
    train_time = time.time() - t0
    results = evaluate_model(model, splits, cfg)
    results.update({"method": method, "train_seconds": train_time, "epochs": trainer.current_epoch,
                    "threads": torch.get_num_threads(),
                    "em_history": getattr(model, "em_history", []),
                    "loss_history": getattr(model, "loss_history", []),
                    "missing_fraction_train": float(1 - splits.train.mask.mean())})
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def evaluate_model(model: CalMRLModule, splits: Splits, cfg: Config) -> dict:
    enc = model.encoder
    e = cfg.eval
    test_A, _ = embed_data(enc, splits.test)
    own = OWN_SIMILARITY.get(cfg.method.name, "cosine")
    out = evaluate_embeddings(test_A, splits.names, ks=tuple(e.ks), chunk_size=e.chunk_size, backend=e.backend,
                              similarity=own)
    val_A, _ = embed_data(enc, splits.val)
    val = evaluate_embeddings(val_A, splits.names, ks=tuple(e.ks), chunk_size=e.chunk_size, backend=e.backend,
                              similarity=own)
    out["val_average"], out["val_own_average"] = val["pairs"]["average"], val["pairs_own"]["average"]
    # cells hidden by the simulator are known (train_full); cells missing in the data itself are not
    train_full_A, full_mask = embed_data(enc, splits.train_full)
    train_mask = torch.as_tensor(splits.train.mask)
    if splits.train.labels is not None:
        out["knn_accuracy"] = knn_accuracy(train_full_A, train_mask, splits.train.labels, test_A,
                                           splits.test.labels, e.knn_k)
    cal = None
    if model.uses_calibrator and bool(model.calibrator.initialized):
        cal = model.calibrator
    known = full_mask.all(1)
    out["anchor"] = anchor_report(train_full_A[known], train_mask[known], cal, em_iters=cfg.calibrator.em_iters * 3,
                                  latent_dim=model.calibrator.k)
    return out


def _yaml(d: dict) -> str:
    import yaml
    return yaml.safe_dump(d, sort_keys=False)


def format_table(results: list[dict]) -> str:
    """One row per method: pairwise retrieval average (by cosine, and by the method's own
    similarity), fused queries, kNN and anchor shift."""
    head = (f"{'method':<17}{'R@1':>7}{'own R@1':>9}{'R@5':>7}{'R@10':>7}{'MedR':>7}{'fused R@1':>11}{'kNN acc':>9}"
            f"{'shift obs':>11}{'shift cal':>11}{'imp cos':>9}{'time s':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        a, f, an = r["pairs"]["average"], r["fused"]["average"], r["anchor"]
        own = r.get("pairs_own", r["pairs"])["average"]["R@1"]
        lines.append(f"{r['method']:<17}{a['R@1']:>7.2f}{own:>9.2f}{a['R@5']:>7.2f}{a['R@10']:>7.2f}{a['MedR']:>7.1f}"
                     f"{f['R@1']:>11.2f}{r.get('knn_accuracy', float('nan')):>9.2f}"
                     f"{an['shift_observed_deg']:>11.2f}{an['shift_calibrated_deg']:>11.2f}"
                     f"{an.get('imputation_cosine', float('nan')):>9.3f}{r['train_seconds']:>8.1f}")
    return "\n".join(lines)
