"""``POST /generate`` and ``POST /generate/stream``: the native generation API.

Both submit a generation and then ``match`` on the engine's typed events; a failure is raised
(plain) or sent as an ``error`` event (stream), and ``app.http_errors`` decides how it looks.

(No ``from __future__ import annotations``: FastAPI must see the request model, built at run
time from the model's bounds, as a real type rather than a string naming a local variable.)
"""

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from model.images import encode_png, make_grid

from ..errors import Cancelled, DeadlineExceeded
from ..events import Done, Failed, ImageReady, Progress, Queued
from ..generation import Submission, submit
from ..http import request_owner, sse
from ..http_errors import stream_error
from ..schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse, ImageOut, Timings
from ..service import Service

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
GRACE_S = 5.0  # past the deadline, how long to wait for the engine's own DeadlineExceeded


def b64png(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def response_body(service: Service, submission: Submission, images: list[np.ndarray]) -> dict[str, Any]:
    r = submission.resolved
    return GenerateResponse(
        request_id=submission.generation.id, model=service.name, steps=r.steps, sampler=r.sampler,
        label=r.label, guidance=r.guidance,
        images=[ImageOut(index=i, seed=s, png_base64=b64png(im)) for i, (s, im) in enumerate(zip(r.seeds, images,
                                                                                                 strict=True))],
        timings=Timings(**submission.timings()),
    ).model_dump()


async def wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def outcome(submission: Submission, request: Request) -> list[np.ndarray]:
    """The images, or the failure raised; a client that leaves cancels its rows."""
    disconnect = asyncio.ensure_future(wait_disconnect(request))
    deadline = submission.resolved.timeout_s + GRACE_S
    try:
        while True:
            event = asyncio.ensure_future(submission.next_event())
            done, _ = await asyncio.wait({event, disconnect}, timeout=deadline,
                                         return_when=asyncio.FIRST_COMPLETED)
            if event not in done:
                event.cancel()
                submission.cancel()
                raise Cancelled("the client closed the connection") if disconnect in done else \
                    DeadlineExceeded("deadline passed")
            match event.result():
                case Done(images=images):
                    return images
                case Failed(error=error):
                    raise error
                case Queued() | Progress() | ImageReady():
                    continue
    finally:
        disconnect.cancel()


def make_router(service: Service, body_model: type[GenerateRequest]) -> APIRouter:
    router = APIRouter()
    Body: Any = body_model  # a type built at run time from the model's bounds

    @router.post("/generate", response_class=Response, summary="Generate images", responses={
        200: {"model": GenerateResponse, "content": {"image/png": {}},
              "description": "image/png (n > 1: one grid), or JSON with base64 PNGs"}, **ERROR_RESPONSES})
    async def generate(request: Request, body: Body | None = None) -> Response:
        body = body or Body()
        submission = submit(service, body.params(), request.state.request_id, progress=False,
                            owner=request_owner(request, service.settings.keys))
        request.state.sampler = submission.resolved.sampler
        images = await outcome(submission, request)
        encode_start = time.perf_counter()
        if body.response_format == "png":
            picture = images[0] if len(images) == 1 else make_grid(np.stack(images))
            response: Response = Response(await run_in_threadpool(encode_png, picture), media_type="image/png")
        else:
            response = JSONResponse(await run_in_threadpool(response_body, service, submission, images))
        timings = submission.timings()
        service.metrics.request_duration.observe(timings["total_s"])
        response.headers.update(submission.seed_headers())
        response.headers["Server-Timing"] = (
            f"queue;dur={timings['queue_s'] * 1e3:.1f}, sampling;dur={timings['sampling_s'] * 1e3:.1f}, "
            f"encode;dur={(time.perf_counter() - encode_start) * 1e3:.1f}, total;dur={timings['total_s'] * 1e3:.1f}")
        return response

    @router.post("/generate/stream", response_class=StreamingResponse,
                 summary="Generate images, streaming progress as server-sent events",
                 responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
                            **ERROR_RESPONSES})
    async def generate_stream(request: Request, body: Body | None = None) -> StreamingResponse:
        """Events: `queued` {request_id, position}, `progress` {step, steps, images_done, n, previews?},
        `image` {index, seed, png_base64} as each image finishes, then `done` (the base64
        response body) or `error` {status, detail}."""
        body = body or Body()
        submission = submit(service, body.params(), request.state.request_id, progress=True,
                            owner=request_owner(request, service.settings.keys))
        request.state.sampler = submission.resolved.sampler
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **submission.seed_headers()}
        return StreamingResponse(stream_events(service, submission, request), media_type="text/event-stream",
                                 headers=headers)

    return router


async def stream_events(service: Service, submission: Submission, request: Request) -> AsyncIterator[bytes]:
    try:
        async for event in submission.events(KEEPALIVE_S):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            match event:
                case Queued(position=position):
                    yield sse("queued", {"request_id": submission.generation.id, "position": position})
                case Progress():
                    yield sse("progress", await progress_data(event))
                case ImageReady(index=index, seed=seed, image=image):
                    png = await run_in_threadpool(b64png, image)
                    yield sse("image", {"index": index, "seed": seed, "png_base64": png})
                case Done(images=images):
                    body_json = await run_in_threadpool(response_body, service, submission, images)
                    service.metrics.request_duration.observe(submission.timings()["total_s"])
                    yield sse("done", body_json)
                    return
                case Failed(error=error):
                    data = stream_error(error)
                    request.state.outcome = data["status"]  # counted as the client saw it, not as the 200
                    yield sse("error", data)
                    return
    finally:
        submission.cancel()  # the client left mid-stream: free the rows


async def progress_data(event: Progress) -> dict[str, Any]:
    """A ``progress`` event's data; previews are encoded off the event loop."""
    data: dict[str, Any] = {"step": event.step, "steps": event.steps, "images_done": event.images_done, "n": event.n}
    if event.previews:
        data["previews"] = await run_in_threadpool(encode_previews, event.previews)
    return data


def encode_previews(previews: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    return [{"index": i, "png_base64": b64png(image)} for i, image in previews.items()]
