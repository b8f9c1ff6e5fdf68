r"""GRAM and TRIANGLE: contrast an anchor vector against another instance's other modalities
by the volume (GRAM, :math:`\sqrt{\det G}`) or the triangle's area (TRIANGLE) they span, both
directions, learnable temperature, label smoothing (:func:`calmrl.core.gram_loss`,
:func:`calmrl.core.triangle_loss`); scored at evaluation by the same volume / area."""

from __future__ import annotations

from ..core import gram_loss, triangle_loss
from .base import Objective, register


def _gram(A, mask, ctx):
    return gram_loss(A, mask, anchor=ctx.anchor, tau=ctx.tau, label_smoothing=ctx.method.label_smoothing), {}


def _triangle(A, mask, ctx):
    return triangle_loss(A, mask, anchor=ctx.anchor, tau=ctx.tau, label_smoothing=ctx.method.label_smoothing), {}


register(Objective("gram", "gram", "GRAM: volume contrast of the hub against the other observed modalities",
                   similarity="volume", temperature="learned", anchored=True, fn=_gram))
register(Objective("triangle", "triangle", "TRIANGLE: the same with the area spanned by the vectors' tips",
                   similarity="area", temperature="learned", anchored=True, fn=_triangle))
