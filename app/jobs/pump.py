"""The pump: a replica pulls jobs from the store only when its engine has free rows.

It runs on a thread of its own, so store I/O (SQLite commits, Redis round trips) and PNG encoding
never hold up the engine. The engine side is reached through ``Rows`` (an adapter over the
engine: how many rows would take a new image now, and how to queue a claimed job's rows); the
engine reports back through a ``JobSink``, whose calls only enqueue.

- claims: every ``poll_s`` (or at once after ``wake``) while ``Rows.free_rows() > 0``;
- leases: renewed every lease/3, and with each progress report;
- cancel: a job canceled on any replica (store event) or a lost lease leaves the batch at once;
- images: each encoded and stored as it finishes (``put_image``: SSE clients get an ``image`` event);
- end: the rest encoded, stored (``complete``, which also puts the webhook event in the store's
  outbox, sent by whichever replica's ``WebhookSender``); failures likewise;
- shutdown: ``close`` hands unfinished jobs back to the queue (``release``) for another replica or
  the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .records import Claim, Failure, Job, JobEvent, Progress
from .store import JobStore
from .webhooks import WebhookSender

log = logging.getLogger("ddpm.jobs")


class JobSink:
    """What the engine calls for one claimed job (from its own thread): each call only enqueues."""

    def __init__(self, pump: JobPump, claim: Claim) -> None:
        # keyed by the claim's token: a late event of an earlier run of the same job is ignored
        self._pump, self._key = pump, f"{claim.job.id}/{claim.token}"

    def progress(self, step: int, steps: int, images_done: int) -> None:
        self._pump._events.put(("progress", self._key, Progress(step, steps, images_done)))

    def image(self, index: int, image: Any) -> None:
        """Image ``index`` has finished (an array: the pump encodes it)."""
        self._pump._events.put(("image", self._key, (index, image)))

    def done(self, images: Sequence[Any]) -> None:
        """Every image of the job, in order (arrays: the pump encodes them)."""
        self._pump._events.put(("done", self._key, list(images)))

    def failed(self, status: int, message: str, *, retry: bool = False) -> None:
        """The engine could not finish the job; ``retry``: not the job's fault (the replica is
        shutting down), so it goes back to the queue instead of failing."""
        self._pump._events.put(("failed", self._key, (Failure(status, message), retry)))


class Rows(Protocol):
    def free_rows(self) -> int:
        """Rows that would take a new image now: free batch rows less the images already waiting."""
        ...

    def start(self, claim: Claim, sink: JobSink) -> Callable[[], None]:
        """Queue the claimed job's images as background-class rows; returns a function that
        removes them (cancel)."""
        ...


@dataclass(frozen=True)
class PumpOptions:
    consumer: str  # this replica's name in the consumer group (unique per process)
    poll_s: float = 0.25  # how often an idle replica looks for work
    progress_interval_s: float = 0.5  # least time between two stored progress reports of a job


@dataclass
class _Held:
    claim: Claim
    cancel: Callable[[], None]
    unsubscribe: Callable[[], None]
    last_progress: float = 0.0
    pngs: dict[int, bytes] = field(default_factory=dict)  # images already encoded and stored


class JobPump:
    def __init__(self, store: JobStore, rows: Rows, options: PumpOptions, *,
                 encode: Callable[[Any], bytes], webhooks: WebhookSender | None = None,
                 on_finish: Callable[[str], None] | None = None) -> None:
        self.store, self.rows, self.options = store, rows, options
        self._encode = encode
        self._webhooks = webhooks
        self._on_finish = on_finish or (lambda status: None)
        self._events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._held: dict[str, _Held] = {}
        self._claiming = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recovered = 0

    # ---- control (any thread) ----

    def start(self) -> None:
        self.recovered = self.store.recover()
        if self.recovered:
            log.info("requeued %d jobs left running by the previous process", self.recovered)
        self._claiming.set()
        self._thread = threading.Thread(target=self._run, name="ddpm-job-pump", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (a job was just queued on this replica)."""
        self._events.put(("wake", "", None))

    @property
    def held(self) -> int:
        return len(self._held)

    def close(self, timeout: float = 5.0) -> None:
        """Stop; jobs still held go back to the queue."""
        self._claiming.clear()
        self._events.put(("stop", "", None))
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the pump thread ----

    def _run(self) -> None:
        lease = self.store.options.lease_s
        next_claim = next_renew = 0.0
        while True:
            now = time.monotonic()
            if self._claiming.is_set() and now >= next_claim:
                self._claim()
                next_claim = now + self.options.poll_s
            if now >= next_renew:
                self._renew()
                next_renew = now + lease / 3
            try:
                kind, job_id, data = self._events.get(timeout=max(0.0, min(next_claim, next_renew) - now))
            except queue.Empty:
                continue
            try:
                if kind == "stop":
                    break
                if kind == "wake":
                    next_claim = 0.0
                else:
                    self._handle(kind, job_id, data)
            except Exception:  # a store outage must not end the pump: the lease brings the job back
                log.exception("job pump: handling %s of job %s failed", kind, job_id)
        for job_id in list(self._held):
            self._drop(job_id, release=True)

    def _claim(self) -> None:
        try:
            free = self.rows.free_rows()
            if free <= 0:
                return
            claims = self.store.claim(self.options.consumer, free)
        except Exception:
            log.exception("job pump: claiming failed")
            return
        for claim in claims:
            job_id = claim.job.id

            def on_event(event: JobEvent, job_id: str = job_id) -> None:
                if event.kind == "status" and event.data.get("status") == "canceled":
                    self._events.put(("canceled", job_id, None))

            unsubscribe = self.store.subscribe(job_id, on_event)
            cancel = self.rows.start(claim, JobSink(self, claim))
            self._held[job_id] = _Held(claim, cancel, unsubscribe)
            if claim.job.attempts == 1 and self._webhooks is not None:
                self._webhooks.wake()  # job.started, if it asked for it, is in the outbox

    def _renew(self) -> None:
        for job_id, held in list(self._held.items()):
            try:
                if not self.store.extend(held.claim):
                    self._drop(job_id)
            except Exception:
                log.exception("job pump: renewing the lease of %s failed", job_id)

    def _handle(self, kind: str, key: str, data: Any) -> None:
        job_id, _, token = key.partition("/")
        held = self._held.get(job_id)
        if held is None or (token and token != held.claim.token):
            return
        if kind == "canceled":
            self._drop(job_id)
        elif kind == "progress":
            now = time.monotonic()
            if now - held.last_progress >= self.options.progress_interval_s:
                held.last_progress = now
                if not self.store.progress(held.claim, data):
                    self._drop(job_id)  # canceled, expired or re-delivered elsewhere
        elif kind == "image":
            index, image = data
            held.pngs[index] = png = self._encode(image)
            if not self.store.put_image(held.claim, index, png):
                self._drop(job_id)
        elif kind == "done":
            pngs = [held.pngs.get(i) or self._encode(image) for i, image in enumerate(data)]
            self._finish(job_id, self.store.complete(held.claim, pngs))
        elif kind == "failed":
            failure, retry = data
            if retry:
                self._drop(job_id, release=True)
            else:
                self._finish(job_id, self.store.fail(held.claim, failure))

    def _finish(self, job_id: str, job: Job | None) -> None:
        held = self._held.pop(job_id)
        held.unsubscribe()
        if job is not None:
            self._on_finish(job.status)
            if self._webhooks is not None:
                self._webhooks.wake()  # its event, if it asked for one, is in the outbox

    def _drop(self, job_id: str, *, release: bool = False) -> None:
        """Stop running a job here: its rows leave the batch; ``release``: back to the queue."""
        held = self._held.pop(job_id, None)
        if held is None:
            return
        held.unsubscribe()
        held.cancel()
        if release:
            try:
                self.store.release(held.claim)
            except Exception:
                log.exception("job pump: releasing %s failed; its lease will bring it back", job_id)
