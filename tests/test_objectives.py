import math

import pytest
import torch

from model import NoiseSchedule, make_betas
from model.diffusion import q_sample, simple_loss, split_prediction, training_target
from model.schedule import extract
from model.vlb import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bpd,
    timestep_bpd,
    variational_bound,
)

SCHED = NoiseSchedule(make_betas("linear", 1000))


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_parameterisations_recover_x0_and_eps(prediction: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    sa, s1 = (extract(b, t, 4) for b in (SCHED.sqrt_alphas_cumprod, SCHED.sqrt_one_minus_alphas_cumprod))
    xt = q_sample(SCHED, x0, t, noise)
    target = training_target(prediction, x0, noise, sa, s1)
    # A perfect network outputs the target; both x0 and eps then come back exactly.
    x0_hat, eps_hat = split_prediction(prediction, target, xt, sa, s1)
    torch.testing.assert_close(x0_hat[1:], x0[1:], atol=2e-4, rtol=0)  # t=0 divides by sqrt(1-ab) ~ 0.01
    torch.testing.assert_close(eps_hat[:3], noise[:3], atol=2e-3, rtol=0)  # t=999 divides by sqrt(ab) ~ 0.006
    loss = simple_loss(target, prediction, SCHED, x0, t, noise)
    assert loss.shape == (4,) and loss.max().item() < 1e-10
    assert simple_loss(target + 1.0, prediction, SCHED, x0, t, noise).mean().item() == pytest.approx(1.0)


def test_normal_kl_known_values() -> None:
    z = torch.zeros(())
    assert normal_kl(z, z, z, z).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, e^2) || N(0, 1)) = (e^2 - 1 - 2) / 2
    assert normal_kl(torch.tensor(1.0), z, z, z).item() == pytest.approx(0.5)
    assert normal_kl(z, torch.tensor(2.0), z, z).item() == pytest.approx((math.exp(2) - 3) / 2)


def test_discretized_likelihood_sums_to_one() -> None:
    """The 256 bins partition the real line: probabilities of all values sum to 1."""
    values = torch.linspace(-1, 1, 256)
    for mean, log_scale in [(0.0, -1.0), (0.9, -3.0), (-1.2, 0.5)]:
        lp = discretized_gaussian_log_likelihood(values, torch.tensor(mean), torch.tensor(log_scale))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    # a 17-level grid (digits) too
    values = torch.linspace(-1, 1, 17)
    lp = discretized_gaussian_log_likelihood(values, torch.tensor(0.3), torch.tensor(-2.0), levels=17)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    # a sharp decoder at a bin centre is certain: log p -> 0, computed without underflow
    sharp = discretized_gaussian_log_likelihood(torch.tensor(0.2), torch.tensor(0.2), torch.tensor(-12.0))
    assert sharp.item() == pytest.approx(0.0, abs=1e-6)


def test_prior_term_closed_form() -> None:
    ab = SCHED.f64.alphas_cumprod[-1]
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) per dim = (-log(1 - ab) - ab + ab x^2) / 2 nats
    for value in (0.0, 0.8):
        x0 = torch.full((1, 3, 4, 4), value)
        expected = (-math.log1p(-ab) - ab + ab * value**2) / 2 / math.log(2)
        assert prior_bpd(SCHED, x0).item() == pytest.approx(expected, rel=1e-4)


def _decoder_bits(x: torch.Tensor, std: float) -> torch.Tensor:
    """-log2 P(bin of x) under N(x, std^2), with the edge bins open-ended: the closed form."""
    half = 1 / 255
    inner = math.erf(half / std / math.sqrt(2))  # P(|z| < half)
    edge = 0.5 * (1 + inner)  # P(z < half)
    p = torch.where(x.abs() > 1 - half, torch.tensor(edge), torch.tensor(inner))
    return -torch.log2(p).flatten(1).mean(1)


def test_bound_of_an_oracle_on_a_point_mass() -> None:
    """Data is one known image and the network knows its epsilon exactly: every KL term vanishes
    (fixed_small variance equals the true posterior's), so the bound is L_T plus the decoder's
    price for its fixed width sqrt(beta~_1), both in closed form."""
    sched = NoiseSchedule(make_betas("linear", 50))
    levels = torch.linspace(-1, 1, 256)
    x0 = levels[torch.randint(0, 256, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))]
    x0[0, 0, 0] = torch.tensor([-1.0, 1.0, -1.0, 1.0])  # edge bins too

    def oracle(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sa = extract(sched.sqrt_alphas_cumprod, t, 4)
        s1 = extract(sched.sqrt_one_minus_alphas_cumprod, t, 4)
        return (xt - sa * x0) / s1  # the exact epsilon

    terms = variational_bound(oracle, sched, x0, prediction="epsilon", variance="fixed_small",
                              generator=torch.Generator().manual_seed(1))
    assert terms.terms[:, 1:].abs().max().item() < 1e-4  # KL terms
    decoder = _decoder_bits(x0, math.sqrt(sched.f64.posterior_variance[1]))
    torch.testing.assert_close(terms.terms[:, 0], decoder, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(terms.total, prior_bpd(sched, x0) + decoder, atol=1e-3, rtol=1e-3)


def test_kl_term_of_a_wrong_model_closed_form() -> None:
    """An epsilon off by d moves x0 by -d sqrt(1-ab)/sqrt(ab) and the mean by coef1 times that:
    with equal variances the KL is (delta mu)^2 / (2 beta~) nats per dim."""
    sched = NoiseSchedule(make_betas("linear", 50))
    x0 = torch.zeros(2, 1, 4, 4)
    step, d = 10, 0.5
    t = torch.tensor([step, step])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    kw = {"prediction": "epsilon", "variance": "fixed_small", "clip_denoised": False}
    good = timestep_bpd(lambda xt, tt: noise, sched, x0, t, noise, **kw)
    bad = timestep_bpd(lambda xt, tt: noise + d, sched, x0, t, noise, **kw)
    f = sched.f64
    ab = f.alphas_cumprod[step]
    dmu = f.posterior_mean_coef1[step] * d * math.sqrt(1 - ab) / math.sqrt(ab)
    expected = dmu**2 / (2 * f.posterior_variance[step]) / math.log(2)
    assert good.abs().max().item() < 1e-5
    torch.testing.assert_close(bad, torch.full((2,), expected, dtype=torch.float32), rtol=1e-3, atol=0)
