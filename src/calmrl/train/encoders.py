"""The encoders live in :mod:`calmrl.model.encoders` (the model apart from the trainer);
this module re-exports its names (the same objects) for the trainer's and users' imports."""

from ..model import encoders as _module

globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
__all__ = list(getattr(_module, "__all__", []))
