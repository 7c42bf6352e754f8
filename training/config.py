"""The configuration of a training run: its sections, checked before any work starts.

A run config has five sections: ``model`` (a ``model.ModelConfig``, minus what the data set
decides), ``data``, ``train``, ``ema`` and ``log``. It starts from a preset name or a JSON/TOML
file, then dotted overrides from the command line apply (``--model.unet.base_channels=64``;
``training.sources`` reads those). Every key is checked by pydantic against the classes below
(``model.validation``: one mechanism and one error format for model, training and server), so
a typo or a bad value fails before any work starts, with a message that names the dotted key
and what is allowed.

What the data decides (image size, channels, classes, intensity levels) is filled into the
model section after the data set is loaded (see ``resolve_model``): a value given explicitly
must agree with the data, or the run is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from model.config import MAX_IMAGE_SIZE, DiffusionConfig, ModelConfig, SamplingConfig, UNetConfig
from model.validation import CONFIG, ConfigError, check_fields, invalid, parse, raise_config_errors

Dataset = Literal["digits", "folder", "npz", "cifar10"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LRSchedule = Literal["constant", "cosine"]
DATASETS: tuple[str, ...] = get_args(Dataset)
PRECISIONS: tuple[str, ...] = get_args(Precision)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
SECTIONS = ("model", "data", "train", "ema", "log")

Unit = Annotated[StrictFloat, Ge(0.0), Lt(1.0)]  # a share or a decay, in [0, 1)


@dataclass(frozen=True, config=CONFIG)
class DataConfig:
    dataset: Dataset = "digits"
    # digits: unused. folder: the image folder. npz: the .npz file. cifar10: the directory with
    # data_batch_1..5 and test_batch (the "python version" of CIFAR-10, extracted).
    path: StrictStr | None = None
    # Share of the data held out from training for evaluation, stratified by label; the split
    # comes from ``split_seed`` alone (see training.data.holdout_split). CIFAR-10 holds out its
    # own test_batch instead.
    holdout: Unit = 0.2
    split_seed: Annotated[StrictInt, Ge(0)] = 0
    # Random horizontal flips; None: on, except for digits (a mirrored 2 or 7 is not a digit).
    hflip: StrictBool | None = None
    # Train class-conditional when the data has labels; false trains an unconditional model.
    labels: StrictBool = True
    # folder only: resize (centre crop, then bicubic) to this size; None: the images' own size.
    image_size: Annotated[StrictInt, Gt(0), Le(MAX_IMAGE_SIZE)] | None = None
    # folder only: 1 (greyscale) or 3 (RGB); None: 3 if any image has colour, else 1.
    channels: Literal[1, 3] | None = None

    @field_validator("path")
    @classmethod
    def _path_unless_digits(cls, path: str | None, info: ValidationInfo) -> str | None:
        dataset = info.data.get("dataset")
        if dataset is not None and dataset != "digits" and not path:
            raise invalid(f"required for data.dataset={dataset!r}")
        return path

    @property
    def flips(self) -> bool:
        return self.dataset != "digits" if self.hflip is None else self.hflip


@dataclass(frozen=True, config=CONFIG)
class TrainConfig:
    steps: Annotated[StrictInt, Ge(1)] = 20_000
    # The global batch: split evenly over the processes of a torchrun job.
    batch_size: Annotated[StrictInt, Ge(1)] = 128
    lr: Annotated[StrictFloat, Gt(0.0)] = 2e-4
    # Linear warm-up from 0 (the paper: 5000 steps at lr 2e-4 for CIFAR-10).
    warmup_steps: Annotated[StrictInt, Ge(0)] = 500
    lr_schedule: LRSchedule = "constant"
    # cosine: decay from lr to lr * final_lr_scale over the steps after warm-up.
    final_lr_scale: Annotated[StrictFloat, Ge(0.0), Le(1.0)] = 0.0
    weight_decay: Annotated[StrictFloat, Ge(0.0)] = 0.0
    adam_betas: tuple[Unit, Unit] = (0.9, 0.999)
    adam_eps: Annotated[StrictFloat, Gt(0.0)] = 1e-8
    # Clip the global gradient norm (the paper's code clips at 1); 0: off.
    grad_clip: Annotated[StrictFloat, Ge(0.0)] = 1.0
    # Share of rows trained with the null label, so that one network is both p(x|y) and p(x)
    # (classifier-free guidance, Ho & Salimans 2022, sec. 3.2).
    label_dropout: Unit = 0.1
    # auto: bf16 on CUDA where supported, else fp32. fp16 uses a gradient scaler; both need CUDA.
    precision: Precision = "auto"
    compile: StrictBool = False
    seed: Annotated[StrictInt, Ge(0)] = 0
    # auto: cuda:LOCAL_RANK when there is CUDA, else cpu.
    device: StrictStr = "auto"
    # CPU threads for torch; null leaves torch's default.
    threads: Annotated[StrictInt, Ge(1)] | None = None


@dataclass(frozen=True, config=CONFIG)
class EMAConfig:
    # The EMA's decay after warm-up (the paper: 0.9999).
    decay: Unit = 0.9999
    # Warm-up: after n updates the decay is min(decay, (1 + n) / (warmup + n)), the schedule of
    # TensorFlow's ExponentialMovingAverage(num_updates=n); 0 turns warm-up off. With warmup=10,
    # 0.999 is reached after ~9000 updates, so early, poor weights fade out instead of lingering.
    warmup: Annotated[StrictFloat, Ge(0.0)] = 10.0


@dataclass(frozen=True, config=CONFIG)
class LogConfig:
    # A metrics line (and the progress bar's loss) every this many steps.
    every: Annotated[StrictInt, Ge(1)] = 50
    # Write the EMA checkpoint and the resume state every this many steps (and at the end).
    checkpoint_every: Annotated[StrictInt, Ge(1)] = 1000
    # A grid of EMA samples at the model's default sampler; 0: only at the end.
    sample_every: Annotated[StrictInt, Ge(0)] = 5000
    # Held-out loss and bound estimate (and, for digits, the sample-quality check); 0: only at the end.
    eval_every: Annotated[StrictInt, Ge(0)] = 5000
    num_samples: Annotated[StrictInt, Ge(1)] = 100
    # Images generated for the periodic digits quality check.
    eval_samples: Annotated[StrictInt, Ge(0)] = 200


for _cls, _name in ((DataConfig, "data"), (TrainConfig, "train"), (EMAConfig, "ema"), (LogConfig, "log")):
    raise_config_errors(_cls, _name)


@dataclasses.dataclass(frozen=True)
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


# The class of every section and subsection, by dotted path: what overrides may name.
SECTION_TYPES: dict[str, type] = {
    "data": DataConfig, "train": TrainConfig, "ema": EMAConfig, "log": LogConfig,
    "model": ModelConfig, "model.unet": UNetConfig, "model.diffusion": DiffusionConfig,
    "model.sampling": SamplingConfig,
}


def build_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a raw nested mapping (preset, file and overrides already merged)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("a config must be a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    model = copy.deepcopy(dict(raw.get("model", {})))
    model.pop("format_version", None)  # a resumed run's config.json carries it
    # Every key and value of the model is checked now, before the data loads; what spans the
    # data's sizes (image size, classes) is checked when resolve_model completes it.
    check_fields(ModelConfig, model, "model")
    for name in ("diffusion", "sampling"):
        parse(SECTION_TYPES[f"model.{name}"], model.get(name, {}), prefix=f"model.{name}")
    built: dict[str, Any] = {
        name: parse(SECTION_TYPES[name], raw.get(name, {}), prefix=name) for name in SECTIONS if name != "model"
    }
    return RunConfig(model=model, **built)


# ---------------------------------------------------------------------------------------------
# The data's share of the model config.


@dataclasses.dataclass(frozen=True)
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
        if given != value:
            raise ConfigError(f"{prefix}{key}={given!r} disagrees with the data set, which has {value!r} "
                              "(leave it out and the data decides)")
        section[key] = value
    model["unet"] = unet
    if not shape.class_names:
        # Aliases name classes; data without labels has none (a preset's aliases then lapse).
        model.pop("class_aliases", None)
    model["provenance"] = {**model.get("provenance", {}), **provenance}
    model.pop("format_version", None)
    return parse(ModelConfig, model, prefix="model")
