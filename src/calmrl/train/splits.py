"""Data preparation for a run: the configured source loaded, labels encoded, partial views
resolved, the stratified split, standardisation on the training split, the simulated gaps
(opt-in) and what was done, in words; every check before any training."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from .. import objectives
from ..data import (FeatureStore, MultiViewData, load_tables, load_uci_mfeat, mcar_mask, paired_subsets_mask,
                    split_parts, stratified_split, suite, synthetic_multiview)
from ..data.fingerprint import fingerprint, split_fingerprint
from ..data.tables import check_columns, view_columns  # noqa: F401  (check_columns: re-exported)
from ..data.dataset import standardization
from ..data.rows import bounded_sample
from .config import Config

__all__ = ['Splits', 'prepare_data', 'describe_simulation', 'has_scorable_pair']

log = logging.getLogger("calmrl")


@dataclass
class Splits:
    train: MultiViewData        # with the simulated missingness
    train_full: MultiViewData   # the same instances before the simulator hid cells (for diagnostics only)
    val: MultiViewData          # natural missingness kept: each pair is scored where both are observed
    test: MultiViewData
    names: list[str]
    dims: list[int]
    standardization: list | None = None  # per-modality (mean, std) of the training split, or None
    classes: list | None = None          # label values, in the order of the integer labels used here
    notes: list = field(default_factory=list)   # what was done to the data, for the user
    fingerprint: dict | None = None      # the data as given and the split (calmrl.data.fingerprint)
    simulated: dict | None = None        # what the missingness simulator hid, realised (None: nothing)
    columns: dict | None = None          # modality -> its feature columns' names, where the data named them
    test_is_validation: bool = False     # data.test_fraction 0: no test split; ``test`` is the validation split


def _select_views(data: MultiViewData, views: list) -> MultiViewData:
    """``data.views`` (all modalities when empty)."""
    try:
        return data.select(views) if views else data
    except ValueError as e:
        raise ValueError(f"data.views: {e}") from None


def _encode_labels(data: MultiViewData) -> tuple[MultiViewData, list | None]:
    """Labels of any type (strings, floats, negative ints) -> 0..C-1, with the class values."""
    if data.labels is None:
        return data, None
    y = np.asarray(data.labels)
    if y.dtype.kind == "f":
        missing = np.isnan(y)
    else:        # None, NaN or "" (a store's unlabelled instances)
        missing = np.array([v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and v == "")
                            for v in y], dtype=bool)
        if y.dtype == object:
            y = y.astype(str)
    codes = np.full(len(y), -1, np.int64)           # -1: unlabelled (partly labelled data)
    if missing.all():
        return MultiViewData.unchecked(data.views, data.names, data.mask, data.ids, None, data.meta), None
    classes, c = np.unique(y[~missing], return_inverse=True)
    codes[~missing] = c
    return (MultiViewData.unchecked(data.views, data.names, data.mask, data.ids, codes, data.meta),
            [v.item() if hasattr(v, "item") else v for v in classes])


def _load_source(cfg: Config) -> MultiViewData:
    """The configured data, not yet checked for partial views (see :func:`prepare_data`)."""
    d = cfg.data
    if d.dataset == "uci_mfeat":
        data = load_uci_mfeat(d.path or None, d.views or None)
    elif d.dataset == "synthetic":
        data, _ = synthetic_multiview(d.synthetic_n, d.synthetic_dims, d.synthetic_latent, d.synthetic_noise,
                                      seed=cfg.train.seed)
    elif d.dataset == "tables":
        data = load_tables(d.tables, d.id_column, d.label_column)
    elif d.dataset in suite.SUITE:
        data = suite.load(d.dataset, log=log.info)
    else:
        data = FeatureStore(d.path).read(validate=False, inputs_only=True)
    return _select_views(data, d.views)


def prepare_data(cfg: Config, method: str | None = None, data: MultiViewData | None = None) -> Splits:
    """Resolve partial views (``data.partial_views``), split (stratified), standardise on the
    training split, simulate missingness on the training split only (none for ``oracle``).
    Validation and test keep their natural missingness; every check runs before training."""
    method = method or cfg.method.name
    data, classes = _encode_labels(_load_source(cfg) if data is None else _select_views(data, cfg.data.views))
    fp, nonfinite = fingerprint(data, with_nonfinite=True)      # one pass: the hash and the NaN/inf rows
    notes = list(data.meta.get("notes", []))
    policy = cfg.data.partial_views
    if policy != "fill":         # error / missing need no split statistics
        data, report = data.resolve_partial_views(policy, nonfinite=nonfinite)
        if report:
            empty = ~data.mask.any(1)
            notes.append(f"partial views treated as missing: {report}"
                         + (f"; {int(empty.sum())} instance(s) left with no view were dropped" if empty.any() else ""))
            data = data.subset(np.nonzero(~empty)[0]) if empty.any() else data
    # error / missing: every observed cell was just checked, the structure is what is left; fill
    # needs the training split's means: split first, then check the filled data
    data.validate_structure()
    seed = cfg.train.seed
    tr, va, te = stratified_split(data.n, data.labels if cfg.data.stratify else None, cfg.data.val_fraction,
                                  cfg.data.test_fraction, seed)
    if policy == "fill":
        data, report = data.resolve_partial_views("fill", fill_rows=tr)
        data.validate()
        if report:
            notes.append(f"partial views filled with training-split feature means: {report}")
    no_test = cfg.data.test_fraction == 0       # then ``test`` is the validation split itself, said in a note
    train, val = data.subset(tr), data.subset(va)
    test = None if no_test else data.subset(te)
    fp["split"] = split_fingerprint(train.ids, val.ids, val.ids[:0] if no_test else test.ids)
    val = _capped(val, "validation", cfg, 1, notes)
    test = None if no_test else _capped(test, "test", cfg, 2, notes)
    if no_test:
        notes.append(f"no test split (data.test_fraction=0): the figures reported are the validation split's "
                     f"({val.n} instances), which chose the model and so flatter it; score on data of your own")
    if cfg.data.train_part:
        i, n_parts = cfg.data.train_part
        parts = split_parts(train.n, n_parts, labels=train.labels, order=cfg.data.train_part_order, seed=seed)
        train = train.subset(parts[i])
    stats = None
    summary = train.summaries()            # one pass: the standardisation and the constant features
    observed = train.mask.sum(0)
    if cfg.data.standardize:
        stats = [standardization(x, name) for x, name in zip(summary, data.names)]
        train, _ = train.standardize(stats)
        val, _ = val.standardize(stats)
        test = None if no_test else test.standardize(stats)[0]
    if no_test:
        test = val
    M = len(data.names)
    miss = cfg.data.missing
    train_full = train
    hides = method == "auto" or objectives.get(method).needs != "no_missing"     # oracle: nothing hidden
    if hides and miss.kind != "none":
        if miss.kind == "mcar":
            sim = mcar_mask(train.n, M, miss.rate, min_observed=min(miss.min_observed, M), seed=seed + 1,
                             observed=train.mask)
        else:
            subsets = [[data.index(n) if isinstance(n, str) else int(n) for n in s] for s in miss.subsets]
            sim = paired_subsets_mask(train.n, M, subsets, complete_fraction=miss.complete_fraction, seed=seed + 1)
        mask = train.mask & sim
        keep = mask.any(1)
        rows = np.nonzero(keep)[0]               # natural gaps can empty a row
        train = train.subset(rows)
        train = MultiViewData.unchecked(train.views, train.names, mask[keep], train.ids, train.labels,
                                        train.meta).validate_structure()       # fewer cells observed: no new value
        train_full = train_full.subset(rows)
        simulated = _simulated(miss, M, train.mask, train_full.mask)
    else:
        simulated = None
    notes += _constant_features(train.names, summary, observed, data.meta.get("columns") or {})
    if M < 2:
        raise ValueError(f"the data has one modality ({data.names[0]}); aligning modalities needs at least two "
                         "(data.views selects them)")
    if not has_scorable_pair(train.mask):
        raise ValueError("no two modalities are observed together in 2 or more training instances; nothing can "
                         "be aligned")
    never = [data.names[m] for m in range(M) if not train.mask[:, m].any()]
    if never:
        raise ValueError(f"modality(ies) {never} are never observed in the training split")
    for name, part in (("test", test), ("validation", val)):
        if M > 1 and not has_scorable_pair(part.mask):
            raise ValueError(f"the {name} split ({part.n} instances) has no two modalities observed together in 2 "
                             "or more instances; retrieval cannot be evaluated (use more data or a larger fraction)")
    return Splits(train, train_full, val, test, list(data.names), data.dims, stats, classes, notes, fp, simulated,
                  view_columns(data), test_is_validation=no_test)


def _capped(part: MultiViewData, name: str, cfg: Config, salt: int, notes: list) -> MultiViewData:
    """The split itself, or a random sample of ``eval.max_instances`` of it (said in ``notes``)."""
    rows = bounded_sample(part.n, cfg.eval.max_instances, cfg.train.seed, salt)
    if rows is None:
        return part
    notes.append(f"the {name} split has {part.n} instances: evaluated on a random sample of {len(rows)} "
                 "(eval.max_instances; 0 = all)")
    return part.subset(rows)


def _simulated(miss, M: int, mask: np.ndarray, known: np.ndarray) -> dict:
    """What the simulator hid on the training split: the rate asked, the share of the data's
    observed training cells hidden (realised), and the cap that ``min_observed`` puts on MCAR."""
    out = {"kind": miss.kind, "realised": float(1 - mask.sum() / max(1, known.sum())),
           "own_missing": float(1 - known.mean())}
    if miss.kind == "mcar":
        out.update(rate=miss.rate, min_observed=min(miss.min_observed, M), cap=1 - min(miss.min_observed, M) / M)
    else:
        out.update(subsets=miss.subsets, complete_fraction=miss.complete_fraction)
    return out


def describe_simulation(sim: dict | None) -> str:
    """The header's words for what was hidden: nothing, or the realised MCAR rate and its cap."""
    if sim is None:
        return "no cell hidden (the data's own gaps only)"
    own = f"; the data's own gaps: {sim['own_missing']:.1%} of training cells" if sim["own_missing"] > 0 else ""
    if sim["kind"] == "mcar":
        capped = " (capped: at least" if sim["rate"] > sim["cap"] + 1e-9 else " (at least"
        return (f"simulated MCAR {sim['rate']:.0%} asked, {sim['realised']:.1%} of observed training cells hidden"
                f"{capped} {sim['min_observed']} views kept per instance, so at most about {sim['cap']:.0%}){own}")
    return (f"simulated paired subsets {sim['subsets']}, {sim['complete_fraction']:.0%} kept complete, "
            f"{sim['realised']:.1%} of observed training cells hidden{own}")


def _constant_features(names: list[str], summary: list, observed, columns: dict | None = None) -> list[str]:
    """Features constant over a modality's observed training rows (min = max in ``summary``, the
    training split's :meth:`~calmrl.data.MultiViewData.summaries`, over ``observed`` rows per
    modality; standardised to 0, they carry nothing); a modality constant throughout is named."""
    notes = []
    for name, summ, count in zip(names, summary, observed):
        if count < 2:
            continue
        lo, hi = summ[2], summ[3]
        const = (hi - lo) == 0
        if const.all():
            notes.append(f"modality '{name}' is constant on the training split (every observed row equal): it "
                         "carries no information, and retrieval to or from it scores at chance")
        elif const.any():
            cols = (columns or {}).get(name) or []
            first = int(np.argmax(const))
            which = f"'{cols[first]}'" if len(cols) == len(const) else f"column {first}"
            notes.append(f"modality '{name}': {int(const.sum())} of {len(const)} feature(s) constant on the training "
                         f"split (e.g. {which}); kept, they carry nothing")
    return notes


def has_scorable_pair(mask: np.ndarray) -> bool:
    co = mask.T.astype(np.int64) @ mask.astype(np.int64)
    np.fill_diagonal(co, 0)
    return bool((co >= 2).any())
