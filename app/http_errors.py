"""The one place where failures become HTTP: a status, headers and a JSON body for each.

Domain errors (``app.errors``) carry no status; routes raise them, or receive them in a
``Failed`` event, and everything below turns them into responses: the same failure answers
the same way from every route, and streams send the same status in their ``error`` event.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from model.validation import error_entries

from .errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    QueueFull,
    SamplingFailed,
    ServingError,
    Unavailable,
    UploadTooLarge,
)
from .jobs.errors import IdempotencyConflict, JobExpired, JobNotFound, JobNotReady, QuotaExceeded

STATUS: dict[type[ServingError], int] = {
    InvalidRequest: 422,
    UploadTooLarge: 413,
    QueueFull: 429,
    DeadlineExceeded: 504,
    Unavailable: 503,
    SamplingFailed: 500,
    Cancelled: 499,  # nginx's "client closed request": nobody is left to read it
    JobNotFound: 404,  # also another key's job: no enumeration across keys
    JobExpired: 410,
    JobNotReady: 409,
    IdempotencyConflict: 409,
    QuotaExceeded: 429,  # this key alone
}


def status_of(error: ServingError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def headers_of(error: ServingError) -> dict[str, str]:
    """``Retry-After`` in whole seconds (rounded up: a client that retries early fails again)."""
    return {"Retry-After": str(max(1, math.ceil(error.retry_after)))} if error.retry_after else {}


def detail_of(error: ServingError) -> Any:
    if isinstance(error, InvalidRequest):  # the same shape as a schema 422
        return [{"field": error.field, "msg": error.detail, "type": "value_error"}]
    return error.detail


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse({"detail": detail_of(error)}, status_code=status_of(error), headers=headers_of(error))


def stream_error(error: ServingError) -> dict[str, Any]:
    """The data of a stream's ``error`` event."""
    return {"status": status_of(error), "detail": detail_of(error), **(
        {"retry_after": int(headers_of(error)["Retry-After"])} if error.retry_after else {})}


async def serving_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return error_response(exc)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 whose every entry names the field and the limit it broke, in the one error format of
    model/validation.py (the format config files and settings are reported in, too)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": error_entries(exc.errors(), drop=1)}, status_code=422)
