"""Reverse-process samplers as per-row coefficient tables, one registry, and one vectorised update.

Every sampler here advances x_t to x_s (s < t, or s = -1 meaning "done") as

    x_s = a * x0 + b * eps + c * x_t + d * x0_prev + sigma * z,          z ~ N(0, I)

where x0 and eps are what the network output implies at (x_t, t), x0 is clipped to [-1, 1]
when the model asks for it, and x0_prev is the previous step's x0. Only the five coefficients
differ between samplers and steps, so a plan for one image is a (rows, NUM_COEFS) table computed
once in float64, and rows at different timesteps, with different step counts and samplers, advance
together in one batch: each row just reads its own line of its own table. The server's
step-level continuous batching stands on this.

A sampler is ONE function in ``SAMPLERS_BY_NAME`` (registered with ``@register_sampler``): given the
alpha-bars of a descending run of moves t -> s, it returns their (a, b, c, d, sigma). The names
are the keys of the registry, equal to ``model.modes.SamplerName`` (a test keeps them equal);
the request schema, model card, CLI and page derive their lists from ``sampler_names()`` and
``sampler_descriptions()``.

A plan is a list of moves (t -> s). A move UP (s > t) is a forward jump of the diffusion,
x_s ~ q(x_s | x_t) = N(sqrt(abar_s / abar_t) x_t, (1 - abar_s / abar_t) I) (the product of
eq. 2's steps from t to s), written in the same table as c = sqrt(abar_s / abar_t), sigma =
sqrt(1 - abar_s / abar_t), a = b = d = 0: RePaint's resampling (Lugmayr et al. 2022, sec. 4.2)
is then just a plan whose timesteps go up now and then. Two more columns hold sqrt(abar_s) and
sqrt(1 - abar_s) of where each move lands, for rows that replace a known part of the image after
every move (eq. 4 at s; 1 and 0 at the end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import split_prediction
from .modes import SPACINGS, VARIANCES
from .schedule import NoiseSchedule

# Columns of a plan's coefficient table.
SQRT_AB, SQRT_1M_AB, COEF_X0, COEF_EPS, COEF_XT, COEF_X0_PREV, SIGMA, TO_SQRT_AB, TO_SQRT_1M_AB = range(9)
NUM_COEFS = 9
DATA = -1  # the "timestep" a plan's last move lands on when it ends at the data


@dataclass(frozen=True)
class SamplerOptions:
    eta: float = 0.0  # DDIM's stochasticity
    variance: str = "fixed_large"  # DDPM's sigma_t^2: beta~_t ("fixed_small") or beta_t ("fixed_large")


# (abar_t, abar_s, options) of a descending run of moves -> (len, 5): a, b, c, d, sigma.
# abar_s is 1.0 exactly where a move lands on the data.
CoefficientFn = Callable[[np.ndarray, np.ndarray, SamplerOptions], np.ndarray]


@dataclass(frozen=True)
class Sampler:
    name: str
    description: str  # one line for the model card and the page
    coefficients: CoefficientFn


SAMPLERS_BY_NAME: dict[str, Sampler] = {}


def register_sampler(name: str, description: str) -> Callable[[CoefficientFn], CoefficientFn]:
    """Register a coefficient function under ``name`` (adding a sampler is this and one parity test)."""

    def register(fn: CoefficientFn) -> CoefficientFn:
        if name in SAMPLERS_BY_NAME:
            raise ValueError(f"sampler {name!r} is registered twice")
        SAMPLERS_BY_NAME[name] = Sampler(name, description, fn)
        return fn

    return register


def sampler_names() -> tuple[str, ...]:
    return tuple(SAMPLERS_BY_NAME)


def sampler_descriptions() -> dict[str, str]:
    return {s.name: s.description for s in SAMPLERS_BY_NAME.values()}


@register_sampler("ddpm", "Ancestral sampling, Ho et al. 2020 (eq. 11), on the full chain or respaced steps")
def ddpm(ab_t: np.ndarray, ab_s: np.ndarray, options: SamplerOptions) -> np.ndarray:
    """x_s ~ q(x_s | x_t, x0) with x0 from the network (eqs. 6-7), betas respaced from the
    alpha-bars of the kept steps (Nichol & Dhariwal 2021, sec. 4); no noise on the move to the data."""
    beta = 1.0 - ab_t / ab_s
    a = np.sqrt(ab_s) * beta / (1.0 - ab_t)
    c = np.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
    var = (1.0 - ab_s) / (1.0 - ab_t) * beta if options.variance == "fixed_small" else beta
    sigma = np.where(ab_s == 1.0, 0.0, np.sqrt(var))
    zero = np.zeros_like(a)
    return np.stack([a, zero, c, zero, sigma], axis=1)


@register_sampler("ddim", "DDIM, Song et al. 2021 (eq. 12): deterministic at eta = 0, DDPM-like at eta = 1")
def ddim(ab_t: np.ndarray, ab_s: np.ndarray, options: SamplerOptions) -> np.ndarray:
    sigma = options.eta * np.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
    b = np.sqrt(np.maximum(1.0 - ab_s - sigma**2, 0.0))
    zero = np.zeros_like(b)
    return np.stack([np.sqrt(ab_s), b, zero, zero, sigma], axis=1)


@register_sampler("dpmpp_2m", "DPM-Solver++(2M), Lu et al. 2022 (alg. 2): good images in 10-25 steps")
def dpmpp_2m(ab_t: np.ndarray, ab_s: np.ndarray, options: SamplerOptions) -> np.ndarray:
    """In lambda = log(alpha / sigma), h = lambda_s - lambda_t, r = h_prev / h:
    c = sigma_s / sigma_t, a = alpha_s (1 - e^-h)(1 + 1/(2r)), d = -alpha_s (1 - e^-h) / (2r);
    first order on a run's first move and on the move to the data (lambda_s = inf: x_s = x0)."""
    out = np.zeros((len(ab_t), 5))
    lam_t = 0.5 * (np.log(ab_t) - np.log1p(-ab_t))
    for i in range(len(ab_t)):
        if ab_s[i] == 1.0:
            out[i, 0] = 1.0
            continue
        lam_s = 0.5 * (np.log(ab_s[i]) - np.log1p(-ab_s[i]))
        h = lam_s - lam_t[i]
        alpha_s, sigma_s, sigma_t = np.sqrt(ab_s[i]), np.sqrt(1.0 - ab_s[i]), np.sqrt(1.0 - ab_t[i])
        base = -alpha_s * np.expm1(-h)  # alpha_s (1 - e^-h)
        out[i, 2] = sigma_s / sigma_t
        if i == 0:
            out[i, 0] = base
        else:
            r = (lam_t[i] - lam_t[i - 1]) / h
            out[i, 0] = base * (1.0 + 0.5 / r)
            out[i, 3] = -base * 0.5 / r
    return out


