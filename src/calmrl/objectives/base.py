"""The objective registry: every training objective is one :class:`Objective`, declared once.

An objective says, in one place, everything the rest of calmrl needs to know about it:

- ``name`` (``method.name``) and ``family`` (objectives whose learning rate the suite tunes together);
- ``loss(A, mask, ctx)``: the batch loss (formula in the subclass's docstring), on embeddings
  ``A`` ``(B, M, d)`` and the observation ``mask`` ``(B, M)``;
- its temperature: ``temperature`` = ``"learned"`` (a parameter trained with the encoders,
  initialised from ``method.tau_init``) or ``"fixed"``; ``make_parameters`` builds the module
  holding it (and e.g. SigLIP's bias);
- ``similarity``: the score it is evaluated with besides cosine (``results["pairs_own"]``);
- ``calibration``: ``"never"``, ``"always"`` (calmrl) or ``"plug-in"`` (``"X+cal"``: imputed
  cells of the calibrator enter the loss as detached, gated extra members);
- ``observed_only``: the objective the guard trains in its place without imputations;
- ``needs``: what it takes from the data besides the observed cells: ``"true_hidden"`` (the
  simulator's hidden cells, ``pmrl-truefill``), ``"no_missing"`` (``oracle``: nothing hidden);
- ``candidate``: whether auto may train it (objectives that need the simulator's truth may not);
- ``settings``: its own configuration keys (:class:`Setting`), ``method.<section>.<key>`` in the
  config (``section``: the name with ``-`` as ``_``), read in the loss as ``ctx.settings.<key>``.

``parse_method("X+cal")`` splits a candidate name into ``(objective, calibrate)`` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Objective", "Setting", "LossContext", "REGISTRY", "register", "get", "names", "parse_method",
           "method_label", "CAL_SUFFIX", "candidate_names", "registry_table"]

CAL_SUFFIX = "+cal"


@dataclass(frozen=True)
class Setting:
    """One configuration key an objective owns: ``method.<section>.<name>`` with a default, a
    help line and, optionally, its choices or range (checked like every other key)."""
    name: str
    default: object
    help: str
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None


@dataclass
class LossContext:
    """What a loss may use besides ``A`` and ``mask``, filled by the trainer (or by a user's loop).

    ``calibrated``: imputed cells are present in ``A`` (``mask`` then marks observed cells and
    ``column_weights`` ``(B, M)`` the weights: 1 observed, the gate's weight for imputed);
    ``params``: the module of :meth:`Objective.make_parameters` (learned temperature, bias)."""
    method: object                      # a MethodConfig (tau1, tau2, tau_init, label_smoothing, ...)
    anchor: int = 0
    calibrated: bool = False
    column_weights: Tensor | None = None
    params: nn.Module | None = None
    temperature: str | None = None      # set by Objective.loss: the objective's declared temperature
    objective: "Objective | None" = None  # set by Objective.loss: the objective being computed

    @property
    def settings(self):
        """The objective's own settings (``method.<section>``; its declared defaults where the
        method config has no such section, e.g. a plain namespace in a user's loop)."""
        if self.objective is None:
            raise ValueError("ctx.settings is read inside Objective.loss (it names the objective)")
        return self.objective.own_settings(self.method)

    @property
    def tau(self):
        """The learned temperature (``params.tau``; ``method.tau_init`` before one exists). An
        objective that declared ``temperature="fixed"`` reads its own setting instead: asking
        for ``ctx.tau`` there is an error, never a silent ``method.tau_init``."""
        if self.temperature == "fixed":
            raise ValueError("this objective declares a fixed temperature but reads ctx.tau: declare "
                             "temperature='learned' or read its own setting (e.g. ctx.method.tau2)")
        p = self.params
        return p.tau if p is not None and hasattr(p, "tau") else self.method.tau_init


@dataclass(frozen=True)
class Objective:
    name: str
    family: str
    summary: str
    similarity: str = "cosine"
    temperature: str = "fixed"                 # fixed | learned
    calibration: str = "never"                 # never | always | plug-in
    observed_only: str | None = None           # the guard's objective without imputations
    needs: str = ""                            # "" | true_hidden | no_missing
    candidate: bool = True
    anchored: bool = False                     # uses method.anchor (a hub modality)
    settings: tuple = ()                       # Setting(...) each: keys method.<section>.<name>
    fn: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def section(self) -> str:
        """The config section of its settings: ``method.<name with - as _>``."""
        return self.name.replace("-", "_")

    def own_settings(self, method):
        """Its settings as ``method.<section>`` holds them, or its declared defaults where the
        method config has no such section (a plain namespace in a user's loop)."""
        own = getattr(method, self.section, None)
        if own is not None:
            return own
        from types import SimpleNamespace
        return SimpleNamespace(**{s.name: s.default for s in self.settings})

    def loss(self, A: Tensor, mask: Tensor, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        """The batch loss. Two things happen here, once for every objective, before its formula:
        cells that take no part (missing, or imputed at weight 0) are set to 0, so that what
        they hold (NaN, stale values) never reaches a loss or a gradient; and with
        ``ctx.calibrated`` the imputed cells are detached (unless ``method.impute_grad``), so a
        user's own loop gets the trainer's semantics: gradients reach observed cells only."""
        ctx.temperature = self.temperature
        ctx.objective = self
        if mask is not None:
            from ..core.reduce import zero_absent

            mask = mask.bool()
            present = mask
            if ctx.calibrated:
                w = ctx.column_weights
                present = torch.ones_like(mask) if w is None else mask | (w > 0)
                if not getattr(ctx.method, "impute_grad", False):
                    A = torch.where(mask[..., None], A, A.detach())
            A = zero_absent(A, present)
        return self.fn(A, mask, ctx)

    def make_parameters(self, method) -> nn.Module | None:
        """The loss's own trained parameters (``None``: it has none)."""
        if self.temperature != "learned":
            return None
        from ..core import LearnableTemperature
        return LearnableTemperature(method.tau_init, learnable=method.learn_temperature)

    @property
    def calibratable(self) -> bool:
        return self.calibration == "plug-in"


REGISTRY: dict[str, Objective] = {}


_ALLOWED = {"temperature": ("fixed", "learned"), "calibration": ("never", "always", "plug-in"),
            "needs": ("", "true_hidden", "no_missing"), "similarity": None}


def register(obj: Objective) -> Objective:
    """Add ``obj`` to the registry, after checking its declaration: every field one of its
    allowed values (a typo such as ``calibration="plugin"`` would silently make an objective
    uncalibratable), a loss to call, and for a plug-in an observed-only objective (itself by
    default: its guard trains it without imputations)."""
    if not obj.name or not isinstance(obj.name, str):
        raise ValueError("an objective needs a name")
    if obj.name in REGISTRY:
        raise ValueError(f"objective '{obj.name}' is registered twice")
    for key, allowed in _ALLOWED.items():
        if allowed is not None and getattr(obj, key) not in allowed:
            raise ValueError(f"objective '{obj.name}': {key}={getattr(obj, key)!r}; valid: "
                             + ", ".join(repr(a) for a in allowed))
    if obj.fn is None and type(obj).loss is Objective.loss:
        raise ValueError(f"objective '{obj.name}' has no loss: pass fn=... or override loss()")
    _check_settings(obj)
    if obj.calibration == "plug-in" and obj.observed_only is None:
        from dataclasses import replace
        obj = replace(obj, observed_only=obj.name)
    REGISTRY[obj.name] = obj
    return obj


def _check_settings(obj: Objective) -> None:
    seen = set()
    for st in obj.settings:
        where = f"objective '{obj.name}', setting {getattr(st, 'name', st)!r}"
        if not isinstance(st, Setting):
            raise ValueError(f"{where}: settings are Setting(name, default, help, ...)")
        if not st.name.isidentifier() or st.name in seen:
            raise ValueError(f"{where}: a name is a Python identifier, given once")
        seen.add(st.name)
        if type(st.default) not in (bool, int, float, str):
            raise ValueError(f"{where}: the default must be a bool, int, float or str, got {st.default!r}")
        if not st.help:
            raise ValueError(f"{where}: needs a help line (it is the config reference's text)")
        if st.choices is not None and st.default not in st.choices:
            raise ValueError(f"{where}: the default {st.default!r} is not one of its choices {list(st.choices)}")
        if (st.lo is not None and st.default < st.lo) or (st.hi is not None and st.default > st.hi):
            raise ValueError(f"{where}: the default {st.default!r} is outside [{st.lo}, {st.hi}]")
    if obj.settings and any(o.section == obj.section for o in REGISTRY.values()):
        raise ValueError(f"objective '{obj.name}': its settings' section method.{obj.section} is taken")


def get(name: str) -> Objective:
    base, _ = parse_method(name)
    try:
        return REGISTRY[base]
    except KeyError:
        raise ValueError(f"unknown objective '{name}'; choose one of {names()}") from None


def names() -> list[str]:
    return list(REGISTRY)


def parse_method(name: str) -> tuple[str, bool]:
    """``"pairwise-infonce+cal"`` -> ``("pairwise-infonce", True)``; ``"calmrl"`` -> ``("calmrl", False)``."""
    if name.endswith(CAL_SUFFIX):
        return name[: -len(CAL_SUFFIX)], True
    return name, False


def method_label(name: str, calibrate: bool) -> str:
    """The inverse of :func:`parse_method` for a calibratable objective."""
    obj = REGISTRY.get(name)
    return f"{name}{CAL_SUFFIX}" if calibrate and obj is not None and obj.calibratable else name


def candidate_names() -> list[str]:
    """Every name auto may train: each candidate objective, and ``X+cal`` for those calibration plugs into."""
    out = []
    for o in REGISTRY.values():
        if o.candidate:
            out.append(o.name)
            if o.calibratable:
                out.append(o.name + CAL_SUFFIX)
    return out


def registry_table() -> str:
    """Every registered objective as a Markdown table, from its declaration (the source of the
    table in docs/objectives.md; ``calmrl config show --objectives`` prints it)."""
    rows = ["| name | family | temperature | calibration | guard trains | auto candidate | own settings | "
            "also scored by | what it is |", "|---|---|---|---|---|---|---|---|---|"]
    for o in REGISTRY.values():
        cal = {"never": "never", "always": "always", "plug-in": f"plug-in (`{o.name}{CAL_SUFFIX}`)"}[o.calibration]
        own = ", ".join(f"`method.{o.section}.{s.name}`" for s in o.settings) or ""
        cand = "yes" if o.candidate else f"no ({o.needs.replace('_', ' ')})" if o.needs else "no"
        rows.append(f"| `{o.name}` | {o.family} | {o.temperature} | {cal} | {f'`{o.observed_only}`' if o.observed_only else ''} "
                    f"| {cand} | {own} | {'' if o.similarity == 'cosine' else o.similarity} "
                    f"| {o.summary.replace('|', '/')} |")
    return "\n".join(rows)


def zero(A: Tensor) -> Tensor:
    return A.sum() * 0.0

