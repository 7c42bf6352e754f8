"""The ``Allow`` header of a 405: every method the path takes.

Starlette answers a method that no route takes with the methods of the first route whose path
matched, so ``OPTIONS /v1/jobs/{id}`` said ``GET`` although ``DELETE`` is routed there too (one
route per method is how FastAPI declares operations). This middleware lists them all.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AllowEveryMethod:
    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = methods_of(self.routes, scope["path"])
                if methods:
                    MutableHeaders(scope=message)["Allow"] = ", ".join(sorted(methods))
            await send(message)

        await self.app(scope, receive, send_allow)


def methods_of(routes: list[BaseRoute], path: str) -> set[str]:
    """The methods of every route on ``path``, looking into included routers (FastAPI keeps an
    included router as one entry with its ``original_router`` and ``include_context.prefix``)."""
    found: set[str] = set()
    for route in routes:
        if isinstance(route, Route):
            if route.methods and route.path_regex.match(path):
                found |= route.methods
            continue
        inner = getattr(route, "original_router", None)
        if inner is not None:
            prefix = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            if path.startswith(prefix):
                found |= methods_of(inner.routes, path[len(prefix):] or "/")
    return found
