"""The variational bound on the negative log-likelihood (Ho et al. 2020, eq. 5), in bits/dim.

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                       (prior term)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     (Gaussian KLs)
    L_0     = -log p(x_0 | x_1), a discretized Gaussian decoder (eq. 13)

With 0-based timesteps, index t = 0 is the decoder and t = 1..T-1 are the KL terms. This is
for evaluation: it costs one network evaluation per timestep per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .diffusion import q_posterior, q_sample, split_prediction
from .schedule import NoiseSchedule, extract

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int = 256
) -> torch.Tensor:
    """log p(x) per element, for x on ``levels`` evenly spaced values in [-1, 1] (eq. 13).

    Each value owns a bin of width 2/(levels-1); the two edge bins extend to -inf and +inf.
    Tails are computed with log_ndtr so that a confident decoder does not round to log(0).
    """
    half_bin = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + half_bin)
    lower = inv_std * (x - mean - half_bin)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # Phi(upper) - Phi(lower), from whichever tail keeps precision.
    delta = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_delta = torch.log(delta.clamp(min=1e-30))
    edge = 1.0 - half_bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_delta))


@dataclass
class BoundTerms:
    """Per-image terms of the bound, in bits/dim."""

    prior: torch.Tensor  # (B,)
    terms: torch.Tensor  # (B, T): decoder at t = 0, KL terms for t >= 1
    total: torch.Tensor  # (B,)


def prior_bpd(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T in bits/dim per image."""
    # In float64: the KL is ~1e-9 nats for x0 = 0, far below float32's resolution of its terms.
    ab = float(schedule.f64.alphas_cumprod[-1])
    mean = math.sqrt(ab) * x0.double()
    logvar = torch.full_like(mean, math.log1p(-ab))
    kl = normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(mean))
    return (kl.flatten(1).mean(1) / math.log(2.0)).float()


def timestep_bpd(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    prediction: str,
    variance: str,
    clip_denoised: bool = True,
    levels: int = 256,
) -> torch.Tensor:
    """L_{t-1} for rows with t >= 1, L_0 for rows with t == 0; bits/dim per image."""
    xt = q_sample(schedule, x0, t, noise)
    sqrt_ab = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    sqrt_1m_ab = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    x0_pred, _ = split_prediction(prediction, model_fn(xt, t).float(), xt, sqrt_ab, sqrt_1m_ab)
    if clip_denoised:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
    model_mean, _ = q_posterior(schedule, x0_pred, xt, t)
    model_logvar = extract(schedule.model_log_variance[variance], t, x0.ndim)
    true_mean, true_logvar = q_posterior(schedule, x0, xt, t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar, levels).flatten(1).mean(1)
    return torch.where(t == 0, nll, kl) / math.log(2.0)


@torch.no_grad()
def variational_bound(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    *,
    prediction: str,
    variance: str,
    clip_denoised: bool = True,
    levels: int = 256,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> BoundTerms:
    """The full bound for a batch of data x0 in [-1, 1], one network call per timestep."""
    b, num_t = x0.shape[0], schedule.num_timesteps
    terms = torch.empty(b, num_t, device=x0.device)
    for step in range(num_t):
        t = torch.full((b,), step, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
        terms[:, step] = timestep_bpd(
            model_fn, schedule, x0, t, noise,
            prediction=prediction, variance=variance, clip_denoised=clip_denoised, levels=levels,
        )
        if progress is not None:
            progress(1)
    prior = prior_bpd(schedule, x0)
    return BoundTerms(prior=prior, terms=terms, total=prior + terms.sum(dim=1))
