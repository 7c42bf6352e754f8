"""``POST /v1/images/edits`` and ``/v1/images/variations`` through the official ``openai`` SDK
(``client.images.edit``, ``client.images.create_variation``), against the native ``/v1/edits``
by plain HTTP: the same seed and parameters give the same bytes."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types import ImageEditCompletedEvent, ImageEditPartialImageEvent
from PIL import Image

from model.images import decode_png, encode_png

from .test_openai_live import openai_server, sdk

# The SDK marks create_variation deprecated (OpenAI retires dall-e-2, its only model); it is still
# the SDK's method for the endpoint, which clients keep calling.
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

SOURCE = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
TOP = np.zeros((8, 8), bool)
TOP[:4] = True
DRAW = {"seed": 9, "steps": 5, "sampler": "ddpm", "guidance": 0.0}


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def openai_mask(edit: np.ndarray) -> bytes:
    """OpenAI's convention: transparent (alpha 0) where to edit, opaque elsewhere; colours ignored."""
    rgba = np.full((*edit.shape, 4), 200, np.uint8)
    rgba[:, :, 3] = np.where(edit, 0, 255)
    return png(rgba)


def file(data: bytes, name: str = "image.png") -> tuple[str, bytes, str]:
    return (name, data, "image/png")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with openai_server(tiny_checkpoint, max_batch=8, max_images_per_request=4, max_jumps=2,
                       data_dir=tmp_path_factory.mktemp("jobs")) as (url, _):
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return sdk(server)


def native(server: str, **body: Any) -> list[bytes]:
    r = httpx.post(f"{server}/v1/edits", json={"response_format": "base64", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return [base64.b64decode(im["png_base64"]) for im in r.json()["images"]]


def images(result: Any) -> list[bytes]:
    return [base64.b64decode(d.b64_json or "") for d in result.data]


def test_inpainting_with_openais_mask_is_byte_identical_to_the_native_edit(client: openai.OpenAI,
                                                                            server: str) -> None:
    result = client.images.edit(image=file(png(SOURCE[:, :, 0])), mask=file(openai_mask(TOP), "mask.png"),
                                prompt="a handwritten 4", n=2, extra_body={**DRAW, "jumps": 1, "jump_length": 2})
    white = np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]  # the native convention: white = regenerate
    theirs = native(server, image=b64(encode_png(SOURCE)), mask=b64(encode_png(white)), n=2, label=4,
                    jumps=1, jump_length=2, **DRAW)
    ours = images(result)
    assert ours == theirs and ours[0] != ours[1]
    for data in ours:  # RePaint keeps the pixels the mask left opaque
        np.testing.assert_array_equal(decode_png(data)[4:], SOURCE[4:])
    assert result.data and result.data[0].revised_prompt == "class '4' (label 4); repaint of the transparent area"
    extra = (result.model_extra or {})["ddpm"]
    assert extra["mode"] == "repaint" and extra["seeds"] == [9, 10] and extra["label"] == 4
    assert extra["strength"] == 1.0  # inpainting's default: from pure noise
    metrics = httpx.get(f"{server}/metrics").text  # counted as the OpenAI API's, with the sampler drawn
    assert re.search(r'ddpm_requests_total\{api="openai",sampler="ddpm",status="200"\} [1-9]', metrics)


def test_an_image_with_transparent_pixels_is_its_own_mask(client: openai.OpenAI, server: str) -> None:
    la = np.stack([SOURCE[:, :, 0], np.where(TOP, 0, 255).astype(np.uint8)], axis=-1)
    result = client.images.edit(image=file(png(la, "LA")), prompt="4", extra_body=DRAW)
    white = np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]
    assert images(result) == native(server, image=b64(encode_png(SOURCE)), mask=b64(encode_png(white)), label=4,
                                    **DRAW)


def test_without_a_mask_an_edit_is_sdedit_at_the_strength_given(client: openai.OpenAI, server: str) -> None:
    result = client.images.edit(image=file(encode_png(SOURCE)), prompt="an 8", extra_body={**DRAW, "strength": 0.6})
    assert images(result) == native(server, image=b64(encode_png(SOURCE)), label=8, strength=0.6, **DRAW)
    assert result.data and result.data[0].revised_prompt == "class '8' (label 8); sdedit of the whole image"
    assert (result.model_extra or {})["ddpm"]["strength"] == 0.6


