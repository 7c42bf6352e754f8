"""Named starting points for ``ddpm train --config NAME``; any key can still be overridden.

Sizes the data decides (image size, channels, classes, levels) are absent on purpose: the data
set fills them in (``training.config.resolve_model``).
"""

from __future__ import annotations

from typing import Any

# The embedded model (model/embedded/digits.safetensors): class-conditional, native 8x8 digits.
# Chosen by short tuning runs judged with `ddpm eval` (see docs/model-card.md): at equal CPU
# time a 1.6M-parameter U-Net trained for more steps beat a 3.7M one on held-out loss, and
# both were past the quality target, so the smaller, faster-to-sample one is served.
# clip_denoised is off: DDIM mixes the clipped x0 with the unclipped eps, which hurt it at many
# steps (200: 1.86x the FD floor clipped, 1.32x not) and with guidance; DPM-Solver++(2M) at 20
# steps (1.30x either way) and DDPM at 1000 (1.20x / 1.19x) did not care.
DIGITS: dict[str, Any] = {
    "model": {
        "name": "ddpm-digits",
        "unet": {
            "base_channels": 32,
            "channel_mult": [1, 2, 2],
            "num_res_blocks": 2,
            "attention_resolutions": [4],
            "dropout": 0.1,
            "norm_groups": 8,
        },
        "diffusion": {"schedule": "linear", "num_timesteps": 1000, "variance": "fixed_large",
                      "clip_denoised": False},
        "sampling": {"sampler": "dpmpp_2m", "steps": 20, "guidance": 0.0},
    },
    "data": {"dataset": "digits", "holdout": 0.2, "split_seed": 0},
    "train": {
        "steps": 5000,
        "batch_size": 128,
        "lr": 1e-3,
        "warmup_steps": 200,
        "lr_schedule": "cosine",
        "final_lr_scale": 0.1,
        "label_dropout": 0.15,
        "grad_clip": 1.0,
    },
    "ema": {"decay": 0.999, "warmup": 10},
    "log": {"every": 50, "checkpoint_every": 500, "sample_every": 1000, "eval_every": 1000, "eval_samples": 300},
}

# A few-second run for tests and smoke checks.
TINY: dict[str, Any] = {
    "model": {
        "name": "ddpm-tiny",
        "unet": {
            "base_channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [4],
            "dropout": 0.0,
            "norm_groups": 4,
        },
        "diffusion": {"num_timesteps": 100},
        "sampling": {"sampler": "ddim", "steps": 10},
    },
    "data": {"dataset": "digits"},
    "train": {"steps": 20, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5},
    "ema": {"decay": 0.9, "warmup": 0},
    "log": {"every": 5, "checkpoint_every": 10, "sample_every": 0, "eval_every": 0, "num_samples": 20,
            "eval_samples": 20},
}

# The paper's CIFAR-10 run (Ho et al. 2020, appendix B): 35.7M parameters, 800K steps at batch
# 128, lr 2e-4 with 5000 warm-up steps, EMA 0.9999, dropout 0.1, random flips.
CIFAR10: dict[str, Any] = {
    "model": {
        "name": "ddpm-cifar10",
        "unet": {"base_channels": 128, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 2,
                 "attention_resolutions": [16], "dropout": 0.1},
        "diffusion": {"schedule": "linear", "num_timesteps": 1000},
        "sampling": {"sampler": "dpmpp_2m", "steps": 20, "guidance": 0.0},
    },
    "data": {"dataset": "cifar10", "path": "data/cifar-10-batches-py", "labels": False},
    "train": {"steps": 800_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000, "label_dropout": 0.0},
    "ema": {"decay": 0.9999, "warmup": 10},
    "log": {"every": 100, "checkpoint_every": 5000, "sample_every": 10_000, "eval_every": 10_000},
}

PRESETS: dict[str, dict[str, Any]] = {"digits": DIGITS, "tiny": TINY, "cifar10": CIFAR10}
