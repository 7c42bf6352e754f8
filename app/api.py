"""The FastAPI application: the endpoints of the HTTP contract (README.md, "The API").

(No `from __future__ import annotations` here: FastAPI must see the request model built in
`create_app` as a real type, not as a string naming a local variable.)
"""


import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from model import MAX_SEED, DiffusionModel, RowSpec
from model.images import encode_png, make_grid

from .engine import EngineError, Event, Job, Unavailable
from .http import RequestContext, check_api_key, sse, validation_error
from .schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse, ImageOut, Timings, request_model
from .service import Service
from .settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0


class Admitted:
    """A job in the engine plus the queue its events arrive on, in the event loop."""

    def __init__(self, service: Service, body: GenerateRequest, request: Request, *, progress: bool) -> None:
        if not service.ready.is_set() or service.engine is None:
            raise Unavailable(f"not ready: {service.load_error or 'the model is loading'}", retry_after=5)
        if service.draining:
            raise Unavailable("draining: the server is shutting down", retry_after=5)
        model, config = service.model, service.config
        assert model is not None
        n = body.n
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED - n + 2)
        if seed + n - 1 > MAX_SEED:
            raise RequestValidationError([{"loc": ("body", "seed"), "type": "less_than_equal",
                                           "msg": f"seed + n - 1 must be <= {MAX_SEED}"}])
        self.sampler = body.sampler or service.default_sampler
        self.steps = body.steps or service.default_steps
        self.guidance = config.sampling.guidance if body.guidance is None else body.guidance
        self.label = body.label
        self.seeds = [seed + i for i in range(n)]
        request.state.sampler = self.sampler
        plan = model.plan(self.sampler, self.steps, body.eta)
        timeout = min(body.timeout_s or service.settings.request_timeout_s, service.settings.request_timeout_s)
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called on the engine's thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self.queue.put_nowait, event)

        self.job = Job(
            id=request.state.request_id,
            specs=[RowSpec(plan=plan, seed=s, label=body.label, guidance=self.guidance) for s in self.seeds],
            deadline=time.monotonic() + timeout,
            emit=emit,
            progress=progress,
            preview_every=body.preview_every if progress else 0,
            sampler=self.sampler,
        )
        self.timeout = timeout
        self.service = service
        assert service.engine is not None
        service.engine.submit(self.job)

    def cancel(self) -> None:
        if self.job.finished is None and self.service.engine is not None:
            self.service.engine.cancel(self.job)

    def seed_headers(self) -> dict[str, str]:
        return {"X-Seed": str(self.seeds[0]), "X-Seeds": ",".join(map(str, self.seeds))}

    def timings(self) -> dict[str, float]:
        job, now = self.job, time.monotonic()
        started = job.started or now
        return {"queue_s": round(started - job.created, 6),
                "sampling_s": round((job.finished or now) - started, 6),
                "total_s": round(now - job.created, 6)}

    def body(self, images: list[np.ndarray]) -> dict[str, Any]:
        return GenerateResponse(
            request_id=self.job.id, model=self.service.config.name, steps=self.steps, sampler=self.sampler,
            label=self.label, guidance=self.guidance,
            images=[ImageOut(index=i, seed=s, png_base64=b64png(im))
                    for i, (s, im) in enumerate(zip(self.seeds, images, strict=True))],
            timings=Timings(**self.timings()),
        ).model_dump()


