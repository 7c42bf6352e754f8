"""Configuration of a model: the network, the diffusion process and how to sample from it.

Frozen pydantic dataclasses (``model.validation``) that round-trip through JSON, because a
checkpoint carries its whole config in the safetensors metadata and the server rebuilds the
model from that file alone. Every value is checked when the object is made, types strictly
(``image_size: 8.0`` or ``"4"`` is refused, not coerced) and sizes against the bounds below, so
a bad or hostile config fails with a message naming the dotted key before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from .modes import (
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
    VARIANCES,
    Prediction,
    SamplerName,
    Schedule,
    Spacing,
    Variance,
)
from .validation import CONFIG, ConfigError, invalid, parse, raise_config_errors, shown

# The mode tuples are re-exported: model.samplers and the CLI read them from here.
__all__ = ["PREDICTIONS", "SAMPLERS", "SCHEDULES", "SPACINGS", "VARIANCES", "ConfigError", "DiffusionConfig",
           "ModelConfig", "SamplingConfig", "UNetConfig"]

FORMAT_VERSION = 1

# Upper bounds on what a config may declare. A checkpoint's metadata is untrusted input: these
# refuse an absurd header before any table or network is allocated from it. Each is several
# times the largest value a real pixel-space DDPM uses, so no genuine model is turned away.
# Image side: ADM (Dhariwal & Nichol 2021) samples up to 512x512 in pixel space.
MAX_IMAGE_SIZE = 1024
# Image channels: greyscale 1, RGB 3, RGBA 4; more would be a latent or a misread header.
MAX_IMAGE_CHANNELS = 16
# Diffusion steps T: the paper uses 1000, improved DDPM 4000; T sizes the schedule tables and a
# full ancestral sampling run, so 10**7 would stall a server for minutes before failing.
MAX_TIMESTEPS = 10_000
# First-level width: the paper's CIFAR-10 network has 128, ADM at most 256, SD's U-Net 320.
MAX_BASE_CHANNELS = 1024
# Width multiplier per level: the usual ones are 1, 2, 3 or 4.
MAX_CHANNEL_MULT = 16
# Resolution levels: 1024 halved 7 times is 8, the smallest a network here reasonably sees.
MAX_LEVELS = 8
# ResBlocks per level: the paper uses 2, ADM 2-3.
MAX_RES_BLOCKS = 8
# Classes: ImageNet-21k has about 21 000; the class embedding table grows with this.
MAX_CLASSES = 100_000
# Intensity levels of the data: 65536 is 16-bit images.
MAX_DATA_LEVELS = 65_536
# A model's name is served in /v1/model, response headers and metric labels.
MAX_NAME_LENGTH = 128


def _prior(info: ValidationInfo, *names: str) -> dict[str, Any] | None:
    """The earlier fields a cross-field check needs, or None when one of them already failed."""
    if not all(n in info.data for n in names):
        return None
    return {n: info.data[n] for n in names}


@dataclass(frozen=True, config=CONFIG)
class UNetConfig:
    """The paper's U-Net (Ho et al. 2020, appendix B), every size configurable.

    The defaults are the paper's CIFAR-10 network (35.7M parameters).
    """

    image_size: Annotated[StrictInt, Gt(0), Le(MAX_IMAGE_SIZE)] = 32
    in_channels: Annotated[StrictInt, Gt(0), Le(MAX_IMAGE_CHANNELS)] = 3
    out_channels: Annotated[StrictInt, Gt(0), Le(MAX_IMAGE_CHANNELS)] = 3
    base_channels: Annotated[StrictInt, Gt(0), Le(MAX_BASE_CHANNELS)] = 128
    channel_mult: Annotated[tuple[Annotated[StrictInt, Gt(0), Le(MAX_CHANNEL_MULT)], ...],
                            MinLen(1), MaxLen(MAX_LEVELS)] = (1, 2, 2, 2)
    num_res_blocks: Annotated[StrictInt, Ge(1), Le(MAX_RES_BLOCKS)] = 2
    attention_resolutions: tuple[StrictInt, ...] = (16,)
    # None: one head as wide as the feature map (the paper); an int: heads of that width.
    attention_head_dim: Annotated[StrictInt, Gt(0)] | None = None
    dropout: Annotated[StrictFloat, Ge(0.0), Lt(1.0)] = 0.1
    norm_groups: Annotated[StrictInt, Gt(0)] = 32
    norm_eps: Annotated[StrictFloat, Gt(0.0)] = 1e-6
    # None: unconditional. An int: that many classes, plus one extra "null" label (index
    # num_classes) used for unconditional rows in classifier-free guidance.
    num_classes: Annotated[StrictInt, Ge(1), Le(MAX_CLASSES)] | None = None
    # 0: pad right/bottom by one then convolve with stride 2, like TensorFlow's "SAME" in the
    # paper's code; 1: symmetric padding of one (the usual PyTorch layout).
    downsample_padding: Annotated[StrictInt, Ge(0), Le(1)] = 0
    time_flip_sin_to_cos: StrictBool = False
    time_freq_shift: StrictFloat = 1.0

    @field_validator("channel_mult")
    @classmethod
    def _levels_fit_the_image(cls, mult: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        prior = _prior(info, "image_size")
        if prior and prior["image_size"] % 2 ** (len(mult) - 1):
            raise invalid(f"{len(mult)} levels need image_size divisible by 2^(levels-1)="
                          f"{2 ** (len(mult) - 1)}, and image_size={prior['image_size']} is not")
        return mult

    @field_validator("attention_resolutions")
    @classmethod
    def _attention_at_a_level(cls, res: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        prior = _prior(info, "image_size", "channel_mult")
        if prior:
            levels = tuple(prior["image_size"] // 2**i for i in range(len(prior["channel_mult"])))
            for r in res:
                if r not in levels:
                    raise invalid(f"entry {r} is not one of the levels' resolutions {levels}")
        return res

    @field_validator("attention_head_dim", "norm_groups")
    @classmethod
    def _divides_every_width(cls, value: int | None, info: ValidationInfo) -> int | None:
        prior = _prior(info, "base_channels", "channel_mult")
        if prior and value is not None:
            widths = tuple(prior["base_channels"] * m for m in prior["channel_mult"])
            if any(w % value for w in widths):
                raise invalid(f"{value} must divide every level's width {widths}")
        return value

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels


@dataclass(frozen=True, config=CONFIG)
class DiffusionConfig:
    """The forward process and the parameterisation of the reverse one."""

    schedule: Schedule = "linear"
    num_timesteps: Annotated[StrictInt, Ge(2), Le(MAX_TIMESTEPS)] = 1000
    beta_start: Annotated[StrictFloat, Gt(0.0), Lt(1.0)] = 1e-4
    beta_end: Annotated[StrictFloat, Gt(0.0), Lt(1.0)] = 0.02
    prediction: Prediction = "epsilon"
    # Variance of p(x_{t-1} | x_t) for ancestral sampling and the bound: sigma^2 = beta-tilde
    # ("fixed_small") or beta ("fixed_large"); the paper found both give similar samples (sec. 3.2).
    variance: Variance = "fixed_large"
    # Clip the predicted x0 to the data range [-1, 1] before it is used in an update.
    clip_denoised: StrictBool = True

    @field_validator("beta_end")
    @classmethod
    def _betas_increase(cls, end: float, info: ValidationInfo) -> float:
        prior = _prior(info, "beta_start")
        if prior and not prior["beta_start"] < end:
            raise invalid(f"{end} must exceed beta_start={prior['beta_start']}")
        return end


@dataclass(frozen=True, config=CONFIG)
class SamplingConfig:
    """What a request gets when it does not say."""

    sampler: SamplerName = "dpmpp_2m"
    steps: Annotated[StrictInt, Ge(1), Le(MAX_TIMESTEPS)] = 20
    eta: Annotated[StrictFloat, Ge(0.0), Le(1.0)] = 0.0
    guidance: Annotated[StrictFloat, Ge(0.0)] = 0.0
    # Which timesteps a respaced run visits: "trailing" always starts at t = T-1, which pure
    # noise needs when steps are few (Lin et al. 2024, "Common diffusion noise schedules and
    # sample steps are flawed", table 2).
    spacing: Spacing = "trailing"


@dataclass(frozen=True, config=CONFIG)
class ModelConfig:
    """Everything a checkpoint needs to be rebuilt and served from the file alone."""

    # The served name (/v1/model, the page, metrics). ``ddpm train`` sets it from the run.
    name: StrictStr = "ddpm"
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Human names of the classes, e.g. ["0", ..., "9"]; length num_classes when given.
    class_names: tuple[StrictStr, ...] | None = None
    # Extra names a client may use for a class, e.g. {"7": ["seven"]} (the OpenAI-compatible
    # API accepts them); keys are class names. Absent from checkpoints written before it existed.
    class_aliases: dict[StrictStr, tuple[StrictStr, ...]] = field(default_factory=dict)
    # How many evenly spaced intensity levels the training data had before it was mapped onto
    # [-1, 1]: 256 for 8-bit images, 17 for scikit-learn's digits (values 0..16). The bound's
    # discretized decoder (eq. 13) gives each level a bin of width 2 / (data_levels - 1).
    data_levels: Annotated[StrictInt, Ge(2), Le(MAX_DATA_LEVELS)] = 256
    # Free-form: data set, command, steps trained, source of a converted model, date.
    provenance: dict[str, Any] = field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_printable(cls, name: str) -> str:
        if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
            raise invalid(f"{shown(name)} must be 1 to {MAX_NAME_LENGTH} printable characters "
                          "without surrounding spaces")
        return name

    @field_validator("sampling")
    @classmethod
    def _steps_within_the_process(cls, sampling: SamplingConfig, info: ValidationInfo) -> SamplingConfig:
        prior = _prior(info, "diffusion")
        if prior and sampling.steps > prior["diffusion"].num_timesteps:
            raise invalid(f"{sampling.steps} exceeds diffusion.num_timesteps={prior['diffusion'].num_timesteps}",
                          "steps")
        return sampling

    @field_validator("class_names")
    @classmethod
    def _one_name_per_class(cls, names: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        prior = _prior(info, "unet")
        if names is not None and prior and prior["unet"].num_classes != len(names):
            raise invalid(f"has {len(names)} entries but unet.num_classes={prior['unet'].num_classes}")
        if names is not None and len(set(names)) != len(names):
            raise invalid(f"{list(names)} has duplicate names")
        return names

    @field_validator("class_aliases")
    @classmethod
    def _aliases_name_one_class(cls, aliases: dict[str, tuple[str, ...]],
                                info: ValidationInfo) -> dict[str, tuple[str, ...]]:
        if not aliases:
            return aliases
        names = info.data.get("class_names")
        if names is None:
            raise invalid("need class_names: each key is a class name")
        seen: dict[str, str] = {name: name for name in names}
        for key, extra in aliases.items():
            if key not in names:
                raise invalid(f"{key!r} is not one of the class names {list(names)}", key)
            for alias in extra:
                if not alias.strip():
                    raise invalid("an alias must not be blank", key)
                if alias in seen:
                    raise invalid(f"{alias!r} already names class {seen[alias]!r}", key)
                seen[alias] = key
        return aliases

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def channels(self) -> int:
        return self.unet.in_channels

    def label_problem(self, label: int | None) -> str | None:
        """Why ``label`` cannot be drawn from this model, or None when it can (None: unconditional).
        The one check every caller shares: offline sampling, the HTTP schemas, the editing API."""
        if label is None:
            return None
        if self.num_classes is None:
            return "this model is unconditional; label must be null"
        if not 0 <= label < self.num_classes:
            return f"label={label} must be in 0..{self.num_classes - 1}"
        return None

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    def to_dict(self) -> dict[str, Any]:
        out = {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        if not self.class_aliases:
            del out["class_aliases"]  # so that a file without aliases stays readable by older versions
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"format_version: {version!r} is not {FORMAT_VERSION}")
        return parse(cls, data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


raise_config_errors(UNetConfig, "unet")
raise_config_errors(DiffusionConfig, "diffusion")
raise_config_errors(SamplingConfig, "sampling")
raise_config_errors(ModelConfig)
