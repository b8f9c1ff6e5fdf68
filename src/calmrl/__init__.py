"""calmrl: multimodal representation learning with missing modalities, calibrated by a
shared-latent generative model (CalMRL).

``calmrl.core`` holds the math (usable from any training loop); ``calmrl.data``,
``calmrl.train`` and ``calmrl.cli`` build the trainer, data and command line on top.
"""

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all

__version__ = "0.3.0"
__all__ = list(_core_all) + ["__version__", "fit", "CalMRL"]


def __getattr__(name: str):
    if name == "CalMRL":      # imported on first use: `import calmrl` stays light
        from .estimator import CalMRL
        return CalMRL
    raise AttributeError(f"module 'calmrl' has no attribute '{name}'")


def fit(data, config=None, **kwargs):
    """Train on in-memory data and return a model: see :func:`calmrl.api.fit` (imported on
    first use, so that ``import calmrl`` stays light)."""
    from .api import fit as _fit

    return _fit(data, config, **kwargs)
