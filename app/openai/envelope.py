"""Errors under the OpenAI paths leave in OpenAI's envelope, whoever raised them.

The server's failures are mapped to HTTP in one place (a status, ``Retry-After``, a
``{"detail": ...}`` body); some answers come from below the routes (the API-key check's 401,
the body limit's 413, routing's 404 and 405, validation's 422). This pure ASGI middleware sits
outside all of them and, for ``/v1/images`` and ``/v1/models`` only, re-expresses each such
error response as ``{"error": {"message", "type", "param", "code"}}`` with the same status
(422 becomes 400, as OpenAI answers) and the same headers (``Retry-After`` included), so the
SDK raises its own exception class with our message. A body already in the envelope passes
untouched, and so does every success and every stream.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import OpenAIError, from_status, from_validation

OPENAI_PREFIXES = ("/v1/images", "/v1/models")


def envelope_for(status: int, body: bytes, headers: MutableHeaders) -> OpenAIError | None:
    """The envelope for a native error body, or None when the body is already one (or not JSON)."""
    try:
        data: Any = json.loads(body) if body else {}
    except ValueError:
        return from_status(status, body.decode("utf-8", "replace").strip() or f"HTTP {status}", headers=headers)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return None
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if status == 422 and isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return from_validation(detail)
    return from_status(status, detail, headers=headers)


class OpenAIEnvelope:
    """Rewrites error responses under ``prefixes`` into OpenAI's envelope (see the module)."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...] = OPENAI_PREFIXES) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}  # the start of an error response, while its body arrives
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                return
            if message["type"] != "http.response.body" or "start" not in held:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = held.pop("start")
            headers = MutableHeaders(raw=list(start["headers"]))
            error = envelope_for(start["status"], b"".join(chunks), headers)
            if error is None:
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks)})
                return
            body = json.dumps(error.body()).encode()
            headers["content-length"] = str(len(body))
            headers["content-type"] = "application/json"
            for name, value in error.headers().items():
                headers[name] = value
            # The request is counted as the client saw it (a 422 leaves as 400).
            scope.setdefault("state", {})["outcome"] = error.status
            await send({**start, "status": error.status, "headers": headers.raw})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
