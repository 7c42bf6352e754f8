"""``response_format="url"``: the request runs as a job, and the answer holds URLs to its images.

The job is made exactly as ``POST /v1/jobs`` makes one (parameters resolved now, the seed drawn
now), so it is kept in the job store, fetchable from any replica sharing that store until
``DDPM_JOB_TTL_S`` after it ends, and it belongs to the caller's API key: fetching a URL needs the
same ``Authorization: Bearer`` key (OpenAI's URLs are public; ours are authenticated wherever keys
are configured). The request waits for the job and answers when it has ended.

The store keeps each image as the native PNG (``model.images.encode_png``, the bytes
``b64_json`` carries for ``png`` at the native size). So:

- ``png`` at the native size: ``{base}/v1/jobs/{id}/images/{i}``, the jobs API's own URL;
- any other ``output_format`` or ``size``: ``{base}/v1/images/jobs/{id}/images/{i}?output_format=...
  &output_compression=...&upscale=...``, which reads the same stored PNG and re-encodes it on
  GET (the bytes ``b64_json`` would have carried for the same request).

``base`` is the request's own base URL: uvicorn already honours ``X-Forwarded-Proto`` and
``X-Forwarded-For`` from trusted proxies (``FORWARDED_ALLOW_IPS``, loopback by default) and
nginx forwards ``Host``, so behind docker/nginx.conf the URLs name the address the client used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlencode

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..errors import Cancelled, DeadlineExceeded
from ..generation import Resolved
from ..job_service import JobService
from ..jobs import Job, JobEvent, JobSpec, JobStore, fingerprint
from ..routes.generate import wait_disconnect
from .errors import OpenAIError, from_status
from .plan import ImagesPlan

POLL_S = 1.0  # the store is read again at least this often (Redis pub/sub delivers at most once)
REENCODE_PATH = "/v1/images/jobs/{job_id}/images/{index}"


def job_spec(resolved: Resolved, body_fields: dict[str, object]) -> JobSpec:
    """The job ``POST /v1/jobs`` would make from the same resolved parameters."""
    return JobSpec(
        n=len(resolved.seeds), seed=resolved.seeds[0],
        params={"steps": resolved.steps, "sampler": resolved.sampler, "eta": resolved.eta, "label": resolved.label,
                "guidance": resolved.guidance, "timeout_s": resolved.timeout_s},
        fingerprint=fingerprint(body_fields))


def image_urls(base_url: str, plan: ImagesPlan, job: Job) -> list[str]:
    """One absolute URL per image (see the module for which path)."""
    base = base_url.rstrip("/")
    if plan.output_format == "png" and plan.size.factor == 1:
        return [f"{base}/v1/jobs/{job.id}/images/{i}" for i in range(job.n)]
    query = urlencode({"output_format": plan.output_format, "output_compression": plan.compression,
                       "upscale": plan.size.factor})
    return [f"{base}{REENCODE_PATH.format(job_id=job.id, index=i)}?{query}" for i in range(job.n)]


async def run_job(jobs: JobService, owner: str, spec: JobSpec, request: Request, *, timeout_s: float,
                  max_queued_images: int | None) -> Job:
    """Queue the job, wait for it to end, and return it succeeded; a failure is an OpenAIError with
    the job's status and message. The client leaving, or ``timeout_s`` passing, cancels the job."""
    store = jobs.store
    job, _ = await run_in_threadpool(lambda: store.create(owner, spec, max_queued_images=max_queued_images))
    jobs.pump.wake()
    try:
        job = await wait_terminal(store, job.id, owner, request, time.monotonic() + timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            await run_in_threadpool(store.cancel, job.id, owner)
        raise
    if job.status == "succeeded":
        return job
    if job.status == "canceled":
        raise OpenAIError(500, f"job {job.id} was canceled before it finished", code="job_canceled")
    assert job.error is not None
    raise from_status(job.error.status, job.error.message)


async def wait_terminal(store: JobStore, job_id: str, owner: str, request: Request, deadline: float) -> Job:
    """Subscribed first, then the store read, so that no event is missed between the two. Raises
    Cancelled the moment the client leaves, DeadlineExceeded when ``deadline`` passes."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def on_event(event: JobEvent) -> None:  # on the store's thread
        if event.kind == "status":
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(changed.set)

    unsubscribe: Callable[[], None] = store.subscribe(job_id, on_event)
    gone = asyncio.ensure_future(wait_disconnect(request))
    try:
        while True:
            changed.clear()  # before the read: an event during it wakes the next wait
            job = await run_in_threadpool(store.get, job_id, owner)
            if job.terminal:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"job {job_id} did not finish within the request's deadline")
            woken = asyncio.ensure_future(changed.wait())
            await asyncio.wait({woken, gone}, timeout=min(POLL_S, left), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if gone.done():
                raise Cancelled("the client closed the connection")
    finally:
        gone.cancel()
        unsubscribe()
