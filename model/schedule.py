"""Noise schedules and every quantity derived from them, computed once.

Everything is computed in float64 (numpy) and kept in two forms: ``.f64`` for building sampler
coefficient tables, where cancellation in 1 - alpha-bar matters near t = 0, and float32 torch
buffers on the model's device for the forward process and the losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import DiffusionConfig


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_1..beta_T as float64.

    linear: the paper's beta_1 = 1e-4 .. beta_T = 0.02 (sec. 4).
    cosine: alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, betas clipped at 0.999
    (Nichol & Dhariwal 2021, eq. 17).
    """
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if schedule == "cosine":
        s = 0.008
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        alpha_bar = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(f"schedule={schedule!r} is not one of linear, cosine")


@dataclass(frozen=True)
class Float64Schedule:
    """The float64 numpy arrays, indexed by t in [0, T)."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray


class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4) and the
    posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (eqs. 6-7), tabulated over t."""

    def __init__(self, betas: np.ndarray, device: torch.device | str = "cpu") -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1)")
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        # beta~_0 is 0; the log is clipped to beta~_1 as in the paper's code, so that the
        # decoder term of the bound has a finite variance.
        post_logvar = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(betas)
        self.f64 = Float64Schedule(
            betas=betas,
            alphas_cumprod=ac,
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_logvar,
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        )
        self.num_timesteps = len(betas)
        self.device = torch.device(device)

        def buf(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device=self.device, dtype=torch.float32)

        # On the device: what q_sample (eq. 4) and the bound (eqs. 5-7) read per row; the rest
        # is used where it is computed, in float64 (``f64``).
        self.sqrt_alphas_cumprod = buf(np.sqrt(ac))
        self.sqrt_one_minus_alphas_cumprod = buf(np.sqrt(1.0 - ac))
        self.posterior_log_variance_clipped = buf(post_logvar)
        self.posterior_mean_coef1 = buf(self.f64.posterior_mean_coef1)
        self.posterior_mean_coef2 = buf(self.f64.posterior_mean_coef2)
        # log sigma^2 of p(x_{t-1} | x_t) for the two fixed variances (sec. 3.2); "fixed_large"
        # uses beta~_1 at t = 0, as the paper's code does, so the decoder is not too wide.
        self.model_log_variance = {
            "fixed_small": self.posterior_log_variance_clipped,
            "fixed_large": buf(np.log(np.append(post_var[1], betas[1:]))),
        }

    @classmethod
    def from_config(cls, config: DiffusionConfig, device: torch.device | str = "cpu") -> NoiseSchedule:
        betas = make_betas(config.schedule, config.num_timesteps, config.beta_start, config.beta_end)
        return cls(betas, device)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        if torch.device(device) == self.device:
            return self
        return NoiseSchedule(self.f64.betas, device)


def extract(buffer: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """buffer[t] shaped (B, 1, ..., 1) to broadcast over a (B, C, H, W) batch."""
    return buffer.index_select(0, t).reshape(-1, *([1] * (ndim - 1)))
