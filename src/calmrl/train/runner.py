"""End-to-end runs: data preparation, Lightning ``Trainer`` set-up, evaluation, results.

``run(cfg)`` trains one method and returns (and writes) its results; it resumes from
``<output_dir>/<method>/checkpoints/last.ckpt`` when ``resume=True``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

try:
    import fcntl
except ImportError:  # not on POSIX: no lock
    fcntl = None

from ..core.distributed import rank as process_rank
from ..data import suite
from ..data.fingerprint import compare as compare_fingerprints
from ..data.fingerprint import fingerprint, split_fingerprint
from ..data import (FeatureStore, MultiViewData, MultiViewDataset, collate_views, load_tables, load_uci_mfeat,
                    mcar_mask, paired_subsets_mask, split_parts, stratified_split, synthetic_multiview)
from .config import OWN_SIMILARITY, Config, config_to_dict, default_output_dir
from .evaluate import anchor_report, embed_data, evaluate_embeddings, knn_accuracy
from .module import CalMRLModule, resolve_gate

__all__ = ["Splits", "prepare_data", "run", "AtomicCheckpointIO", "CheckpointError", "RunLockedError", "load_checkpoint",
           "output_lock", "resume_checkpoint", "model_from_checkpoint", "calibrate_checkpoint"]

log = logging.getLogger("calmrl")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt."""


class RunLockedError(RuntimeError):
    """Another process is writing into the same output directory."""


PREVIOUS = "last.prev.ckpt"   # the checkpoint before last.ckpt, kept in case last.ckpt is damaged


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.tmp`` then ``os.replace``s it: a crash mid-write never damages the
    previous checkpoint. Loading a corrupt file raises :class:`CheckpointError`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos"
            writer = isinstance(e, OSError) or any(t in str(e) for t in ("unexpected pos", "enforce fail", "No space"))
            if not writer:
                raise
            full = getattr(e, "errno", None) == 28 or "unexpected pos" in str(e) or "No space" in str(e)
            raise OSError((f"no space left on device while writing {path}" if full else
                           f"cannot write checkpoint {path}: {str(e).splitlines()[0][:120]}")
                          + "; nothing already written was lost (the previous checkpoint is kept): free space and "
                            "rerun with --resume") from None
        if path.name == "last.ckpt" and path.exists():
            os.replace(path, path.with_name(PREVIOUS))    # the previous good one is kept
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
    train_full: MultiViewData   # the same instances before the simulator hid cells (for diagnostics only)
    val: MultiViewData          # natural missingness kept: each pair is scored where both are observed
    test: MultiViewData
    names: list[str]
    dims: list[int]
    standardization: list | None = None  # per-modality (mean, std) of the training split, or None
    classes: list | None = None          # label values, in the order of the integer labels used here
    notes: list = field(default_factory=list)   # what was done to the data, for the user
    fingerprint: dict | None = None      # the data as given and the split (calmrl.data.fingerprint)
    simulated: dict | None = None        # what the missingness simulator hid, realised (None: nothing)


def _select_views(data: MultiViewData, views: list) -> MultiViewData:
    """``data.views`` (all modalities when empty)."""
    try:
        return data.select(views) if views else data
    except ValueError as e:
        raise ValueError(f"data.views: {e}") from None


def _encode_labels(data: MultiViewData) -> tuple[MultiViewData, list | None]:
    """Labels of any type (strings, floats, negative ints) -> 0..C-1, with the class values."""
    if data.labels is None:
        return data, None
    y = np.asarray(data.labels)
    if y.dtype == object:
        if any(v is None or (isinstance(v, float) and v != v) for v in y):
            raise ValueError("some labels are missing (None/NaN); give every instance a label or none")
        y = y.astype(str)
    elif y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError("some labels are NaN; give every instance a label or none")
    classes, codes = np.unique(y, return_inverse=True)
    return (MultiViewData.unchecked(data.views, data.names, data.mask, data.ids, codes.astype(np.int64), data.meta),
            [c.item() if hasattr(c, "item") else c for c in classes])


