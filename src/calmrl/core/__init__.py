"""Pure-PyTorch math of calmrl: the shared-latent calibrator, alignment losses, anchor
diagnostics and metrics. Nothing here depends on the trainer."""

from .anchor import anchor, anchor_distance, anchor_shift, shift_bounds
from .calibrator import (Imputation, Posterior, SharedLatentCalibrator, SufficientStats, heldout_imputation_r2,
                         missing_patterns, select_latent_dim, select_w_prior)
from .completion import MaskedCompleter
from .gate import family_z, gate_weights, imputation_gain
from .geometry import SIMILARITIES, gram_volume_matrix, pair_similarity, psd_det, triangle_area_matrix
from .losses import (GRAMLoss, LearnableTemperature, PairwiseInfoNCELoss, PMRLOutput, TriangleLoss,
                     anchor_infonce_loss, gram_loss, info_nce, pairwise_infonce_loss, pmrl_loss, triangle_loss)
from .metrics import fuse_observed, imputation_quality, retrieval_metrics, retrieval_ranks, summarize_ranks
from .spectral import safe_eigh, spectrum
from .validation import check_embeddings, check_mask, stack_modalities
from .vae import MultimodalVAE, poe

__all__ = [
    "SharedLatentCalibrator", "Posterior", "Imputation", "SufficientStats", "missing_patterns", "select_latent_dim",
    "select_w_prior", "heldout_imputation_r2",
    "pmrl_loss", "gram_loss", "triangle_loss", "pairwise_infonce_loss", "anchor_infonce_loss", "info_nce",
    "LearnableTemperature", "GRAMLoss", "TriangleLoss", "PairwiseInfoNCELoss", "PMRLOutput",
    "gram_volume_matrix", "triangle_area_matrix", "pair_similarity", "psd_det", "SIMILARITIES",
    "anchor", "anchor_shift", "anchor_distance", "shift_bounds",
    "retrieval_ranks", "retrieval_metrics", "summarize_ranks", "imputation_quality", "fuse_observed",
    "safe_eigh", "spectrum", "check_embeddings", "check_mask", "stack_modalities", "imputation_gain", "gate_weights", "family_z",
    "MaskedCompleter", "MultimodalVAE", "poe",
]
