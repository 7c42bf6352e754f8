import pytest
import torch

from model import ConfigError, ModelConfig, UNet, UNetConfig
from model.unet import count_parameters

from .conftest import TINY_UNET, randomized_unet


def test_paper_cifar10_network_has_35_7m_parameters() -> None:
    assert count_parameters(UNet(UNetConfig())) == 35_746_307


def test_forward_shapes_and_null_label() -> None:
    net = randomized_unet(TINY_UNET).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 50, 99])
    with torch.no_grad():
        out = net(x, t, torch.tensor([1, 2, 3]))
        assert out.shape == (3, 1, 8, 8)
        # no labels means the null label, i.e. the unconditional branch
        torch.testing.assert_close(net(x, t), net(x, t, torch.full((3,), 10)))
        assert net.null_label == 10
        assert not torch.allclose(net(x, t, torch.tensor([1, 1, 1])), net(x, t, torch.tensor([2, 2, 2])))


def test_output_is_per_sample() -> None:
    """No layer mixes samples, which batching and bucket padding rely on."""
    net = randomized_unet(TINY_UNET).eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 9, 27, 81]), torch.tensor([0, 1, 2, 10])
    with torch.no_grad():
        whole = net(x, t, y)
        parts = torch.cat([net(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-5)


def test_channels_last_and_bfloat16_run() -> None:
    net = randomized_unet(TINY_UNET).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 60])
    with torch.no_grad():
        ref = net(x, t)
        net = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last), t), ref,
                                   atol=1e-5, rtol=1e-5)
        out = net.to(torch.bfloat16)(x.bfloat16(), t)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item() + 0.05


def test_unconditional_network_refuses_labels() -> None:
    net = UNet(UNetConfig(**{**TINY_UNET.__dict__, "num_classes": None}))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))
    assert net.null_label is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 12, "channel_mult": (1, 2, 2, 2)}, "divisible"),
        ({"attention_resolutions": (3,)}, "attention_resolutions: entry 3"),
        ({"norm_groups": 5}, "norm_groups: 5 must divide"),
        ({"dropout": 1.0}, "dropout"),
        ({"downsample_padding": 2}, "downsample_padding"),
        ({"num_classes": 0}, r"num_classes: .*\(got 0\)"),
    ],
)
def test_bad_unet_config_names_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNetConfig(**{**TINY_UNET.__dict__, **overrides})


def test_model_config_refuses_unknown_keys_and_bad_values() -> None:
    good = ModelConfig().to_dict()
    assert ModelConfig.from_dict(good) == ModelConfig()
    with pytest.raises(ConfigError, match=r"unet\.widht: unknown key"):
        ModelConfig.from_dict({**good, "unet": {**good["unet"], "widht": 3}})
    with pytest.raises(ConfigError, match=r"colour: unknown key"):
        ModelConfig.from_dict({**good, "colour": "red"})
    with pytest.raises(ConfigError,
                       match=r"diffusion\.schedule: Input should be 'linear' or 'cosine' \(got 'quadratic'\)"):
        ModelConfig.from_dict({**good, "diffusion": {**good["diffusion"], "schedule": "quadratic"}})
    with pytest.raises(ConfigError, match="sampling.sampler"):
        ModelConfig.from_dict({**good, "sampling": {**good["sampling"], "sampler": "euler"}})
    with pytest.raises(ConfigError, match="format_version"):
        ModelConfig.from_dict({**good, "format_version": 99})
