"""HTTP plumbing: request IDs, the body-size limit, request counting, API keys, 422 messages, SSE."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

log = logging.getLogger("ddpm.http")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
COUNTED_PATHS = ("/generate", "/generate/stream")


class RequestContext:
    """Pure ASGI middleware (no per-request task or copy of the body):

    - every response carries ``X-Request-ID`` (the client's, when it sent a sane one);
    - a body over ``max_body_bytes`` gets 413, by its Content-Length or, for a chunked body,
      as soon as the bytes received pass the limit;
    - every ``/generate`` request is counted by final status and sampler.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = {"code": 500}
        limit = self.max_body_bytes

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds max_body_bytes={limit}")
            return message

        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = -1
        try:
            if length > limit or length < 0:
                detail = (f"request body of {length} bytes exceeds max_body_bytes={limit}" if length > 0
                          else "invalid Content-Length")
                code = 413 if length > 0 else 400
                response = JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            if scope["path"] in COUNTED_PATHS and scope["method"] == "POST":
                sampler = state.get("sampler", "none")
                self.metrics.requests.labels(status=str(status["code"]), sampler=sampler).inc()
                log.info("request_id=%s %s status=%d sampler=%s seconds=%.3f", request_id, scope["path"],
                         status["code"], sampler, time.perf_counter() - start)


def check_api_key(keys: frozenset[str], credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 unless keys are off or the Bearer token is one of them (compared in constant time)."""
    if not keys:
        return
    token = credentials.credentials if credentials is not None else ""
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
        raise HTTPException(401, "missing or invalid API key (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 whose every entry names the field, and the limit it broke, in its message."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        loc = [_plain(p) for p in error.get("loc", ())]
        field = ".".join(str(p) for p in loc if p != "body") or "body"
        entry = {"loc": loc, "field": field, "msg": f"{field}: {error.get('msg', 'invalid')}",
                 "type": error.get("type", "")}
        if error.get("ctx"):
            entry["ctx"] = {k: _plain(v) for k, v in error["ctx"].items()}
        errors.append(entry)
    return JSONResponse({"detail": errors}, status_code=422)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
