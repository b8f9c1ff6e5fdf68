"""calmrl: multimodal representation learning with missing modalities, calibrated by a
shared-latent generative model (CalMRL).

``calmrl.core`` holds the math (usable from any training loop); ``calmrl.data``,
``calmrl.train`` and ``calmrl.cli`` build the trainer, data and command line on top.
"""

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = list(_core_all) + ["__version__"]
