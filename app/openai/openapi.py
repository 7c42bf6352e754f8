"""The OpenAI API's bodies as the OpenAPI document shows them (the routes build plain dicts).

The same shapes as the official SDK's ``ImagesResponse``, ``Model`` and error envelope, with
this server's extra fields (``ddpm``); every status a route can answer is declared, so
schemathesis holds the document to what the server does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error, service_unavailable_error")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="e.g. model_not_found, invalid_size, unknown_class, rate_limit_exceeded")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str = Field(description="the class drawn (or why none), and any upscaling")


class DrawnWith(BaseModel):
    model: str
    label: int | None
    seeds: list[int]
    steps: int
    sampler: str
    guidance: float
    native_size: str
    upscale: int = Field(description="nearest-neighbour factor from native_size to size")


class ImagesResponseBody(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]
    size: str
    background: Literal["opaque"]
    safety_identifier: str | None = None
    ddpm: DrawnWith = Field(description="this server's extra: what was drawn")


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The declared error responses, in OpenAI's envelope."""
    text = {
        400: "a field breaks a bound or a rule (param names it); invalid JSON",
        401: "missing or invalid API key (when keys are configured)",
        404: "model_not_found: another model than the served one",
        405: "method not allowed",
        409: "the job behind the URL has no images yet",
        410: "the stored image expired (DDPM_JOB_TTL_S)",
        413: "request body too large",
        429: "queue full; retry after the Retry-After header's seconds",
        500: "sampling failed; the server keeps serving",
        503: "not ready yet, or draining for shutdown",
        504: "the request's deadline passed",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}
