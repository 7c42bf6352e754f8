"""OpenAI's image and mask to the native editing API's.

OpenAI's mask is a PNG whose *transparent* pixels mark the area to edit (alpha 0: edit, alpha
255: keep). The native ``/v1/edits`` mask is white = regenerate. So ``native_mask`` takes the
mask's alpha channel and paints white where alpha < 128 (transparent, or mostly so) and black
elsewhere; its colours are ignored, as OpenAI ignores them. A mask without an alpha channel
cannot say anything in OpenAI's convention, so it is refused (400 naming ``mask``) rather than
guessed at.

As in OpenAI's API for an image sent without a mask, an image that has transparent pixels
(alpha < 128) is its own mask: those pixels are regenerated (RePaint) and the image is passed
on without its alpha channel. An opaque image without a mask is an SDEdit of the whole image.

Every size and format check is ``model.image_input``'s (``ImageInputError`` naming the field);
the bytes returned go through the same decoding as a native request's.
"""

from __future__ import annotations

import io

from PIL import Image

from model.image_input import ImageInputError, ImageLimits, open_image

ALPHA_EDIT_BELOW = 128  # alpha < 128: the pixel is to be edited (OpenAI: "fully transparent areas")


def _alpha(image: Image.Image) -> Image.Image | None:
    """The alpha channel as an L image, or None when the image has none."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        return image.getchannel("A")
    return None


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _edit_area(alpha: Image.Image) -> Image.Image:
    """White where the alpha says edit, black elsewhere: the native mask."""
    return alpha.point(lambda a: 255 if a < ALPHA_EDIT_BELOW else 0).convert("L")


def native_mask(mask: bytes, limits: ImageLimits) -> bytes:
    """An OpenAI mask (transparent = edit) as a native one (white = regenerate), PNG, same size."""
    alpha = _alpha(open_image(mask, "mask", limits))
    if alpha is None:
        raise ImageInputError("mask", "has no alpha channel: in OpenAI's convention the area to edit is the "
                                      "mask's transparent pixels (alpha 0); send an RGBA or LA PNG")
    return _png(_edit_area(alpha))


def native_inputs(image: bytes, mask: bytes | None, limits: ImageLimits, *,
                  alpha_is_mask: bool = True) -> tuple[bytes, bytes | None]:
    """(image, mask) for ``/v1/edits``. With a mask: the image unchanged and the mask converted.
    Without one (and ``alpha_is_mask``): an image with transparent pixels gives its alpha as the
    mask (and loses the alpha channel); an opaque one goes on unchanged, for an SDEdit."""
    if mask is not None:
        return image, native_mask(mask, limits)
    if not alpha_is_mask:
        return image, None
    opened = open_image(image, "image", limits)
    alpha = _alpha(opened)
    lowest = alpha.getextrema()[0] if alpha is not None else 255  # an L image's extrema: (min, max)
    if alpha is None or int(lowest) >= ALPHA_EDIT_BELOW:  # type: ignore[arg-type]
        return image, None
    flat = opened.convert("RGBA" if opened.mode == "P" else opened.mode)
    flat = flat.convert("L" if flat.mode in ("LA", "PA") else "RGB")
    return _png(flat), _png(_edit_area(alpha))