def test_a_streamed_edit_sends_partial_x0_images_then_the_native_edits_image(client: openai.OpenAI,
                                                                             server: str) -> None:
    stream = client.images.edit(image=file(encode_png(SOURCE)), mask=file(openai_mask(TOP)), prompt="4", n=2,
                                stream=True, partial_images=2, extra_body={**DRAW, "steps": 12})
    events = list(stream)
    assert all(isinstance(e, ImageEditPartialImageEvent | ImageEditCompletedEvent) for e in events)
    partial = [e for e in events if isinstance(e, ImageEditPartialImageEvent)]
    done = [e for e in events if isinstance(e, ImageEditCompletedEvent)]
    assert len(done) == 2 and 1 <= len(partial) <= 4 and {p.partial_image_index for p in partial} <= {0, 1}
    white = np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]
    theirs = native(server, image=b64(encode_png(SOURCE)), mask=b64(encode_png(white)), n=2, label=4,
                    **{**DRAW, "steps": 12})
    by_index = {(e.model_extra or {})["image_index"]: base64.b64decode(e.b64_json) for e in done}
    assert [by_index[0], by_index[1]] == theirs


def test_variations_are_sdedit_at_the_default_strength_under_the_null_label(client: openai.OpenAI,
                                                                           server: str) -> None:
    result = client.images.create_variation(image=file(encode_png(SOURCE)), n=2, extra_body=DRAW)
    assert images(result) == native(server, image=b64(encode_png(SOURCE)), strength=0.5, n=2, **DRAW)
    assert result.data and "SDEdit at strength 0.5 under the null label" in (result.data[0].revised_prompt or "")
    labelled = client.images.create_variation(image=file(encode_png(SOURCE)),
                                              extra_body={**DRAW, "strength": 0.3, "label": 2})
    assert images(labelled) == native(server, image=b64(encode_png(SOURCE)), strength=0.3, label=2, **DRAW)


def test_a_larger_upload_is_resized_and_the_answer_upscaled_to_size(client: openai.OpenAI, server: str) -> None:
    big = np.kron(SOURCE[:, :, 0], np.ones((4, 4), np.uint8))  # 32x32, as a client that knows no 8x8 sends
    result = client.images.create_variation(image=file(png(big)), size="64x64", extra_body=DRAW)
    data = images(result)[0]
    assert Image.open(io.BytesIO(data)).size == (64, 64) and result.size == "64x64"
    theirs = decode_png(native(server, image=b64(png(big)), resize=True, strength=0.5, **DRAW)[0])
    np.testing.assert_array_equal(decode_png(data), theirs.repeat(8, 0).repeat(8, 1))
    jpeg = client.images.edit(image=file(png(big)), prompt="1", output_format="jpeg", extra_body=DRAW)
    assert Image.open(io.BytesIO(images(jpeg)[0])).format == "JPEG" and jpeg.output_format == "jpeg"


@pytest.mark.parametrize(("kwargs", "param", "says"), [
    ({"mask": file(png(np.zeros((8, 8), np.uint8)))}, "mask", "no alpha channel"),
    ({"mask": file(openai_mask(np.zeros((4, 4), bool)))}, "mask", "is not the image's 8x8"),
    ({"image": file(b"not a picture")}, "image", "not a decodable PNG or JPEG"),
    ({"prompt": "7 or 8"}, "prompt", "names 2 classes"),
    ({"response_format": "url"}, "response_format", "generations only"),
    ({"n": 5}, "n", "at most 4"),
    ({"size": "12x12"}, "size", "allowed"),
    ({"model": "dall-e-2"}, "model", "does not exist"),
    ({"extra_body": {"jumps": 3}}, "jumps", "jumps=3 must be <= 2 (DDPM_MAX_JUMPS)"),
    ({"extra_body": {"strength": 0}}, "strength", "greater than 0"),
    # Above the native bound (2**53 - 1, JSON-safe) once gave a 500: schemathesis found it.
    ({"extra_body": {"seed": 2**53}}, "seed", "less than or equal to 9007199254740991"),
    ({"extra_body": {"negative_prompt": "x"}}, "negative_prompt", "Unknown parameter"),
    ({"stream": True, "partial_images": 4}, "partial_images", "less than or equal to 3"),
])
def test_bad_edits_are_the_sdks_bad_request_error_naming_the_field(client: openai.OpenAI, kwargs: dict[str, Any],
                                                                   param: str, says: str) -> None:
    kwargs = {"image": file(encode_png(SOURCE)), "prompt": "4", **kwargs}
    if param == "model":
        with pytest.raises(openai.NotFoundError) as missing:
            client.images.edit(**kwargs)
        assert missing.value.param == "model" and says in missing.value.message
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(**kwargs)
    assert info.value.status_code == 400 and info.value.param == param and says in info.value.message


