"""``POST /v1/edits``, ``/v1/interpolations``, ``/v1/variations`` and their ``/stream`` twins.

Each request becomes rows built by ``model.editing`` and is submitted to the engine as an
ordinary generation, so edit rows share network calls with every other row; the responses have
``/generate``'s shapes (a PNG, a grid, or base64 JSON; the same server-sent events). Two kinds
run a first phase: variations run the shared chain down to t (one row that hands back its x_t
through a ``LatentSink``), and an interpolation between seeds first draws the two end samples
(as ``/generate`` would, so the ends are those seeds' images).

(No ``from __future__ import annotations``: FastAPI must see the body models as real types.)
"""

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from model import RowSpec
from model.images import encode_png, make_grid

from ..edit_requests import (
    Built,
    Common,
    EditBody,
    FirstPhase,
    InterpolationBody,
    VariationBody,
    prepare_now,
    then_now,
)
from ..errors import ServingError
from ..events import Done, Failed, ImageReady, Progress, Queued
from ..generation import Resolved, Submission
from ..http import sse
from ..http_errors import stream_error
from ..schemas import ERROR_RESPONSES, GenerateResponse, ImageOut, Timings
from ..service import Service
from .generate import KEEPALIVE_S, b64png, outcome, progress_data, stream_events


class RowsSubmission(Submission):
    """A Submission whose rows the caller built: image i is ``specs[i]``, reported with seed i."""

    def __init__(self, service: Service, resolved: Resolved, request_id: str, specs: list[RowSpec], *,
                 progress: bool) -> None:
        super().__init__(service, resolved, request_id, progress=progress)
        self.generation.specs = specs
        self.generation.images = [None] * len(specs)


def submit_rows(service: Service, request: Request, resolved: Resolved, specs: list[RowSpec], *,
                progress: bool) -> RowsSubmission:
    service.check_accepting()  # the plan's length was checked by prepare_now
    submission = RowsSubmission(service, resolved, request.state.request_id, specs, progress=progress)
    service.engine.submit(submission.generation)
    return submission


async def prepare(service: Service, body: Common) -> Built | FirstPhase:
    """Everything that can refuse the request, before anything runs (off the event loop: it decodes)."""
    return await run_in_threadpool(prepare_now, service, body)


def trimmed(built: Built, start: float) -> Built:
    """The rows get what is left of the request's deadline (decoding and a first phase spent some)."""
    left = built.resolved.timeout_s - (time.monotonic() - start)
    built.resolved = replace(built.resolved, timeout_s=max(left, 0.001))
    return built


def finish(phase: FirstPhase, images: list[np.ndarray], start: float) -> Built:
    """The request's own rows once its first phase is done."""
    return trimmed(then_now(phase, images), start)


async def build(service: Service, request: Request, body: Common) -> Built:
    """The request's rows, its first phase (if any) run to the end without progress events."""
    start = time.monotonic()
    prepared = await prepare(service, body)
    if isinstance(prepared, Built):
        return trimmed(prepared, start)
    first = submit_rows(service, request, prepared.resolved, prepared.specs, progress=False)
    return finish(prepared, await outcome(first, request), start)


def picture(images: list[np.ndarray]) -> bytes:
    return encode_png(images[0] if len(images) == 1 else make_grid(np.stack(images)))


def json_body(service: Service, request: Request, r: Resolved, images: list[np.ndarray],
              submission: Submission | None) -> dict[str, Any]:
    timings = submission.timings() if submission else {"queue_s": 0.0, "sampling_s": 0.0, "total_s": 0.0}
    return GenerateResponse(
        request_id=request.state.request_id, model=service.name, steps=r.steps, sampler=r.sampler,
        label=r.label, guidance=r.guidance,
        images=[ImageOut(index=i, seed=s, png_base64=b64png(im)) for i, (s, im) in enumerate(zip(r.seeds, images,
                                                                                                 strict=True))],
        timings=Timings(**timings),
    ).model_dump()


async def respond(service: Service, request: Request, body: Common) -> Response:
    built = await build(service, request, body)
    r, submission, images = built.resolved, None, built.ready
    if built.specs:
        submission = submit_rows(service, request, r, built.specs, progress=False)
        images = await outcome(submission, request)
    if body.response_format == "png":
        response: Response = Response(await run_in_threadpool(picture, images), media_type="image/png")
    else:
        response = JSONResponse(await run_in_threadpool(json_body, service, request, r, images, submission))
    response.headers.update({"X-Seed": str(r.seeds[0]), "X-Seeds": ",".join(map(str, r.seeds))})
    return response


