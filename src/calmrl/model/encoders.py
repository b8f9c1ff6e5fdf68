"""Per-modality encoders onto a shared unit sphere.

Any ``nn.Module`` mapping ``(n, d_in_m)`` inputs to ``(n, d)`` can be an encoder;
:class:`MultiModalEncoder` runs each only on the rows where its modality is observed and
L2-normalises the outputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLPHead", "MultiModalEncoder", "check_shared_groups", "equal_width_groups"]


class MLPHead(nn.Module):
    """``layers`` linear layers with GELU, LayerNorm and dropout between them (a projection head)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 256, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        mods: list[nn.Module] = []
        d = d_in
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        mods.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def check_shared_groups(shared, names, dims) -> dict:
    """``model.shared_encoders`` checked against the data: known modalities, one width per
    group, each modality in one group. Returns ``{modality: the group's first modality}``."""
    names = list(names)
    owner = {}
    for group in shared:
        unknown = [n for n in group if n not in names]
        if unknown:
            raise ValueError(f"model.shared_encoders: unknown modality(ies) {unknown}; the data has {names}")
        widths = {dims[names.index(n)] for n in group}
        if len(widths) > 1:
            raise ValueError(f"model.shared_encoders: {list(group)} have different widths "
                             f"{[dims[names.index(n)] for n in group]}; a shared encoder needs one input width")
        for n in group:
            if n in owner:
                raise ValueError(f"model.shared_encoders: '{n}' is in two groups")
            owner[n] = group[0]
    return owner


def equal_width_groups(names, dims, declared=()) -> list[list[str]]:
    """Groups (two or more) of modalities of one input width that no declared group holds:
    views that may be of one kind, offered by auto as a shared-encoder candidate."""
    taken = {n for g in declared for n in g}
    by_width: dict[int, list[str]] = {}
    for n, d in zip(names, dims):
        if n not in taken:
            by_width.setdefault(int(d), []).append(n)
    return [g for g in by_width.values() if len(g) >= 2]


class MultiModalEncoder(nn.Module):
    """One encoder per modality; :meth:`forward` returns ``(B, M, d)`` unit vectors with
    zeros in the missing cells."""

    def __init__(self, encoders: Sequence[nn.Module], names: Sequence[str], embed_dim: int):
        super().__init__()
        if len(encoders) != len(names):
            raise ValueError(f"{len(encoders)} encoders for {len(names)} modalities")
        self.encoders = nn.ModuleList(encoders)
        self.names = list(names)
        self.embed_dim = int(embed_dim)

    @classmethod
    def mlp(cls, dims: Sequence[int], names: Sequence[str], embed_dim: int, hidden: int = 256, layers: int = 2,
            dropout: float = 0.0, shared: Sequence[Sequence[str]] = ()) -> "MultiModalEncoder":
        """One MLP head per modality; each group in ``shared`` (modality names of one kind and
        width, e.g. the same drawing by several vendors) is served by a single head, as one
        image tower serves every image: views that never occur together then agree before any
        pair of them is seen."""
        names = list(names)
        owner = check_shared_groups(shared, names, dims)
        heads: dict[str, nn.Module] = {}
        for n, d in zip(names, dims):
            key = owner.get(n, n)
            if key not in heads:
                heads[key] = MLPHead(d, embed_dim, hidden, layers, dropout)
        return cls([heads[owner.get(n, n)] for n in names], names, embed_dim)

    def encode(self, m: int, x: Tensor) -> Tensor:
        """Unit-norm embedding of raw inputs ``x`` of modality ``m``."""
        return F.normalize(self.encoders[m](x), dim=-1)

    def forward(self, views: Sequence[Tensor], mask: Tensor) -> Tensor:
        if len(views) != len(self.encoders):
            raise ValueError(f"got {len(views)} views for {len(self.encoders)} modalities {self.names}")
        B = mask.shape[0]
        ref = next(self.parameters())
        A = torch.zeros(B, len(views), self.embed_dim, dtype=ref.dtype, device=mask.device)
        for m, x in enumerate(views):                       # loop over modalities
            rows = mask[:, m]
            if bool(rows.any()):
                idx = rows.nonzero().flatten()
                # tensors are indexed; raw inputs (e.g. a list of strings) are picked by position
                sub = x[rows] if isinstance(x, Tensor) else [x[i] for i in idx.tolist()]
                A = A.index_put((idx, torch.tensor(m, device=mask.device)), self.encode(m, sub).to(A.dtype))
        return A