def _load_source(cfg: Config) -> MultiViewData:
    """The configured data, not yet checked for partial views (see :func:`prepare_data`)."""
    d = cfg.data
    if d.dataset == "uci_mfeat":
        data = load_uci_mfeat(d.path or None, d.views or None)
    elif d.dataset == "synthetic":
        data, _ = synthetic_multiview(d.synthetic_n, d.synthetic_dims, d.synthetic_latent, d.synthetic_noise,
                                      seed=cfg.train.seed)
    elif d.dataset == "tables":
        data = load_tables(d.tables, d.id_column, d.label_column)
    elif d.dataset in suite.SUITE:
        data = suite.load(d.dataset, log=log.info)
    else:
        data = FeatureStore(d.path).read(validate=False)
    return _select_views(data, d.views)


def prepare_data(cfg: Config, method: str | None = None, data: MultiViewData | None = None) -> Splits:
    """Resolve partial views (``data.partial_views``), split (stratified), standardise on the
    training split, simulate missingness on the training split only (none for ``oracle``).
    Validation and test keep their natural missingness; every check runs before training."""
    method = method or cfg.method.name
    data, classes = _encode_labels(_load_source(cfg) if data is None else _select_views(data, cfg.data.views))
    fp = fingerprint(data)
    notes = list(data.meta.get("notes", []))
    policy = cfg.data.partial_views
    if policy != "fill":         # error / missing need no split statistics
        data, report = data.resolve_partial_views(policy)
        if report:
            empty = ~data.mask.any(1)
            notes.append(f"partial views treated as missing: {report}"
                         + (f"; {int(empty.sum())} instance(s) left with no view were dropped" if empty.any() else ""))
            data = data.subset(np.nonzero(~empty)[0]) if empty.any() else data
    if policy != "fill":
        data.validate()
    else:     # the fill needs the training split's means: split first, then check the filled data
        data.validate_structure()
    seed = cfg.train.seed
    tr, va, te = stratified_split(data.n, data.labels if cfg.data.stratify else None, cfg.data.val_fraction,
                                  cfg.data.test_fraction, seed)
    if policy == "fill":
        data, report = data.resolve_partial_views("fill", fill_rows=tr)
        data.validate()
        if report:
            notes.append(f"partial views filled with training-split feature means: {report}")
    train, val, test = data.subset(tr), data.subset(va), data.subset(te)
    fp["split"] = split_fingerprint(train.ids, val.ids, test.ids)
    if cfg.data.train_part:
        i, n_parts = cfg.data.train_part
        parts = split_parts(train.n, n_parts, labels=train.labels, order=cfg.data.train_part_order, seed=seed)
        train = train.subset(parts[i])
    stats = None
    if cfg.data.standardize:
        train, stats = train.standardize()
        val, _ = val.standardize(stats)
        test, _ = test.standardize(stats)
    M = len(data.names)
    miss = cfg.data.missing
    train_full = train
    if method != "oracle" and miss.kind != "none":
        if miss.kind == "mcar":
            sim = mcar_mask(train.n, M, miss.rate, min_observed=min(miss.min_observed, M), seed=seed + 1,
                             observed=train.mask)
        else:
            subsets = [[data.index(n) if isinstance(n, str) else int(n) for n in s] for s in miss.subsets]
            sim = paired_subsets_mask(train.n, M, subsets, complete_fraction=miss.complete_fraction, seed=seed + 1)
        mask = train.mask & sim
        keep = mask.any(1)
        train = train.subset(np.nonzero(keep)[0]).with_mask(mask[keep])   # natural gaps can empty a row
        train_full = train_full.subset(np.nonzero(keep)[0])
        simulated = _simulated(miss, M, train.mask, train_full.mask)
    else:
        simulated = None
    notes += _constant_features(train)
    never = [data.names[m] for m in range(M) if not train.mask[:, m].any()]
    if never:
        raise ValueError(f"modality(ies) {never} are never observed in the training split")
    for name, part in (("test", test), ("validation", val)):
        if M > 1 and not _has_scorable_pair(part.mask):
            raise ValueError(f"the {name} split ({part.n} instances) has no two modalities observed together in 2 "
                             "or more instances; retrieval cannot be evaluated (use more data or a larger fraction)")
    return Splits(train, train_full, val, test, list(data.names), data.dims, stats, classes, notes, fp, simulated)


