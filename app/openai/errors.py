"""OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``.

Under ``/v1/images`` and ``/v1/models`` every error takes this shape so that the official SDKs
raise their own exception classes (``BadRequestError`` for 400, ``AuthenticationError`` for 401,
``NotFoundError`` for 404, ``RateLimitError`` for 429, ``InternalServerError`` for 5xx) carrying
our message, and their retry logic honours our ``Retry-After``.

The server's own errors arrive here as (status, message, retry_after): whatever the HTTP layer's
domain errors become, this module only needs their status and text. Two differences from the
native API, both because OpenAI's clients expect them:

- a body that breaks a bound is a 400 (the native API's 422 would make the SDK raise
  ``UnprocessableEntityError``, which no OpenAI client handles), with ``param`` naming the field;
- a 499 (client gone) is never sent to anyone, so it is not mapped specially.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

# status -> (type, code) as OpenAI's API uses them; the code can be refined per error.
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "sampling_failed"),
    503: ("service_unavailable_error", "server_unavailable"),
    504: ("server_error", "timeout"),
}


@dataclass
class OpenAIError(Exception):
    """An error to answer in OpenAI's envelope. Raise it in the OpenAI routes; the HTTP layer's
    error handler turns it into a response with ``to_response``."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _KINDS.get(self.status, ("server_error" if self.status >= 500 else "invalid_request_error", None))[0]

    def body(self) -> dict[str, Any]:
        code = self.code if self.code is not None else _KINDS.get(self.status, ("", None))[1]
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": code}}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            # Whole seconds, at least one: the SDK ignores a Retry-After of 0 and backs off on its own.
            headers["Retry-After"] = str(max(1, int(-(-self.retry_after // 1))))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def from_status(status: int, detail: Any, *, retry_after: float | None = None,
                headers: Mapping[str, str] | None = None) -> OpenAIError:
    """The envelope for any error the server raised as a status and a detail (an engine error,
    an ``HTTPException``, the body-size middleware's 413). A Retry-After header already set
    (e.g. by the native mapping) is kept."""
    if retry_after is None and headers:
        value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        if value is not None:
            try:
                retry_after = float(value)
            except ValueError:
                retry_after = None
    if status == 422:  # a bound broken: OpenAI says 400
        status = 400
    message = detail if isinstance(detail, str) else _join(detail)
    return OpenAIError(status, message, retry_after=retry_after)


def from_validation(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """A 400 for pydantic's errors, or for the native API's 422 entries (``{loc, field, msg, type}``,
    whose message already names the field): ``param`` is the first field named, and the message
    names every field with its limit (``n: Input should be less than or equal to 16``)."""
    fields, parts = [], []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = str(error.get("field") or ".".join(loc) or "body")
        fields.append(field)
        msg = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            parts.append(f"Unknown parameter: '{field}'.")
        elif "field" in error:  # already "field: msg"
            parts.append(msg)
        else:
            parts.append(f"{field}: {msg}")
    first = errors[0].get("type") if errors else None
    code = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}.get(str(first),
                                                                                                "invalid_value")
    return OpenAIError(400, "; ".join(parts) or "invalid request", param=fields[0] if fields else None, code=code)


def _join(detail: Any) -> str:
    """The native 422 detail (a list of {field, msg}) or anything else, as one line of text."""
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, Mapping) else str(d) for d in detail)
    return str(detail)
