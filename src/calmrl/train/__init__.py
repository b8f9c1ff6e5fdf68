"""Trainer layer: configuration, encoders, objectives by method name, the Lightning module
with the bi-step schedule, evaluation and end-to-end runs.

Names are imported on first use (PEP 562), so that the commands and the inference code that
need no training (``calmrl data import``, ``retrieve``, loading an exported model) do not pay
for importing Lightning."""

from __future__ import annotations

import importlib

_WHERE = {"METHODS": "config", "Config": "config", "ConfigError": "config", "load_config": "config",
          "MLPHead": "encoders", "MultiModalEncoder": "encoders", "export_model": "export",
          "load_exported": "export", "alignment_loss": "methods", "fill_missing": "methods",
          "CalMRLModule": "module", "AtomicCheckpointIO": "checkpoints", "CheckpointError": "checkpoints",
          "load_checkpoint": "checkpoints", "format_table": "results", "run": "runner", "Splits": "splits",
          "prepare_data": "splits"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'calmrl.train' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