def test_bad_variations_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.create_variation(image=file(encode_png(SOURCE)), extra_body={"label": 10})
    assert info.value.param == "label" and "0..9" in info.value.message
    with pytest.raises(openai.BadRequestError) as fixed:
        client.images.create_variation(image=file(png(np.zeros((16, 16), np.uint8))), extra_body={"resize": False})
    assert fixed.value.param == "image" and "send that size or set resize" in fixed.value.message
    with pytest.raises(openai.BadRequestError) as seed:
        client.images.create_variation(image=file(encode_png(SOURCE)), extra_body={"seed": 47675868376904336})
    assert seed.value.param == "seed" and "9007199254740991" in seed.value.message


def test_keys_and_the_body_limit_apply_to_the_forms(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with openai_server(tiny_checkpoint, api_keys="right", max_body_bytes=2048, data_dir=tmp_path) as (url, _):
        with pytest.raises(openai.AuthenticationError):
            sdk(url, key="wrong").images.edit(image=file(encode_png(SOURCE)), prompt="4")
        right = sdk(url, key="right")
        assert right.images.create_variation(image=file(encode_png(SOURCE)), extra_body={"steps": 2}).data
        noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)  # ~4 KiB, incompressible
        with pytest.raises(openai.APIStatusError) as big:
            right.images.edit(image=file(png(noise)), prompt="4")
        assert big.value.status_code == 413 and "max_body_bytes=2048" in big.value.message
        body = big.value.response.json()
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "request_too_large"


# ---- OpenAI's mask to ours, without a server ----

def test_alpha_below_128_is_edit_and_colours_are_ignored() -> None:
    from app.openai.uploads import native_inputs, native_mask
    from model.image_input import ImageLimits

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = [[[255, 0, 0]], [[0, 0, 255]]]  # colours: never read
    rgba[..., 3] = [[0, 127, 128], [255, 1, 254]]
    mask = decode_png(native_mask(png(rgba), ImageLimits()))[:, :, 0]
    np.testing.assert_array_equal(mask, [[255, 255, 0], [0, 255, 0]])
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.info["transparency"] = 0  # index 0 transparent: a P image's way of saying alpha 0
    buf = io.BytesIO()
    palette.save(buf, format="PNG", transparency=0)
    np.testing.assert_array_equal(decode_png(native_mask(buf.getvalue(), ImageLimits()))[:, :, 0], [[255, 0]])
    opaque = png(np.full((2, 2, 4), 255, np.uint8))
    assert native_inputs(opaque, None, ImageLimits()) == (opaque, None)  # nothing transparent: SDEdit, unchanged
    with pytest.raises(ValueError, match="mask: has no alpha channel"):
        native_mask(png(np.zeros((2, 2), np.uint8)), ImageLimits())
    with pytest.raises(ValueError, match="exceed the limit of 3"):
        native_mask(png(rgba), ImageLimits(max_pixels=3))


def test_a_form_the_native_body_refuses_is_a_400_naming_the_field_not_a_500() -> None:
    """Defence in depth behind the form's own bounds: were they ever wider than the native
    body's again (the seed's once was), the request is refused naming the field."""
    from types import SimpleNamespace

    from app.errors import InvalidRequest
    from app.openai.edit_forms import ImageForm
    from app.openai.edits import native_body

    form = ImageForm.model_construct(seed=2**60, guidance=None, steps=None, sampler=None, eta=None, resize=True)
    with pytest.raises(InvalidRequest) as info:
        native_body(form, SimpleNamespace(n=1, label=None), "aW1hZ2U=", None)  # type: ignore[arg-type]
    assert info.value.field == "seed" and "9007199254740991" in str(info.value)