def select_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing") -> np.ndarray:
    """The timesteps a run of ``steps`` network calls visits, descending, as int64.

    trailing: T-1, ..., always starting from pure noise; leading: diffusers' default,
    (steps-1)*(T//steps), ..., 0; linspace: evenly from T-1 to 0 inclusive.
    A chain that starts at t0 < T-1 (image editing) passes ``num_timesteps = t0 + 1``.
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
    """One image's whole trajectory: the moves (t -> s) and the update's coefficients for each."""

    sampler: str
    timesteps: torch.Tensor  # (S,) int64: where each move starts (the network is called there)
    coefs: torch.Tensor  # (S, NUM_COEFS) float32
    targets: torch.Tensor  # (S,) int64: where each move lands (DATA = -1 at the end)
    eta: float = 0.0

    @property
    def steps(self) -> int:
        """Rows of the table: network calls, jumps included."""
        return int(self.timesteps.shape[0])

    @property
    def stochastic(self) -> bool:
        """Whether any step draws noise (beyond the initial x_T)."""
        return bool((self.coefs[:, SIGMA] > 0).any())


def check_moves(moves: np.ndarray, num_timesteps: int) -> None:
    """A plan's moves must chain (each starts where the last landed), never stand still, stay in [0, T)."""
    if moves.ndim != 2 or moves.shape[1] != 2 or len(moves) == 0:
        raise ValueError(f"moves must be a non-empty (S, 2) array, got shape {moves.shape}")
    src, dst = moves[:, 0], moves[:, 1]
    if (src < 0).any() or (src >= num_timesteps).any() or (dst < DATA).any() or (dst >= num_timesteps).any():
        raise ValueError(f"timesteps must be in [0, {num_timesteps}) (a move may land on the data, -1)")
    if (src == dst).any() or (src[1:] != dst[:-1]).any() or (dst[:-1] == DATA).any():
        raise ValueError("each move must start where the previous one landed, move, and only the last may end at -1")


