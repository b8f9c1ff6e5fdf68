"""The trained model, apart from the trainer: encoders, checkpoints and exports read back
(verified), and the model they hold. Imports neither Lightning nor :mod:`calmrl.train`;
:mod:`calmrl.inference` serves it to users' code."""

from .checkpoint import CheckpointError, TrainedModel, load_checkpoint, model_from_loaded
from .encoders import MLPHead, MultiModalEncoder, check_shared_groups, equal_width_groups
from .export import export_model, load_exported, verify_exported

__all__ = ["CheckpointError", "TrainedModel", "load_checkpoint", "model_from_loaded", "MLPHead", "MultiModalEncoder",
           "check_shared_groups", "equal_width_groups", "export_model", "load_exported", "verify_exported"]
