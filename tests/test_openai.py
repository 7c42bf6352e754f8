"""The OpenAI-compatible API's pure pieces: prompt -> class, size, request body, plan, encoding,
response shape (checked against the official SDK's own types)."""

from __future__ import annotations

import dataclasses
import io
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import openai.types
import pytest
from PIL import Image
from pydantic import ValidationError

from app.openai import OpenAIError, from_validation, images_request_model, plan_images
from app.openai.encoding import encode_image
from app.openai.models import created_at, find_model, model_list
from app.openai.prompts import choose_class
from app.openai.response import ddpm_extra, images_response
from app.openai.sizes import allowed_sizes, choose_size, size_choices
from model import ModelConfig
from model.images import decode_png, encode_png

from .conftest import tiny_config

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def with_aliases(config: ModelConfig, aliases: dict[str, tuple[str, ...]]) -> Any:
    """The config with class aliases; a stand-in with the same attributes where ModelConfig
    does not have the field yet (it is being added beside this API)."""
    if "class_aliases" in {f.name for f in dataclasses.fields(ModelConfig)}:
        return dataclasses.replace(config, class_aliases=aliases)  # type: ignore[call-arg]
    names = ("name", "num_classes", "class_names", "image_size", "channels", "sampling", "provenance")
    return SimpleNamespace(**{k: getattr(config, k) for k in names}, class_aliases=aliases)


@pytest.fixture(scope="module")
def digits() -> Any:
    return with_aliases(tiny_config(), {str(k): (w,) for k, w in enumerate(WORDS)})


# ---- prompt -> class ----

@pytest.mark.parametrize(("prompt", "label"), [
    ("7", 7), ("  7 ", 7), ("a handwritten 7", 7), ("seven", 7), ("A SEVEN, please", 7),
    ("7, seven, 7 again", 7),  # one class named three times is still one class
    ("draw me the digit 0.", 0), ("1024x1024 picture of a 3", 3),  # digits inside tokens are not names
    ("the 2nd one", 1),  # "2nd" is no name; "one" is
])
def test_prompt_naming_one_class_draws_it(digits: Any, prompt: str, label: int) -> None:
    choice = choose_class(prompt, digits)
    assert choice.label == label
    assert f"'{label}'" in choice.revised_prompt and f"label {label}" in choice.revised_prompt


@pytest.mark.parametrize(("prompt", "code", "says"), [
    ("a cat", "unknown_class", "names no class"),
    ("7 or 8", "ambiguous_class", "2 classes (7, 8)"),
    ("seven or eight", "ambiguous_class", "2 classes (7, 8)"),
])
def test_prompt_naming_no_class_or_two_is_a_400_listing_the_classes(digits: Any, prompt: str, code: str,
                                                                    says: str) -> None:
    with pytest.raises(OpenAIError) as info:
        choose_class(prompt, digits)
    error = info.value
    assert (error.status, error.param, error.code) == (400, "prompt", code)
    assert says in error.message
    assert "0 (zero), 1 (one)" in error.message and "9 (nine)" in error.message


def test_empty_prompt_on_a_conditional_model_is_unconditional(digits: Any) -> None:
    for prompt in ("", "   "):
        choice = choose_class(prompt, digits)
        assert choice.label is None and "unconditional" in choice.revised_prompt


def test_unconditional_model_ignores_the_prompt() -> None:
    config = tiny_config(num_classes=None)
    choice = choose_class("a handwritten 7 or 8", config)
    assert choice.label is None
    assert "unconditional model" in choice.revised_prompt and "ignored" in choice.revised_prompt


def test_longest_name_wins_and_names_are_whole_words() -> None:
    config = tiny_config(num_classes=3)
    config = with_aliases(dataclasses.replace(config, class_names=("shirt", "t-shirt", "cat")),
                          {"cat": ("kitten",)})
    assert choose_class("a red t-shirt", config).label == 1  # not also "shirt" inside it
    assert choose_class("a shirt", config).label == 0
    assert choose_class("a Kitten", config).label == 2
    with pytest.raises(OpenAIError, match="names no class"):
        choose_class("catalogue of wildcats", config)  # "cat" only inside words


def test_classes_without_names_are_called_by_index() -> None:
    config = dataclasses.replace(tiny_config(num_classes=3), class_names=None)
    assert choose_class("class 2", config).label == 2


# ---- size ----

@pytest.mark.parametrize(("size", "factor"), [(None, 1), ("auto", 1), ("8x8", 1), ("256x256", 32),
                                              ("1024x1024", 128), ("16x16", 2)])
