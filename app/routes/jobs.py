"""``/v1/jobs``: generations that outlive their connection and their replica.

A job is made from the same body as ``/generate`` (plus ``webhook``), or with ``kind`` "edit",
"interpolation" or "variations" from that editing endpoint's body (``app.edit_jobs``), its
parameters resolved and checked at once (the seed drawn now, so a re-run gives the same images),
and queued in the job store;
a replica's pump hands it to its engine when rows are free. It belongs to the API key that
made it: any other key gets 404. Domain errors (``app.jobs.errors``) become statuses in
``app.http_errors``, as every route's do.

(No ``from __future__ import annotations``: FastAPI must see the request model, built at run
time from the model's bounds, as a real type.)
"""

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Discriminator, Field, Tag, create_model
from starlette.concurrency import run_in_threadpool

from ..edit_jobs import BODIES, endpoint_body, spec_for
from ..errors import Cancelled
from ..generation import resolve
from ..http import request_owner, sse
from ..http_errors import status_of
from ..job_service import JobService
from ..jobs import InvalidField, Job, JobError, JobEvent, JobSpec, JobStatus, fingerprint
from ..jobs.records import TERMINAL
from ..jobs.store import JobStore
from ..jobs.webhooks import EVENTS, MAX_URL_LENGTH
from ..schemas import ERROR_RESPONSES, GenerateRequest
from ..service import Service

KEEPALIVE_S = 15.0
ENDPOINTS = {"edit": "/v1/edits", "interpolation": "/v1/interpolations", "variations": "/v1/variations"}
MAX_IDEMPOTENCY_KEY = 255
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"description": "no such job for this API key"},
    409: {"description": "Idempotency-Key reused with another body, or the job has no images yet"},
    410: {"description": "the job expired (DDPM_JOB_TTL_S)"},
    429: {"description": "this API key has max_queued_images_per_key images queued"},
}


def job_json(job: Job) -> dict[str, Any]:
    """What GET /v1/jobs/{id} answers; times are Unix seconds."""
    p = job.spec.params
    body: dict[str, Any] = {
        "id": job.id, "kind": job.spec.kind, "status": job.status, "n": job.n, "seeds": job.spec.seeds,
        "steps": p.get("steps"), "sampler": p.get("sampler"), "eta": p.get("eta"), "label": p.get("label"),
        "guidance": p.get("guidance"), "webhook": job.spec.webhook, "webhook_events": list(job.spec.webhook_events),
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "expires_at": job.expires_at, "attempts": job.attempts,
    }
    if job.status == "queued":
        body["position"] = job.position
    if job.progress is not None:
        body["progress"] = {"step": job.progress.step, "steps": job.progress.steps,
                            "images_done": job.progress.images_done}
    if job.status == "succeeded":
        body["images"] = [{"index": i, "seed": s, "url": f"/v1/jobs/{job.id}/images/{i}"}
                          for i, s in enumerate(job.spec.seeds)]
    if job.error is not None:
        body["error"] = {"status": job.error.status, "message": job.error.message}
    return body


def webhook_fields(webhooks: bool) -> dict[str, Any]:
    """The webhook fields a job request adds to its body; without a webhook secret the schema itself
    says that ``webhook`` must be null."""
    if not webhooks:
        off = "webhooks are off on this server (DDPM_WEBHOOK_SECRET is not set): null"
        return {"webhook": (None, Field(None, description=off)),
                "webhook_events": (None, Field(None, description=off))}
    events_type: Any = list[Literal[EVENTS]] | None  # type: ignore[valid-type]
    return {
        "webhook": (str | None, Field(None, min_length=8, max_length=MAX_URL_LENGTH, pattern=r"^https?://[^/?#]+",
                                      description="http(s) URL to POST job events to (Standard Webhooks signed); "
                                      "loopback, private and metadata addresses are refused")),
        "webhook_events": (events_type, Field(
            None, description="which events; null: job.succeeded, job.failed, job.canceled")),
    }


def kind_of(value: Any) -> str | None:
    """The variant of a job request: its ``kind``, "generate" when absent (bodies from before the kinds)."""
    kind = value.get("kind", "generate") if isinstance(value, dict) else getattr(value, "kind", "generate")
    return kind if isinstance(kind, str) else None


def job_request_model(body_model: type[GenerateRequest], *, webhooks: bool) -> tuple[type[BaseModel], Any]:
    """A discriminated union on ``kind``: "generate" (the default), ``/generate``'s body with this
    server's bounds; "edit", "interpolation", "variations", the body of ``/v1/edits``,
    ``/v1/interpolations``, ``/v1/variations``; each plus the webhook fields."""
    kinds: Any = Literal["generate"]
    generate = create_model("JobRequestBody", __base__=body_model, kind=(
        kinds, Field("generate", description="generate (the default), edit, interpolation or "
                                   "variations: the rest of the body is that endpoint's")), **webhook_fields(webhooks))
    variants: list[Any] = [Annotated[generate, Tag("generate")]]
    for kind, base in BODIES.items():
        one: Any = Literal[kind]
        model = create_model(f"{kind.capitalize()}JobRequestBody", __base__=base,
                             kind=(one, Field(description=f"the body of POST {ENDPOINTS[kind]}")),
                             **webhook_fields(webhooks))
        variants.append(Annotated[model, Tag(kind)])
    return generate, Annotated[Union[tuple(variants)], Discriminator(kind_of)]  # noqa: UP007  # a union built at run time