def b64png(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def encode_previews(previews: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    return [{"index": i, "png_base64": b64png(image)} for i, image in previews.items()]


def error_response(error: EngineError) -> HTTPException:
    headers = {"Retry-After": str(int(error.retry_after))} if error.retry_after else None
    return HTTPException(error.status, error.detail, headers=headers)


async def wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: Settings | None = None, *, model: DiffusionModel | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings, model)
    Body = request_model(service.config, max_images=settings.admissible_images, max_steps=service.max_steps,
                         max_guidance=settings.max_guidance)
    bearer = HTTPBearer(auto_error=False, description="required when DDPM_API_KEYS is set")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        check_api_key(settings.keys, credentials)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="ddpm-serve",
        version="0.1.0",
        summary="Image generation with denoising diffusion probabilistic models (Ho et al. 2020)",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes, metrics=service.metrics)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    generate_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": GenerateResponse, "content": {"image/png": {}},
              "description": "image/png (n > 1: one grid), or JSON with base64 PNGs"},
        **ERROR_RESPONSES,
    }

    @app.post("/generate", responses=generate_responses, dependencies=[Depends(authorize)],
              response_class=Response, summary="Generate images")
    async def generate(request: Request, body: Body | None = None) -> Response:  # type: ignore[valid-type]
        body = body or Body()
        try:
            admitted = Admitted(service, body, request, progress=False)
        except EngineError as exc:
            raise error_response(exc) from exc
        disconnect = asyncio.create_task(wait_disconnect(request))
        try:
            while True:
                get = asyncio.ensure_future(admitted.queue.get())
                done, _ = await asyncio.wait({get, disconnect}, timeout=admitted.timeout + 5.0,
                                             return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    admitted.cancel()
                    if disconnect in done:
                        return Response(status_code=499)
                    raise HTTPException(504, "deadline passed")
                event = get.result()
                if event.kind == "error":
                    raise error_response(event.data["error"])
                if event.kind == "done":
                    break
        finally:
            disconnect.cancel()
        images: list[np.ndarray] = event.data["images"]
        encode_start = time.perf_counter()
        if body.response_format == "png":
            picture = images[0] if len(images) == 1 else make_grid(np.stack(images))
            content = await run_in_threadpool(encode_png, picture)
            response: Response = Response(content, media_type="image/png")
        else:
            response = JSONResponse(await run_in_threadpool(admitted.body, images))
        timings = admitted.timings()
        service.metrics.request_duration.observe(timings["total_s"])
        response.headers.update(admitted.seed_headers())
        response.headers["Server-Timing"] = (
            f"queue;dur={timings['queue_s'] * 1e3:.1f}, sampling;dur={timings['sampling_s'] * 1e3:.1f}, "
            f"encode;dur={(time.perf_counter() - encode_start) * 1e3:.1f}, total;dur={timings['total_s'] * 1e3:.1f}")
        return response

    @app.post("/generate/stream", responses={200: {"content": {"text/event-stream": {}},
                                                   "description": "server-sent events"}, **ERROR_RESPONSES},
              dependencies=[Depends(authorize)], response_class=StreamingResponse,
              summary="Generate images, streaming progress as server-sent events")
    async def generate_stream(request: Request, body: Body | None = None) -> StreamingResponse:  # type: ignore[valid-type]
        """Events: `queued` {position}, `progress` {step, steps, images_done, n, previews?},
        `image` {index, seed, png_base64} as each image finishes, then `done` (the base64
        response body) or `error` {status, detail}."""
        body = body or Body()
        try:
            admitted = Admitted(service, body, request, progress=True)
        except EngineError as exc:
            raise error_response(exc) from exc

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    try:
                        event = await asyncio.wait_for(admitted.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if event.kind == "queued":
                        yield sse("queued", {"request_id": admitted.job.id, **event.data})
                    elif event.kind == "progress":
                        data = dict(event.data)
                        if "preview" in data:
                            data["previews"] = await run_in_threadpool(encode_previews, data.pop("preview"))
                        yield sse("progress", data)
                    elif event.kind == "image":
                        png = await run_in_threadpool(b64png, event.data["image"])
                        yield sse("image", {"index": event.data["index"], "seed": event.data["seed"],
                                            "png_base64": png})
                    elif event.kind == "done":
                        body_json = await run_in_threadpool(admitted.body, event.data["images"])
                        service.metrics.request_duration.observe(admitted.timings()["total_s"])
                        yield sse("done", body_json)
                        return
                    elif event.kind == "error":
                        error: EngineError = event.data["error"]
                        yield sse("error", {"status": error.status, "detail": error.detail})
                        return
            finally:
                admitted.cancel()  # the client left mid-stream: free the rows

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **admitted.seed_headers()}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> JSONResponse:
        if service.load_error:
            return JSONResponse({"status": "failed", "detail": service.load_error}, status_code=503)
        if service.engine is not None and not service.engine.alive and not service.draining:
            return JSONResponse({"status": "failed", "detail": "the engine thread stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Readiness", responses={503: ERROR_RESPONSES[503]})
    async def readyz() -> JSONResponse:
        if service.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not service.ready.is_set():
            status = "failed" if service.load_error else "loading"
            return JSONResponse({"status": status, "detail": service.load_error}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", summary="Model card and limits", dependencies=[Depends(authorize)])
    async def model_card() -> dict[str, Any]:
        return service.card()

    @app.get("/v1/schedule", summary="The noise schedule: alpha-bar_t for t in [0, T)",
             dependencies=[Depends(authorize)])
    async def schedule() -> dict[str, Any]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4): enough for a client to show the
        forward process on any image without another round trip per t."""
        return {"timesteps": service.config.diffusion.num_timesteps,
                "schedule": service.config.diffusion.schedule,
                "alphas_cumprod": service.alphas_cumprod}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
