"""Turning samples into pictures: uint8 conversion, grids and PNG encoding."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] to (B, H, W, C) uint8 on the same device.

    Done on the device before anything is copied out, so only a quarter of the bytes move.
    """
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (H', W', C) image, row-major, near-square by default."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, C) image, for looking at tiny samples."""
    if factor <= 1:
        return image
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """(H, W, C) uint8 with C in {1, 3, 4} to PNG bytes.

    Level 1 compresses small images nearly as well as the default 6 at a fraction of the time.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W, C) uint8, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to (H, W, C) uint8."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[:, :, None] if arr.ndim == 2 else arr


def write_samples(images: np.ndarray, out_dir: str | Path, seeds: list[int], scale: int = 1) -> list[Path]:
    """One PNG per image (named by index and seed) plus ``grid.png``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        path = out / f"{i:04d}_seed{seed}.png"
        path.write_bytes(encode_png(upscale(image, scale), compress_level=6))
        paths.append(path)
    grid = out / "grid.png"
    grid.write_bytes(encode_png(upscale(make_grid(images), scale), compress_level=6))
    return [*paths, grid]
