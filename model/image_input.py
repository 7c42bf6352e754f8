"""Uploaded images and masks, checked before anything runs: decodable PNG or JPEG, not a
decompression bomb, the model's size and channels (or an explicit resize), a mask of the
image's size. Every refusal is an ``ImageInputError`` naming the request field; ``too_large``
says whether it is a size limit (HTTP 413) or a bad value (422), for the one place in the HTTP
layer that maps domain errors to statuses.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

FORMATS = ("PNG", "JPEG")
DEFAULT_MAX_PIXELS = 2048 * 2048


class ImageInputError(ValueError):
    """An uploaded image or mask that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str, *, too_large: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.too_large = too_large


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one uploaded image (the server's settings may override each)."""

    max_bytes: int = 4 * 2**20  # encoded size, kept under the request body limit
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height read from the header, before decoding a byte
    pixels_setting: str = ""  # the setting that sets max_pixels, named in the refusal


def decode_base64(data: str, field: str, limits: ImageLimits = ImageLimits()) -> bytes:
    """Base64 text (optionally a ``data:image/...;base64,`` URL, as browsers make) to bytes."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > (limits.max_bytes * 4) // 3 + 4:
        raise ImageInputError(field, f"more than {limits.max_bytes} bytes once decoded", too_large=True)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(field, "is not valid base64") from exc


def open_image(data: bytes, field: str, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode PNG or JPEG bytes, refusing oversized files and bombs before the pixels are read."""
    if len(data) > limits.max_bytes:
        raise ImageInputError(field, f"{len(data)} bytes exceed the limit of {limits.max_bytes}", too_large=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = image.size
            if w * h > limits.max_pixels:
                named = f" ({limits.pixels_setting})" if limits.pixels_setting else ""
                raise ImageInputError(field, f"{w}x{h} pixels exceed the limit of {limits.max_pixels}{named}",
                                      too_large=True)
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(field, f"refused as a decompression bomb ({exc})", too_large=True) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for unreadable or truncated files
        raise ImageInputError(field, f"is not a decodable {' or '.join(FORMATS)} image") from exc
    return image


def _as_mode(image: Image.Image, channels: int, field: str, resize: bool) -> Image.Image:
    """The image in the model's mode (L or RGB); an opaque alpha channel is dropped, anything
    else that changes the pixels (colour to grey, transparency) needs ``resize``."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "RGBA") and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert(image.mode[:-1])
    if image.mode == "I;16":
        image = image.point(lambda v: v / 257).convert("L")
    if image.mode != mode and not resize:
        raise ImageInputError(field, f"mode {image.mode} is not the model's {mode} ({channels} channel(s)); "
                                     "convert it or set resize")
    return image.convert(mode)


def _fit(image: Image.Image, field: str, shape: tuple[int, int, int], resize: bool,
         resample: Image.Resampling) -> Image.Image:
    _, h, w = shape
    if image.size == (w, h):
        return image
    if not resize:
        raise ImageInputError(field, f"{image.size[0]}x{image.size[1]} is not the model's {w}x{h}; "
                                     "send that size or set resize")
    return image.resize((w, h), resample)


def read_image(
    data: bytes, field: str, shape: tuple[int, int, int], *, resize: bool = False,
    limits: ImageLimits = ImageLimits(),
) -> np.ndarray:
    """An uploaded image as (H, W, C) uint8 of the model's ``shape`` (C, H, W)."""
    return _pixels(_read(data, field, shape, resize, limits))


def _read(data: bytes, field: str, shape: tuple[int, int, int], resize: bool, limits: ImageLimits) -> Image.Image:
    image = _as_mode(open_image(data, field, limits), shape[0], field, resize)
    return _fit(image, field, shape, resize, Image.Resampling.LANCZOS)


def _pixels(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image_and_mask(
    image: bytes, mask: bytes | None, shape: tuple[int, int, int], *, resize: bool = False,
    limits: ImageLimits = ImageLimits(), fields: tuple[str, str] = ("image", "mask"),
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image as (H, W, C) uint8 and the mask as (H, W) bool, True (white, >= 128) = regenerate.

    The mask must have the size of the image as sent; with ``resize`` both are scaled to the
    model's size (the mask by nearest neighbour, so it stays a mask)."""
    opened = open_image(image, fields[0], limits)
    size = opened.size
    pixels = _pixels(_fit(_as_mode(opened, shape[0], fields[0], resize), fields[0], shape, resize,
                          Image.Resampling.LANCZOS))
    if mask is None:
        return pixels, None
    m = open_image(mask, fields[1], limits)
    if m.size != size:
        raise ImageInputError(fields[1], f"{m.size[0]}x{m.size[1]} is not the image's {size[0]}x{size[1]}")
    grey = _fit(m.convert("L"), fields[1], shape, resize, Image.Resampling.NEAREST)
    return pixels, np.asarray(grey) >= 128


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 to (C, H, W) float32 in [-1, 1]; ``model.images.to_uint8`` inverts it exactly."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool to the (1, H, W) float mask RowSpec's ``Known`` takes."""
    return torch.from_numpy(mask.astype(np.float32))[None]
