"""Pure-PyTorch math of calmrl: the shared-latent calibrator, alignment losses, anchor
diagnostics and metrics. Nothing here depends on the trainer."""

from .anchor import anchor, anchor_distance, anchor_shift, shift_bounds
from .calibrator import Imputation, Posterior, SharedLatentCalibrator, SufficientStats, missing_patterns
from .losses import (AnchorInfoNCELoss, GRAMLoss, PMRLLoss, PMRLOutput, anchor_infonce_loss, gram_loss,
                     gram_volume_matrix, info_nce, pmrl_loss)
from .metrics import imputation_quality, retrieval_metrics, retrieval_ranks, summarize_ranks
from .spectral import safe_eigh, spectrum
from .validation import check_embeddings, check_mask, stack_modalities

__all__ = [
    "SharedLatentCalibrator", "Posterior", "Imputation", "SufficientStats", "missing_patterns",
    "pmrl_loss", "gram_loss", "gram_volume_matrix", "anchor_infonce_loss", "info_nce",
    "PMRLLoss", "GRAMLoss", "AnchorInfoNCELoss", "PMRLOutput",
    "anchor", "anchor_shift", "anchor_distance", "shift_bounds",
    "retrieval_ranks", "retrieval_metrics", "summarize_ranks", "imputation_quality",
    "safe_eigh", "spectrum", "check_embeddings", "check_mask", "stack_modalities",
]
