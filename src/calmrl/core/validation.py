"""Input checks shared by the core modules.

Convention used throughout ``calmrl.core``:

* a batch of multimodal embeddings is a dense tensor ``Z`` of shape ``(B, M, D)``
  (instance, modality, feature); modalities with fewer than ``D`` features are
  zero-padded on the right (see :func:`stack_modalities`);
* ``mask`` is a boolean ``(B, M)`` tensor, ``True`` where the modality is observed;
* missing cells may hold anything (zeros, NaN): they are never read.

Every check raises :class:`ValueError` with a message naming the offending
modality / row so that bad data never turns into a silent NaN loss.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor


def _name(names: Sequence[str] | None, m: int) -> str:
    return f"'{names[m]}'" if names is not None else f"#{m}"


def check_mask(mask: Tensor, batch: int, n_modalities: int, *, require_observed: bool = True,
               names: Sequence[str] | None = None) -> Tensor:
    """Validate a ``(B, M)`` observation mask and return it as ``bool``."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != (batch, n_modalities):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the data needs ({batch}, {n_modalities}) "
            "(instances, modalities)")
    if mask.dtype != torch.bool:
        if mask.dtype.is_floating_point and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean (or 0/1); it holds other values")
        mask = mask.bool()
    if require_observed and batch > 0:
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{int(empty.sum())} instance(s) have no observed modality (rows {rows}...); "
                "every instance needs at least one observed modality")
    return mask


def check_embeddings(Z: Tensor, mask: Tensor | None, n_modalities: int, dim: int, *,
                     names: Sequence[str] | None = None, require_observed: bool = True
                     ) -> tuple[Tensor, Tensor]:
    """Validate ``Z`` ``(B, M, D)`` and ``mask`` ``(B, M)``; return ``(Z, mask)`` with
    missing cells zeroed.

    If ``mask`` is ``None`` it is inferred: a cell is missing iff all its values are NaN.
    Raises ``ValueError`` on wrong shapes, non-finite observed values, cells that are
    partly NaN, or instances with no observed modality.
    """
    if not isinstance(Z, Tensor):
        raise ValueError(f"embeddings must be a torch.Tensor, got {type(Z).__name__}")
    if Z.dim() != 3:
        raise ValueError(
            f"embeddings must have shape (instances, modalities, dim) = (B, {n_modalities}, {dim}); "
            f"got {Z.dim()} dimension(s) {tuple(Z.shape)}")
    if Z.shape[1] != n_modalities or Z.shape[2] != dim:
        raise ValueError(
            f"embeddings have shape {tuple(Z.shape)} but the model expects (B, {n_modalities}, {dim})")
    if not Z.dtype.is_floating_point:
        raise ValueError(f"embeddings must be floating point, got {Z.dtype}")
    if mask is None:
        mask = ~torch.isnan(Z).all(dim=2)
    mask = check_mask(mask.to(Z.device), Z.shape[0], n_modalities, require_observed=require_observed,
                      names=names)
    bad = ~torch.isfinite(Z).all(dim=2) & mask                   # one pass over Z
    if bool(bad.any()):
        row, m = bad.nonzero()[0].tolist()
        kind = "NaN" if bool(torch.isnan(Z[row, m]).any()) else "inf"
        raise ValueError(
            f"modality {_name(names, m)} row {row} is marked observed but holds {kind} values "
            f"({int(bad.sum())} such cell(s)); fix the data or mark the cell missing in the mask")
    Z = torch.where(mask.unsqueeze(-1), Z, torch.zeros((), dtype=Z.dtype, device=Z.device))
    return Z, mask


def stack_modalities(views: Sequence[Tensor] | Mapping[str, Tensor], *, names: Sequence[str] | None = None,
                     dim: int | None = None) -> tuple[Tensor, Tensor, list[int]]:
    """Stack per-modality matrices ``(B, d_m)`` into a zero-padded ``(B, M, D)`` tensor.

    Rows that are entirely NaN are treated as missing. Returns ``(Z, mask, dims)``.
    ``views`` may be a mapping ``name -> tensor``; then ``names`` fixes the order and any
    name not in ``names`` is an error.
    """
    if isinstance(views, Mapping):
        if names is None:
            names = list(views)
        unknown = [k for k in views if k not in names]
        if unknown:
            raise ValueError(f"unknown modality name(s) {unknown}; valid names are {list(names)}")
        missing = [n for n in names if n not in views]
        if missing:
            raise ValueError(f"no data given for modality(ies) {missing}")
        views = [views[n] for n in names]
    views = [torch.as_tensor(v) for v in views]
    if not views:
        raise ValueError("no modality given")
    for m, v in enumerate(views):
        if v.dim() != 2:
            raise ValueError(f"modality {_name(names, m)} must be a (instances, features) matrix, "
                             f"got shape {tuple(v.shape)}")
    n = {v.shape[0] for v in views}
    if len(n) != 1:
        raise ValueError("modalities disagree on the number of instances: " +
                         ", ".join(f"{_name(names, m)}={v.shape[0]}" for m, v in enumerate(views)))
    dims = [int(v.shape[1]) for v in views]
    D = dim if dim is not None else max(dims)
    if max(dims) > D:
        raise ValueError(f"a modality has {max(dims)} features, more than the model's dim {D}")
    dtype = torch.promote_types(views[0].dtype, torch.float32) if not views[0].dtype.is_floating_point \
        else views[0].dtype
    B = views[0].shape[0]
    Z = torch.zeros(B, len(views), D, dtype=dtype, device=views[0].device)
    mask = torch.ones(B, len(views), dtype=torch.bool, device=views[0].device)
    for m, v in enumerate(views):  # loop over modalities, not instances
        v = v.to(dtype)
        mask[:, m] = ~torch.isnan(v).all(dim=1)
        Z[:, m, : v.shape[1]] = v
    return Z, mask, dims