def test_size_native_auto_or_a_multiple(size: str | None, factor: int) -> None:
    choice = choose_size(size, 8)
    assert choice.factor == factor and choice.text == f"{8 * factor}x{8 * factor}"
    assert (choice.note() == "") == (factor == 1)
    if factor > 1:
        assert "upscaled" in choice.note() and "nearest neighbour" in choice.note()


@pytest.mark.parametrize("size", ["1024x1536", "12x12", "0x0", "2048x2048", "256", "256X256", "-8x-8", " 8x8",
                                  "8x8x8", "1e3x1e3", "99999999x99999999"])
def test_other_sizes_are_a_400_naming_the_allowed_ones(size: str) -> None:
    with pytest.raises(OpenAIError) as info:
        choose_size(size, 8)
    assert (info.value.status, info.value.param, info.value.code) == (400, "size", "invalid_size")
    assert "'auto'" in info.value.message and "8x8" in info.value.message and "1024x1024" in info.value.message
    assert repr(size) in info.value.message


def test_allowed_sizes_follow_the_native_side_and_the_limit() -> None:
    assert "multiple of 32 from 32 to 1024" in allowed_sizes(32)
    assert "from 8 to 64" in allowed_sizes(8, max_side=64) and "1024x1024" not in allowed_sizes(8, max_side=64)
    assert choose_size("64x64", 8, max_side=64).factor == 8
    with pytest.raises(OpenAIError):
        choose_size("72x72", 8, max_side=64)
    # a limit below the native side still serves the native size
    assert choose_size("32x32", 32, max_side=16).factor == 1
    assert "from 32 to 32" in allowed_sizes(32, max_side=16)


# ---- the request body ----

@pytest.fixture(scope="module")
def Body(digits: Any) -> Any:
    return images_request_model(digits, max_images=4, max_steps=50, max_guidance=10.0)


def errors_of(Body: Any, body: dict[str, Any]) -> OpenAIError:
    with pytest.raises(ValidationError) as info:
        Body.model_validate(body)
    return from_validation(info.value.errors())


@pytest.mark.parametrize(("field", "value", "says"), [
    ("n", "4", "valid integer"), ("n", True, "valid integer"), ("n", 1.0, "valid integer"),
    ("n", 5, "less than or equal to 4"), ("n", 0, "greater than or equal to 1"),
    ("seed", "1", "valid integer"), ("steps", 51, "less than or equal to 50"), ("eta", "0.5", "valid number"),
    ("guidance", 10.5, "less than or equal to 10"), ("sampler", "euler", "'ddpm', 'ddim' or 'dpmpp_2m'"),
    ("output_format", "gif", "'png', 'jpeg' or 'webp'"), ("output_format", "svg", "'png', 'jpeg' or 'webp'"),
    ("output_compression", 101, "less than or equal to 100"), ("partial_images", 4, "less than or equal to 3"),
    ("response_format", "base64", "'b64_json' or 'url'"), ("stream", "true", "valid boolean"),
    ("quality", "ultra", "'low'"), ("style", "bold", "'vivid' or 'natural'"), ("background", "clear", "'opaque'"),
    ("moderation", "high", "'low' or 'auto'"), ("prompt", 7, "valid string"), ("size", 256, "valid string"),
])
def test_a_field_out_of_bounds_or_of_the_wrong_type_is_a_400_naming_it(Body: Any, field: str, value: Any,
                                                                        says: str) -> None:
    error = errors_of(Body, {"prompt": "7", field: value})
    assert (error.status, error.param, error.type) == (400, field, "invalid_request_error")
    assert error.message.startswith(f"{field}: ") and says in error.message


def test_unknown_and_missing_fields_are_named(Body: Any) -> None:
    error = errors_of(Body, {"prompt": "7", "negative_prompt": "blurry"})
    assert (error.param, error.code) == ("negative_prompt", "unknown_parameter")
    assert "Unknown parameter: 'negative_prompt'" in error.message
    error = errors_of(Body, {"n": 1})
    assert (error.param, error.code) == ("prompt", "missing_required_parameter")


def test_prompt_length_is_bounded(digits: Any) -> None:
    Body = images_request_model(digits, max_images=4, max_steps=50, max_guidance=10.0, max_prompt_chars=10)
    assert "at most 10 characters" in errors_of(Body, {"prompt": "a" * 11}).message


def test_ignored_fields_are_accepted_with_openai_values_and_nulls_mean_defaults(Body: Any) -> None:
    body = Body.model_validate({"prompt": "7", "quality": "hd", "style": "vivid", "background": "transparent",
                                "moderation": "low", "complexity": "high", "user": "u1", "n": None, "size": None,
                                "output_format": None, "response_format": None, "guidance": 2})
    assert (body.images, body.format, body.compression, body.partials) == (1, "png", 100, 0)
    assert body.guidance == 2.0 and body.identifier == "u1"
    streamed = Body.model_validate({"prompt": "7", "stream": True, "partial_images": 2, "safety_identifier": "s"})
    assert streamed.partials == 2 and streamed.identifier == "s"
    assert Body.model_validate({"prompt": "7", "partial_images": 2}).partials == 0  # not streaming


