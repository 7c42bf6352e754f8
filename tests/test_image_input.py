"""Uploaded images and masks: every refusal names its field and says whether it is a size limit."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.image_input import (
    ImageInputError,
    ImageLimits,
    decode_base64,
    mask_tensor,
    read_image,
    read_image_and_mask,
    to_model_range,
)
from model.images import encode_png, to_uint8

GREY8 = (1, 8, 8)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_a_png_of_the_model_shape_round_trips_exactly() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    got = read_image(encode_png(pixels), "image", GREY8)
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(to_uint8(to_model_range(got)[None])[0].numpy(), pixels)
    # A browser's canvas gives opaque RGBA for a colour model; the alpha channel is dropped.
    rgba = np.concatenate([np.full((8, 8, 3), 7, np.uint8), np.full((8, 8, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(png(rgba), "image", (3, 8, 8)), rgba[:, :, :3])


def test_jpeg_is_accepted_and_other_formats_are_not() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(buf, format="JPEG")
    assert read_image(buf.getvalue(), "image", GREY8).shape == (8, 8, 1)
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, format="GIF")
    for data in (gif.getvalue(), b"not an image", encode_png(np.zeros((8, 8, 1), np.uint8))[:40]):
        with pytest.raises(ImageInputError, match="^image: is not a decodable PNG or JPEG") as err:
            read_image(data, "image", GREY8)
        assert err.value.field == "image" and not err.value.too_large


def test_size_and_channels_must_match_unless_resize() -> None:
    big = png(np.full((16, 12), 255, np.uint8))
    with pytest.raises(ImageInputError, match="image: 12x16 is not the model's 8x8; send that size or set resize"):
        read_image(big, "image", GREY8)
    assert read_image(big, "image", GREY8, resize=True).shape == (8, 8, 1)
    colour = png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageInputError, match="a: mode RGB is not the model's L"):
        read_image(colour, "a", GREY8)
    assert read_image(colour, "a", GREY8, resize=True).shape == (8, 8, 1)


def test_oversized_uploads_and_decompression_bombs_are_413s() -> None:
    limits = ImageLimits(max_bytes=1000, max_pixels=64 * 64)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    with pytest.raises(ImageInputError, match="bytes exceed the limit of 1000") as err:
        read_image(png(noise), "image", GREY8, limits=limits)
    assert err.value.too_large
    # A tiny file that claims many pixels: refused from its header, before decoding.
    bomb = png(np.zeros((400, 400), np.uint8))
    assert len(bomb) < 1000
    with pytest.raises(ImageInputError, match="400x400 pixels exceed the limit of 4096") as err:
        read_image(bomb, "image", GREY8, limits=limits, resize=True)
    assert err.value.too_large
    with pytest.raises(ImageInputError, match="more than 1000 bytes") as err:
        decode_base64("A" * 2000, "image", limits)
    assert err.value.too_large


def test_base64_and_data_urls() -> None:
    data = encode_png(np.zeros((8, 8, 1), np.uint8))
    text = base64.b64encode(data).decode()
    assert decode_base64(text, "image") == data
    assert decode_base64("data:image/png;base64," + text, "image") == data
    with pytest.raises(ImageInputError, match="mask: is not valid base64"):
        decode_base64("!!!", "mask")


def test_the_mask_is_white_to_regenerate_and_must_match_the_image() -> None:
    image = png(np.zeros((16, 16), np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[:8] = 255
    pixels, got = read_image_and_mask(image, png(mask), GREY8, resize=True)
    assert pixels.shape == (8, 8, 1) and got is not None
    np.testing.assert_array_equal(got, np.arange(8)[:, None].repeat(8, 1) < 4)
    assert mask_tensor(got).shape == (1, 8, 8)
    with pytest.raises(ImageInputError, match="mask: 8x8 is not the image's 16x16"):
        read_image_and_mask(image, png(mask[:8, :8]), GREY8, resize=True)
    assert read_image_and_mask(image, None, GREY8, resize=True)[1] is None
