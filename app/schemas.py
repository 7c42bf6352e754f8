"""The HTTP contract: request and response bodies.

The request model is built once per server from the checkpoint's config and the settings, so
the bounds that the OpenAPI schema shows are exactly the bounds that are enforced, by one
mechanism (pydantic), and a 422 names the field and the limit it broke.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from model import MAX_SEED, SAMPLERS, ModelConfig

ResponseFormat = Literal["png", "base64"]


class GenerateRequest(BaseModel):
    """Fields every request has; ``request_model`` makes the bounded subclass a server uses."""

    model_config = ConfigDict(extra="forbid")

    n: int = 1
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    seed: int | None = None
    label: int | None = None
    guidance: float | None = None
    response_format: ResponseFormat = "png"
    timeout_s: float | None = None
    preview_every: int = 0


def request_model(
    config: ModelConfig, *, max_images: int, max_steps: int, max_guidance: float
) -> type[GenerateRequest]:
    """The request body with this server's bounds."""
    classes = config.num_classes
    sampler_type: Any = Literal[tuple(SAMPLERS)]

    def check_label(cls: type, value: int | None) -> int | None:
        if value is not None and classes is None:
            raise ValueError("this model is unconditional; label must be null")
        return value

    fields: dict[str, Any] = {
        "n": (int, Field(1, ge=1, le=max_images, description="images in this request (n > 1 with png: one grid)")),
        "steps": (int | None, Field(None, ge=1, le=max_steps,
                                    description=f"reverse-process steps; null: {config.sampling.steps}")),
        "sampler": (sampler_type | None, Field(None, description=f"null: {config.sampling.sampler}")),
        "eta": (float | None, Field(None, ge=0, le=1, allow_inf_nan=False, description="DDIM stochasticity")),
        "seed": (int | None, Field(None, ge=0, le=MAX_SEED,
                                   description="image i uses seed + i; null: the server draws one")),
        "label": (int | None, Field(
            None, ge=0, le=(classes - 1) if classes else None,
            description=(f"class in 0..{classes - 1}; null: unconditional" if classes
                         else "this model is unconditional: null"))),
        "guidance": (float | None, Field(
            None, ge=0, le=max_guidance, allow_inf_nan=False,
            description=f"classifier-free guidance w: eps = (1+w) eps_c - w eps_u; null: {config.sampling.guidance}",
        )),
        "response_format": (ResponseFormat, Field("png", description="png: image/png; base64: JSON")),
        # At least a second: a shorter deadline cannot cover even the HTTP round trip on a busy server.
        "timeout_s": (float | None, Field(None, ge=1.0, allow_inf_nan=False,
                                          description="deadline for this request in seconds, capped by the server's")),
        "preview_every": (int, Field(0, ge=0, le=max_steps,
                                     description="stream only: send the x0 prediction every k steps; 0: never")),
    }
    return create_model(
        "GenerateRequestBody",
        __base__=GenerateRequest,
        __validators__={"check_label": field_validator("label")(classmethod(check_label))},  # type: ignore[dict-item]
        **fields,
    )


class ImageOut(BaseModel):
    index: int
    seed: int
    png_base64: str


class Timings(BaseModel):
    queue_s: float = Field(description="waiting for a row")
    sampling_s: float = Field(description="first step to last image")
    total_s: float = Field(description="admission to response, PNG encoding included")


class GenerateResponse(BaseModel):
    request_id: str
    model: str
    steps: int
    sampler: str
    label: int | None
    guidance: float
    images: list[ImageOut]
    timings: Timings


class ErrorResponse(BaseModel):
    detail: Any = Field(description="what went wrong; for 422, a list naming each field and its limit")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "the body could not be read (e.g. not UTF-8)",
        401: "missing or invalid API key (when keys are configured)",
        413: "request body too large",
        422: "a field breaks a bound; the message names the field and the limit",
        429: "queue full; retry after the Retry-After header's seconds",
        499: "the client closed the connection",
        500: "sampling failed (e.g. out of memory); the server keeps serving",
        503: "not ready yet, or draining for shutdown",
        504: "the request's deadline passed",
    }.items()
}
