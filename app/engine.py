"""The engine: step-level continuous batching on one worker thread that owns the model.

Each image of each request is a row of a ``model.RowBatch``. Every iteration the worker

1. drops rows whose request was cancelled or whose deadline passed,
2. admits waiting rows, FIFO, into free slots (a request's rows may join over several steps),
3. runs ONE network call over all rows, each at its own timestep (``RowBatch.step``),
4. hands finished images, progress and previews back through each job's ``emit`` callback.

So a 10-step request arriving during a 1000-step one starts at the next step instead of
waiting. Nothing here knows HTTP: jobs talk back only through ``emit``, which the API layer
makes thread-safe. PNG encoding happens off this thread.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model import DiffusionModel, Row, RowBatch, RowSpec

from .metrics import Metrics

log = logging.getLogger("ddpm.engine")


class EngineError(Exception):
    """A request that could not be served; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class QueueFull(EngineError):
    status = 429


class DeadlineExceeded(EngineError):
    status = 504


class Unavailable(EngineError):
    status = 503


class SamplingFailed(EngineError):
    status = 500


class Cancelled(EngineError):
    status = 499  # nginx's "client closed request": nobody is left to read it


@dataclass
class Event:
    """What the engine tells a job: queued, progress, image, done, error."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Job:
    """One request: ``specs[i]`` is image i. ``emit`` must be safe to call from the worker thread."""

    id: str
    specs: list[RowSpec]
    deadline: float  # time.monotonic()
    emit: Callable[[Event], None]
    progress: bool = False  # send progress events (streams only)
    preview_every: int = 0  # and the x0 prediction every k steps
    sampler: str = ""
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancelled: bool = False
    admitted: int = 0  # rows handed to the batch so far
    rows: list[Row] = field(default_factory=list)
    images: list[np.ndarray | None] = field(default_factory=list)
    images_done: int = 0
    last_progress: float = 0.0
    last_preview_step: int = 0

    def __post_init__(self) -> None:
        self.images = [None] * len(self.specs)

    @property
    def n(self) -> int:
        return len(self.specs)

    @property
    def steps(self) -> int:
        return self.specs[0].plan.steps

    @property
    def step(self) -> int:
        """Steps done, averaged over the job's images (finished ones count in full)."""
        done = self.images_done * self.steps + sum(r.step for r in self.rows)
        return done // self.n


