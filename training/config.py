"""The configuration of a training run: its sections, checked before any work starts.

A run config has five sections: ``model`` (a ``model.ModelConfig``, minus what the data set
decides), ``data``, ``train``, ``ema`` and ``log``. It starts from a preset name or a JSON/TOML
file, then dotted overrides from the command line apply (``--model.unet.base_channels=64``;
``training.sources`` reads those). Every key is checked against the dataclasses below, so a
typo or a bad value fails before any work starts, with a message that names the key and what
is allowed.

What the data decides (image size, channels, classes, intensity levels) is filled into the
model section after the data set is loaded (see ``resolve_model``): a value given explicitly
must agree with the data, or the run is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model.config import ConfigError, DiffusionConfig, ModelConfig, SamplingConfig, UNetConfig, build_dataclass

DATASETS = ("digits", "folder", "npz", "cifar10")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
SECTIONS = ("model", "data", "train", "ema", "log")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    # digits: unused. folder: the image folder. npz: the .npz file. cifar10: the directory with
    # data_batch_1..5 and test_batch (the "python version" of CIFAR-10, extracted).
    path: str | None = None
    # Share of the data held out from training for evaluation, stratified by label; the split
    # comes from ``split_seed`` alone (see training.data.holdout_split). CIFAR-10 holds out its
    # own test_batch instead.
    holdout: float = 0.2
    split_seed: int = 0
    # Random horizontal flips; None: on, except for digits (a mirrored 2 or 7 is not a digit).
    hflip: bool | None = None
    # Train class-conditional when the data has labels; false trains an unconditional model.
    labels: bool = True
    # folder only: resize (centre crop, then bicubic) to this size; None: the images' own size.
    image_size: int | None = None
    # folder only: 1 (greyscale) or 3 (RGB); None: 3 if any image has colour, else 1.
    channels: int | None = None

    def __post_init__(self) -> None:
        _require(self.dataset in DATASETS, f"data.dataset={self.dataset!r} is not one of {', '.join(DATASETS)}")
        _require(self.dataset == "digits" or bool(self.path),
                 f"data.path is required for data.dataset={self.dataset!r}")
        _require(0.0 <= self.holdout < 1.0, f"data.holdout={self.holdout} must be in [0, 1)")
        _require(self.image_size is None or self.image_size > 0, f"data.image_size={self.image_size} must be > 0")
        _require(self.channels in (None, 1, 3), f"data.channels={self.channels} must be 1, 3 or null")

    @property
    def flips(self) -> bool:
        return self.dataset != "digits" if self.hflip is None else self.hflip


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    # The global batch: split evenly over the processes of a torchrun job.
    batch_size: int = 128
    lr: float = 2e-4
    # Linear warm-up from 0 (the paper: 5000 steps at lr 2e-4 for CIFAR-10).
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    # cosine: decay from lr to lr * final_lr_scale over the steps after warm-up.
    final_lr_scale: float = 0.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # Clip the global gradient norm (the paper's code clips at 1).
    grad_clip: float = 1.0
    # Share of rows trained with the null label, so that one network is both p(x|y) and p(x)
    # (classifier-free guidance, Ho & Salimans 2022, sec. 3.2).
    label_dropout: float = 0.1
    # auto: bf16 on CUDA where supported, else fp32. fp16 uses a gradient scaler; both need CUDA.
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    # auto: cuda:LOCAL_RANK when there is CUDA, else cpu.
    device: str = "auto"
    # CPU threads for torch; null leaves torch's default.
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        _require(self.steps >= 1, f"train.steps={self.steps} must be >= 1")
        _require(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1")
        _require(self.lr > 0, f"train.lr={self.lr} must be > 0")
        _require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be >= 0")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"train.lr_schedule={self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        _require(0.0 <= self.final_lr_scale <= 1.0, f"train.final_lr_scale={self.final_lr_scale} must be in [0, 1]")
        _require(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        _require(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
                 f"train.adam_betas={list(self.adam_betas)} must be two numbers in [0, 1)")
        _require(self.adam_eps > 0, f"train.adam_eps={self.adam_eps} must be > 0")
        _require(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip} must be >= 0 (0: off)")
        _require(0.0 <= self.label_dropout < 1.0, f"train.label_dropout={self.label_dropout} must be in [0, 1)")
        _require(self.precision in PRECISIONS,
                 f"train.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        _require(self.seed >= 0, f"train.seed={self.seed} must be >= 0")
        _require(self.threads is None or self.threads >= 1, f"train.threads={self.threads} must be >= 1 or null")


@dataclass(frozen=True)
class EMAConfig:
    # The EMA's decay after warm-up (the paper: 0.9999).
    decay: float = 0.9999
    # Warm-up: after n updates the decay is min(decay, (1 + n) / (warmup + n)), the schedule of
    # TensorFlow's ExponentialMovingAverage(num_updates=n); 0 turns warm-up off. With warmup=10,
    # 0.999 is reached after ~9000 updates, so early, poor weights fade out instead of lingering.
    warmup: float = 10.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.decay < 1.0, f"ema.decay={self.decay} must be in [0, 1)")
        _require(self.warmup >= 0, f"ema.warmup={self.warmup} must be >= 0")


@dataclass(frozen=True)
class LogConfig:
    # A metrics line (and the progress bar's loss) every this many steps.
    every: int = 50
    # Write the EMA checkpoint and the resume state every this many steps (and at the end).
    checkpoint_every: int = 1000
    # A grid of EMA samples at the model's default sampler; 0: only at the end.
    sample_every: int = 5000
    # Held-out loss and bound estimate (and, for digits, the sample-quality check); 0: only at the end.
    eval_every: int = 5000
    num_samples: int = 100
    # Images generated for the periodic digits quality check.
    eval_samples: int = 200

    def __post_init__(self) -> None:
        for name in ("every", "checkpoint_every"):
            _require(getattr(self, name) >= 1, f"log.{name}={getattr(self, name)} must be >= 1")
        for name in ("sample_every", "eval_every", "eval_samples"):
            _require(getattr(self, name) >= 0, f"log.{name}={getattr(self, name)} must be >= 0")
        _require(self.num_samples >= 1, f"log.num_samples={self.num_samples} must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """A whole run. ``model`` is the raw mapping until the data fills it in (``resolve_model``)."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def model_name(self) -> str:
        return str(self.model.get("name", "ddpm"))