# ---- the plan ----

def test_plan_resolves_model_class_size_and_native_fields(Body: Any, digits: Any) -> None:
    body = Body.model_validate({"prompt": "a seven", "n": 2, "size": "64x64", "seed": 5, "steps": 7,
                                "sampler": "ddim", "eta": 0.5, "guidance": 1.5, "model": digits.name})
    plan = plan_images(body, digits)
    assert plan.native == {"n": 2, "seed": 5, "steps": 7, "sampler": "ddim", "eta": 0.5, "label": 7,
                           "guidance": 1.5}
    assert plan.size.factor == 8 and "upscaled 8x to 64x64" in plan.revised_prompt
    assert plan.revised_prompt.startswith("class '7'")


def test_plan_refuses_another_model_with_a_404_and_url_without_a_store(Body: Any, digits: Any) -> None:
    with pytest.raises(OpenAIError) as info:
        plan_images(Body.model_validate({"prompt": "7", "model": "dall-e-3"}), digits)
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")
    assert "'dall-e-3'" in info.value.message and f"'{digits.name}'" in info.value.message
    served = plan_images(Body.model_validate({"prompt": "7", "model": "digits-v2"}), digits, name="digits-v2")
    assert served.label == 7  # the served name (DDPM_MODEL_NAME) is the one to ask for ...
    with pytest.raises(OpenAIError, match="serves 'digits-v2'"):  # ... and then the checkpoint's is not
        plan_images(Body.model_validate({"prompt": "7", "model": digits.name}), digits, name="digits-v2")
    url = Body.model_validate({"prompt": "7", "response_format": "url"})
    with pytest.raises(OpenAIError) as info:
        plan_images(url, digits)
    assert (info.value.status, info.value.param) == (400, "response_format") and "b64_json" in info.value.message
    assert plan_images(url, digits, stores_urls=True).response_format == "url"


# ---- encoding ----

@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (8, 8, c), dtype=np.uint8) for c in (1, 3)]


def test_png_at_native_size_is_byte_identical_to_the_native_encoder(pictures: list[np.ndarray]) -> None:
    for image in pictures:
        assert encode_image(image, "png") == encode_png(image)
        big = decode_png(encode_image(image, "png", factor=4))
        assert np.array_equal(big, image.repeat(4, axis=0).repeat(4, axis=1))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_jpeg_and_webp_follow_output_compression(pictures: list[np.ndarray], fmt: str) -> None:
    for image in pictures:
        best = encode_image(image, fmt, compression=100, factor=8)  # type: ignore[arg-type]
        worst = encode_image(image, fmt, compression=5, factor=8)  # type: ignore[arg-type]
        decoded = Image.open(io.BytesIO(best))
        assert decoded.format == fmt.upper() and decoded.size == (64, 64)
        assert len(worst) < len(best)
        err_best, err_worst = (np.abs(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=int)
                                      - image.repeat(8, 0).repeat(8, 1).astype(int)).max() for b in (best, worst))
        assert err_worst > err_best
        if fmt == "webp":
            assert err_best == 0  # 100: lossless
    with pytest.raises(ValueError, match="0..100"):
        encode_image(pictures[0], "jpeg", compression=101)


# ---- responses and models, read by the official SDK's own types ----

def test_images_response_parses_as_the_sdks_images_response(Body: Any, digits: Any) -> None:
    plan = plan_images(Body.model_validate({"prompt": "7", "size": "16x16", "user": "u", "n": 2}), digits)
    encoded = [encode_image(np.zeros((8, 8, 1), np.uint8), "png", factor=2)] * 2
    extra = ddpm_extra(plan, digits.name, [3, 4], {"steps": 10, "sampler": "ddim", "guidance": 0.0})
    body = images_response(plan, encoded, created=1700000000, extra=extra)
    parsed = openai.types.ImagesResponse.model_validate(body)
    assert parsed.created == 1700000000 and parsed.size == "16x16" and parsed.output_format == "png"
    assert parsed.data is not None and len(parsed.data) == 2 and parsed.safety_identifier == "u"
    assert parsed.data[0].b64_json is not None and parsed.data[0].revised_prompt == plan.revised_prompt
    assert parsed.model_extra is not None
    assert parsed.model_extra["ddpm"] == {"model": digits.name, "label": 7, "seeds": [3, 4], "steps": 10,
                                          "sampler": "ddim", "guidance": 0.0, "native_size": "8x8", "upscale": 2}
    url_plan = dataclasses.replace(plan, response_format="url")
    urls = openai.types.ImagesResponse.model_validate(
        images_response(url_plan, encoded, created=1, extra=extra, urls=["http://x/0", "http://x/1"]))
    assert [d.url for d in urls.data or []] == ["http://x/0", "http://x/1"]
    with pytest.raises(ValueError, match="one URL per image"):
        images_response(url_plan, encoded, created=1, extra=extra)


