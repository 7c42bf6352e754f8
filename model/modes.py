"""The mode strings of a model: Literal types, so that mypy checks every place that names one.

Each tuple is derived from its Literal, so a mode is written once. The sampler names are the
keys of the sampler registry (``model.samplers``); a test keeps the two equal.
"""

from __future__ import annotations

from typing import Literal, get_args

Schedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large"]
Spacing = Literal["trailing", "leading", "linspace"]
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]

SCHEDULES: tuple[str, ...] = get_args(Schedule)
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
VARIANCES: tuple[str, ...] = get_args(Variance)
SPACINGS: tuple[str, ...] = get_args(Spacing)
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