def _simulated(miss, M: int, mask: np.ndarray, known: np.ndarray) -> dict:
    """What the simulator hid on the training split: the rate asked, the share of the data's
    observed training cells hidden (realised), and the cap that ``min_observed`` puts on MCAR."""
    out = {"kind": miss.kind, "realised": float(1 - mask.sum() / max(1, known.sum())),
           "own_missing": float(1 - known.mean())}
    if miss.kind == "mcar":
        out.update(rate=miss.rate, min_observed=min(miss.min_observed, M), cap=1 - min(miss.min_observed, M) / M)
    else:
        out.update(subsets=miss.subsets, complete_fraction=miss.complete_fraction)
    return out


def describe_simulation(sim: dict | None) -> str:
    """The header's words for what was hidden: nothing, or the realised MCAR rate and its cap."""
    if sim is None:
        return "no cell hidden (the data's own gaps only)"
    own = f"; the data's own gaps: {sim['own_missing']:.1%} of training cells" if sim["own_missing"] > 0 else ""
    if sim["kind"] == "mcar":
        capped = " (capped: at least" if sim["rate"] > sim["cap"] + 1e-9 else " (at least"
        return (f"simulated MCAR {sim['rate']:.0%} asked, {sim['realised']:.1%} of observed training cells hidden"
                f"{capped} {sim['min_observed']} views kept per instance, so at most about {sim['cap']:.0%}){own}")
    return (f"simulated paired subsets {sim['subsets']}, {sim['complete_fraction']:.0%} kept complete, "
            f"{sim['realised']:.1%} of observed training cells hidden{own}")


def _constant_features(train: MultiViewData) -> list[str]:
    """Features constant over a modality's observed training rows (standardised to 0, they
    carry nothing); a modality constant throughout is named as such."""
    notes = []
    for m, name in enumerate(train.names):
        rows = np.asarray(train.views[m][train.mask[:, m]])
        if len(rows) < 2:
            continue
        const = (rows.max(0) - rows.min(0)) == 0
        if const.all():
            notes.append(f"modality '{name}' is constant on the training split (every observed row equal): it "
                         "carries no information, and retrieval to or from it scores at chance")
        elif const.any():
            notes.append(f"modality '{name}': {int(const.sum())} of {len(const)} feature(s) constant on the training "
                         f"split (e.g. column {int(np.argmax(const))}); kept, they carry nothing")
    return notes


def _has_scorable_pair(mask: np.ndarray) -> bool:
    co = mask.T.astype(np.int64) @ mask.astype(np.int64)
    np.fill_diagonal(co, 0)
    return bool((co >= 2).any())


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


def _loader(data: MultiViewData, cfg: Config, shuffle: bool, known: np.ndarray | None = None) -> DataLoader:
    sampler = EpochShuffleSampler(data.n, cfg.train.seed) if shuffle else None
    return DataLoader(MultiViewDataset(data, known), batch_size=cfg.train.batch_size, sampler=sampler,
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
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


def _keeping_csv_logger(run_dir: Path, keep_before_epoch: int | None):
    """Lightning's CSV logger deletes ``metrics.csv`` when it starts. This one does so only on a
    fresh run; on a resumed one it keeps the rows of the epochs the checkpoint holds and drops
    the later ones (logged after that checkpoint, before the interruption)."""
    import csv

    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _Writer(ExperimentWriter):
        def _check_log_dir_exists(self):
            f = Path(self.metrics_file_path)
            if not f.is_file():
                return
            if keep_before_epoch is None:
                f.unlink()
                return
            with open(f, newline="") as fh:
                rows = list(csv.DictReader(fh))
                header = list(rows[0].keys()) if rows else []
            kept = [r for r in rows if r.get("epoch", "") != "" and float(r["epoch"]) < keep_before_epoch]
            tmp = f.with_name(f.name + ".tmp")
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=header)
                w.writeheader()
                w.writerows(kept)
            os.replace(tmp, f)
            self.metrics_keys = sorted(header)

    assert issubclass(_Writer, _ExperimentWriter)

    class _Logger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _Writer(log_dir=self.log_dir)
            return self._experiment

    return _Logger(run_dir, name="logs", version="")


def build_trainer(cfg: Config, run_dir: Path, *, max_epochs: int | None = None, extra_callbacks=(),
                  keep_logs_before_epoch: int | None = None) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg.train
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True)
    loggers = [_keeping_csv_logger(run_dir, keep_logs_before_epoch)]
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


