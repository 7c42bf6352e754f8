"""The HTTP contract: request and response bodies.

The request model is built once per server from the checkpoint's config and the runtime plan,
so the bounds that the OpenAPI schema shows are exactly the bounds that are enforced, by one
mechanism (pydantic), and a 422 names the field and the limit it broke.

Numbers are JSON numbers: a string or a boolean where the schema says integer or number is
refused, never coerced ("4", true). A number with no fractional part (4.0, 1e2) IS an integer:
JSON Schema says so, and so does every generated client that writes numbers as doubles.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator

from model import SAMPLERS, ModelConfig

from .generation import MAX_SEED, GenerationParams
from .runtime import RuntimePlan

ResponseFormat = Literal["png", "base64"]


def _json_number(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise ValueError(f"Input should be a JSON number, not {type(value).__name__}")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]


def bounded(base: type[int] | type[float], **constraints: Any) -> Any:
    """A JSON number of type ``base`` within ``constraints`` (floats also finite). The bounds come
    before the validator, so that the OpenAPI schema shows them as minimum and maximum."""
    if base is float:
        constraints.setdefault("allow_inf_nan", False)
    return Annotated[base, Field(**constraints), BeforeValidator(_json_number)]


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

    def params(self) -> GenerationParams:
        return GenerationParams(n=self.n, seed=self.seed, steps=self.steps, sampler=self.sampler, eta=self.eta,
                                label=self.label, guidance=self.guidance, timeout_s=self.timeout_s,
                                preview_every=self.preview_every)


def request_model(config: ModelConfig, plan: RuntimePlan, *, max_guidance: float) -> type[GenerateRequest]:
    """The request body with this server's bounds."""
    max_images, max_steps = plan.admissible_images, plan.max_steps
    classes = config.num_classes
    sampler_type: Any = Literal[tuple(SAMPLERS)]

    def check_label(cls: type, value: int | None) -> int | None:
        problem = config.label_problem(value)  # the schema's bounds say the same, for OpenAPI clients
        if problem:
            raise ValueError(problem)
        return value

    fields: dict[str, Any] = {
        "n": (bounded(int, ge=1, le=max_images),
              Field(1, description="images in this request (n > 1 with png: one grid)")),
        "steps": (bounded(int, ge=1, le=max_steps) | None,
                  Field(None, description=f"reverse-process steps; null: {plan.default_steps}")),
        "sampler": (sampler_type | None, Field(None, description=f"null: {plan.default_sampler}")),
        "eta": (bounded(float, ge=0, le=1) | None, Field(None, description="DDIM stochasticity")),
        # The bound leaves room for the largest request's seed + n - 1, so that every seed the
        # schema admits is served (JSON Schema cannot relate two fields).
        "seed": (bounded(int, ge=0, le=MAX_SEED - (max_images - 1)) | None,
                 Field(None, description="image i uses seed + i; null: the server draws one")),
        "label": (bounded(int, ge=0, le=(classes - 1) if classes else None) | None, Field(
            None, description=(f"class in 0..{classes - 1}; null: unconditional" if classes
                               else "this model is unconditional: null"))),
        "guidance": (bounded(float, ge=0, le=max_guidance) | None, Field(None, description=(
            f"classifier-free guidance w: eps = (1+w) eps_c - w eps_u; null: {config.sampling.guidance}"))),
        "response_format": (ResponseFormat, Field("png", description="png: image/png; base64: JSON")),
        # At least a second: a shorter deadline cannot cover even the HTTP round trip on a busy server.
        "timeout_s": (bounded(float, ge=1.0) | None,
                      Field(None, description="deadline for this request in seconds, capped by the server's")),
        "preview_every": (bounded(int, ge=0, le=max_steps),
                          Field(0, description="stream only: send the x0 prediction every k steps; 0: never")),
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
