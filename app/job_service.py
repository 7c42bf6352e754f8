"""Jobs on this replica: the store, the pump that feeds the engine from it, and the webhooks.

``JobService`` is made once per app next to ``Service``; ``EngineRows`` is the pump's view of the
engine: rows free for jobs (none until warm, none while draining), and a claimed job queued as a
background-class generation of its owner, built from the parameters resolved when it was made,
so the images are those of the same request to ``/generate`` with the same seed (an editing job's,
those of its endpoint: ``app.edit_jobs``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from model import RowSpec
from model.images import encode_png

from .edit_jobs import EditJobRun
from .engine import Generation
from .errors import QueueFull, ServingError, Unavailable
from .events import Done, Event, Failed, ImageReady, Progress
from .http_errors import status_of
from .jobs import Claim, JobStore, StoreOptions, open_store
from .jobs.pump import JobPump, JobSink, PumpOptions
from .jobs.webhooks import Resolver, WebhookOptions, WebhookSender, resolve, validate
from .service import Service
from .settings import Settings

log = logging.getLogger("ddpm.jobs")


class EngineRows:
    def __init__(self, service: Service, timeout_s: float) -> None:
        self.service = service
        self.timeout_s = timeout_s

    def free_rows(self) -> int:
        if not self.service.ready.is_set() or self.service.draining:
            return 0
        return self.service.engine.free_rows

    def start(self, claim: Claim, sink: JobSink) -> Callable[[], None]:
        job, model = claim.job, self.service.model
        p = job.spec.params
        timeout = min(p.get("timeout_s") or self.timeout_s, self.timeout_s)
        if job.spec.kind != "generate":  # an editing job: its endpoint's rows, in one or two phases
            return EditJobRun(self.service, claim, sink, timeout).start()
        plan = model.plan(p["sampler"], p["steps"], p.get("eta"))

        def emit(event: Event) -> None:  # on the engine's thread: the sink only enqueues
            match event:
                case Progress(step=step, steps=steps, images_done=done):
                    sink.progress(step, steps, done)
                case ImageReady(index=index, image=image):
                    sink.image(index, image)
                case Done(images=images):
                    sink.done(images)
                case Failed(error=error):
                    # the replica stops or is full: not the job's fault, so back to the queue
                    retry = isinstance(error, Unavailable | QueueFull)
                    sink.failed(status_of(error), error.detail, retry=retry)

        gen = Generation(
            id=job.id,
            specs=[RowSpec(plan=plan, seed=s, label=p.get("label"), guidance=p["guidance"]) for s in job.spec.seeds],
            deadline=time.monotonic() + timeout, emit=emit, progress=True, owner=job.owner, cls="job")
        try:
            self.service.engine.submit(gen)
        except ServingError as exc:
            sink.failed(status_of(exc), exc.detail, retry=True)
        return lambda: self.service.engine.cancel(gen)


class JobsCollector(Collector):
    """``ddpm_jobs{status}``: queued and running jobs of the whole store, read at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ddpm_jobs", "Jobs queued and running in the job store (all replicas)",
                                   labels=["status"])
        try:
            counts = self.store.counts()
        except Exception:  # the store is down: no sample rather than a failed scrape
            log.warning("job store unreachable for metrics", exc_info=True)
            counts = {}
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


def consumer_name() -> str:
    """Unique per process: a restarted replica must not inherit a dead one's claims."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class JobService:
    def __init__(self, settings: Settings, service: Service, *, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self.resolver = resolver
        options = StoreOptions(ttl_s=settings.job_ttl_s, lease_s=settings.job_lease_s,
                               max_attempts=settings.job_max_attempts)
        try:
            self.store: JobStore = open_store(data_dir=settings.data_dir, redis_url=settings.redis_url,
                                              options=options)
        except Exception as exc:  # `ddpm serve` reports a ValueError as one line and exits 2
            where = (f"DDPM_REDIS_URL={settings.redis_url}" if settings.redis_url
                     else f"DDPM_DATA_DIR={settings.data_dir}")
            raise ValueError(f"{where}: cannot open the job store: {type(exc).__name__}: {exc}") from exc
        metrics = service.metrics
        self.webhooks: WebhookSender | None = None
        if settings.webhook_secret:
            self.webhooks = WebhookSender(
                WebhookOptions(secret=settings.webhook_secret, max_attempts=settings.webhook_max_attempts,
                               backoff_s=settings.webhook_backoff_s, timeout_s=settings.webhook_timeout_s,
                               allow_private=settings.webhook_allow_private, poll_s=settings.job_poll_s),
                self.store, on_attempt=lambda outcome: metrics.webhook_deliveries.labels(outcome=outcome).inc(),
                resolver=resolver)
        self.pump = JobPump(self.store, EngineRows(service, settings.job_timeout_s),
                            PumpOptions(consumer=consumer_name(), poll_s=settings.job_poll_s),
                            encode=encode_png, webhooks=self.webhooks,
                            on_finish=lambda status: metrics.jobs_finished.labels(status=status).inc())
        metrics.registry.register(JobsCollector(self.store))

    def validate_webhook(self, url: str | None, events: list[str] | None) -> tuple[str | None, tuple[str, ...]]:
        """InvalidField (422) naming ``webhook`` or ``webhook_events``; resolves the host (blocking)."""
        return validate(url, events, enabled=self.webhooks is not None,
                        allow_private=self.settings.webhook_allow_private, resolver=self.resolver)

    def start(self) -> None:
        self.pump.start()

    def close(self) -> None:
        """Jobs still running go back to the queue; then the webhooks and the store close."""
        self.pump.close()
        if self.webhooks is not None:
            self.webhooks.close()
        self.store.close()

    def describe(self) -> dict[str, Any]:
        return {"store": "redis" if self.settings.redis_url else "sqlite", "ttl_s": self.settings.job_ttl_s,
                "webhooks": self.webhooks is not None}