_HELD_LOCKS: dict[str, int] = {}   # lock path -> fd, for the locks this process holds (re-entrant)


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike):
    """Hold an exclusive lock on ``output_dir`` (``.calmrl.lock``, ``flock``) for a run: a
    second run into the same directory fails at once with :class:`RunLockedError` instead of
    interleaving files. The lock dies with its process (a killed run leaves no stale lock).
    Only rank 0 locks; re-entrant within one process."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    path = str(Path(output_dir).resolve() / ".calmrl.lock")
    if rank != 0 or fcntl is None:
        yield
        return
    if path in _HELD_LOCKS:     # nested: the outermost holder releases it
        yield
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLockedError(f"output directory {output_dir} is in use by another calmrl run (pid {holder}); "
                                 "wait for it or choose another --output-dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)        # the holder removed the file as we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd
    try:
        yield
    finally:
        del _HELD_LOCKS[path]
        try:
            os.unlink(path)     # removed while still held, so no one can take a lock on a stale file
        except FileNotFoundError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _check_writable(directory: Path):
    """Fail before training if checkpoints cannot be written (full disk, permissions, a file in
    the way), instead of after the last epoch."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write checkpoints to {directory}: {e.strerror or e}") from None


def resume_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, dict | None, list[str]]:
    """The checkpoint to resume ``run_dir`` from: ``last.ckpt``, else the previous one kept
    beside it when ``last.ckpt`` is damaged. Returns ``(path, checkpoint, notes)``; ``(None,
    None, notes)`` when there is none. Raises :class:`CheckpointError` when every checkpoint
    there is damaged (nothing is touched)."""
    d = Path(run_dir) / "checkpoints"
    notes, errors = [], []
    for name in ("last.ckpt", PREVIOUS):
        p = d / name
        if not p.exists():
            continue
        try:
            ck = load_checkpoint(p)
        except CheckpointError as e:
            errors.append(str(e))
            notes.append(f"{p} is damaged; trying the previous checkpoint")
            continue
        return p, ck, notes
    if errors:
        raise CheckpointError("cannot resume: " + "; ".join(errors))
    return None, None, notes


def run(cfg: Config, *, method: str | None = None, resume: bool = False, splits: Splits | None = None,
        max_epochs: int | None = None, extra_callbacks=(), return_model: bool = False, run_name: str | None = None):
    """Train one method and evaluate it; writes ``results.json`` under ``output_dir/method``.

    Everything that can fail before training is checked first (data, labels, trainer settings,
    the checkpoint to resume from, a writable checkpoint directory, no other run in
    ``output_dir``), so that a bad input changes nothing on disk."""
    _quiet_lightning()
    method = method or cfg.method.name
    cfg = replace(cfg, method=replace(cfg.method, name=method), output_dir=cfg.output_dir or default_output_dir(cfg))
    if method == "auto":
        from .auto import run_auto
        return run_auto(cfg, resume=resume, splits=splits, max_epochs=max_epochs, extra_callbacks=extra_callbacks,
                        return_model=return_model)
    run_dir = Path(cfg.output_dir) / (run_name or method)
    with output_lock(cfg.output_dir):
        results, model = _run_locked(cfg, method, run_dir, resume, splits, max_epochs, extra_callbacks)
        if method == "calmrl" and cfg.method.guard == "validation":
            results, model = _guard(cfg, results, model, run_dir, resume, splits, max_epochs, extra_callbacks)
    return (results, model) if return_model else results


def imputations_took_part(results: dict) -> bool:
    """Whether a calmrl run's loss ever saw an imputed column at a weight above 0: the gate was
    off (``none``: weight 1 throughout) or opened for some modality in some epoch."""
    if results.get("gate") == "none":
        return True
    return any(w > 0 for h in results.get("gate_history", []) for w in h["weights"])


