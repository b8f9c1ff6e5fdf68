"""The run configuration lives in :mod:`calmrl.config` (the model package reads it too);
this module re-exports its names (the same objects) for the trainer's and users' imports."""

from .. import config as _module

globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
__all__ = list(getattr(_module, "__all__", []))