def test_model_list_parses_as_the_sdks_models(digits: Any) -> None:
    created = created_at(digits, fallback=123)
    listing = model_list(digits.name, created=created)
    assert listing["object"] == "list"
    models = [openai.types.Model.model_validate(m) for m in listing["data"]]
    assert [(m.id, m.object, m.created) for m in models] == [(digits.name, "model", created)]
    assert openai.types.Model.model_validate(find_model(digits.name, digits.name, created=created)).id == digits.name
    with pytest.raises(OpenAIError) as info:
        find_model(digits.name, "gpt-image-1", created=created)
    assert (info.value.status, info.value.code) == (404, "model_not_found")


def test_created_comes_from_the_checkpoint_date_or_the_fallback() -> None:
    dated = dataclasses.replace(tiny_config(), provenance={"date": "2026-11-29T15:23:29+00:00"})
    assert created_at(dated, fallback=1) == 1795965809
    assert created_at(dataclasses.replace(tiny_config(), provenance={"date": "yesterday"}), fallback=7) == 7
    assert created_at(tiny_config(), fallback=9) == 9


def test_native_422_entries_become_the_same_400() -> None:
    native = [{"loc": ["body", "n"], "field": "n", "msg": "n: Input should be less than or equal to 4",
               "type": "less_than_equal"},
              {"loc": ["body", "foo"], "field": "foo", "msg": "foo: Extra inputs are not permitted",
               "type": "extra_forbidden"}]
    error = from_validation(native)
    assert (error.status, error.param, error.code) == (400, "n", "invalid_value")
    assert error.message == "n: Input should be less than or equal to 4; Unknown parameter: 'foo'."


def test_the_schema_shows_the_exact_sizes_and_formats_served(digits: Any) -> None:
    assert size_choices(8, 32) == ["auto", "8x8", "16x16", "24x24", "32x32"]
    assert size_choices(32, 16) == ["auto", "32x32"]
    for stores, formats in ((False, ["b64_json", None]), (True, ["b64_json", "url", None])):
        Body = images_request_model(digits, max_images=4, max_steps=50, max_guidance=10.0, max_side=32,
                                    stores_urls=stores)
        props = Body.model_json_schema()["properties"]
        assert props["size"]["enum"] == ["auto", "8x8", "16x16", "24x24", "32x32", None]
        assert props["response_format"]["enum"] == formats
        # every size the schema offers is served, and the next one is not
        for size in size_choices(8, 32):
            choose_size(size, 8, max_side=32)
        with pytest.raises(OpenAIError):
            choose_size("40x40", 8, max_side=32)


def test_the_schema_pattern_admits_every_prompt_that_can_be_accepted(digits: Any) -> None:
    """Hypothesis: a prompt accepted by choose_class matches the schema's pattern (read with
    JSON Schema's ASCII rules), so no schema-invalid prompt is ever served; and the pattern is
    tight: a prompt naming one class as a whole word matches it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from app.openai.prompts import Vocabulary

    vocabulary = Vocabulary.from_config(digits)
    assert vocabulary is not None
    ecma = re.compile(vocabulary.schema_pattern(), re.ASCII)  # ECMA-262: \W is [^A-Za-z0-9_]
    pieces = st.sampled_from(["7", "seven", "SeVeN", "3", " ", "\t", "\u00a0", "\x1c", "é", "ſeven", "_", "-",
                              "x", "a", "17", "seven7", "\n", "🙂", "K", "ß"])

    @settings(max_examples=400, deadline=None)
    @given(st.lists(pieces, max_size=6).map("".join))
    def check(prompt: str) -> None:
        try:
            choose_class(prompt, digits)
            accepted = True
        except OpenAIError:
            accepted = False
        if accepted:
            assert ecma.search(prompt), prompt

    check()
    for prompt in ("7", "a 7.", "SEVEN", "", " \t", "x-7-y"):
        assert ecma.search(prompt) and choose_class(prompt, digits) is not None
    for prompt in ("seven7", "ſeven", "\u00a0", "é"):  # not a whole ASCII word, or not blank by the rules
        assert not ecma.search(prompt)
        with pytest.raises(OpenAIError):
            choose_class(prompt, digits)
