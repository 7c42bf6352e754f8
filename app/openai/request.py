"""The body of ``POST /v1/images/generations``: OpenAI's fields, plus the DDPM's own controls.

OpenAI's fields (``image_generate_params`` in the official SDK):

| field | here |
| --- | --- |
| ``prompt`` | picks the class (``prompts.py``); required, as in OpenAI's API |
| ``model`` | the served model's name; null: that model; another name: 404 ``model_not_found`` |
| ``n`` | 1..the server's largest request |
| ``size`` | ``auto``, native, or a square multiple of native (``sizes.py``) |
| ``response_format`` | ``b64_json`` (default), ``url`` only where results are stored |
| ``output_format`` | ``png`` (default), ``jpeg``, ``webp``; ``gif`` and ``svg`` are a 400 |
| ``output_compression`` | 0..100 (default 100), for jpeg and webp |
| ``stream``, ``partial_images`` | server-sent events; 0..3 partial images (the x0 prediction) |
| ``user``, ``safety_identifier`` | accepted, echoed as ``safety_identifier``, otherwise unused |
| ``quality``, ``style``, ``background``, | **ignored**: accepted when their value is one OpenAI |
| ``moderation``, ``complexity`` | allows; they mean nothing for a DDPM |

The DDPM's controls ride in the body as extra fields (the SDK's ``extra_body``): ``seed``,
``steps``, ``sampler``, ``eta``, ``guidance``, with the same bounds as ``/generate``.
Types are strict, as in OpenAI's API: ``"4"`` for ``n`` is a 400, not 4. An unknown field is
a 400 (``Unknown parameter``), so that a typo never silently does nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from model import MAX_SEED, SAMPLERS, ModelConfig

from .prompts import Vocabulary
from .sizes import DEFAULT_MAX_SIDE, size_choices

# A prompt here only names a class; OpenAI's own limit (32000) is for a text encoder there is none of.
DEFAULT_MAX_PROMPT_CHARS = 1000
MAX_NAME_CHARS = 128  # model, as the served name's own bound
MAX_USER_CHARS = 256  # user, safety_identifier

ResponseFormat = Literal["b64_json", "url"]
OutputFormat = Literal["png", "jpeg", "webp"]
Quality = Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]
Style = Literal["vivid", "natural"]
Background = Literal["transparent", "opaque", "auto"]
Moderation = Literal["low", "auto"]
Complexity = Literal["low", "medium", "high"]


class ImagesRequest(BaseModel):
    """Fields every request has; ``images_request_model`` makes the bounded subclass a server uses.
    A null means "the default", as OpenAI's optional fields do."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None
    user: str | None = None
    safety_identifier: str | None = None
    quality: Quality | None = None
    style: Style | None = None
    background: Background | None = None
    moderation: Moderation | None = None
    complexity: Complexity | None = None
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    guidance: float | None = None

    @property
    def images(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def format(self) -> OutputFormat:
        return self.output_format or "png"

    @property
    def compression(self) -> int:
        return 100 if self.output_compression is None else self.output_compression

    @property
    def partials(self) -> int:
        """Partial images to send: only a stream has any."""
        return (self.partial_images or 0) if self.stream else 0

    @property
    def identifier(self) -> str | None:
        """OpenAI's effective safety identifier: a non-empty ``safety_identifier``, else ``user``."""
        return self.safety_identifier or self.user or None


def images_request_model(config: ModelConfig, *, max_images: int, max_steps: int, max_guidance: float,
                         max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS, max_side: int = DEFAULT_MAX_SIDE,
                         stores_urls: bool = False) -> type[ImagesRequest]:
    """The request body with this server's bounds, the same ones ``/generate`` enforces.

    ``size`` and ``response_format`` stay plain in validation (so that a bad value gets the
    message that lists what is allowed) but the OpenAPI document shows their exact choices.
    """
    sampler_type: Any = Literal[tuple(SAMPLERS)]
    formats = ["b64_json", "url"] if stores_urls else ["b64_json"]
    vocabulary = Vocabulary.from_config(config)
    fields: dict[str, Any] = {
        "model": (str | None, Field(None, max_length=MAX_NAME_CHARS, description="the served model; null: it")),
        "size": (str | None, Field(None, json_schema_extra={"enum": [*size_choices(config.image_size, max_side),
                                                                     None]},
                                   description="auto (native), or NxN: the native image upscaled by nearest "
                                               "neighbour")),
        "response_format": (ResponseFormat | None, Field(None, json_schema_extra={"enum": [*formats, None]},
                                                         description="null: b64_json")),
        "user": (str | None, Field(None, max_length=MAX_USER_CHARS, description="accepted, echoed")),
        "safety_identifier": (str | None, Field(None, max_length=MAX_USER_CHARS, description="accepted, echoed")),
        "prompt": (str, Field(max_length=max_prompt_chars,
                              json_schema_extra={"pattern": vocabulary.schema_pattern()} if vocabulary else None,
                              description="names one class (a class name, an alias, or a sentence containing "
                                          "exactly one as a whole word); blank: unconditional")),
        "n": (int | None, Field(None, ge=1, le=max_images, description="images; null: 1")),
        "output_compression": (int | None, Field(None, ge=0, le=100,
                                                 description="jpeg/webp quality, 100: least compression "
                                                             "(lossless webp); ignored for png")),
        "partial_images": (int | None, Field(None, ge=0, le=3,
                                             description="stream only: partial images (x0 predictions) per image")),
        "seed": (int | None, Field(None, ge=0, le=MAX_SEED,
                                   description="DDPM extra: image i uses seed + i; null: the server draws one")),
        "steps": (int | None, Field(None, ge=1, le=max_steps,
                                    description=f"DDPM extra: reverse-process steps; null: {config.sampling.steps}")),
        "sampler": (sampler_type | None, Field(None, description=f"DDPM extra; null: {config.sampling.sampler}")),
        "eta": (float | None, Field(None, ge=0, le=1, allow_inf_nan=False, description="DDPM extra: DDIM eta")),
        "guidance": (float | None, Field(None, ge=0, le=max_guidance, allow_inf_nan=False,
                                         description=f"DDPM extra: classifier-free guidance w; "
                                                     f"null: {config.sampling.guidance}")),
    }
    return create_model("ImagesRequestBody", __base__=ImagesRequest, **fields)
