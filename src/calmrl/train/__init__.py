"""Trainer layer: configuration, encoders, objectives by method name, the Lightning module
with the bi-step schedule, evaluation and end-to-end runs."""

from .config import METHODS, Config, ConfigError, load_config
from .encoders import MLPHead, MultiModalEncoder
from .export import export_model, load_exported
from .methods import alignment_loss, fill_missing
from .module import CalMRLModule
from .checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint
from .results import format_table
from .runner import run
from .splits import Splits, prepare_data

__all__ = ["Config", "ConfigError", "load_config", "METHODS", "MLPHead", "MultiModalEncoder", "alignment_loss",
           "fill_missing", "CalMRLModule", "AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "Splits",
           "prepare_data", "run", "format_table", "export_model", "load_exported"]
