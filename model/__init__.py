"""The DDPM (Ho et al. 2020): schedules, forward process, objectives, U-Net, samplers, checkpoints.

Knows nothing of HTTP or of training loops; ``training`` and ``app`` both build on it.
"""

from .batch import Row, RowBatch, RowSpec
from .checkpoint import CheckpointError, read_checkpoint, read_config, save_checkpoint
from .config import (
    SAMPLERS,
    ConfigError,
    DiffusionConfig,
    ModelConfig,
    SamplingConfig,
    UNetConfig,
)
from .device import resolve_device, resolve_dtype
from .pipeline import EMBEDDED_CHECKPOINT, MAX_SEED, DiffusionModel, load_checkpoint
from .samplers import SamplerPlan, build_plan, select_timesteps
from .schedule import NoiseSchedule, make_betas
from .unet import UNet

__all__ = [
    "EMBEDDED_CHECKPOINT",
    "MAX_SEED",
    "SAMPLERS",
    "CheckpointError",
    "ConfigError",
    "DiffusionConfig",
    "DiffusionModel",
    "ModelConfig",
    "NoiseSchedule",
    "Row",
    "RowBatch",
    "RowSpec",
    "SamplerPlan",
    "SamplingConfig",
    "UNet",
    "UNetConfig",
    "build_plan",
    "load_checkpoint",
    "make_betas",
    "read_checkpoint",
    "read_config",
    "resolve_device",
    "resolve_dtype",
    "save_checkpoint",
    "select_timesteps",
]
