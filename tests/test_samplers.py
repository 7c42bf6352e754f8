"""The samplers against diffusers' schedulers, step by step and over whole runs."""

from typing import get_args

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_ddpm

from model import NoiseSchedule, build_plan, make_betas, select_timesteps
from model.modes import SamplerName
from model.samplers import (
    COEF_EPS,
    COEF_X0,
    COEF_X0_PREV,
    COEF_XT,
    DATA,
    SIGMA,
    TO_SQRT_1M_AB,
    TO_SQRT_AB,
    plan_from_moves,
    sampler_descriptions,
    sampler_names,
    update,
)

SCHED = NoiseSchedule(make_betas("linear", 1000))
SHAPE = (3, 3, 8, 8)


def _ours(plan, i, output, sample, x0_prev, noise, clip=True):  # type: ignore[no-untyped-def]
    coefs = plan.coefs[i].expand(sample.shape[0], -1)
    return update("epsilon", output, sample, x0_prev, coefs, noise, clip)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("steps", [None, 50])  # the full chain, and respaced
def test_ddpm_step_matches_diffusers(variance: str, steps: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = DDPMScheduler(num_train_timesteps=1000, variance_type=variance, clip_sample=True)
    if steps:
        ref.set_timesteps(steps)
    # diffusers' own tables are float32, where 1 - abar_t loses ~3e-4 of its value at t = 1 and
    # the step there drifts by ~5e-5. Ours are float64, so compare with diffusers' step run on
    # float64 tables; its float32 result must still agree to the error of its own rounding.
    ref64 = DDPMScheduler.from_config(ref.config)
    ref64.alphas_cumprod = torch.from_numpy(SCHED.f64.alphas_cumprod)
    ref64.alphas = torch.from_numpy(1 - SCHED.f64.betas)
    ref64.betas = torch.from_numpy(SCHED.f64.betas)
    if steps:
        ref64.set_timesteps(steps)
    timesteps = ref.timesteps.numpy()
    plan = build_plan(SCHED, "ddpm", len(timesteps), variance=variance, timesteps=timesteps)
    g = torch.Generator().manual_seed(0)
    for i in [0, 1, len(timesteps) // 2, len(timesteps) - 2, len(timesteps) - 1]:
        t = int(timesteps[i])
        sample, output = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
        noise = torch.randn(SHAPE, generator=g)
        # DDPMScheduler.step draws its own noise; hand it ours, in the dtype it asks for.
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, dtype=None, noise=noise, **k: noise.to(dtype))
        got, _ = _ours(plan, i, output, sample, torch.zeros(SHAPE), noise)
        exact = ref64.step(output.double(), t, sample.double()).prev_sample
        torch.testing.assert_close(got.double(), exact, atol=1e-5, rtol=1e-5)
        f32 = ref.step(output, t, sample).prev_sample
        torch.testing.assert_close(got, f32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(eta: float) -> None:
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True)
    ref.set_timesteps(20)
    timesteps = ref.timesteps.numpy()
    plan = build_plan(SCHED, "ddim", 20, eta=eta, timesteps=timesteps)
    g = torch.Generator().manual_seed(1)
    for i in range(20):
        t = int(timesteps[i])
        sample, output, noise = (torch.randn(SHAPE, generator=g) for _ in range(3))
        expected = ref.step(output, t, sample, eta=eta, variance_noise=noise).prev_sample
        got, _ = _ours(plan, i, output, sample, torch.zeros(SHAPE), noise)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _toy_eps(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth stand-in for a network, so that whole trajectories can be compared."""
    return 0.6 * torch.tanh(x) + 0.1 * np.cos(t / 150.0)


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_run_matches_diffusers(steps: int) -> None:
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2)
    ref.set_timesteps(steps)
    timesteps = ref.timesteps.numpy()
    plan = build_plan(SCHED, "dpmpp_2m", steps, timesteps=timesteps)
    x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).double()
    x, x0_prev = x_ref.float().clone(), torch.zeros(SHAPE)
    for i, t in enumerate(timesteps):
        x_ref = ref.step(_toy_eps(x_ref, int(t)), int(t), x_ref).prev_sample
        x, x0_prev = _ours(plan, i, _toy_eps(x, int(t)), x, x0_prev, None, clip=False)
    torch.testing.assert_close(x.double(), x_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 1000])
def test_timestep_selection(spacing: str, steps: int) -> None:
    ts = select_timesteps(1000, steps, spacing)
    assert len(ts) == steps and (np.diff(ts) < 0).all() and ts.min() >= 0 and ts.max() <= 999
    if spacing == "trailing" or steps == 1000:
        assert ts[0] == 999  # starts from pure noise
    if steps == 1000:
        np.testing.assert_array_equal(ts, np.arange(999, -1, -1))
    if spacing == "leading":
        np.testing.assert_array_equal(ts, np.arange(steps)[::-1] * (1000 // steps))


def test_timestep_selection_bounds() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        select_timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps=1001"):
        select_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="spacing"):
        select_timesteps(1000, 10, "random")


def test_plans_end_at_the_data() -> None:
    """Every sampler's last step returns the clipped x0 prediction itself, without noise."""
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        plan = build_plan(SCHED, sampler, 10, eta=1.0)
        a, b, c, d, sigma = plan.coefs[-1, COEF_X0 : SIGMA + 1].tolist()
        assert (a, b, c, d, sigma) == pytest.approx((1.0, 0.0, 0.0, 0.0, 0.0), abs=1e-6), sampler
    assert build_plan(SCHED, "ddpm", 10).stochastic
    assert not build_plan(SCHED, "ddim", 10, eta=0.0).stochastic
    assert build_plan(SCHED, "ddim", 10, eta=0.5).stochastic
    assert not build_plan(SCHED, "dpmpp_2m", 10).stochastic
    assert (build_plan(SCHED, "ddpm", 10).coefs[:-1, SIGMA] > 0).all()


def test_bad_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="sampler='euler'"):
        build_plan(SCHED, "euler", 10)
    with pytest.raises(ValueError, match="eta=1.5"):
        build_plan(SCHED, "ddim", 10, eta=1.5)
    with pytest.raises(ValueError, match="variance="):
        build_plan(SCHED, "ddpm", 10, variance="learned")


def test_the_registry_is_the_literal_of_sampler_names() -> None:
    """The Literal that mypy checks and the registry that build_plan dispatches through agree."""
    assert sampler_names() == get_args(SamplerName)
    descriptions = sampler_descriptions()
    assert list(descriptions) == list(sampler_names())
    assert all(len(d) > 20 and "\n" not in d for d in descriptions.values())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_a_chain_stopped_part_way_lands_on_its_end(sampler: str) -> None:
    """A plan that ends at a timestep (the shared prefix of variations) is the full plan's first
    rows, except that its last move lands there rather than on the data."""
    full = build_plan(SCHED, sampler, 10, eta=1.0)
    ts = full.timesteps.numpy()
    prefix = build_plan(SCHED, sampler, 4, eta=1.0, timesteps=ts[:4], end=int(ts[4]))
    torch.testing.assert_close(prefix.coefs, full.coefs[:4])
    assert prefix.targets.tolist() == ts[1:5].tolist() and full.targets[-1] == DATA
    ab = SCHED.f64.alphas_cumprod[ts[4]]
    assert prefix.coefs[-1, TO_SQRT_AB].item() == pytest.approx(np.sqrt(ab))
    # stopping part-way keeps the step's noise (the last move to the data has none)
    assert bool(prefix.coefs[-1, SIGMA] > 0) == (sampler != "dpmpp_2m")
    assert full.coefs[-1, TO_SQRT_AB] == 1.0 and full.coefs[-1, TO_SQRT_1M_AB] == 0.0
    with pytest.raises(ValueError, match="end="):
        build_plan(SCHED, sampler, 4, timesteps=ts[:4], end=int(ts[3]))


def test_upward_moves_are_forward_jumps_of_the_diffusion() -> None:
    """A move t -> s > t is q(x_s | x_t): x_s = sqrt(abar_s / abar_t) x_t + sqrt(1 - abar_s / abar_t) z,
    whatever the network says; the sampler restarts after it (first order for the solver)."""
    moves = np.array([[500, 400], [400, 300], [300, 450], [450, 400], [400, 300], [300, DATA]])
    plan = plan_from_moves(SCHED, "dpmpp_2m", moves)
    ac = SCHED.f64.alphas_cumprod
    jump = plan.coefs[2]
    assert jump[COEF_XT].item() == pytest.approx(np.sqrt(ac[450] / ac[300]), rel=1e-6)
    assert jump[SIGMA].item() == pytest.approx(np.sqrt(1 - ac[450] / ac[300]), rel=1e-6)
    assert jump[COEF_X0].item() == jump[COEF_EPS].item() == jump[COEF_X0_PREV].item() == 0.0
    # the run after the jump is the solver's own table for those moves, restarting at first order
    again = plan_from_moves(SCHED, "dpmpp_2m", moves[3:])
    torch.testing.assert_close(plan.coefs[3:], again.coefs)
    assert plan.coefs[3, COEF_X0_PREV] == 0.0 and plan.coefs[4, COEF_X0_PREV] != 0.0
    assert plan.stochastic  # the jump draws noise even though the solver does not
    # Applied: the network output is ignored, x_t is scaled and noised.
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    got, _ = _ours(plan, 2, torch.randn(SHAPE) * 1e3, x, torch.randn(SHAPE), z)
    torch.testing.assert_close(got, jump[COEF_XT] * x + jump[SIGMA] * z)


def test_moves_must_chain() -> None:
    for bad in ([[500, 400], [300, 200]], [[500, 500]], [[500, DATA], [400, DATA]], [[1000, DATA]], [[5, -2]]):
        with pytest.raises(ValueError, match="move|timesteps|moves"):
            plan_from_moves(SCHED, "ddpm", np.array(bad))
