r"""A nonlinear completion backend: a conditional predictor of every modality's embedding from
the observed ones and the mask.

The default backend is the closed-form shared-latent model
(:class:`~calmrl.core.SharedLatentCalibrator`, :math:`\hat z_m = W_m\mathbb E[\beta\mid z_O]+\mu_m`,
linear in the observed cells). This one replaces it with

.. math:: \hat z_{i} = f_\theta\big([\,o_{i1} z_{i1}, \dots, o_{iM} z_{iM},\; o_i\,]\big) \in \mathbb R^{M\times d},

an MLP over the observed embeddings (missing ones zeroed) and the mask :math:`o_i`, trained
by *masked completion* on embeddings detached from the encoders: in each batch every
observed cell of an instance with two or more observed cells is hidden with probability
``hide_rate`` (at least one stays), and the loss is one minus the cosine between the
prediction and the true embedding over the hidden cells,

.. math:: \mathcal L(\theta) = \frac{1}{|H|}\sum_{(i,m)\in H} 1-\cos\big(\hat z_{im}, z_{im}\big).

Like the linear model it is a function of the observed cells only (it cannot add instance
information they lack); unlike it, it can express nonlinear relations between modalities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskedCompleter", "hide_cells"]


def hide_cells(mask: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """``(N, M)`` cells to hide for a completion objective: each observed cell with probability
    ``rate``, except that every instance keeps at least one observed cell (the one with the
    largest uniform draw), so an instance with a single observed cell hides nothing."""
    mask = mask.bool()
    u = torch.rand(mask.shape, generator=generator, device=mask.device)
    keep_one = F.one_hot(torch.where(mask, u, -1.0).argmax(1), mask.shape[1]).bool()
    return mask & (u < rate) & ~keep_one


class MaskedCompleter(nn.Module):
    """``forward(Z, mask) -> (N, M, d)`` predictions of every modality from the observed cells."""

    def __init__(self, M: int, d: int, hidden: int = 512, layers: int = 2, hide_rate: float = 0.5):
        super().__init__()
        if not 0.0 < hide_rate < 1.0:
            raise ValueError(f"hide_rate must be in (0, 1), got {hide_rate}")
        self.M, self.d, self.hide_rate = M, d, hide_rate
        dims = [M * d + M] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.GELU()]
        self.net = nn.Sequential(*body, nn.Linear(dims[-1], M * d))

    def forward(self, Z: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(Z.dtype)
        x = torch.cat([(Z * m[..., None]).flatten(1), m], 1)
        return self.net(x).view(-1, self.M, self.d)

    @torch.no_grad()
    def impute(self, Z: Tensor, mask: Tensor) -> Tensor:
        """Observed cells kept, missing cells predicted (no gradient)."""
        return torch.where(mask[..., None], Z, self(Z, mask).to(Z.dtype))

    def completion_loss(self, Z: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Masked-completion loss (module docstring) on ``Z`` (detach it first: only
        :math:`\\theta` is trained); 0 (with a graph) when no cell can be hidden."""
        mask = mask.bool()
        hide = hide_cells(mask, self.hide_rate, generator)
        pred = self(Z, mask & ~hide)
        if not bool(hide.any()):
            return pred.sum() * 0.0
        cos = F.cosine_similarity(pred[hide], Z[hide].to(pred.dtype), dim=-1)
        return (1.0 - cos).mean()