class Engine:
    def __init__(
        self,
        model: DiffusionModel,
        *,
        max_batch: int,
        max_queue_images: int,
        metrics: Metrics,
        progress_interval_s: float = 0.05,
        max_steps: int | None = None,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.max_queue_images = max_queue_images
        self.progress_interval_s = progress_interval_s
        self.batch: RowBatch = model.row_batch(max_batch, max_steps=max_steps)
        self._pending: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []  # jobs with rows in the batch (or about to)
        self._queued_images = 0
        self._active_images = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._step_time = 0.0  # exponential average of one iteration, for Retry-After

    # ---- the API side (event-loop thread) ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ddpm-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job or raise QueueFull (429) / Unavailable (503)."""
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            free = self.batch.capacity - self._active_images
            if self._queued_images + job.n > self.max_queue_images + free:
                raise QueueFull(
                    f"queue full: {self._queued_images} images waiting, limit max_queue_images="
                    f"{self.max_queue_images}", retry_after=self.retry_after(job.n))
            self._pending.append(job)
            self._queued_images += job.n
            position = self._queued_images - job.n
            self.metrics.queue_images.set(self._queued_images)
            self._cond.notify()
        job.emit(Event("queued", {"position": position}))

    def cancel(self, job: Job) -> None:
        """Free the job's rows at the next step (the client went away)."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def retry_after(self, n: int = 1) -> float:
        """Seconds until about ``n`` more images could start, from the queue and the step time."""
        per_image = self._step_time * self.model.config.sampling.steps / max(self.batch.capacity, 1)
        return max(1.0, math.ceil((self._queued_images + n) * per_image))

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._pending and not self._running

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; jobs still waiting or running fail with 503."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker thread ----

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._running:
                    self._cond.wait()
                if self._stopping:
                    break
            try:
                self._reap()
                self._admit()
                if len(self.batch):
                    self._iterate()
            except Exception as exc:  # a bug here must not leave every later request hanging
                log.exception("engine iteration failed; failing the requests it held")
                for job in list(dict.fromkeys([*self._running, *self._pending])):
                    self._fail(job, SamplingFailed(f"internal error: {type(exc).__name__}: {exc}"))
        for job in list(dict.fromkeys([*self._running, *self._pending])):
            self._fail(job, Unavailable("the server is shutting down"))

    def _fail(self, job: Job, error: EngineError) -> None:
        for row in job.rows:
            self.batch.remove(row)
        job.rows.clear()
        with self._cond:
            if job in self._running:
                self._running.remove(job)
            if job in self._pending:
                self._pending.remove(job)
                self._queued_images -= job.n - job.admitted
            self._active_images = len(self.batch)
        self._update_gauges()
        job.finished = time.monotonic()
        job.emit(Event("error", {"error": error}))

    def _reap(self) -> None:
        now = time.monotonic()
        with self._cond:
            jobs = list(dict.fromkeys([*self._running, *self._pending]))  # a job can be in both
        for job in jobs:
            if job.cancelled:
                self._fail(job, Cancelled("the client closed the connection"))
            elif now > job.deadline:
                self._fail(job, DeadlineExceeded(
                    f"deadline passed after {now - job.created:.1f}s at step {job.step} of {job.steps}"))

    def _admit(self) -> None:
        with self._cond:
            while self._pending and self.batch.free:
                job = self._pending[0]
                if job.admitted == 0:
                    job.started = time.monotonic()
                    self.metrics.queue_wait.observe(job.started - job.created)
                    self._running.append(job)
                take = min(self.batch.free, job.n - job.admitted)
                for i in range(job.admitted, job.admitted + take):
                    job.rows.append(self.batch.add(job.specs[i], tag=(job, i)))
                job.admitted += take
                self._queued_images -= take
                if job.admitted == job.n:
                    self._pending.popleft()
            self._active_images = len(self.batch)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.queue_images.set(self._queued_images)
        self.metrics.active_images.set(self._active_images)

    def _iterate(self) -> None:
        rows = len(self.batch)
        start = time.perf_counter()
        try:
            finished = self.batch.step()
        except Exception as exc:  # e.g. out of memory: fail this batch's requests, keep serving
            log.exception("network call failed; failing the %d requests in this batch", len(self._running))
            error = SamplingFailed(f"sampling failed: {type(exc).__name__}: {exc}")
            for job in list(self._running):
                self._fail(job, error)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        elapsed = time.perf_counter() - start
        self._step_time = elapsed if self._step_time == 0 else 0.9 * self._step_time + 0.1 * elapsed
        self.metrics.batch_size.observe(rows)
        self.metrics.step_duration.observe(elapsed)
        for row in finished:
            job, index = row.tag
            job.rows.remove(row)
            job.images[index] = row.image
            job.images_done += 1
            self.metrics.images.inc()
            if job.progress:
                job.emit(Event("image", {"index": index, "seed": row.spec.seed, "image": row.image}))
        now = time.monotonic()
        for job in list(self._running):
            if job.images_done == job.n:
                self._complete(job, now)
            elif job.progress:
                self._report_progress(job, now)
        if finished:
            with self._cond:
                self._active_images = len(self.batch)
            self._update_gauges()

    def _complete(self, job: Job, now: float) -> None:
        with self._cond:
            self._running.remove(job)
        job.finished = now
        job.emit(Event("done", {"images": job.images}))

    def _report_progress(self, job: Job, now: float) -> None:
        step = job.step
        data: dict[str, Any] = {"step": step, "steps": job.steps, "images_done": job.images_done, "n": job.n}
        preview_due = job.preview_every > 0 and job.rows and step - job.last_preview_step >= job.preview_every
        if preview_due:
            job.last_preview_step = step
            data["preview"] = {i: image for (_, i), image in
                               zip((r.tag for r in job.rows), self.batch.preview(job.rows), strict=True)}
        elif now - job.last_progress < self.progress_interval_s:
            return
        job.last_progress = now
        job.emit(Event("progress", data))
