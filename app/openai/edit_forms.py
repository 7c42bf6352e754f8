"""The multipart bodies of ``POST /v1/images/edits`` and ``POST /v1/images/variations``.

OpenAI's fields (``image_edit_params`` and ``image_create_variation_params`` in the official
SDK), plus the DDPM's controls as form fields (what the SDK sends with ``extra_body``): ``seed``,
``steps``, ``sampler``, ``eta``, ``guidance``, ``strength``, ``resize`` and, for edits, RePaint's
``jumps`` and ``jump_length``; for variations ``label`` and ``output_format``/``output_compression``.
Form values arrive as text, so numbers are parsed from it ("3" is 3); an unknown field is a 400.
The server's own bounds (n, steps, guidance, jumps, the image's pixels) are checked where the
native ``/v1/edits`` checks them, so both APIs refuse the same requests with the same words.

| field | here |
| --- | --- |
| ``image`` | one PNG or JPEG (``image[]``, several images, is not served); resized to the model's size |
| ``mask`` | edits: PNG whose transparent pixels (alpha < 128) mark the area to edit (``uploads.py``) |
| ``prompt`` | edits: picks the class, as for generations (``prompts.py``) |
| ``n``, ``size``, ``output_format``, ``output_compression``, ``model``, ``user`` | as for generations |
| ``response_format`` | ``b64_json``; ``url`` is a 400 (an edit's input is not kept in the job store) |
| ``quality``, ``background``, ``input_fidelity`` | accepted when valid, **ignored** |
| ``stream``, ``partial_images`` | edits: ``image_edit.partial_image`` (x0 predictions) and ``image_edit.completed`` |
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from model.modes import SamplerName

from ..generation import MAX_SEED  # the native APIs' bound (JSON-safe integers), not the generator's
from .request import DEFAULT_MAX_PROMPT_CHARS, MAX_NAME_CHARS, MAX_USER_CHARS, Background, OutputFormat, Quality

DEFAULT_VARIATION_STRENGTH = 0.5  # SDEdit from t = T/2: the digit's shape kept, its strokes redrawn


class ImageForm(BaseModel):
    """What both forms share: OpenAI's output fields and the DDPM's sampling controls."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="PNG or JPEG; resized to the model's size unless resize=false")
    model: str | None = Field(None, max_length=MAX_NAME_CHARS, description="the served model; empty: it")
    n: int | None = Field(None, ge=1, description="images; empty: 1 (at most the server's largest request)")
    size: str | None = Field(None, max_length=16, description="auto (native), or NxN: upscaled by nearest neighbour")
    response_format: Literal["b64_json", "url"] | None = Field(None, description="b64_json only: url is a 400")
    user: str | None = Field(None, max_length=MAX_USER_CHARS, description="accepted, echoed")
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="DDPM extra: image i uses seed + i")
    steps: int | None = Field(None, ge=1, description="DDPM extra: reverse-process steps of the whole chain")
    sampler: SamplerName | None = Field(None, description="DDPM extra")
    eta: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="DDPM extra: DDIM eta")
    guidance: float | None = Field(None, ge=0, allow_inf_nan=False, description="DDPM extra: guidance w")
    resize: bool = Field(True, description="DDPM extra: scale (and convert) the upload to the model's size "
                                           "and mode; false: it must already be")


class EditForm(ImageForm):
    """``POST /v1/images/edits``: RePaint with a mask (or an image with transparency), else SDEdit."""

    prompt: Annotated[str, Field(max_length=DEFAULT_MAX_PROMPT_CHARS,
                                 description="names one class; blank: unconditional")]
    mask: UploadFile | None = Field(None, description="PNG, the image's size; transparent (alpha < 128) = edit")
    quality: Quality | None = None
    background: Background | None = None
    input_fidelity: Literal["high", "low"] | None = None
    stream: bool | None = Field(None, description="server-sent image_edit events")
    partial_images: int | None = Field(None, ge=0, le=3, description="stream only: partial images (x0 "
                                                                   "predictions) per image, at most")
    strength: float | None = Field(None, gt=0, le=1, description="DDPM extra: start at t = strength x T; "
                                                                 "empty: 0.5 without a mask, 1 with one")
    jumps: int = Field(0, ge=0, description="DDPM extra: RePaint's resampling jumps; 0: off")
    jump_length: int = Field(10, ge=1, le=1000, description="DDPM extra: RePaint's jump length")


class VariationForm(ImageForm):
    """``POST /v1/images/variations``: an SDEdit of the image (no prompt: the class is not changed)."""

    strength: float = Field(DEFAULT_VARIATION_STRENGTH, gt=0, le=1,
                            description="DDPM extra: how far the variations stray (t = strength x T)")
    label: int | None = Field(None, ge=0, description="DDPM extra: draw under this class; empty: the null "
                                                      "label (unconditional), so the image's own class stays")
