"""The Lightning ``Trainer`` of a run: callbacks, loggers, the atomic checkpoint plug-in."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from .checkpoints import AtomicCheckpointIO
from .config import Config
from .csv_logger import keeping_csv_logger

__all__ = ['quiet_lightning', 'check_accelerator', 'build_trainer']


def quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


def check_accelerator(cfg: Config) -> None:
    """Refuse a GPU accelerator that torch cannot see, in one line, before any data is read."""
    if cfg.train.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.accelerator={cfg.train.accelerator} but no GPU is visible to torch; use "
                         "train.accelerator=cpu (or auto)")


class LabelledProgressBar(TQDMProgressBar):
    """Lightning's progress bar, its training bar named after the run (auto's candidate)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.set_description(self.label)
        return bar

    def on_train_epoch_start(self, trainer, *args):
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.label} epoch {trainer.current_epoch}")


def build_trainer(cfg: Config, run_dir: Path, *, max_epochs: int | None = None, extra_callbacks=(),
                  keep_logs_before_epoch: int | None = None, label: str = "") -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg.train
    # no "-vN" copies: a moved or copied run resumed in its new place writes its own last.ckpt
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False,
                           save_on_train_epoch_end=True)
    loggers = [keeping_csv_logger(run_dir, keep_logs_before_epoch)]
    try:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ModuleNotFoundError:
        pass
    return L.Trainer(
        max_epochs=max_epochs or t.epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, logger=loggers,
        callbacks=[ckpt, *extra_callbacks, *([LabelledProgressBar(label)] if label and t.progress else [])],
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress, enable_model_summary=False,
        check_val_every_n_epoch=t.check_val_every, log_every_n_steps=1, deterministic=False,
        num_sanity_val_steps=0)
