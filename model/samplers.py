"""Reverse-process samplers as per-row coefficient tables and one vectorised update.

Every sampler here advances x_t to x_s (s < t, or s = -1 meaning "done") as

    x_s = a * x0 + b * eps + c * x_t + d * x0_prev + sigma * z,          z ~ N(0, I)

where x0 and eps are what the network output implies at (x_t, t), x0 is clipped to [-1, 1]
when the model asks for it, and x0_prev is the previous step's x0. Only the five coefficients
differ between samplers and steps, so a plan for one image is a (steps, 7) table computed once
in float64, and rows at different timesteps, with different step counts and samplers, advance
together in one batch: each row just reads its own line of its own table. The server's
step-level continuous batching stands on this.

    DDPM (Ho et al. 2020, eqs. 6-7, 11), on the full chain or a respaced subset (Nichol &
        Dhariwal 2021, sec. 4: betas recomputed from the alpha-bars of the kept steps):
        a = sqrt(abar_s) beta'_t / (1 - abar_t), c = sqrt(alpha'_t) (1 - abar_s) / (1 - abar_t),
        sigma^2 = beta~'_t ("fixed_small") or beta'_t ("fixed_large"); no noise on the last step.
    DDIM (Song et al. 2021, eq. 12): a = sqrt(abar_s), b = sqrt(1 - abar_s - sigma^2),
        sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s).
    DPM-Solver++(2M) (Lu et al. 2022, alg. 2), in lambda = log(alpha/sigma), h = lambda_s - lambda_t:
        c = sigma_s/sigma_t, a = alpha_s (1 - e^-h) (1 + 1/(2r)), d = -alpha_s (1 - e^-h)/(2r),
        r = h_prev/h; first order on the first and the last step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import SAMPLERS, SPACINGS, VARIANCES
from .diffusion import split_prediction
from .schedule import NoiseSchedule

# Columns of a plan's coefficient table.
SQRT_AB, SQRT_1M_AB, COEF_X0, COEF_EPS, COEF_XT, COEF_X0_PREV, SIGMA = range(7)
NUM_COEFS = 7


def select_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing") -> np.ndarray:
    """The timesteps a run of ``steps`` network calls visits, descending, as int64.

    trailing: T-1, ..., always starting from pure noise; leading: diffusers' default,
    (steps-1)*(T//steps), ..., 0; linspace: evenly from T-1 to 0 inclusive.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} must be in [1, {num_timesteps}]")
    if spacing == "trailing":
        ts = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(steps, dtype=np.int64) * (num_timesteps // steps))[::-1]
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64)[::-1]
    else:
        raise ValueError(f"spacing={spacing!r} is not one of {', '.join(SPACINGS)}")
    ts = np.ascontiguousarray(ts[:steps])
    assert len(ts) == steps and (np.diff(ts) < 0).all(), (steps, spacing, ts)
    return ts


@dataclass(frozen=True)
class SamplerPlan:
    """One image's whole trajectory: which timesteps, and the update's coefficients at each."""

    sampler: str
    timesteps: torch.Tensor  # (S,) int64, descending
    coefs: torch.Tensor  # (S, NUM_COEFS) float32
    eta: float = 0.0

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def stochastic(self) -> bool:
        """Whether any step draws noise (beyond the initial x_T)."""
        return bool((self.coefs[:, SIGMA] > 0).any())


def ddpm_coefficients(ab_t: float, ab_s: float, variance: str, final: bool) -> tuple[float, ...]:
    """(a, b, c, d, sigma) of one ancestral step from t to s (ab_s = 1 when s is the end)."""
    beta = 1.0 - ab_t / ab_s  # the respaced beta'_t (IDDPM sec. 4)
    a = np.sqrt(ab_s) * beta / (1.0 - ab_t)
    c = np.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
    var = (1.0 - ab_s) / (1.0 - ab_t) * beta if variance == "fixed_small" else beta
    return a, 0.0, c, 0.0, 0.0 if final else float(np.sqrt(var))


def ddim_coefficients(ab_t: float, ab_s: float, eta: float) -> tuple[float, ...]:
    sigma = eta * np.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
    return np.sqrt(ab_s), np.sqrt(max(1.0 - ab_s - sigma**2, 0.0)), 0.0, 0.0, sigma


def build_plan(
    schedule: NoiseSchedule,
    sampler: str,
    steps: int,
    *,
    eta: float = 0.0,
    variance: str = "fixed_large",
    spacing: str = "trailing",
    timesteps: np.ndarray | None = None,
) -> SamplerPlan:
    """The coefficient table of ``sampler`` over ``steps`` steps (or over explicit ``timesteps``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is not one of {', '.join(VARIANCES)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must be in [0, 1]")
    ts = select_timesteps(schedule.num_timesteps, steps, spacing) if timesteps is None else np.asarray(timesteps)
    ac = schedule.f64.alphas_cumprod
    ab = ac[ts]
    ab_next = np.append(ac[ts[1:]], 1.0)  # alpha-bar of the step each row moves to; 1 at the end
    table = np.zeros((len(ts), NUM_COEFS), dtype=np.float64)
    table[:, SQRT_AB] = np.sqrt(ab)
    table[:, SQRT_1M_AB] = np.sqrt(1.0 - ab)
    last = len(ts) - 1
    if sampler == "ddpm":
        for i in range(len(ts)):
            table[i, COEF_X0:] = ddpm_coefficients(ab[i], ab_next[i], variance, i == last)
    elif sampler == "ddim":
        for i in range(len(ts)):
            table[i, COEF_X0:] = ddim_coefficients(ab[i], ab_next[i], eta)
    else:
        lam = 0.5 * (np.log(ab) - np.log1p(-ab))  # lambda_t = log(alpha_t / sigma_t)
        for i in range(len(ts)):
            if i == last:  # sigma_s = 0: the update is x0 itself (first order, lambda_s = inf)
                table[i, COEF_X0] = 1.0
                continue
            lam_s = 0.5 * (np.log(ab_next[i]) - np.log1p(-ab_next[i]))
            h = lam_s - lam[i]
            alpha_s, sigma_s, sigma_t = np.sqrt(ab_next[i]), np.sqrt(1.0 - ab_next[i]), np.sqrt(1.0 - ab[i])
            base = -alpha_s * np.expm1(-h)  # alpha_s (1 - e^-h)
            table[i, COEF_XT] = sigma_s / sigma_t
            if i == 0:
                table[i, COEF_X0] = base
            else:
                r = (lam[i] - lam[i - 1]) / h
                table[i, COEF_X0] = base * (1.0 + 0.5 / r)
                table[i, COEF_X0_PREV] = -base * 0.5 / r
    return SamplerPlan(
        sampler=sampler,
        timesteps=torch.from_numpy(ts.astype(np.int64)),
        coefs=torch.from_numpy(table).float(),
        eta=eta,
    )


def update(
    prediction: str,
    output: torch.Tensor,
    xt: torch.Tensor,
    x0_prev: torch.Tensor,
    coefs: torch.Tensor,
    noise: torch.Tensor | None,
    clip: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step for a batch of rows, each with its own (B, NUM_COEFS) line; returns (x_s, x0).

    ``noise`` may be None when every row's sigma is zero.
    """
    col = coefs.to(xt.dtype)[:, :, None, None, None]  # (B, K, 1, 1, 1): one scalar per row and column
    x0, eps = split_prediction(prediction, output, xt, col[:, SQRT_AB], col[:, SQRT_1M_AB])
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    x = col[:, COEF_X0] * x0 + col[:, COEF_EPS] * eps + col[:, COEF_XT] * xt + col[:, COEF_X0_PREV] * x0_prev
    if noise is not None:
        x = x + col[:, SIGMA] * noise
    return x, x0