def _guard(cfg, results, model, run_dir: Path, resume, splits, max_epochs, extra_callbacks):
    """``method.guard=validation``: calibration must not cost what the validation split can
    see. If imputed columns took part, train the observed-only path (``pmrl-drop`` with the
    same data, seed and start) under ``run_dir/guard`` and keep the run with the higher
    validation R@1 (ties keep the calibrated run). The kept model's checkpoint is copied to
    ``checkpoints/kept.ckpt`` and the kept run's figures become the results; the comparison is
    recorded in ``results["guard"]``."""
    if not imputations_took_part(results):
        results["guard"] = {"kept": "calibrated", "alternative_trained": False,
                            "why": "no imputed column took part (gate 0 throughout): the run is the observed-only run"}
        _write_results(run_dir, results)
        return results, model
    alt_dir = run_dir / "guard"
    alt_cfg = replace(cfg, output_dir=str(alt_dir), method=replace(cfg.method, name="pmrl-drop"))
    alt, alt_model = _run_locked(alt_cfg, "pmrl-drop", alt_dir / "pmrl-drop", resume, splits, max_epochs,
                                 extra_callbacks, role="the guard's observed-only run")
    val = {"calibrated": results["val_average"]["R@1"], "observed-only": alt["val_average"]["R@1"]}
    kept = "observed-only" if val["observed-only"] > val["calibrated"] else "calibrated"
    guard = {"kept": kept, "alternative_trained": True, "val_R@1": val,
             "test_R@1": {"calibrated": results["pairs"]["average"]["R@1"],
                          "observed-only": alt["pairs"]["average"]["R@1"]},
             "checkpoint": str(run_dir / "checkpoints" / "kept.ckpt")}
    src = (run_dir if kept == "calibrated" else alt_dir / "pmrl-drop") / "checkpoints" / "last.ckpt"
    if src.exists() and process_rank() == 0:
        tmp = run_dir / "checkpoints" / "kept.ckpt.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, run_dir / "checkpoints" / "kept.ckpt")
    if kept == "observed-only":
        results = {**alt, "method": "calmrl", "gate": results.get("gate"), "gate_history": results["gate_history"],
                   "calibrated": {k: results[k] for k in ("pairs", "val_average", "anchor", "em_history")
                                  if k in results}}
        model = alt_model
    results["guard"] = guard
    _write_results(run_dir, results)
    return results, model


def _write_results(run_dir: Path, results: dict):
    """``results.json`` written atomically (rank 0 only under DDP)."""
    if process_rank() != 0:
        return
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, run_dir / "results.json")


