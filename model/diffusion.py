"""The forward process, the posterior, the three parameterisations and the training objective."""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule, extract


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4)."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7); the log-variance is clipped at t = 0."""
    mean = (
        extract(schedule.posterior_mean_coef1, t, xt.ndim) * x0
        + extract(schedule.posterior_mean_coef2, t, xt.ndim) * xt
    )
    return mean, extract(schedule.posterior_log_variance_clipped, t, xt.ndim)


def split_prediction(
    prediction: str, output: torch.Tensor, xt: torch.Tensor, sqrt_ab: torch.Tensor, sqrt_1m_ab: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a network output and x_t, with x_t = sqrt_ab x0 + sqrt_1m_ab eps.

    epsilon: the paper's choice (eq. 11); x0: predict the data; v = sqrt_ab eps - sqrt_1m_ab x0
    (Salimans & Ho 2022). ``sqrt_ab`` and ``sqrt_1m_ab`` broadcast per row.
    """
    if prediction == "epsilon":
        return (xt - sqrt_1m_ab * output) / sqrt_ab, output
    if prediction == "x0":
        return output, (xt - sqrt_ab * output) / sqrt_1m_ab
    if prediction == "v":
        return sqrt_ab * xt - sqrt_1m_ab * output, sqrt_ab * output + sqrt_1m_ab * xt
    raise ValueError(f"prediction={prediction!r} is not one of epsilon, x0, v")


def training_target(
    prediction: str, x0: torch.Tensor, noise: torch.Tensor, sqrt_ab: torch.Tensor, sqrt_1m_ab: torch.Tensor
) -> torch.Tensor:
    """What the network is regressed onto for each parameterisation."""
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return sqrt_ab * noise - sqrt_1m_ab * x0
    raise ValueError(f"prediction={prediction!r} is not one of epsilon, x0, v")


def simple_loss(
    model_output: torch.Tensor,
    prediction: str,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """L_simple (eq. 14): || target - output ||^2, averaged over pixels, one value per row.

    For epsilon prediction this is exactly eq. 14; for x0 and v it is the same unweighted
    regression onto the other targets.
    """
    sqrt_ab = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    sqrt_1m_ab = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    target = training_target(prediction, x0, noise, sqrt_ab, sqrt_1m_ab)
    return (model_output.float() - target).pow(2).flatten(1).mean(dim=1)
