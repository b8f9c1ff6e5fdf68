"""calmrl: multimodal representation learning with missing modalities, calibrated by a
shared-latent generative model (CalMRL).

``calmrl.core`` holds the math (usable from any training loop); ``calmrl.data``,
``calmrl.train`` and ``calmrl.cli`` build the trainer, data and command line on top.
"""

__version__ = "0.3.0"

# calmrl.core's names, imported on first use (PEP 562): `import calmrl` and `calmrl --version` do
# not import torch (tests/test_structure.py keeps this list equal to calmrl.core.__all__)
_CORE = (
    "SharedLatentCalibrator", "Posterior", "Imputation", "SufficientStats", "missing_patterns",
    "select_latent_dim", "select_w_prior", "heldout_imputation_r2", "pmrl_loss", "gram_loss", "triangle_loss",
    "pairwise_infonce_loss", "anchor_infonce_loss", "info_nce", "LearnableTemperature", "GRAMLoss",
    "TriangleLoss", "PairwiseInfoNCELoss", "PMRLOutput", "gram_volume_matrix", "triangle_area_matrix",
    "pair_similarity", "psd_det", "SIMILARITIES", "anchor", "anchor_shift", "anchor_distance", "shift_bounds",
    "retrieval_ranks", "retrieval_metrics", "summarize_ranks", "imputation_quality", "fuse_observed",
    "safe_eigh", "spectrum", "check_embeddings", "check_mask", "stack_modalities", "imputation_gain",
    "gate_weights", "family_z", "MaskedCompleter", "MultimodalVAE", "poe",
)
__all__ = list(_CORE) + ["__version__", "fit", "CalMRL"]


def __getattr__(name: str):
    if name == "CalMRL":      # imported on first use: `import calmrl` stays light
        from .estimator import CalMRL
        return CalMRL
    if name in _CORE:
        from . import core
        value = getattr(core, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'calmrl' has no attribute '{name}'")


def fit(data, config=None, **kwargs):
    """Train on in-memory data and return a model: see :func:`calmrl.api.fit` (imported on
    first use, so that ``import calmrl`` stays light)."""
    from .api import fit as _fit

    return _fit(data, config, **kwargs)
