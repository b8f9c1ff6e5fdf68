"""Training objectives, one module per family, each registered once (:mod:`.base`).

Importing this package registers every objective; ``get(name)``, ``names()``,
``parse_method("X+cal")`` and ``candidate_names()`` are what the trainer, the config, auto,
the CLI and the suite read. Pure PyTorch: usable from any training loop."""

from . import pmrl, volume, infonce, siglip, symile  # noqa: F401,I001  (registration, in this order)
from .base import (CAL_SUFFIX, REGISTRY, LossContext, Objective, Setting, candidate_names, get, method_label, names,
                   parse_method, register, registry_table)
from .siglip import SigLIPParameters, siglip_loss
from .symile import symile_loss

__all__ = ["Objective", "Setting", "registry_table", "LossContext", "REGISTRY", "register", "get", "names", "parse_method", "method_label",
           "candidate_names", "CAL_SUFFIX", "siglip_loss", "symile_loss", "SigLIPParameters"]
