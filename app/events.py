"""What the engine tells a generation, as types: the HTTP layer ``match``es on them.

A generation sees ``Queued`` once, then (when it asked for progress) ``Progress`` and
``ImageReady`` as they happen, and ends with exactly one ``Done`` or ``Failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ServingError


@dataclass(frozen=True)
class Queued:
    position: int  # images waiting ahead of this request's first image


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, averaged over the request's images (finished ones count in full)
    steps: int
    images_done: int
    n: int
    previews: dict[int, np.ndarray] = field(default_factory=dict)  # image index -> x0 prediction, uint8 HWC


@dataclass(frozen=True)
class ImageReady:
    index: int
    seed: int
    image: np.ndarray  # (H, W, C) uint8


@dataclass(frozen=True)
class Done:
    images: list[np.ndarray]


@dataclass(frozen=True)
class Failed:
    error: ServingError


Event = Queued | Progress | ImageReady | Done | Failed