def untagged(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error of the job request as its endpoint's: the union's tag ("generate.n") left out
    of the field's name ("n"), and a bad ``kind`` named as the field ``kind``."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found") and loc == ("body",):
        return {**error, "loc": ("body", "kind")}
    if len(loc) > 1 and loc[0] == "body" and loc[1] in ("generate", *BODIES):
        return {**error, "loc": ("body", *loc[2:])}
    return error


class JobRoute(APIRoute):
    """Reports a job request's validation errors with the field names of its endpoint's body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError([untagged(e) for e in exc.errors()], body=exc.body) from None

        return route


def make_router(service: Service, jobs: JobService, body_model: type[GenerateRequest]) -> APIRouter:
    router = APIRouter(tags=["jobs"], route_class=JobRoute)
    generate_body, union = job_request_model(body_model, webhooks=jobs.webhooks is not None)
    Body: Any = union  # a type built at run time from the model's bounds
    store, settings = jobs.store, service.settings

    def owner(request: Request) -> str:
        return request_owner(request, settings.keys)

    @router.post("/v1/jobs", status_code=202, summary="Queue a job: images generated in the background",
                 responses=JOB_RESPONSES)
    async def create_job(request: Request, body: Body | None = None) -> JSONResponse:
        """Answers 202 with the job and `Location: /v1/jobs/{id}`. `kind` says what the job runs:
        `generate` (the default), or `edit`, `interpolation`, `variations` with the body of `/v1/edits`,
        `/v1/interpolations`, `/v1/variations` (refused here as there, before anything is queued). With an
        `Idempotency-Key` header, the same key and body give the same job (header `Idempotent-Replayed:
        true`), another body 409."""
        body = body or generate_body()
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidField("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        spec = await job_spec(body)
        job, created = await run_in_threadpool(lambda: store.create(
            owner(request), spec, idempotency_key=key, max_queued_images=settings.max_queued_images_per_key))
        if created:
            jobs.pump.wake()
        headers = {"Location": f"/v1/jobs/{job.id}"} | ({} if created else {"Idempotent-Replayed": "true"})
        return JSONResponse(job_json(job), status_code=202, headers=headers)

    async def job_spec(body: Any) -> JobSpec:
        """The job's spec, its seed drawn now (a re-run gives the same images)."""
        client = body.model_dump(mode="json", exclude_unset=True)
        if body.kind == "generate":
            client.pop("kind", None)  # the fingerprint of a body from before the kinds
            resolved = resolve(body.params(), service)
        url, events = await run_in_threadpool(jobs.validate_webhook, body.webhook, body.webhook_events)
        job: dict[str, Any] = {"webhook": url, "webhook_events": events, "fingerprint": fingerprint(client)}
        if body.kind != "generate":
            return await run_in_threadpool(spec_for, service, body.kind, endpoint_body(body, body.kind), **job)
        return JobSpec(n=len(resolved.seeds), seed=resolved.seeds[0], **job,
                       params={"steps": resolved.steps, "sampler": resolved.sampler, "eta": resolved.eta,
                               "label": resolved.label, "guidance": resolved.guidance, "timeout_s": body.timeout_s})

    add_reads(router, store, owner, settings.job_ttl_s)

    def canceled(before: Job, job: Job) -> None:
        if not before.terminal and job.status == "canceled":
            service.metrics.jobs_finished.labels(status="canceled").inc()
            if jobs.webhooks is not None:
                jobs.webhooks.wake()  # job.canceled, if it asked for it, is in the outbox

    @router.delete("/v1/jobs/{job_id}", summary="Cancel a job (idempotent)", responses=JOB_RESPONSES)
    async def cancel_job(request: Request, job_id: str = Path(max_length=64)) -> dict[str, Any]:
        """A queued job never runs; a running job's rows leave the batch at the next step (on whichever
        replica runs it). The job stays readable as `canceled` until it expires (`DDPM_JOB_TTL_S`); a job
        that already ended (a second DELETE too) is answered as it is, 200."""
        before = await run_in_threadpool(store.get, job_id, owner(request))
        job = await run_in_threadpool(store.cancel, job_id, owner(request))
        canceled(before, job)
        return job_json(job)

    return router


def add_reads(router: APIRouter, store: JobStore, owner: Callable[[Request], str], ttl_s: float) -> None:
    """GET /v1/jobs, /v1/jobs/{id}, its images and its events: what a job's owner reads."""

    @router.get("/v1/jobs", summary="This API key's jobs, newest first", responses=JOB_RESPONSES)
    async def list_jobs(request: Request, status: JobStatus | None = None,
                        limit: int = Query(20, ge=1, le=store.options.max_list),
                        cursor: str | None = Query(None, pattern=r"^s[0-9]{1,18}$",
                                                   description="next_cursor of the previous page")) -> dict[str, Any]:
        page = await run_in_threadpool(lambda: store.list_jobs(owner(request), status=status, limit=limit,
                                                               cursor=cursor))
        return {"jobs": [job_json(j) for j in page.jobs], "next_cursor": page.next_cursor}

    @router.get("/v1/jobs/{job_id}", summary="A job: status, position, progress, images, error",
                responses=JOB_RESPONSES)
    async def get_job(request: Request, job_id: str = Path(max_length=64)) -> dict[str, Any]:
        return job_json(await run_in_threadpool(store.get, job_id, owner(request)))

    @router.get("/v1/jobs/{job_id}/images/{index}", response_class=Response, summary="Image `index` of a job",
                responses={200: {"content": {"image/png": {}}}, **JOB_RESPONSES})
    async def job_image(request: Request, job_id: str = Path(max_length=64), index: int = Path(ge=0)) -> Response:
        png = await run_in_threadpool(store.image, job_id, index, owner(request))
        # fixed by its seed and parameters: cacheable, by this client only (it is one key's)
        return Response(png, media_type="image/png", headers={
            "Cache-Control": f"private, max-age={int(ttl_s)}, immutable",
            "ETag": f'"{job_id}-{index}"'})

    @router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse,
                summary="A job's events from now on, as server-sent events",
                responses={200: {"content": {"text/event-stream": {}}}, **JOB_RESPONSES})
    async def job_events(request: Request, job_id: str = Path(max_length=64)) -> StreamingResponse:
        """The event types of `/generate/stream`: `queued` {job_id, position}, `progress` {step, steps,
        images_done, n}, `image` {index, seed, url, png_base64} as each image finishes, then `done` (the
        job, with its image URLs) or `error` {status, detail}; at once if the job has already ended."""
        who = owner(request)
        await run_in_threadpool(store.get, job_id, who)  # 404 / 410 before the stream starts
        return StreamingResponse(job_event_stream(store, job_id, who), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def job_event_stream(store: JobStore, job_id: str, who: str) -> AsyncIterator[bytes]:
    """A job's events as SSE: subscribed first, then its state, so that nothing is missed."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[JobEvent] = asyncio.Queue()

    def on_event(event: JobEvent) -> None:  # on the store's thread
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(events.put_nowait, event)

    unsubscribe = store.subscribe(job_id, on_event)
    try:
        job = await run_in_threadpool(store.get, job_id, who)  # after subscribing: nothing is missed
        if job.terminal:
            yield end_event(job)
            return
        yield state_event(job)
        while True:
            try:
                event = await asyncio.wait_for(events.get(), KEEPALIVE_S)
            except TimeoutError:
                # Redis pub/sub delivers at most once: the store itself has the last word
                job = await run_in_threadpool(store.get, job_id, who)
                if job.terminal:
                    yield end_event(job)
                    return
                yield b": keep-alive\n\n"
                continue
            status = event.data.get("status")
            if event.kind == "progress":
                yield sse("progress", event.data)
            elif event.kind == "image":
                yield await image_event(store, job_id, who, event.data)
            elif status in TERMINAL:
                yield end_event(await run_in_threadpool(store.get, job_id, who))
                return
            elif status in ("queued", "running"):  # handed back to the queue, or (re)started
                yield state_event(await run_in_threadpool(store.get, job_id, who))
    finally:
        unsubscribe()


async def image_event(store: JobStore, job_id: str, who: str, data: dict[str, Any]) -> bytes:
    """/generate/stream's ``image`` event ({index, seed, png_base64}) plus the image's URL; the PNG is
    read from the store (the event that crossed replicas carries none)."""
    index = int(data["index"])
    body = {"index": index, "seed": data["seed"], "url": f"/v1/jobs/{job_id}/images/{index}"}
    try:
        png = await run_in_threadpool(store.image, job_id, index, who)
        body["png_base64"] = base64.b64encode(png).decode()
    except JobError:  # expired or canceled meanwhile: the URL says where it would be
        pass
    return sse("image", body)


def progress_of(job: Job) -> dict[str, Any]:
    p = job.progress
    return {"step": p.step if p else 0, "steps": p.steps if p else job.spec.params.get("steps"),
            "images_done": p.images_done if p else 0}


def state_event(job: Job) -> bytes:
    if job.status == "queued":
        return sse("queued", {"job_id": job.id, "position": job.position})
    return sse("progress", {**progress_of(job), "n": job.n})


def end_event(job: Job) -> bytes:
    if job.status == "succeeded":
        return sse("done", job_json(job))
    if job.status == "canceled":
        return sse("error", {"status": status_of(Cancelled("")), "detail": "the job was canceled"})
    assert job.error is not None
    return sse("error", {"status": job.error.status, "detail": job.error.message})
