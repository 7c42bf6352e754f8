"""An exponential moving average of the weights, the network that is served and evaluated.

The paper samples from an EMA of the parameters with decay 0.9999 (Ho et al. 2020, appendix B).
Early in training the raw weights change fast, so the decay warms up as in TensorFlow's
ExponentialMovingAverage(num_updates=n): decay_n = min(decay, (1 + n) / (warmup + n)).
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def ema_decay(decay: float, warmup: float, updates: int) -> float:
    """The decay applied at the update after ``updates`` earlier ones."""
    if warmup <= 0:
        return decay
    return min(decay, (1.0 + updates) / (warmup + updates))


class EMA(Generic[M]):
    """A frozen copy of ``module`` that tracks its weights; ``updates`` counts the updates done."""

    def __init__(self, module: M, decay: float, warmup: float) -> None:
        self.module: M = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> float:
        """ema <- d * ema + (1 - d) * weights; returns the d used."""
        d = ema_decay(self.decay, self.warmup, self.updates)
        for ema_p, p in zip(self.module.parameters(), module.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), module.buffers(), strict=True):
            ema_b.copy_(b)
        self.updates += 1
        return d
