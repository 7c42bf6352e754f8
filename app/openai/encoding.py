"""Images to bytes in the ``output_format`` asked for.

PNG goes through ``model.images.encode_png``, the native API's encoder, so that at the native
size the bytes are identical to what ``/generate`` returns for the same seed and parameters.
JPEG and WebP go through Pillow with ``output_compression`` as the quality (OpenAI's default
100: the least compression). WebP at 100 is lossless, so that no pixel of a small image is lost;
JPEG has no lossless mode. ``output_compression`` does not apply to PNG (as in OpenAI's API).
"""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np
from PIL import Image

from model.images import encode_png, upscale

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(image: np.ndarray, output_format: OutputFormat = "png", *, compression: int = 100,
                 factor: int = 1) -> bytes:
    """(H, W, C) uint8 (C in {1, 3}) enlarged ``factor`` times by nearest neighbour, encoded."""
    picture = upscale(image, factor)
    if output_format == "png":
        return encode_png(picture)
    if not 0 <= compression <= 100:
        raise ValueError(f"compression={compression} must be in 0..100")
    pil = Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture)
    buf = io.BytesIO()
    if output_format == "jpeg":
        # Pillow's quality runs 0..100 too; subsampling off keeps the colours of tiny images.
        pil.save(buf, format="JPEG", quality=compression, subsampling=0 if compression >= 90 else 2)
    else:
        if pil.mode == "L":  # WebP has no grey mode; RGB with three equal channels is exact
            pil = pil.convert("RGB")
        pil.save(buf, format="WEBP", quality=compression, lossless=compression == 100, method=4)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
