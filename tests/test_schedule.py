import math

import numpy as np
import pytest
import torch

from model import NoiseSchedule, make_betas
from model.diffusion import q_posterior, q_sample


def test_linear_schedule_is_the_papers() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    s = NoiseSchedule(betas)
    # alpha-bar_T is tiny, so x_T is essentially pure noise (paper sec. 4: L_T ~ 1e-5 bits/dim)
    assert 1e-6 < s.f64.alphas_cumprod[-1] < 1e-4


def test_cosine_schedule_follows_its_alpha_bar() -> None:
    T = 1000
    s = NoiseSchedule(make_betas("cosine", T))
    t = np.arange(1, T + 1) / T
    f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    # Equal to the closed form wherever the 0.999 clip did not bite (all but the last steps).
    np.testing.assert_allclose(s.f64.alphas_cumprod[:-5], f[:-5], rtol=1e-10)
    assert s.f64.betas.max() <= 0.999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_derived_quantities(kind: str) -> None:
    s = NoiseSchedule(make_betas(kind, 200))
    f = s.f64
    assert (np.diff(f.alphas_cumprod) < 0).all()
    np.testing.assert_allclose(f.alphas_cumprod, np.cumprod(1 - f.betas))
    # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t <= beta_t, and 0 at t = 0
    assert f.posterior_variance[0] == 0 and (f.posterior_variance <= f.betas + 1e-15).all()
    assert np.isfinite(f.posterior_log_variance_clipped).all()
    assert f.posterior_log_variance_clipped[0] == pytest.approx(np.log(f.posterior_variance[1]))
    # float32 buffers, equal to the float64 values
    assert s.sqrt_alphas_cumprod.dtype == torch.float32
    np.testing.assert_allclose(s.sqrt_alphas_cumprod.numpy() ** 2, f.alphas_cumprod, rtol=1e-6)


def test_bad_betas_are_refused() -> None:
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic", 10)


def test_q_sample_statistics() -> None:
    s = NoiseSchedule(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    for step in (0, 100, 500, 999):
        t = torch.full((x0.shape[0],), step)
        xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g))
        ab = s.f64.alphas_cumprod[step]
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.05, abs=1e-5)


def test_posterior_matches_bayes_rule() -> None:
    """mu~ and beta~ of eq. 7 equal the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0), renormalised."""
    s = NoiseSchedule(make_betas("linear", 100))
    f = s.f64
    x0, xt, step = 0.3, -0.4, 37
    beta, ab_prev = f.betas[step], f.alphas_cumprod[step - 1]
    # Gaussian in x_{t-1}: N(x_t; sqrt(1-beta) x, beta) * N(x; sqrt(ab_prev) x0, 1 - ab_prev)
    precision = (1 - beta) / beta + 1 / (1 - ab_prev)
    mean = (np.sqrt(1 - beta) * xt / beta + np.sqrt(ab_prev) * x0 / (1 - ab_prev)) / precision
    m, logvar = q_posterior(s, torch.tensor([[[[x0]]]]), torch.tensor([[[[xt]]]]), torch.tensor([step]))
    assert m.item() == pytest.approx(mean, rel=1e-5)
    assert math.exp(logvar.item()) == pytest.approx(1 / precision, rel=1e-5)
