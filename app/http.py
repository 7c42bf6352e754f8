"""HTTP plumbing below the routes: request IDs, the body-size limit, request counting, API keys, SSE."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .jobs.records import SHARED_OWNER, owner_of
from .metrics import Metrics

log = logging.getLogger("ddpm.http")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
COUNTED_PATHS = {"/generate": "native", "/generate/stream": "native", "/v1/images/generations": "openai",
                 "/v1/images/edits": "openai", "/v1/images/variations": "openai",
                 **{f"/v1/{kind}{stream}": "native" for kind in ("edits", "interpolations", "variations")
                    for stream in ("", "/stream")}}
PROTECTED_PREFIXES = ("/generate", "/v1/")  # health, metrics, the page and the docs stay open
# A refused body is read and dropped up to this size before the 413 goes out (nginx's lingering
# close does the same): closing a socket with unread bytes makes the kernel send a reset, which
# can destroy the 413 before a proxy streaming the body (ingress-nginx with request buffering
# off) has read it, and the client sees a 502. Slow senders are cut by the edge's body-rate
# floor (app/edge.py); a body larger than this gets its 413 at once and the connection closed.
DRAIN_MAX_BYTES = 1024 * 1024


class RequestContext:
    """Pure ASGI middleware (no per-request task or copy of the body):

    - every response carries ``X-Request-ID`` (the client's, when it sent a sane one);
    - a body over ``max_body_bytes`` gets 413, by its Content-Length or, for a chunked body,
      as soon as the bytes received pass the limit; the rest of it is read and dropped first
      (up to ``DRAIN_MAX_BYTES``) so that the answer is not lost to a connection reset;
    - every ``/generate`` request is counted by the outcome the client saw and its sampler: the
      HTTP status, or for a stream that already answered 200, the status of its ``error`` event
      (a handler records it as ``request.state.outcome``).
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
                    if message.get("more_body"):
                        await drain(receive, DRAIN_MAX_BYTES)
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
                drained = 0 < length <= DRAIN_MAX_BYTES and await drain(receive, length)
                response = JSONResponse({"detail": detail}, status_code=code,
                                        headers={} if drained else {"Connection": "close"})
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            api = COUNTED_PATHS.get(scope["path"])
            if api is not None and scope["method"] == "POST":
                sampler = state.get("sampler", "none")
                outcome = state.get("outcome", status["code"])
                self.metrics.requests.labels(api=api, status=str(outcome), sampler=sampler).inc()
                log.info("request_id=%s %s status=%d sampler=%s seconds=%.3f", request_id, scope["path"],
                         outcome, sampler, time.perf_counter() - start)


async def drain(receive: Receive, budget: int) -> bool:
    """Read and drop the rest of a refused request body, at most ``budget`` bytes; whether it
    all arrived (then the connection can even stay open)."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return budget >= 0
    return False


class ApiKeyAuth:
    """Pure ASGI middleware: 401 for a protected path without one of ``keys`` as its Bearer token.

    It runs before routing and body parsing, so a request without a key is told so even when
    its body is malformed (a 422 would leak the schema to an unauthenticated client). Keys are
    compared in constant time.
    """

    def __init__(self, app: ASGIApp, *, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES) and not self._allowed(scope):
            response = JSONResponse({"detail": "missing or invalid API key (Authorization: Bearer <key>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return any(hmac.compare_digest(given, key) for key in self.keys)


def request_owner(request: Request, keys: frozenset[str]) -> str:
    """Whose request this is: a hash of its API key (ApiKeyAuth has checked it), or the shared
    owner when no keys are configured. Fair admission and job ownership go by it."""
    if not keys:
        return SHARED_OWNER
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return owner_of(token.strip() if scheme.lower() == "bearer" else None)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