# settings that a resumed run may change: where and how fast it runs, not what it computes
_RESUME_FREE = ("output_dir", "train.progress", "train.threads", "train.num_workers", "train.accelerator",
                "train.devices", "train.num_nodes", "train.strategy", "train.check_val_every", "train.epochs", "eval.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "tables":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(old: dict, new: dict, free=_RESUME_FREE) -> list[str]:
    """``key: old -> new`` for every setting (dotted) that differs, except those in ``free``."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in free)]


def _earlier_run(run_dir: Path) -> str | None:
    """What an earlier run left in ``run_dir``: 'finished', 'unfinished', or None (nothing)."""
    if (run_dir / "results.json").exists():
        return "finished"
    ck = run_dir / "checkpoints"
    if ck.is_dir() and any(ck.glob("*.ckpt")):
        return "unfinished"
    return None


def _move_aside(run_dir: Path) -> Path | None:
    """A new (not resumed) run never mixes with an earlier one in the same directory: whatever
    is there (checkpoints, results, logs) is moved to ``<run_dir>.prev-<time>`` first, said in a
    note. Lightning would otherwise write ``last-v1.ckpt`` beside the old ``last.ckpt`` and
    eval, export and --resume would serve the old model."""
    state = _earlier_run(run_dir)
    if state is None or process_rank() != 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.prev-{stamp}")
    k = 1
    while dest.exists():
        dest, k = run_dir.with_name(f"{run_dir.name}.prev-{stamp}-{k}"), k + 1
    os.replace(run_dir, dest)
    log.warning("note: %s held an earlier %s run; moved it to %s so that the new run does not mix with it "
                "(use --resume to continue a run instead)", run_dir, state, dest)
    return dest


def _check_resumable(resume_path: Path, resume_ckpt: dict, cfg, splits) -> None:
    """--resume continues the run the checkpoint holds, on the same data, with the same settings."""
    if resume_ckpt.get("calmrl_names") not in (None, splits.names):
        raise CheckpointError(f"{resume_path} was trained on modalities {resume_ckpt['calmrl_names']}, "
                              f"this run has {splits.names}")
    old = resume_ckpt.get("calmrl_config")
    if old is not None:
        diff = config_differences(old, config_to_dict(cfg))
        if diff:
            raise CheckpointError(f"--resume: {resume_path} was trained with other settings ({'; '.join(diff[:4])}"
                                  f"{'; ...' if len(diff) > 4 else ''}); resume with the same settings, or start a "
                                  "new run without --resume")
    fp = resume_ckpt.get("calmrl_fingerprint")
    if fp is not None and splits.fingerprint is not None:
        diff = compare_fingerprints(fp, splits.fingerprint)
        if diff:
            raise CheckpointError(f"--resume: the data changed since {resume_path} was written ({'; '.join(diff)})")


def _init_from(model: CalMRLModule, path: str, ckpt: dict) -> None:
    """Continual training: encoders, calibrator parameters and statistics warm-started from
    ``ckpt``, which may come from another method sharing the encoders: loss parameters the
    checkpoint lacks (e.g. a learnable temperature) start from their defaults, and those this
    method has no use for are left out, each said in a note."""
    own = ("temperature.", "completer.")
    state = ckpt["state_dict"]
    mine = model.state_dict()
    skipped = [k for k in state if k.startswith(own) and k not in mine]
    state = {k: v for k, v in state.items() if k not in skipped}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise CheckpointError(f"{path} does not fit this model: {str(e)[:300]}") from None
    fresh = [k for k in missing if k.startswith(own)]
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}): modalities or sizes differ")
    src = (ckpt.get("calmrl_config") or {}).get("method", {}).get("name", "?")
    if fresh:
        log.warning("note: %s (a %s checkpoint) has no %s; they start from their defaults", path, src,
                    sorted({k.split('.')[0] for k in fresh}))
    if skipped:
        log.warning("note: %s (a %s checkpoint) holds %s, which %s does not use; left out", path, src,
                    sorted({k.split('.')[0] for k in skipped}), model.cfg.method.name)


def _run_locked(cfg, method, run_dir, resume, splits, max_epochs, extra_callbacks, role: str = "") -> dict:
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    splits = splits or prepare_data(cfg, method)
    for note in splits.notes:
        log.warning("note: %s", note)
    resume_path, resume_ckpt, notes = resume_checkpoint(run_dir) if resume else (None, None, [])
    for note in notes:
        log.warning("%s", note)
    init_ckpt = load_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
    cfg = replace(cfg, method=replace(cfg.method, gate=resolve_gate(cfg.method.gate, init_ckpt)))
    total = max_epochs or cfg.train.epochs
    start_epoch = 0
    if resume:
        if resume_path is None:
            log.warning("--resume: %s", f"{role} had not started; starting it" if role else
                        f"no checkpoint under {run_dir / 'checkpoints'}; starting from epoch 0")
        else:
            start_epoch = int(resume_ckpt.get("epoch", 0)) + 1
            _check_resumable(resume_path, resume_ckpt, cfg, splits)
            log.warning("resuming %sfrom %s: epoch %d of %d", f"{role} " if role else "", resume_path,
                        min(start_epoch, total), total)
    torch.set_num_threads(choose_threads(cfg))
    model = CalMRLModule(cfg, splits.dims, splits.names)
    model.standardization = splits.standardization
    model.data_fingerprint, model.classes = splits.fingerprint, splits.classes
    if cfg.method.gate != "none":
        model.gate_loader = _loader(splits.val, cfg, False)
    if init_ckpt is not None:
        _init_from(model, cfg.train.init_from, init_ckpt)
    if resume_path is None:
        _move_aside(run_dir)
    _check_writable(run_dir / "checkpoints")
    trainer = build_trainer(cfg, run_dir, max_epochs=max_epochs, extra_callbacks=extra_callbacks,
                            keep_logs_before_epoch=start_epoch if resume_path is not None else None)
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(_yaml(config_to_dict(cfg)))
        if not resume_path:
            (run_dir / "results.json").unlink(missing_ok=True)   # no stale results beside a new run
    t0 = time.time()
    known = splits.train_full.mask if cfg.method.name == "pmrl-truefill" else None
    try:
        trainer.fit(model, _loader(splits.train, cfg, True, known), _loader(splits.val, cfg, False),
                    ckpt_path=str(resume_path) if resume_path else None)
    except torch.linalg.LinAlgError as e:       # a diverged loss reaches the decompositions first
        raise FloatingPointError(f"training diverged at epoch {trainer.current_epoch} (non-finite embeddings reached "
                                 f"{str(e).split(':')[0]}); try a smaller train.lr (now {cfg.train.lr:g})") from None
    except BaseException as e:
        if hasattr(e, "signum"):                 # the CLI's SIGINT / SIGTERM handler: say where it stopped
            e.epoch = trainer.current_epoch
        raise
    train_time = time.time() - t0
    if _fit_unused_calibrator(model, splits, cfg):
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    t1 = time.time()
    results = evaluate_model(model, splits, cfg)
    results.update({"method": method, "train_seconds": train_time, "eval_seconds": time.time() - t1,
                    "epochs": trainer.current_epoch, "resumed_from_epoch": start_epoch if resume_path else None,
                    "threads": torch.get_num_threads(),
                    "em_history": getattr(model, "em_history", []),
                    "loss_history": getattr(model, "loss_history", []),
                    "gate_history": getattr(model, "gate_history", []), "gate": cfg.method.gate,
                    "missing_fraction_train": float(1 - splits.train.mask.mean()),
                    "simulated": splits.simulated, "classes": splits.classes,
                    "n_train": splits.train.n, "n_val": splits.val.n, "n_test": splits.test.n,
                    "data_notes": splits.notes})
    if trainer.is_global_zero:
        if results["gate_history"]:
            _plot_gate(results["gate_history"], splits.names, run_dir / "gate.png")
    _write_results(run_dir, results)
    return results, model


def _fit_unused_calibrator(model: CalMRLModule, splits: Splits, cfg: Config) -> bool:
    """A method that trained without the calibrator (pmrl-drop, the InfoNCE objectives, ...)
    still leaves one fitted by EM on its final training embeddings, so that its checkpoint and
    export impute missing modalities (``impute``, ``retrieve`` with incomplete queries) like a
    calmrl model. Training is over: the figures of the run are unchanged."""
    cal = model.calibrator
    if bool(cal.initialized) or model.completer is not None:
        return False
    A, mask = embed_data(model.encoder, splits.train)
    cal.fit(A.to(cal.W.dtype), mask.to(A.device), n_iter=cfg.calibrator.em_iters * 3)
    return True


def evaluate_model(model: CalMRLModule, splits: Splits, cfg: Config) -> dict:
    """Test retrieval (each pair over the instances that observe both), fused queries over what
    is observed, kNN, and the anchor diagnostics on the training split (where the simulator
    hid cells whose true embeddings are known); ``notes`` say why a diagnostic is absent."""
    enc = model.encoder
    e = cfg.eval
    test_A, test_mask = embed_data(enc, splits.test)
    own = OWN_SIMILARITY.get(cfg.method.name, "cosine")
    out = evaluate_embeddings(test_A, splits.names, test_mask, ks=tuple(e.ks), chunk_size=e.chunk_size,
                              backend=e.backend, similarity=own)
    val_A, val_mask = embed_data(enc, splits.val)
    val = evaluate_embeddings(val_A, splits.names, val_mask, ks=tuple(e.ks), chunk_size=e.chunk_size,
                              backend=e.backend, similarity=own)
    out["val_average"], out["val_own_average"] = val["pairs"]["average"], val["pairs_own"]["average"]
    out["test_complete_fraction"] = float(test_mask.all(1).float().mean())
    notes = list(out.pop("notes", []))
    # cells hidden by the simulator are known (train_full); cells missing in the data itself are not
    train_full_A, full_mask = embed_data(enc, splits.train_full)
    train_mask = torch.as_tensor(splits.train.mask)
    if splits.train.labels is not None:
        out["knn_accuracy"] = knn_accuracy(train_full_A, train_mask, splits.train.labels, test_A,
                                           splits.test.labels, e.knn_k, test_mask=test_mask)
    cal = None
    if model.uses_calibrator and bool(model.calibrator.initialized):
        cal = model.calibrator
    known = full_mask.all(1)
    hidden = known & ~train_mask.all(1)
    nan = float("nan")
    if int(hidden.sum()) < 2:
        why = ("no training instance is complete in the data" if not bool(known.any()) else
               "the simulator hid no cell (data.missing.kind = none, or method oracle)")
        notes.append(f"anchor shift and imputation quality need hidden cells whose true embeddings are known: {why}")
        out["anchor"] = {"shift_observed_deg": nan, "shift_calibrated_deg": nan, "shift_calibrated_unit_deg": nan,
                         "imputation_cosine": nan, "imputation_r2": nan}
        if cfg.method.name == "oracle" or cfg.data.missing.kind == "none":
            out["anchor"].update(shift_observed_deg=0.0, shift_calibrated_deg=0.0, shift_calibrated_unit_deg=0.0)
    else:
        comp = model.completer
        imputer = None if comp is None else (lambda A, m: comp.cpu().impute(A.float(), m))  # noqa: E731
        out["anchor"] = anchor_report(train_full_A[known], train_mask[known], cal,
                                      em_iters=cfg.calibrator.em_iters * 3, latent_dim=model.calibrator.k,
                                      imputer=imputer)
    out["notes"] = notes
    return out


def _plot_gate(history: list[dict], names: list[str], path: Path):
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


def model_from_checkpoint(path: str | os.PathLike) -> tuple[Config, CalMRLModule]:
    """The trained model of a checkpoint, without the training data (names, widths and the
    training split's standardisation travel in the checkpoint; older checkpoints without
    them fall back to reading the configured data)."""
    return _model_from_loaded(load_checkpoint(path), path)


def _model_from_loaded(ckpt: dict, path) -> tuple[Config, CalMRLModule]:
    """:func:`model_from_checkpoint` on a checkpoint already read from ``path``."""
    from .config import _build

    if "calmrl_config" not in ckpt:
        raise CheckpointError(f"{path} has no calmrl configuration (not written by calmrl train)")
    cfg = _build(Config, ckpt["calmrl_config"])
    names, dims, std = ckpt.get("calmrl_names"), ckpt.get("calmrl_dims"), ckpt.get("calmrl_standardization")
    if dims is None:
        splits = prepare_data(cfg)
        names, dims, std = splits.names, splits.dims, splits.standardization
    model = CalMRLModule(cfg, dims, names)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its own configuration: {str(e)[:300]}") from None
    model.standardization = std
    return cfg, model


def calibrate_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None, *, em_iters: int = 200,
                         complete_only: bool = True) -> tuple[Path, dict]:
    """Step (b) of the absorb workflow: embed the training split of a checkpoint's own
    configuration with its encoders (no simulated missingness; complete instances only when
    there are enough of them), fit the calibrator by EM to convergence and seed the step
    schedule's running statistics (:meth:`CalMRLModule.seed_calibrator`). Writes a new
    checkpoint (default: ``calibrated.ckpt`` beside the input) for ``train.init_from``;
    returns its path and a summary."""
    from .evaluate import embed_data

    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg, model = _model_from_loaded(ckpt, path)
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
    return out, summary


def _yaml(d: dict) -> str:
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
    for r in results:
        a, f, an = r["pairs"]["average"], r["fused"]["average"], r["anchor"]
        own = r.get("pairs_own", r["pairs"])["average"]["R@1"]
        name = f"auto: {r['chosen_method']}" if r["method"] == "auto" else r["method"]
        lines.append(f"{name:<25}{a['R@1']:>7.2f}{own:>9.2f}{a['R@5']:>7.2f}{a['R@10']:>7.2f}{a['MedR']:>7.1f}"
                     f"{f['R@1']:>11.2f}{r.get('knn_accuracy', float('nan')):>9.2f}"
                     f"{an['shift_observed_deg']:>11.2f}{an['shift_calibrated_deg']:>11.2f}"
                     f"{an.get('imputation_cosine', float('nan')):>9.3f}"
                     f"{an.get('imputation_identification', float('nan')):>9.1f}"
                     f"{an.get('fallback_identification', float('nan')):>9.1f}"
                     f"{r.get('eval_seconds' if eval_only else 'train_seconds', float('nan')):>8.1f}")
    return "\n".join(lines)
