"""Probes and metrics: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus).

Each answers HEAD as GET without a body: uptime checkers and some probes use HEAD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..schemas import ERROR_RESPONSES
from ..service import Service


def get_and_head(router: APIRouter, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Route GET and HEAD to one endpoint; only GET is in the OpenAPI document (one operation id)."""
    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(path, endpoint, methods=["GET"], **kwargs)
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **kwargs)
        return endpoint
    return register


def make_router(service: Service) -> APIRouter:
    router = APIRouter()

    @get_and_head(router, "/healthz", summary="Liveness",
                      responses={503: ERROR_RESPONSES[503]})
    async def healthz() -> JSONResponse:
        if service.failure:
            return JSONResponse({"status": "failed", "detail": service.failure}, status_code=503)
        if service.ready.is_set() and not service.engine.alive and not service.draining:
            return JSONResponse({"status": "failed", "detail": "the engine thread stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @get_and_head(router, "/readyz", summary="Readiness",
                      responses={503: ERROR_RESPONSES[503]})
    async def readyz() -> JSONResponse:
        if service.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not service.ready.is_set():
            status = "failed" if service.failure else "loading"
            return JSONResponse({"status": status, "detail": service.failure}, status_code=503)
        return JSONResponse({"status": "ready"})

    @get_and_head(router, "/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