def plan_from_moves(
    schedule: NoiseSchedule, sampler: str, moves: np.ndarray, *, eta: float = 0.0, variance: str = "fixed_large"
) -> SamplerPlan:
    """The table of a chain of moves (t, s): descending runs from the sampler, upward moves as jumps."""
    if sampler not in SAMPLERS_BY_NAME:
        raise ValueError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS_BY_NAME)}")
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is not one of {', '.join(VARIANCES)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must be in [0, 1]")
    moves = np.asarray(moves, dtype=np.int64)
    check_moves(moves, schedule.num_timesteps)
    ac = np.append(schedule.f64.alphas_cumprod, 1.0)  # index -1 (DATA) reads alpha-bar 1
    ab_t, ab_s = ac[moves[:, 0]], ac[moves[:, 1]]
    table = np.zeros((len(moves), NUM_COEFS), dtype=np.float64)
    table[:, SQRT_AB], table[:, SQRT_1M_AB] = np.sqrt(ab_t), np.sqrt(1.0 - ab_t)
    table[:, TO_SQRT_AB], table[:, TO_SQRT_1M_AB] = np.sqrt(ab_s), np.sqrt(1.0 - ab_s)
    up = moves[:, 1] > moves[:, 0]
    table[up, COEF_XT] = np.sqrt(ab_s[up] / ab_t[up])  # q(x_s | x_t) for s > t
    table[up, SIGMA] = np.sqrt(1.0 - ab_s[up] / ab_t[up])
    fn, options = SAMPLERS_BY_NAME[sampler].coefficients, SamplerOptions(eta, variance)
    # Each maximal run of downward moves is one run of the sampler (a multistep solver restarts
    # after a jump, since its previous x0 belongs to another noise level).
    edges = np.flatnonzero(np.diff(np.concatenate([[1], up.astype(np.int8), [1]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        table[start:stop, COEF_X0 : SIGMA + 1] = fn(ab_t[start:stop], ab_s[start:stop], options)
    return SamplerPlan(
        sampler=sampler,
        timesteps=torch.from_numpy(moves[:, 0].copy()),
        coefs=torch.from_numpy(table).float(),
        targets=torch.from_numpy(moves[:, 1].copy()),
        eta=eta,
    )


def build_plan(
    schedule: NoiseSchedule,
    sampler: str,
    steps: int,
    *,
    eta: float = 0.0,
    variance: str = "fixed_large",
    spacing: str = "trailing",
    timesteps: np.ndarray | None = None,
    end: int = DATA,
) -> SamplerPlan:
    """The table of ``sampler`` over ``steps`` descending steps (or explicit ``timesteps``), landing on
    ``end``: the data (-1) or, for a chain stopped part-way (shared-x_t variations), a timestep."""
    ts = select_timesteps(schedule.num_timesteps, steps, spacing) if timesteps is None else np.asarray(timesteps)
    ts = ts.astype(np.int64)
    if len(ts) and end >= ts[-1]:
        raise ValueError(f"end={end} must lie below the last timestep {int(ts[-1])}")
    moves = np.stack([ts, np.append(ts[1:], end)], axis=1) if len(ts) else np.zeros((0, 2), np.int64)
    return plan_from_moves(schedule, sampler, moves, eta=eta, variance=variance)


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
