"""Inference with missing modalities: embed whatever an instance has, impute the rest with
a confidence, and retrieve with incomplete queries.

>>> model = CalMRLModel.load("model_dir")             # written by `calmrl export`
>>> out = model.embed({"pixel": x_pix, "fourier": None})   # None / absent = missing
>>> out.embeddings, out.mask, out.imputed, out.confidence
>>> scores, idx = model.retrieve({"pixel": x_pix}, gallery_embeddings, k=10)

Numpy (or pandas) in, numpy out; torch in (any input a tensor), torch out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .core import SharedLatentCalibrator

__all__ = ["CalMRLModel", "Embedded", "retrieve_stores"]


@dataclass
class Embedded:
    """What :meth:`CalMRLModel.embed` returns: numpy arrays when the inputs were numpy or
    pandas, torch tensors when any input was a tensor."""
    embeddings: Tensor   # (n, M, d): observed cells encoded, missing cells zero
    mask: Tensor         # (n, M) observed
    imputed: Tensor      # (n, M, d): observed cells kept, missing cells imputed W E[beta] + mu
    confidence: Tensor   # (n, M): 1 for observed cells, posterior confidence for imputed ones
    fused: Tensor        # (n, d): unit-norm fused embedding (observed + confidence-weighted imputed)


class CalMRLModel:
    """A trained encoder set and calibrator, with modality names."""

    def __init__(self, encoder, calibrator: SharedLatentCalibrator, names: list[str], standardization=None,
                 partial_views: str = "error"):
        """``standardization``: per-modality ``(mean, std)`` of the training split; raw inputs
        are standardised with it exactly as in training (``None``: inputs are used as given).
        ``partial_views``: a row with NaN in some features, as training's ``data.partial_views``
        treated it: ``error`` (refused, naming it), ``missing`` (that modality missing for the
        row) or ``fill`` (the NaN features at the training split's mean)."""
        if partial_views not in ("error", "missing", "fill"):
            raise ValueError(f"partial_views must be error, missing or fill, got {partial_views!r}")
        self.partial_views = partial_views
        self.encoder, self.calibrator, self.names = encoder.eval(), calibrator, list(names)
        self.standardization = None
        self.columns = None
        if standardization is not None:
            self.standardization = [(torch.as_tensor(m, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64))
                                    for m, s in standardization]

    @classmethod
    def load(cls, path) -> "CalMRLModel":
        from .model.export import load_exported

        enc, cal, meta = load_exported(path)
        model = cls(enc, cal, meta["names"], meta.get("standardization"),
                    ((meta.get("config") or {}).get("data") or {}).get("partial_views", "error"))
        model.columns = meta.get("columns")     # each view's feature column names, where training named them
        return model

    def _prepare(self, m: int, v) -> tuple[Tensor, Tensor]:
        """numpy, pandas or torch input -> (float32 tensor standardised as in training, rows observed).

        A row that is entirely NaN marks the modality missing for that instance (as in
        :func:`calmrl.fit`); a row with some NaN features, or any inf, is refused naming it."""
        name = self.names[m]
        if not isinstance(v, Tensor):
            try:
                v = torch.as_tensor(np.asarray(v, dtype=np.float64))
            except (TypeError, ValueError):
                raise ValueError(f"modality '{name}' must be a numeric (n, d) array") from None
        if v.dim() != 2:
            raise ValueError(f"modality '{name}' must be a 2-D (instances, features) array, got shape {tuple(v.shape)}")
        nan_rows = torch.isnan(v).all(1) if v.shape[1] else torch.zeros(v.shape[0], dtype=torch.bool)
        partial = torch.isnan(v).any(1) & ~nan_rows
        if bool(partial.any()) and self.partial_views == "missing":
            nan_rows = nan_rows | partial
        elif bool(partial.any()) and self.partial_views == "fill" and self.standardization is not None:
            v = torch.where(torch.isnan(v) & partial[:, None], self.standardization[m][0].to(v.dtype), v)
        rows = ~nan_rows
        bad = ~torch.isfinite(v[rows]).all(1) if bool(rows.any()) else torch.zeros(0, dtype=torch.bool)
        if bool(bad.any()):
            first = int(rows.nonzero().flatten()[bad.nonzero().flatten()[0]])
            raise ValueError(f"modality '{name}' row {first} holds NaN/inf in some features (a row entirely NaN "
                             "marks the modality missing; a partly NaN row cannot be encoded)")
        v = torch.where(rows[:, None], v, torch.zeros_like(v))
        if self.standardization is not None:
            mean, std = self.standardization[m]
            if v.shape[1] != mean.shape[0]:
                raise ValueError(f"modality '{name}' has {v.shape[1]} features, the model was trained on {mean.shape[0]}")
            v = (v.to(torch.float64) - mean) / std
        return v.to(torch.float32), rows

    def _views(self, inputs: Mapping[str, object], allow_empty: bool = False) -> tuple[list, Tensor]:
        unknown = [k for k in inputs if k not in self.names]
        if unknown:
            raise ValueError(f"unknown modality name(s) {unknown}; valid names are {self.names}")
        present = {k: v for k, v in inputs.items() if v is not None}
        if not present:
            raise ValueError("the query has no observed modality")
        n = {len(np.asarray(v)) if not isinstance(v, Tensor) else len(v) for v in present.values()}
        if len(n) != 1:
            raise ValueError(f"modalities disagree on the number of instances: { {k: len(v) for k, v in present.items()} }")
        n = n.pop()
        views, mask = [], torch.zeros(n, len(self.names), dtype=torch.bool)
        for m, name in enumerate(self.names):
            v = present.get(name)
            if v is None:
                views.append(torch.zeros(n, 1))  # placeholder: encoders never run on missing rows
                continue
            x, rows = self._prepare(m, v)
            views.append(x)
            mask[:, m] = rows
        if not allow_empty and not bool(mask.any(1).all()):
            raise ValueError(f"instance(s) {mask.any(1).logical_not().nonzero().flatten()[:5].tolist()} have no "
                             "observed modality (every given row is NaN)")
        return views, mask

    @torch.no_grad()
    def embed(self, inputs: Mapping[str, object]) -> Embedded:
        """Encode the given modalities (name -> batch of raw features: numpy, pandas or torch;
        missing: absent, ``None``, or a row of NaN) and impute the rest. The fields are numpy
        arrays when no input was a torch tensor, tensors otherwise."""
        out = self._embed(*self._views(inputs))
        if _wants_numpy(inputs):
            return Embedded(*(t.numpy() for t in (out.embeddings, out.mask, out.imputed, out.confidence, out.fused)))
        return out

    def _embed(self, views: list, mask: Tensor) -> Embedded:
        """:meth:`embed` on inputs already prepared by :meth:`_views`."""
        # computed in float64 and rounded to float32 at the end: the matrix kernels a batch of one
        # row and a batch of thousands use differ in the last float32 bits, so an instance's
        # embedding would depend on the batch around it; in float64 those differences stay far
        # below float32's rounding
        enc, cal = self._float64()
        A = enc([v.to(torch.float64) for v in views], mask)
        imp = cal.impute(A, mask)
        conf = torch.where(mask, torch.ones_like(imp.confidence), imp.confidence).to(torch.float64)
        filled = imp.filled.to(torch.float64)
        fused = F.normalize((F.normalize(filled, dim=-1) * conf[..., None]).sum(1), dim=-1)
        f32 = torch.float32
        return Embedded(A.to(f32), mask, filled.to(f32), conf.to(f32), fused.to(f32))

    def _float64(self):
        """Float64 copies of the encoder and the calibrator, made once (and again if either was
        replaced)."""
        cached = getattr(self, "_f64", None)
        if cached is None or cached[0] is not self.encoder or cached[1] is not self.calibrator:
            import copy

            cached = (self.encoder, self.calibrator, copy.deepcopy(self.encoder).double().eval(),
                      copy.deepcopy(self.calibrator).double())
            self._f64 = cached
        return cached[2], cached[3]

    @torch.no_grad()
    def retrieve(self, query: Mapping[str, object], gallery, k: int = 10) -> tuple[Tensor, Tensor]:
        """Top-``k`` gallery items (cosine) for queries with any subset of modalities.

        ``gallery``: embeddings ``(n, d)`` (torch or numpy), or raw inputs as for :meth:`embed`
        (a mapping; each gallery item is then its fused embedding). Returns ``(scores, indices)``,
        ``(n_query, k)``. A query row with no observed modality (every given row NaN) is
        answered with NaN scores and index -1; ``k`` larger than the gallery is refused."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        views, qmask = self._views(query, allow_empty=True)
        has = qmask.any(1)
        if not bool(has.any()):
            raise ValueError("no query row has an observed modality (every given row is NaN)")
        if not bool(has.all()):      # rows with nothing observed are answered with NaN / -1, the rest as usual
            views, qmask = [v[has] for v in views], qmask[has]
        q = self._embed(views, qmask).fused
        if isinstance(gallery, Mapping):
            gallery = self._embed(*self._views(gallery)).fused
        gallery = torch.as_tensor(np.asarray(gallery) if not isinstance(gallery, Tensor) else gallery)
        if gallery.dim() != 2 or gallery.shape[1] != q.shape[1]:
            raise ValueError(f"gallery must be (n, {q.shape[1]}) embeddings or raw inputs by modality name, got "
                             f"shape {tuple(gallery.shape)}")
        if k > gallery.shape[0]:
            raise ValueError(f"k={k} is more than the gallery's {gallery.shape[0]} items")
        scores, index = (q @ F.normalize(gallery.to(q.dtype), dim=-1).T).topk(k, dim=1)
        if not bool(has.all()):              # back to every query row: NaN / -1 where nothing was observed
            s_sub, i_sub = scores, index
            scores = torch.full((len(has), k), float("nan"), dtype=s_sub.dtype)
            index = torch.full((len(has), k), -1, dtype=i_sub.dtype)
            scores[has], index[has] = s_sub, i_sub
        return (scores.numpy(), index.numpy()) if _wants_numpy(query) else (scores, index)


def _wants_numpy(inputs: Mapping[str, object]) -> bool:
    """Numpy in, numpy out: no input given as a torch tensor."""
    return not any(isinstance(v, Tensor) for v in inputs.values() if v is not None)


def retrieve_stores(model: CalMRLModel, query, gallery, gallery_modality: str, k: int, *,
                    query_name: str = "the queries", gallery_name: str = "the gallery"):
    """Top-``k`` items of ``gallery`` (a :class:`~calmrl.data.MultiViewData`, each item its
    ``gallery_modality`` embedding) for every instance of ``query`` (a MultiViewData), each
    query with whatever modalities it has, one batch per missingness pattern (missing ones are
    imputed). Returns ``(hits, gallery_rows, n_empty)``: ``hits`` sorted by query row, each
    ``(query row, [gallery positions in gallery_rows], [scores])``; a query with nothing observed
    has no items (``n_empty`` counts them); ``k`` is capped at the gallery's size. Errors name
    the data as ``query_name`` / ``gallery_name``."""
    if gallery_modality not in model.names:
        raise ValueError(f"the model has no modality '{gallery_modality}'; it has {model.names}")
    if gallery_modality not in gallery.names:
        raise ValueError(f"{gallery_name} has no modality '{gallery_modality}'; it has {gallery.names}")
    unknown = [n for n in query.names if n not in model.names]
    if unknown:
        raise ValueError(f"{query_name} has modalities {unknown} the model does not know ({model.names})")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    gm = gallery.index(gallery_modality)
    rows = np.nonzero(gallery.mask[:, gm])[0]
    if len(rows) == 0:
        raise ValueError(f"no instance of {gallery_name} observes '{gallery_modality}'")
    k = min(k, len(rows))
    gal_in = {n: (torch.as_tensor(np.asarray(gallery.views[m][rows])) if m == gm else None)
              for m, n in enumerate(gallery.names)}
    emb = model.embed(gal_in).embeddings[:, model.names.index(gallery_modality)]
    hits, empty = [], 0
    for pattern in np.unique(query.mask, axis=0):                 # one batch per missing pattern
        idx = np.nonzero((query.mask == pattern).all(1))[0]
        if not pattern.any():                                     # nothing observed: no items
            hits += [(int(i), [], []) for i in idx]
            empty += len(idx)
            continue
        inputs = {n: None for n in model.names}                   # the model's modalities the queries lack
        inputs.update({n: (torch.as_tensor(np.asarray(query.views[m][idx])) if pattern[m] else None)
                       for m, n in enumerate(query.names)})
        scores, top = model.retrieve(inputs, emb, k=k)
        hits += [(int(i), top[j].tolist(), scores[j].tolist()) for j, i in enumerate(idx)]
    hits.sort()
    return hits, rows, empty
