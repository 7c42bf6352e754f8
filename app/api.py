"""The FastAPI application: middleware, error handlers and the routers, assembled once per server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from model import DiffusionModel

from .allow import AllowEveryMethod
from .docs_assets import install_offline_docs
from .errors import ServingError
from .http import ApiKeyAuth, RequestContext
from .http_errors import serving_error_handler, validation_error_handler
from .job_service import JobService
from .openai import install as install_openai
from .routes import edits, generate, health
from .routes import jobs as job_routes
from .routes import model as model_routes
from .schemas import ERROR_RESPONSES, request_model
from .service import Service
from .settings import Settings

STATIC = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings | None = None, *, model: DiffusionModel | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment). The model is loaded now, so a
    checkpoint that cannot serve raises here, before any port opens; ``model`` is used as built."""
    settings = settings or Settings()
    service = Service.open(settings, model)
    jobs = JobService(settings, service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        jobs.start()
        yield
        await run_in_threadpool(jobs.close)  # jobs still running go back to the queue
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="ddpm-serve",
        version="0.1.0",
        summary="Image generation with denoising diffusion probabilistic models (Ho et al. 2020)",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.jobs = jobs
    # The last middleware added runs first: RequestContext (request ids, counting, the body limit)
    # wraps ApiKeyAuth, which answers before any route reads the body.
    if settings.keys:
        app.add_middleware(ApiKeyAuth, keys=settings.keys)
    app.add_middleware(AllowEveryMethod, routes=app.router.routes)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes, metrics=service.metrics)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(ServingError, serving_error_handler)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # The OpenAPI document declares Bearer authentication exactly when keys are configured;
    # ApiKeyAuth enforces it, so the scheme's own check is off.
    secured = [Depends(HTTPBearer(auto_error=False, description="DDPM_API_KEYS"))] if settings.keys else []
    unauthorized: dict[int | str, dict[str, Any]] = {401: ERROR_RESPONSES[401]} if settings.keys else {}
    body = request_model(service.model.config, service.plan, max_guidance=settings.max_guidance)
    app.include_router(generate.make_router(service, body), dependencies=secured)
    app.include_router(model_routes.make_router(service), dependencies=secured, responses=unauthorized)
    app.include_router(edits.make_router(service), dependencies=secured)
    app.include_router(job_routes.make_router(service, jobs, body), dependencies=secured)
    app.include_router(health.make_router(service))
    install_openai(app, service, dependencies=secured)  # last: its middleware wraps the ones above

    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_api_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    install_offline_docs(app)  # /docs and /redoc from installed assets: they render with no internet

    return app
