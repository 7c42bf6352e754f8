"""Sample grids as PNG files: the trainer's periodic grids, ``ddpm eval``'s and the gallery's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.images import encode_png, make_grid, upscale


def label_grid_labels(n: int, num_classes: int | None) -> tuple[list[int | None], int | None]:
    """Labels for a grid of about ``n`` images with one row per class, and its column count."""
    if not num_classes:
        return [None] * n, None
    per_class = max(1, n // num_classes)
    return [k for k in range(num_classes) for _ in range(per_class)], per_class


def save_grid(path: Path, images: np.ndarray, ncols: int | None) -> Path:
    """A PNG grid, enlarged so that small images stay visible."""
    factor = max(1, 32 // images.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(upscale(make_grid(images, ncols=ncols), factor), compress_level=6))
    return path
