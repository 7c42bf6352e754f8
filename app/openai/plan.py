"""What an OpenAI request asks of the engine: the native generation fields, and how to answer.

``plan_images`` resolves everything the OpenAI request decides (model name, class from the
prompt, size, formats) and hands the rest to the native path through ``ImagesPlan.native``:
the same fields a ``/generate`` body has, so the rows are built by the same code, share the
same batches, and give the same pixels for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model import ModelConfig

from .edit_forms import ImageForm
from .errors import OpenAIError
from .prompts import ClassChoice, choose_class
from .request import ImagesRequest, OutputFormat
from .sizes import DEFAULT_MAX_SIDE, SizeChoice, choose_size


@dataclass(frozen=True)
class ImagesPlan:
    n: int
    label: int | None
    revised_prompt: str  # the class drawn, plus the upscale note
    size: SizeChoice
    output_format: OutputFormat
    compression: int
    response_format: str  # b64_json | url
    stream: bool
    partial_images: int  # 0..3, 0 unless streaming
    safety_identifier: str | None
    native: dict[str, Any]  # the /generate fields: n, seed, steps, sampler, eta, label, guidance
    events: str = "image_generation"  # the stream's event prefix; edits: image_edit


def check_model(requested: str | None, served: str) -> None:
    """404 ``model_not_found`` unless the request names the served model (or none)."""
    if requested is not None and requested != served:
        raise OpenAIError(404, f"The model '{requested}' does not exist; this server serves '{served}' "
                               f"(GET /v1/models)", param="model", code="model_not_found")


def plan_images(body: ImagesRequest, config: ModelConfig, *, name: str | None = None,
                max_side: int = DEFAULT_MAX_SIDE, stores_urls: bool = False) -> ImagesPlan:
    """Resolve an OpenAI request against the served model; raises OpenAIError (400/404).

    ``name``: the served model name (default: the checkpoint's). ``stores_urls``: whether results
    can be served by URL (the jobs store); without it
    ``response_format=url`` is a 400 that says to ask for ``b64_json``.
    """
    name = name or config.name
    check_model(body.model, name)
    response_format = body.response_format or "b64_json"
    if response_format == "url" and not stores_urls:
        raise OpenAIError(400, "response_format='url' needs stored results, which this server does not keep; "
                               "use response_format='b64_json'", param="response_format",
                          code="unsupported_value")
    size = choose_size(body.size, config.image_size, max_side)
    choice = choose_class(body.prompt, config, name=name)
    native = {"n": body.images, "seed": body.seed, "steps": body.steps, "sampler": body.sampler,
              "eta": body.eta, "label": choice.label, "guidance": body.guidance}
    return ImagesPlan(
        n=body.images, label=choice.label, revised_prompt=choice.revised_prompt + size.note(), size=size,
        output_format=body.format, compression=body.compression, response_format=response_format,
        stream=bool(body.stream), partial_images=body.partials, safety_identifier=body.identifier,
        native=native,
    )


def plan_upload(form: ImageForm, config: ModelConfig, choice: ClassChoice, *, name: str | None = None,
                max_side: int = DEFAULT_MAX_SIDE) -> ImagesPlan:
    """How to answer an edit or a variation (the rows are built by the native editing API):
    the model, size and formats checked as for generations; ``url`` is a 400, since an edit is
    not a job the store can hold (its input image is not kept)."""
    name = name or config.name
    check_model(form.model, name)
    if form.response_format == "url":
        raise OpenAIError(400, "response_format='url' is served for generations only (an edit's input is not "
                               "kept in the job store); use response_format='b64_json'",
                          param="response_format", code="unsupported_value")
    size = choose_size(form.size, config.image_size, max_side)
    stream = bool(getattr(form, "stream", None))  # edits stream (image_edit.* events); variations do not
    return ImagesPlan(
        n=form.n or 1, label=choice.label, revised_prompt=choice.revised_prompt + size.note(), size=size,
        output_format=form.output_format or "png",
        compression=100 if form.output_compression is None else form.output_compression,
        response_format="b64_json", stream=stream,
        partial_images=(getattr(form, "partial_images", None) or 0) if stream else 0,
        safety_identifier=form.user or None, native={}, events="image_edit",
    )
