"""Evaluation of a trained embedding space: cross-modal retrieval, fused queries, kNN
accuracy, anchor shift and imputation quality. Works on embedding tensors, so it is
usable for any model, not only the ones trained here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import (SharedLatentCalibrator, anchor_shift, fuse_observed, imputation_quality, retrieval_ranks,
                    summarize_ranks)
from .. import objectives
from ..data import MultiViewData
from ..data.rows import bounded_sample
from .config import OWN_SIMILARITY

if TYPE_CHECKING:
    from .config import Config
    from .splits import Splits

__all__ = ["validation_score", "split_score", "embed_data", "retrieval_table", "fused_retrieval", "knn_accuracy", "raw_knn_accuracy", "anchor_report", "evaluate_embeddings",
           "instance_identification", "diagnostic_split"]


@torch.no_grad()
def embed_data(encoder, data: MultiViewData, *, batch_size: int = 1024, mask: np.ndarray | None = None,
               device=None) -> tuple[Tensor, Tensor]:
    """Embed every cell marked in ``mask`` (default: the data's mask). Returns ``(A, mask)``
    with ``A`` ``(N, M, d)`` float32 on CPU."""
    was_training = encoder.training
    encoder.eval()
    device = device or next(encoder.parameters()).device
    mask_t = torch.as_tensor(data.mask if mask is None else mask)
    out = []
    for s in range(0, data.n, batch_size):
        views = [torch.as_tensor(np.asarray(v[s: s + batch_size], dtype=np.float32), device=device) for v in data.views]
        mb = mask_t[s: s + batch_size].to(device)
        views = [torch.where(mb[:, m, None], x, torch.zeros_like(x)) for m, x in enumerate(views)]
        out.append(encoder(views, mb).float().cpu())
    encoder.train(was_training)
    return torch.cat(out), mask_t


def retrieval_table(A: Tensor, names: Sequence[str], mask: Tensor | None = None, *, ks=(1, 5, 10),
                    chunk_size: int = 4096, backend: str = "torch", similarity: str = "cosine",
                    gallery_size: int = 0, galleries: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics for every ordered pair ``query->gallery`` of embeddings ``(N, M, d)`` and their
    average under ``"average"``; scored by ``similarity`` (cosine, or a method's own: GRAM's
    volume, TRIANGLE's area). With a ``mask`` each pair is scored over the instances where
    both modalities are observed (``n`` in each entry; pairs with fewer than 2 are left out
    of the table and the average).

    ``gallery_size`` > 0: as the field reports retrieval at scale (COCO's 5k, Flickr30k's and
    MSR-VTT's 1k test galleries), each pair is scored on ``galleries`` random sets of
    ``gallery_size`` instances (drawn with ``seed``; queries and gallery the same instances)
    and the metrics averaged; ``n`` is then the gallery size. 0: the whole split."""
    M = A.shape[1]
    mask = torch.ones(A.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    table = {}
    for q in range(M):
        for g in range(M):
            if q == g:
                continue
            rows = torch.nonzero(mask[:, q] & mask[:, g]).squeeze(1)
            if len(rows) < 2:
                continue
            draws = _galleries(rows, gallery_size, galleries, seed * 1_000_003 + q * 1009 + g)
            scored = [summarize_ranks(retrieval_ranks(A[sub, q], A[sub, g], chunk_size=chunk_size, backend=backend,
                                                      similarity=similarity), ks) for sub in draws]
            table[f"{names[q]}->{names[g]}"] = {**_mean_metrics(scored), "n": int(len(draws[0]))}
    if not table:
        raise ValueError("no pair of modalities is observed together in 2 or more instances; nothing to score")
    return _with_average(table)


def _galleries(rows: Tensor, gallery_size: int, galleries: int, key: int) -> list[Tensor]:
    """The instances each draw scores: ``[rows]`` (the whole split) unless ``0 < gallery_size <
    len(rows)``, then ``galleries`` random sets of ``gallery_size`` of them, drawn from a
    generator seeded with ``key``."""
    if not 0 < gallery_size < len(rows):
        return [rows]
    gen = torch.Generator().manual_seed(key)
    return [rows[torch.randperm(len(rows), generator=gen)[:gallery_size]] for _ in range(galleries)]


def _mean_metrics(draws: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the draws (one draw: its own values)."""
    return {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}


def _with_average(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = [k for k in next(iter(table.values())).keys() if k != "n"]
    table["average"] = {k: float(np.mean([v[k] for v in table.values()])) for k in keys}
    table["average"]["pairs"] = len(table) - 1
    return table


def fused_retrieval(A: Tensor, names: Sequence[str], mask: Tensor | None = None, *, ks=(1, 5, 10),
                    chunk_size: int = 4096, backend: str = "torch", gallery_size: int = 0, galleries: int = 5,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Multi-modal queries: every other *observed* modality of an instance, fused (normalised
    sum), retrieves its modality ``m`` among all instances that observe ``m`` (``gallery_size``
    > 0: among ``galleries`` random sets of that many of them, averaged, as
    :func:`retrieval_table` draws them; ``n`` is then the queries of one draw, on average)."""
    M = A.shape[1]
    mask = torch.ones(A.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    table = {}
    for g in range(M):
        gal_all = torch.nonzero(mask[:, g]).squeeze(1)
        others = mask.clone()
        others[:, g] = False
        scored = []
        for gal in _galleries(gal_all, gallery_size, galleries, seed * 1_000_003 + 7 * 1009 + g):
            qsel = others[gal].any(1)
            if len(gal) < 2 or not bool(qsel.any()):
                continue
            qrows = gal[qsel]
            query = fuse_observed(A[qrows], others[qrows])
            targets = torch.nonzero(qsel).squeeze(1)             # positions of the query rows in the gallery
            ranks = retrieval_ranks(query, A[gal, g], targets, chunk_size=chunk_size, backend=backend)
            scored.append((summarize_ranks(ranks, ks), len(qrows)))
        if scored:
            table[f"rest->{names[g]}"] = {**_mean_metrics([d for d, _ in scored]),
                                          "n": int(round(np.mean([n for _, n in scored])))}
    if not table:
        raise ValueError("no instance observes two or more modalities; fused queries cannot be scored")
    return _with_average(table)


def knn_accuracy(train_A: Tensor, train_mask: Tensor, train_y, test_A: Tensor, test_y, k: int = 10,
                 test_mask: Tensor | None = None) -> float:
    """Accuracy (%) of a cosine kNN (majority vote) on fused embeddings (mean of the observed
    modalities); unlabelled instances (label -1) are neither neighbours nor scored."""
    test_mask = torch.ones(test_A.shape[:2], dtype=torch.bool) if test_mask is None else torch.as_tensor(test_mask)
    ytr, yte = torch.as_tensor(np.asarray(train_y)), torch.as_tensor(np.asarray(test_y))
    ltr, lte = ytr >= 0, yte >= 0
    if not bool(ltr.any()) or not bool(lte.any()):
        return float("nan")
    train_A, train_mask, ytr = train_A[ltr], torch.as_tensor(train_mask)[ltr], ytr[ltr]
    test_A, test_mask, yte = test_A[lte], test_mask[lte], yte[lte]
    tr, te = fuse_observed(train_A, train_mask), fuse_observed(test_A, test_mask)
    return _vote_accuracy(te, tr, yte, ytr, k, lambda q, g: q @ g.T, largest=True)


def _vote_accuracy(q: Tensor, g: Tensor, yq: Tensor, yg: Tensor, k: int, score, *, largest: bool,
                   chunk: int = 4096) -> float:
    """Accuracy (%) of a majority vote among each query's ``k`` nearest gallery items (the
    highest ``score(q_chunk, g)`` with ``largest``, else the lowest), a tie to the smallest
    label; queries in chunks, so that no ``(n_q, n_g)`` matrix is held whole."""
    kk, C = min(k, len(yg)), int(max(yg.max(), yq.max())) + 1
    correct = []
    for s in range(0, len(q), chunk):
        idx = score(q[s:s + chunk], g).topk(kk, dim=1, largest=largest).indices
        votes = F.one_hot(yg[idx], C).sum(1)
        correct.append(votes.argmax(1) == yq[s:s + chunk])          # argmax: the first (smallest) label
    return 100.0 * float(torch.cat(correct).float().mean())


def raw_knn_accuracy(train, test, k: int = 10, chunk: int = 4096) -> float:
    """The baseline of :func:`knn_accuracy`: a Euclidean kNN (majority vote, a tie to the smallest
    label, as scikit-learn's ``KNeighborsClassifier``, which a test checks it against) on the raw
    features themselves, every view as the split holds it (standardised with the training
    split's statistics), a missing view at its training mean (0), the views side by side;
    unlabelled instances neither neighbours nor scored. In torch, in chunks of queries (no
    scikit-learn import on the evaluation path)."""
    def flat(d):
        return torch.as_tensor(np.concatenate(
            [np.where(np.asarray(d.mask)[:, [m]], np.nan_to_num(np.asarray(v, np.float64)), 0.0)
             for m, v in enumerate(d.views)], axis=1))

    ytr, yte = np.asarray(train.labels), np.asarray(test.labels)
    ltr, lte = ytr >= 0, yte >= 0
    if not ltr.any() or not lte.any():
        return float("nan")
    g, q = flat(train)[torch.as_tensor(ltr)], flat(test)[torch.as_tensor(lte)]
    g2 = (g * g).sum(1)
    return _vote_accuracy(q, g, torch.as_tensor(yte[lte]), torch.as_tensor(ytr[ltr]), k,
                          lambda qs, gs: (qs * qs).sum(1, keepdim=True) - 2 * qs @ gs.T + g2,   # squared distances
                          largest=False, chunk=chunk)


def anchor_report(A_full: Tensor, mask: Tensor, calibrator: SharedLatentCalibrator | None = None, *,
                  em_iters: int = 30, latent_dim: int | None = None, imputer=None) -> dict[str, float]:
    """Anchor shift (degrees) of observed vs complete and of observed + imputed vs complete,
    plus imputation quality of the hidden cells, on training embeddings whose hidden cells
    are known. The calibrator is (re)fitted on the observed cells only; ``imputer(A, mask)`` (a
    nonlinear completion backend's ``impute``) replaces it when given."""
    mask = mask.bool()
    N, M, d = A_full.shape
    if imputer is not None:
        imputed = imputer(A_full, mask).to(A_full)
    elif calibrator is None or not bool(calibrator.initialized):
        calibrator = SharedLatentCalibrator(M, d, latent_dim or d // 2)
        calibrator.fit(A_full.to(calibrator.W.dtype), mask, n_iter=em_iters, init="pca")
    else:
        calibrator.fit(A_full.to(calibrator.W.dtype), mask, n_iter=em_iters, init=None)
    if imputer is None:
        imputed = calibrator.impute(A_full.to(calibrator.W.dtype), mask).values.to(A_full)  # same device and dtype
    hidden = ~mask
    rows = hidden.any(1)          # instances with at least one hidden cell
    if not bool(rows.any()):
        return {"shift_observed_deg": 0.0, "shift_calibrated_deg": 0.0, "shift_calibrated_unit_deg": 0.0}
    A_r, m_r, imp_r = A_full[rows], mask[rows], imputed[rows]
    q = imputation_quality(imputed, A_full, hidden)
    ident = instance_identification(A_full, mask, imputed)
    return {
        "imputation_identification": ident["imputed"],
        "fallback_identification": ident["fallback"],
        "shift_observed_deg": float(anchor_shift(A_r, m_r).mean()),
        "shift_calibrated_deg": float(anchor_shift(A_r, m_r, imp_r).mean()),
        "shift_calibrated_unit_deg": float(anchor_shift(A_r, m_r, F.normalize(imp_r, dim=-1)).mean()),
        "imputation_cosine": float(np.nanmean(q["cosine"].cpu().numpy())),
        "imputation_r2": float(np.nanmean(q["r2"].cpu().numpy())),
    }


def instance_identification(A_full: Tensor, mask: Tensor, imputed: Tensor) -> dict[str, float]:
    """How often a hidden cell's stand-in picks out its own instance: for every hidden cell
    ``(i, m)``, the rank of instance ``i``'s true embedding of ``m`` among all instances' true
    embeddings of ``m`` (cosine); the rate (%) of rank 1, over all hidden cells. ``imputed``:
    the calibrator's imputation; ``fallback``: the normalised mean of the instance's observed
    embeddings (what the alignment sees without calibration). An imputation that is a
    function of the observed cells can only identify instances as well as they do."""
    mask = mask.bool()
    fallback = fuse_observed(A_full, mask)
    hits = {"imputed": 0, "fallback": 0}
    total = 0
    for m in range(A_full.shape[1]):                          # loop over modalities
        rows = torch.nonzero(~mask[:, m]).squeeze(1)
        if not len(rows):
            continue
        gallery = F.normalize(A_full[:, m], dim=-1)
        for key, q in (("imputed", F.normalize(imputed[rows, m], dim=-1)), ("fallback", fallback[rows])):
            hits[key] += int((retrieval_ranks(q, gallery, rows) == 1).sum())
        total += len(rows)
    nan = float("nan")
    return {k: (100.0 * v / total if total else nan) for k, v in hits.items()}


def evaluate_embeddings(test_A: Tensor, names: Sequence[str], mask: Tensor | None = None, *, ks=(1, 5, 10),
                        chunk_size: int = 4096, backend: str = "torch", similarity: str = "cosine",
                        gallery_size: int = 0, galleries: int = 5) -> dict:
    """``pairs`` (cosine), ``pairs_own`` (the same table scored by the method's own
    ``similarity``; equal to ``pairs`` for cosine) and ``fused`` retrieval, each pair over
    the instances where both sides are observed (``mask``; default: all)."""
    g = {"gallery_size": gallery_size, "galleries": galleries}
    pairs = retrieval_table(test_A, names, mask, ks=ks, chunk_size=chunk_size, backend=backend, **g)
    own = pairs if similarity == "cosine" else retrieval_table(test_A, names, mask, ks=ks, chunk_size=chunk_size,
                                                               similarity=similarity, **g)
    fused = fused_retrieval(test_A, names, mask, ks=ks, chunk_size=chunk_size, backend=backend, **g)
    out = {"pairs": pairs, "pairs_own": own, "similarity": similarity, "fused": fused,
           "gallery": {"size": gallery_size or None, "draws": galleries if gallery_size else None}}
    M = test_A.shape[1]
    left = [f"{names[q]}->{names[g]}" for q in range(M) for g in range(M) if q != g and f"{names[q]}->{names[g]}"
            not in pairs]
    if left:
        out["pairs_left_out"] = left
        out["notes"] = [f"{len(left)} of {M * (M - 1)} ordered view pairs have fewer than 2 instances observing both "
                        f"and are left out of the average: {', '.join(left[:6])}{', ...' if len(left) > 6 else ''}"]
    return out


def validation_score(model: torch.nn.Module, splits: Splits, cfg: Config) -> dict[str, float]:
    """The average over ordered view pairs of validation retrieval (cosine), as
    :func:`evaluate_model` reports it under ``val_average``: what a search ranks candidates by,
    without touching the test split."""
    return split_score(model, splits.val, splits.names, cfg)


def validation_rows(n: int, e) -> np.ndarray | None:
    """The fixed sample a validation score reads on a split of ``n`` instances (sorted rows), or
    ``None``: the whole split (``n <= eval.val_gallery_size``, or ``eval.gallery_size`` set).
    The training loop's per-epoch validation embeds only these rows."""
    if not e.gallery_size and e.val_gallery_size and n > e.val_gallery_size:
        return np.sort(np.random.default_rng(0).choice(n, e.val_gallery_size, replace=False))
    return None


def validation_table(A: Tensor, names: list[str], mask: Tensor, e, **kw) -> dict:
    """The retrieval table of a validation score (every epoch's, auto's rungs, ``val_average``):
    on a split larger than ``eval.val_gallery_size``, on one fixed random sample of that many
    instances (queries and gallery the same instances, as one gallery; retrieval over the whole
    split costs n^2 per ordered view pair); ``eval.gallery_size``, when set, is used instead."""
    rows = validation_rows(len(A), e)
    if rows is not None:
        rows = torch.as_tensor(rows)
        A, mask = A[rows], mask[rows]
    return retrieval_table(A, names, mask, ks=tuple(e.ks), chunk_size=e.chunk_size, backend=e.backend,
                           gallery_size=e.gallery_size, galleries=e.galleries, **kw)


def split_score(model: torch.nn.Module, split, names: list[str], cfg: Config, *, validation: bool = True
                ) -> dict[str, float]:
    """The average over ordered view pairs of retrieval (cosine) on one split, scored as
    :func:`validation_score` scores validation (:func:`validation_table`; ``validation=False``:
    as the test split is scored)."""
    e = cfg.eval
    A, mask = embed_data(model.encoder, split)
    if validation:
        return validation_table(A, names, mask, e)["average"]
    return retrieval_table(A, names, mask, ks=tuple(e.ks), chunk_size=e.chunk_size,
                           backend=e.backend, gallery_size=e.gallery_size, galleries=e.galleries)["average"]


def diagnostic_split(splits: Splits, cfg: Config) -> tuple[MultiViewData, MultiViewData, str | None]:
    """The training split (as trained on, and before the simulator hid cells) that diagnostics
    read: all of it, or a random sample of ``eval.max_instances`` (the same for every method),
    with the note that says so."""
    rows = bounded_sample(splits.train.n, cfg.eval.max_instances, cfg.train.seed, 3)
    if rows is None:
        return splits.train, splits.train_full, None
    note = (f"training-split diagnostics (kNN neighbours, anchor shift, imputation quality) on a random sample of "
            f"{len(rows)} of the {splits.train.n} training instances (eval.max_instances)")
    return splits.train.subset(rows), splits.train_full.subset(rows), note


def fit_unused_calibrator(model: torch.nn.Module, splits: Splits, cfg: Config) -> bool:
    """A method that trained without the calibrator (pmrl-drop, the InfoNCE objectives, ...)
    still leaves one fitted by EM on its final training embeddings, so that its checkpoint and
    export impute missing modalities (``impute``, ``retrieve`` with incomplete queries) like a
    calmrl model. Training is over: the figures of the run are unchanged."""
    cal = model.calibrator
    if bool(cal.initialized) or model.completer is not None:
        return False
    A, mask = embed_data(model.encoder, diagnostic_split(splits, cfg)[0])
    cal.fit(A.to(cal.W.dtype), mask.to(A.device), n_iter=cfg.calibrator.em_iters * 3)
    return True


def evaluate_model(model: torch.nn.Module, splits: Splits, cfg: Config) -> dict:
    """Test retrieval (each pair over the instances that observe both), fused queries over what
    is observed, kNN, and the anchor diagnostics on the training split (where the simulator
    hid cells whose true embeddings are known); ``notes`` say why a diagnostic is absent."""
    enc = model.encoder
    e = cfg.eval
    test_A, test_mask = embed_data(enc, splits.test)
    own = OWN_SIMILARITY.get(cfg.method.name, "cosine")
    out = evaluate_embeddings(test_A, splits.names, test_mask, ks=tuple(e.ks), chunk_size=e.chunk_size,
                              backend=e.backend, similarity=own, gallery_size=e.gallery_size, galleries=e.galleries)
    val_A, val_mask = embed_data(enc, splits.val)         # validation: the pair tables only (what choices read)
    out["val_average"] = validation_table(val_A, splits.names, val_mask, e)["average"]
    out["val_own_average"] = (out["val_average"] if own == "cosine" else
                              validation_table(val_A, splits.names, val_mask, e, similarity=own)["average"])
    out["test_complete_fraction"] = float(test_mask.all(1).float().mean())
    notes = list(out.pop("notes", []))
    # cells hidden by the simulator are known (train_full); cells missing in the data itself are not
    train, train_full, note = diagnostic_split(splits, cfg)
    if note:
        notes.append(note)
    train_full_A, full_mask = embed_data(enc, train_full)
    train_mask = torch.as_tensor(train.mask)
    n_lab = int((np.asarray(train.labels) >= 0).sum()) if train.labels is not None else 0
    if train.labels is not None and n_lab < e.knn_k:     # too few neighbours for the figure to mean anything
        out["knn_accuracy"] = float("nan")
        notes.append(f"kNN accuracy n/a: {e.knn_k}-NN needs at least {e.knn_k} labelled training instances, the "
                     f"sample has {n_lab} (eval.max_instances = {e.max_instances})")
    elif train.labels is not None:
        out["knn_accuracy"] = knn_accuracy(train_full_A, train_mask, train.labels, test_A,
                                           splits.test.labels, e.knn_k, test_mask=test_mask)
        if splits.classes is not None and len(splits.classes) < 2:
            notes.append(f"every labelled instance has one class ({splits.classes[0]!r}): kNN accuracy is 100 "
                         "by construction and says nothing")
        else:      # what the embedding adds over its own inputs, said beside it
            raw = raw_knn_accuracy(train, splits.test, e.knn_k)
            out["raw_knn_accuracy"] = raw
            if raw == raw and out["knn_accuracy"] == out["knn_accuracy"]:
                gap = out["knn_accuracy"] - raw
                notes.append(f"kNN on the raw features (standardised, a missing view at its mean): {raw:.2f}% "
                             f"against the embedding's {out['knn_accuracy']:.2f}%"
                             + ("" if gap >= 0 else "; the embedding is trained to match an instance's views to "
                                "each other, not to separate classes: for class labels, a classifier on the raw "
                                "features may be the better tool"))
    cal = None
    if model.uses_calibrator and bool(model.calibrator.initialized):
        cal = model.calibrator
    known = full_mask.all(1)
    hidden = known & ~train_mask.all(1)
    nan = float("nan")
    if int(hidden.sum()) < 2:
        why = ("no training instance is complete in the data" if not bool(known.any()) else
               "the simulator hid no cell (data.missing.kind = none, or method oracle)")
        notes.append(f"anchor shift and imputation quality need hidden cells whose true embeddings are known: {why}")
        out["anchor"] = {"shift_observed_deg": nan, "shift_calibrated_deg": nan, "shift_calibrated_unit_deg": nan,
                         "imputation_cosine": nan, "imputation_r2": nan}
        if objectives.get(cfg.method.name).needs == "no_missing":    # nothing hidden by construction
            out["anchor"].update(shift_observed_deg=0.0, shift_calibrated_deg=0.0, shift_calibrated_unit_deg=0.0)
    else:
        comp = model.completer
        imputer = None if comp is None else (lambda A, m: comp.cpu().impute(A.float(), m))  # noqa: E731
        out["anchor"] = anchor_report(train_full_A[known], train_mask[known], cal,
                                      em_iters=cfg.calibrator.em_iters * 3, latent_dim=model.calibrator.k,
                                      imputer=imputer)
    out["notes"] = notes
    return out
