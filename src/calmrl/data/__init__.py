"""Data layer: multimodal datasets with observation masks, the on-disk feature store, the
bundled UCI Multiple Features loader, a synthetic generator and missingness simulators."""

from .dataset import FeatureStore, MultiViewData, MultiViewDataset, collate_views
from .sources import (UCI_VIEWS, load_uci_mfeat, mcar_mask, paired_subsets_mask, split_parts, stratified_split,
                      synthetic_multiview)
from .tables import load_tables, read_table

__all__ = ["MultiViewData", "MultiViewDataset", "FeatureStore", "collate_views", "load_uci_mfeat", "UCI_VIEWS",
           "synthetic_multiview", "stratified_split", "split_parts", "mcar_mask", "paired_subsets_mask", "load_tables", "read_table"]