# ---------------------------------------------------------------------------------------------
# Type checking of raw values against the dataclasses, so that "--train.lr=abc" is refused by
# name instead of failing later with a bare TypeError.

_SCHEMA: dict[str, type] = {
    "data": DataConfig, "train": TrainConfig, "ema": EMAConfig, "log": LogConfig,
    "model": ModelConfig, "model.unet": UNetConfig, "model.diffusion": DiffusionConfig,
    "model.sampling": SamplingConfig,
}


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (ints pass as floats, lists as tuples), or a ConfigError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(options) == 1 else f"{key}={value!r} has the wrong type ({hint})")
    if origin is tuple:
        _require(isinstance(value, list | tuple), f"{key}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        _require(len(value) == len(args), f"{key}={list(value)} must have {len(args)} entries")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict or hint is dict:
        _require(isinstance(value, Mapping), f"{key} must be a mapping")
        return dict(value)
    if hint is bool:
        _require(isinstance(value, bool), f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        _require(isinstance(value, int | float) and not isinstance(value, bool), f"{key}={value!r} must be a number")
        return float(value)
    if hint is str:
        _require(isinstance(value, str), f"{key}={value!r} must be a string")
        return value
    return value  # Any, or a nested section checked on its own


def check_section(path: str, values: Any) -> dict[str, Any]:
    """Check the keys and value types of one section (``path`` like "train" or "model.unet")."""
    cls = _SCHEMA[path]
    _require(isinstance(values, Mapping), f"{path} must be a mapping, got {values!r}")
    hints = _fields(cls)
    unknown = sorted(set(values) - set(hints) - ({"format_version"} if path == "model" else set()))
    _require(not unknown, f"unknown key(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
             f"allowed: {', '.join(f'{path}.{k}' for k in hints)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        sub = f"{path}.{key}"
        out[key] = check_section(sub, value) if sub in _SCHEMA else _coerce(sub, value, hints.get(key, Any))
    return out


def build_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a raw nested mapping (preset, file and overrides already merged)."""
    _require(isinstance(raw, Mapping), "a config must be a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    _require(not unknown, f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    sections = {name: check_section(name, raw.get(name, {})) for name in SECTIONS}
    model = sections.pop("model")
    # The parts of the model that do not depend on the data are checked now, before data loads.
    for name in ("diffusion", "sampling"):
        build_dataclass(_SCHEMA[f"model.{name}"], model.get(name, {}), prefix=f"model.{name}.")
    built: dict[str, Any] = {
        name: build_dataclass(_SCHEMA[name], values, prefix=f"{name}.") for name, values in sections.items()
    }
    return RunConfig(model=model, **built)


# ---------------------------------------------------------------------------------------------
# The data's share of the model config.


@dataclass(frozen=True)
class DataShape:
    """What a data set tells the model: image size and channels, classes, intensity levels."""

    image_size: int
    channels: int
    levels: int
    class_names: tuple[str, ...] | None


def resolve_model(raw: Mapping[str, Any], shape: DataShape, provenance: Mapping[str, Any]) -> ModelConfig:
    """The full ModelConfig: the data's values filled in where ``raw`` is silent, checked where it is not."""
    model = copy.deepcopy(dict(raw))
    unet = dict(model.get("unet", {}))
    num_classes = len(shape.class_names) if shape.class_names else None
    decided: list[tuple[dict[str, Any], str, str, Any]] = [
        (unet, "model.unet.", "image_size", shape.image_size),
        (unet, "model.unet.", "in_channels", shape.channels),
        (unet, "model.unet.", "out_channels", shape.channels),
        (unet, "model.unet.", "num_classes", num_classes),
        (model, "model.", "class_names", list(shape.class_names) if shape.class_names else None),
        (model, "model.", "data_levels", shape.levels),
    ]
    for section, prefix, key, value in decided:
        given = section.get(key, value)
        if isinstance(given, tuple):
            given = list(given)
        _require(given == value, f"{prefix}{key}={given!r} disagrees with the data set, which has {value!r} "
                 "(leave it out and the data decides)")
        section[key] = value
    model["unet"] = unet
    model["provenance"] = {**model.get("provenance", {}), **provenance}
    return ModelConfig.from_dict(model)
