"""One optimisation step's randomness and loss (Ho et al. 2020, algorithm 1).

    x0 ~ q(x0), t ~ Uniform({1..T}), eps ~ N(0, I)
    gradient step on || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2   (eq. 14)

Everything random about a step except dropout (timesteps, noise, flips, dropped labels) is
drawn for the whole *global* batch from a CPU generator seeded by (seed, step). Each process
then takes its own rows. So one process with batch B and W processes with B/W each train on
exactly the same examples, timesteps and noise, and a resumed run repeats the same draws; the
cost is that each process draws the global batch's noise, small next to a U-Net step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.diffusion import q_sample, simple_loss
from model.schedule import NoiseSchedule


@dataclass
class StepDraws:
    t: torch.Tensor  # (B,) int64 in [0, T)
    noise: torch.Tensor  # (B, C, H, W)
    flip: torch.Tensor  # (B,) bool
    drop_label: torch.Tensor  # (B,) bool

    def shard(self, rank: int, world: int) -> StepDraws:
        """This process's rows: a contiguous 1/world of the global batch."""
        b = self.t.shape[0] // world
        sl = slice(rank * b, (rank + 1) * b)
        return StepDraws(self.t[sl], self.noise[sl], self.flip[sl], self.drop_label[sl])

    def to(self, device: torch.device) -> StepDraws:
        return StepDraws(*(x.to(device, non_blocking=True) for x in (self.t, self.noise, self.flip, self.drop_label)))


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator for ``step`` that depends on (seed, step, stream) only."""
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_step(
    seed: int, step: int, batch: int, image_shape: tuple[int, int, int], num_timesteps: int,
    *, flips: bool, label_dropout: float,
) -> StepDraws:
    """The global batch's random choices at ``step``."""
    g = step_generator(seed, step)
    t = torch.randint(0, num_timesteps, (batch,), generator=g)
    noise = torch.randn((batch, *image_shape), generator=g)
    u = torch.rand(2, batch, generator=g)
    return StepDraws(t=t, noise=noise, flip=(u[0] < 0.5) & flips, drop_label=u[1] < label_dropout)


def prepare_batch(
    x0: torch.Tensor, labels: torch.Tensor | None, draws: StepDraws, null_label: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the drawn flips to x0 and replace dropped labels by the null label.

    Dropped labels train the unconditional model eps(x_t) that classifier-free guidance needs
    (Ho & Salimans 2022, algorithm 1).
    """
    x0 = torch.where(draws.flip[:, None, None, None], x0.flip(-1), x0)
    if labels is not None and null_label is not None:
        labels = torch.where(draws.drop_label, torch.full_like(labels, null_label), labels)
    return x0, labels


def diffusion_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    prediction: str,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    draws: StepDraws,
    autocast: torch.autocast | None = None,
) -> torch.Tensor:
    """Mean L_simple over the rows (eq. 14), the network run under ``autocast`` when given."""
    xt = q_sample(schedule, x0, draws.t, draws.noise)
    if autocast is not None:
        with autocast:
            out = net(xt, draws.t, labels)
    else:
        out = net(xt, draws.t, labels)
    return simple_loss(out, prediction, schedule, x0, draws.t, draws.noise).mean()
