"""Configuration of a model: the network, the diffusion process and how to sample from it.

Plain frozen dataclasses that round-trip through JSON, because a checkpoint carries its whole
config in the safetensors metadata and the server rebuilds the model from that file alone.
Every value is checked when the object is made, so a bad config fails with a message naming
the key and what is allowed rather than deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .modes import PREDICTIONS, SAMPLERS, SCHEDULES, SPACINGS, VARIANCES

FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A configuration value or key that is not allowed; the message names it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{name}={value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class UNetConfig:
    """The paper's U-Net (Ho et al. 2020, appendix B), every size configurable.

    The defaults are the paper's CIFAR-10 network (35.7M parameters).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    # None: one head as wide as the feature map (the paper); an int: heads of that width.
    attention_head_dim: int | None = None
    dropout: float = 0.1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    # None: unconditional. An int: that many classes, plus one extra "null" label (index
    # num_classes) used for unconditional rows in classifier-free guidance.
    num_classes: int | None = None
    # 0: pad right/bottom by one then convolve with stride 2, like TensorFlow's "SAME" in the
    # paper's code; 1: symmetric padding of one (the usual PyTorch layout).
    downsample_padding: int = 0
    time_flip_sin_to_cos: bool = False
    time_freq_shift: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        _require(self.image_size > 0, f"unet.image_size={self.image_size} must be positive")
        levels = len(self.channel_mult)
        _require(levels > 0, "unet.channel_mult must name at least one level")
        _require(
            self.image_size % (2 ** (levels - 1)) == 0,
            f"unet.image_size={self.image_size} must be divisible by 2^(levels-1)={2 ** (levels - 1)}",
        )
        _require(self.in_channels > 0 and self.out_channels > 0, "unet channels must be positive")
        _require(self.base_channels > 0, f"unet.base_channels={self.base_channels} must be positive")
        _require(all(m > 0 for m in self.channel_mult), "unet.channel_mult entries must be positive")
        _require(self.num_res_blocks >= 1, f"unet.num_res_blocks={self.num_res_blocks} must be >= 1")
        resolutions = self.resolutions
        for r in self.attention_resolutions:
            _require(r in resolutions, f"unet.attention_resolutions entry {r} is not one of {resolutions}")
        for width in self.widths:
            _require(
                width % self.norm_groups == 0,
                f"unet.norm_groups={self.norm_groups} must divide every level's width {self.widths}",
            )
            if self.attention_head_dim is not None:
                _require(
                    width % self.attention_head_dim == 0,
                    f"unet.attention_head_dim={self.attention_head_dim} must divide widths {self.widths}",
                )
        _require(0.0 <= self.dropout < 1.0, f"unet.dropout={self.dropout} must be in [0, 1)")
        _require(self.downsample_padding in (0, 1), "unet.downsample_padding must be 0 or 1")
        _require(
            self.num_classes is None or self.num_classes >= 1,
            f"unet.num_classes={self.num_classes} must be >= 1 or null",
        )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the parameterisation of the reverse one."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"
    # Variance of p(x_{t-1} | x_t) for ancestral sampling and the bound: sigma^2 = beta-tilde
    # ("fixed_small") or beta ("fixed_large"); the paper found both give similar samples (sec. 3.2).
    variance: str = "fixed_large"
    # Clip the predicted x0 to the data range [-1, 1] before it is used in an update.
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        _choice("diffusion.schedule", self.schedule, SCHEDULES)
        _choice("diffusion.prediction", self.prediction, PREDICTIONS)
        _choice("diffusion.variance", self.variance, VARIANCES)
        _require(self.num_timesteps >= 2, f"diffusion.num_timesteps={self.num_timesteps} must be >= 2")
        _require(
            0.0 < self.beta_start < self.beta_end < 1.0,
            f"diffusion betas need 0 < beta_start ({self.beta_start}) < beta_end ({self.beta_end}) < 1",
        )


@dataclass(frozen=True)
class SamplingConfig:
    """What a request gets when it does not say."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    eta: float = 0.0
    guidance: float = 0.0
    # Which timesteps a respaced run visits: "trailing" always starts at t = T-1, which pure
    # noise needs when steps are few (Lin et al. 2024, "Common diffusion noise schedules and
    # sample steps are flawed", table 2).
    spacing: str = "trailing"

    def __post_init__(self) -> None:
        _choice("sampling.sampler", self.sampler, SAMPLERS)
        _choice("sampling.spacing", self.spacing, SPACINGS)
        _require(self.steps >= 1, f"sampling.steps={self.steps} must be >= 1")
        _require(0.0 <= self.eta <= 1.0, f"sampling.eta={self.eta} must be in [0, 1]")
        _require(self.guidance >= 0.0, f"sampling.guidance={self.guidance} must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Everything a checkpoint needs to be rebuilt and served from the file alone."""

    name: str = "ddpm"
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Human names of the classes, e.g. ["0", ..., "9"]; length num_classes when given.
    class_names: tuple[str, ...] | None = None
    # How many evenly spaced intensity levels the training data had before it was mapped onto
    # [-1, 1]: 256 for 8-bit images, 17 for scikit-learn's digits (values 0..16). The bound's
    # discretized decoder (eq. 13) gives each level a bin of width 2 / (data_levels - 1).
    data_levels: int = 256
    # Free-form: data set, command, steps trained, source of a converted model, date.
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            _require(
                self.unet.num_classes == len(self.class_names),
                f"class_names has {len(self.class_names)} entries but unet.num_classes="
                f"{self.unet.num_classes}",
            )
        _require(self.data_levels >= 2, f"data_levels={self.data_levels} must be >= 2")
        _require(
            self.sampling.steps <= self.diffusion.num_timesteps,
            f"sampling.steps={self.sampling.steps} exceeds diffusion.num_timesteps="
            f"{self.diffusion.num_timesteps}",
        )

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def channels(self) -> int:
        return self.unet.in_channels

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        _require(version == FORMAT_VERSION, f"config format_version={version} is not {FORMAT_VERSION}")
        nested = {"unet": UNetConfig, "diffusion": DiffusionConfig, "sampling": SamplingConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in nested:
                kwargs[key] = build_dataclass(nested[key], value, prefix=f"{key}.")
            else:
                kwargs[key] = value
        return build_dataclass(cls, kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


T = TypeVar("T")


def build_dataclass(cls: type[T], values: Mapping[str, Any] | T, prefix: str = "") -> T:
    """Make ``cls`` from a mapping, refusing unknown keys by name."""
    if isinstance(values, cls):
        return values
    _require(isinstance(values, Mapping), f"{prefix.rstrip('.') or cls.__name__} must be a mapping")
    assert isinstance(values, Mapping)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    _require(not unknown, f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
             f"allowed: {', '.join(prefix + n for n in names)}")
    try:
        return cls(**values)
    except TypeError as exc:  # a wrong type that the dataclass itself rejected
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
