"""``POST /v1/images/generations``, ``GET /v1/models`` and ``GET /v1/models/{id}``.

An OpenAI request is resolved (``plan_images``) into the native generation fields and then
goes the way of ``/generate``: the same ``submit``, the same engine, the same batches, so an
SDK request and a native one with different step counts share network calls, and the same
seed gives the same pixels (and, at the native size in PNG, the same bytes). Failures are the
server's own domain errors, mapped to HTTP in the one place that maps them; ``OpenAIEnvelope``
re-expresses the result in OpenAI's envelope. In a stream, a failure is an ``error`` event.

(No ``from __future__ import annotations``: FastAPI must see the request model, built at run
time from the model's bounds, as a real type rather than a string naming a local variable.)
"""

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..generation import GenerationParams, Resolved, Submission, resolve, submit
from ..http import request_owner
from ..job_service import JobService
from ..routes.generate import outcome
from ..service import Service
from .edits import make_edit_router
from .encoding import encode_image
from .envelope import OpenAIEnvelope
from .errors import OpenAIError
from .models import created_at, find_model, model_list
from .openapi import ImagesResponseBody, ModelList, ModelOut, errors
from .plan import ImagesPlan, plan_images
from .request import ImagesRequest, images_request_model
from .response import ddpm_extra, images_response
from .sizes import DEFAULT_MAX_SIDE
from .stored import image_urls, job_spec, run_job
from .stream import image_stream, preview_every
from .url_images import add_reencoding_route


def encode_all(plan: ImagesPlan, images: Sequence[np.ndarray]) -> list[bytes]:
    return [encode(plan, image) for image in images]


def encode(plan: ImagesPlan, image: np.ndarray) -> bytes:
    return encode_image(image, plan.output_format, compression=plan.compression, factor=plan.size.factor)


def resolved_extra(service: Service, plan: ImagesPlan, r: Resolved) -> dict[str, Any]:
    return ddpm_extra(plan, service.name, r.seeds, {"steps": r.steps, "sampler": r.sampler, "guidance": r.guidance})


async def url_answer(service: Service, jobs: JobService, plan: ImagesPlan, body: ImagesRequest,
                     request: Request) -> JSONResponse:
    """``response_format=url``: the request runs as a job (``stored.py``); the answer names its images."""
    r = resolve(GenerationParams(**plan.native), service)
    settings = service.settings
    spec = job_spec(r, body.model_dump(mode="json", exclude_unset=True))
    job = await run_job(jobs, request_owner(request, settings.keys), spec, request, timeout_s=r.timeout_s,
                        max_queued_images=settings.max_queued_images_per_key)
    urls = image_urls(str(request.base_url), plan, job)
    content = images_response(plan, (), created=int(time.time()),
                              extra=resolved_extra(service, plan, r), urls=urls)
    seeds = {"X-Seed": str(r.seeds[0]), "X-Seeds": ",".join(map(str, r.seeds)), "X-Job-Id": job.id}
    return JSONResponse(content, headers=seeds)


def make_router(service: Service, body_model: type[ImagesRequest], *, max_side: int = DEFAULT_MAX_SIDE,
                jobs: JobService | None = None) -> APIRouter:
    router = APIRouter(tags=["OpenAI-compatible"])
    Body: Any = body_model  # a type built at run time from the model's bounds
    config = service.model.config
    started = int(time.time())

    def start(body: ImagesRequest, request: Request) -> tuple[ImagesPlan, Submission]:
        plan = plan_images(body, config, name=service.name, max_side=max_side, stores_urls=jobs is not None)
        steps = body.steps or service.plan.default_steps
        params = GenerationParams(**plan.native, preview_every=preview_every(steps, plan.partial_images))
        submission = submit(service, params, request.state.request_id, progress=plan.stream)
        request.state.sampler = submission.resolved.sampler
        return plan, submission

    @router.post("/v1/images/generations", summary="Generate images (OpenAI's Images API)",
                 responses={200: {"model": ImagesResponseBody, "content": {"text/event-stream": {}},
                                  "description": "OpenAI's ImagesResponse, or (stream) its image stream events"},
                            **errors(400, 401, 404, 413, 429, 500, 503, 504)})
    async def generations(request: Request, body: Body) -> Any:
        if jobs is not None and body.response_format == "url":
            plan = plan_images(body, config, name=service.name, max_side=max_side, stores_urls=True)
            if plan.stream:
                raise OpenAIError(400, "response_format='url' cannot be streamed (the stream carries b64_json)",
                                  param="response_format", code="unsupported_value")
            return await url_answer(service, jobs, plan, body, request)
        plan, submission = start(body, request)
        if plan.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **submission.seed_headers()}
            return StreamingResponse(image_stream(service, plan, submission, request),
                                     media_type="text/event-stream", headers=headers)
        images = await outcome(submission, request)
        encoded = await run_in_threadpool(encode_all, plan, images)
        content = images_response(plan, encoded, created=int(time.time()),
                                  extra=resolved_extra(service, plan, submission.resolved))
        service.metrics.request_duration.observe(submission.timings()["total_s"])
        return JSONResponse(content, headers=submission.seed_headers())

    @router.get("/v1/models", summary="The served model, in OpenAI's list shape",
                responses={200: {"model": ModelList}, **errors(401)})
    async def models() -> dict[str, Any]:
        return model_list(service.name, created=created_at(config, started))

    @router.get("/v1/models/{model_id}", summary="One model, in OpenAI's shape",
                responses={200: {"model": ModelOut}, **errors(401, 404)})
    async def model(model_id: str) -> dict[str, Any]:
        return find_model(service.name, model_id, created=created_at(config, started))

    if jobs is not None:
        add_reencoding_route(router, service, jobs, max_factor=max(1, max_side // config.image_size))
    return router


async def openai_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return exc.to_response()


def install(app: FastAPI, service: Service, *, dependencies: Sequence[Depends] = (),
            max_side: int | None = None) -> None:
    """Serve the OpenAI-compatible API on ``app``. Call it last in ``create_app`` (its middleware
    must wrap the API-key check and the body limit, whose errors it re-expresses); a second call
    does nothing. ``max_side``: the largest image side served (default: the setting
    ``openai_max_size`` when Settings has it, else 1024)."""
    if getattr(app.state, "openai_installed", False):
        return
    app.state.openai_installed = True
    side = max_side or getattr(service.settings, "openai_max_size", None) or DEFAULT_MAX_SIDE
    s, plan = service.settings, service.plan
    jobs: JobService | None = getattr(app.state, "jobs", None)  # create_app's job store: url results
    body = images_request_model(service.model.config, max_images=plan.admissible_images, max_steps=plan.max_steps,
                                max_guidance=s.max_guidance, max_side=side, stores_urls=jobs is not None)
    app.include_router(make_router(service, body, max_side=side, jobs=jobs), dependencies=list(dependencies))
    app.include_router(make_edit_router(service, max_side=side), dependencies=list(dependencies))
    app.add_exception_handler(OpenAIError, openai_error_handler)
    app.add_middleware(OpenAIEnvelope)