async def respond_stream(service: Service, request: Request, body: Common) -> StreamingResponse:
    """The same events as /generate/stream. A first phase streams too, its ``queued`` and
    ``progress`` events marked ``"phase": "ends"`` or ``"shared"``; the request's own rows follow
    with their own ``queued``, unmarked, as /generate/stream's."""
    start = time.monotonic()
    prepared = await prepare(service, body)  # every refusal is a status, before the stream starts
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if isinstance(prepared, FirstPhase):
        first = submit_rows(service, request, prepared.resolved, prepared.specs, progress=True)
        return StreamingResponse(phased_events(service, request, prepared, first, start),
                                 media_type="text/event-stream", headers=headers)
    built = trimmed(prepared, start)
    if not built.specs:  # nothing to run (an interpolation at t = 0): the answer is the whole stream
        done = await run_in_threadpool(json_body, service, request, built.resolved, built.ready, None)
        return StreamingResponse(iter([sse("done", done)]), media_type="text/event-stream")
    submission = submit_rows(service, request, built.resolved, built.specs, progress=True)
    return StreamingResponse(stream_events(service, submission, request), media_type="text/event-stream",
                             headers={**headers, **submission.seed_headers()})


async def phased_events(service: Service, request: Request, phase: FirstPhase, first: Submission,
                        start: float) -> AsyncIterator[bytes]:
    """A first phase's progress, then the request's own stream; a failure in either ends it with
    an ``error`` event."""
    images: list[np.ndarray] | None = None
    try:
        async for event in first.events(KEEPALIVE_S):
            match event:
                case None:
                    yield b": keep-alive\n\n"
                case Queued(position=position):
                    yield sse("queued", {"request_id": first.generation.id, "position": position,
                                         "phase": phase.name})
                case Progress():
                    yield sse("progress", {**await progress_data(event), "phase": phase.name})
                case ImageReady():
                    pass  # the phase's images are the request's input, not its answer
                case Done(images=images):
                    break
                case Failed(error=error):
                    yield failure(request, error)
                    return
    finally:
        if images is None:
            first.cancel()  # the client left during the first phase: free its rows
    assert images is not None  # the events never end but by Done or Failed
    try:
        built = finish(phase, images, start)
        if not built.specs:
            yield sse("done", await run_in_threadpool(json_body, service, request, built.resolved, built.ready, None))
            return
        submission = submit_rows(service, request, built.resolved, built.specs, progress=True)
    except ServingError as error:  # e.g. the queue filled up while the first phase ran
        yield failure(request, error)
        return
    async for chunk in stream_events(service, submission, request):
        yield chunk


def failure(request: Request, error: ServingError) -> bytes:
    data = stream_error(error)
    request.state.outcome = data["status"]  # counted as the client saw it, not as the 200
    return sse("error", data)


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": GenerateResponse, "content": {"image/png": {}},
          "description": "image/png (several: one grid), or JSON with base64 PNGs"},
    **ERROR_RESPONSES,
}
STREAM = {200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}, **ERROR_RESPONSES}


def make_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/edits", response_class=Response, responses=RESPONSES,
                 summary="Edit an image: SDEdit without a mask, RePaint inpainting with one")
    async def edits(request: Request, body: EditBody) -> Response:
        return await respond(service, request, body)

    @router.post("/v1/edits/stream", response_class=StreamingResponse, responses=STREAM,
                 summary="Edit an image, streaming progress as server-sent events")
    async def edits_stream(request: Request, body: EditBody) -> StreamingResponse:
        return await respond_stream(service, request, body)

    @router.post("/v1/interpolations", response_class=Response, responses=RESPONSES,
                 summary="Interpolate two images through q(x_t | x_0) (Ho et al. 2020, sec. 4.3)")
    async def interpolations(request: Request, body: InterpolationBody) -> Response:
        return await respond(service, request, body)

    @router.post("/v1/interpolations/stream", response_class=StreamingResponse, responses=STREAM,
                 summary="Interpolate, streaming progress as server-sent events")
    async def interpolations_stream(request: Request, body: InterpolationBody) -> StreamingResponse:
        return await respond_stream(service, request, body)

    @router.post("/v1/variations", response_class=Response, responses=RESPONSES,
                 summary="Continuations of one shared x_t (Ho et al. 2020, fig. 7)")
    async def variations(request: Request, body: VariationBody) -> Response:
        return await respond(service, request, body)

    @router.post("/v1/variations/stream", response_class=StreamingResponse, responses=STREAM,
                 summary="Variations, streaming progress as server-sent events")
    async def variations_stream(request: Request, body: VariationBody) -> StreamingResponse:
        return await respond_stream(service, request, body)

    return router
