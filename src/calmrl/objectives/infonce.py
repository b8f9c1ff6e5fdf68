r"""InfoNCE over pairs of modalities: every co-observed pair (CLIP / VAST,
:func:`calmrl.core.pairwise_infonce_loss`), or every modality against the hub (ImageBind,
:func:`calmrl.core.anchor_infonce_loss`).

Calibration plugs in (``X+cal``): imputed cells join as detached extra pair members with the
gate's weights; a row enters only if one of its two cells is observed; the imputed hub stands
in where the hub is missing. A closed gate (weights 0) gives the plain loss exactly."""

from __future__ import annotations

from ..core import anchor_infonce_loss, pairwise_infonce_loss
from .base import Objective, register


def plug_in_kwargs(mask, ctx) -> dict:
    """The keyword arguments of a pair loss: plain, or with imputed cells as weighted members."""
    if ctx.calibrated:
        return {"mask": None, "cell_weights": ctx.column_weights, "observed": mask}
    return {"mask": mask}


def _pairwise(A, mask, ctx):
    return pairwise_infonce_loss(A, tau=ctx.tau, **plug_in_kwargs(mask, ctx)), {}


def _anchor(A, mask, ctx):
    return anchor_infonce_loss(A, anchor=ctx.anchor, tau=ctx.method.tau2, **plug_in_kwargs(mask, ctx)), {}


register(Objective("pairwise-infonce", "pairwise-infonce", "symmetric InfoNCE over every co-observed pair (CLIP / "
                   "VAST)", temperature="learned", calibration="plug-in", observed_only="pairwise-infonce",
                   fn=_pairwise))
register(Objective("anchor-infonce", "anchor-infonce", "InfoNCE of every modality against the hub (ImageBind)",
                   calibration="plug-in", observed_only="anchor-infonce", anchored=True, fn=_anchor))
