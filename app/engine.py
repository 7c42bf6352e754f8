"""The engine: step-level continuous batching on one worker thread that owns the model.

Each image of each generation is a row of a ``model.RowBatch``. Every iteration the worker

1. drops rows whose generation was cancelled or whose deadline passed,
2. admits waiting rows into free slots, fairly (``app.admission``: round robin across API keys
   in images, interactive requests before background jobs, jobs aging so they are never starved);
   a generation's rows may join over several steps,
3. runs ONE network call over all rows, each at its own timestep (``RowBatch.step``),
4. tells each generation what happened through its ``emit`` callback, as typed events.

So a 10-step request arriving during a 1000-step one starts at the next step instead of
waiting. Nothing here knows HTTP: failures are ``app.errors`` exceptions carried by ``Failed``
events, and the HTTP layer alone turns them into statuses. PNG encoding happens off this thread.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from model import DiffusionModel, Row, RowSpec

from .admission import CLASSES, Class, FairQueue, Ticket
from .errors import Cancelled, DeadlineExceeded, QueueFull, SamplingFailed, ServingError, Unavailable
from .events import Done, Event, Failed, ImageReady, Progress, Queued
from .metrics import Metrics
from .runtime import RuntimePlan

log = logging.getLogger("ddpm.engine")


@dataclass(eq=False)
class Generation:
    """n images the engine samples together: ``specs[i]`` is image i.

    ``emit`` is called on the worker thread and must be thread-safe (the HTTP layer makes it so).
    """

    id: str
    specs: list[RowSpec]
    deadline: float  # time.monotonic()
    emit: Callable[[Event], None]
    progress: bool = False  # emit Progress and ImageReady (streams); else only Queued and the end
    preview_every: int = 0  # and the x0 prediction every k steps
    owner: str = "shared"  # whose request: admission is fair across owners (API keys)
    cls: Class = "interactive"  # or "job": admitted after interactive requests, until it has aged
    ticket: Ticket | None = None  # its place in the admission queue
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
        """Steps done, averaged over the generation's images (finished ones count in full)."""
        done = self.images_done * self.steps + sum(r.step for r in self.rows)
        return done // self.n


class Engine:
    def __init__(self, model: DiffusionModel, plan: RuntimePlan, metrics: Metrics,
                 admission: FairQueue | None = None) -> None:
        self.model = model
        self.plan = plan
        self.metrics = metrics
        self.batch = model.row_batch(plan.max_batch, max_steps=plan.max_steps)
        self._admission = admission or FairQueue()
        self._pending: dict[Generation, None] = {}  # generations with rows still waiting, by arrival
        self._running: list[Generation] = []  # generations with rows in the batch (or about to)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._step_time = 0.0  # exponential average of one iteration at the current load, for Retry-After

    # ---- the API side (event-loop thread) ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ddpm-engine", daemon=True)
        self._thread.start()

    def submit(self, gen: Generation) -> None:
        """Queue a generation, or raise QueueFull / Unavailable / QuotaExceeded (its owner's alone)."""
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down", retry_after=5)
            free = self.batch.capacity - len(self.batch)
            queued = self._queued_images
            if queued + gen.n > self.plan.max_queue_images + free:
                raise QueueFull(
                    f"queue full: {queued} images waiting, limit max_queue_images="
                    f"{self.plan.max_queue_images}", retry_after=self._admission_wait(gen.n))
            gen.ticket = self._admission.push(gen.owner, gen.n, gen.cls, gen)
            self._pending[gen] = None
            self._update_gauges()
            self._cond.notify()
        gen.emit(Queued(position=queued))

    @property
    def _queued_images(self) -> int:
        return self._admission.queued_images()

    @property
    def free_rows(self) -> int:
        """Rows that would take a new image now: free rows less the images already waiting for one."""
        with self._cond:
            return max(0, self.batch.free - self._queued_images)

    def cancel(self, gen: Generation) -> None:
        """Free the generation's rows at the next step (the client went away)."""
        gen.cancelled = True
        with self._cond:
            self._cond.notify()

    def _admission_wait(self, n: int) -> float:
        """Seconds until a request of ``n`` images would be admitted (caller holds ``_cond``).

        A replay of the work ahead: each slot frees when its row's remaining steps are done,
        and queued images take slots FIFO as they free, each for its own steps. A request is
        admitted once the queue has room for it, i.e. after the first ``excess`` queued images
        have left the queue for a slot. Steps are turned into seconds by the measured time of
        one iteration, which at a full queue is the time of a full batch.
        """
        capacity = self.batch.capacity
        free_at = [r.steps - r.step for r in list(self.batch.rows)]  # steps until each busy slot frees
        free_at += [0] * (capacity - len(free_at))
        heapq.heapify(free_at)
        excess = self._queued_images + n - self.plan.max_queue_images
        wait_steps = 0
        for gen in list(self._pending):  # in arrival order: fair admission may reorder, an estimate
            for _ in range(gen.n - gen.admitted):
                if excess <= 0:
                    break
                wait_steps = heapq.heappop(free_at)
                heapq.heappush(free_at, wait_steps + gen.steps)
                excess -= 1
        return max(1.0, math.ceil(wait_steps * self._step_time))

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._pending and not self._running

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; generations still waiting or running fail with Unavailable."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker thread ----

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._running:
                    self._cond.wait()
                if self._stopping:
                    break
            try:
                self._iteration()
            except Exception as exc:  # a bug here must not leave every later request hanging
                log.exception("engine iteration failed; failing the requests it held")
                self._fail_all(SamplingFailed(f"internal error: {type(exc).__name__}: {exc}"))
        self._fail_all(Unavailable("the server is shutting down", retry_after=5))

    def _iteration(self) -> None:
        self._reap()
        self._admit()
        if len(self.batch):
            self._step()

    def _live(self) -> list[Generation]:
        with self._cond:
            return list(dict.fromkeys([*self._running, *self._pending]))  # a generation can be in both

    def _fail_all(self, error: ServingError) -> None:
        for gen in self._live():
            self._fail(gen, error)

    def _fail(self, gen: Generation, error: ServingError) -> None:
        for row in gen.rows:
            self.batch.remove(row)
        gen.rows.clear()
        with self._cond:
            if gen in self._running:
                self._running.remove(gen)
            if gen in self._pending:
                del self._pending[gen]
            if gen.ticket is not None:
                self._admission.remove(gen.ticket)
            self._update_gauges()
        gen.finished = time.monotonic()
        gen.emit(Failed(error))

    def _reap(self) -> None:
        now = time.monotonic()
        for gen in self._live():
            if gen.cancelled:
                self._fail(gen, Cancelled("the client closed the connection"))
            elif now > gen.deadline:
                self._fail(gen, DeadlineExceeded(
                    f"deadline passed after {now - gen.created:.1f}s at step {gen.step} of {gen.steps}"))

    def _admit(self) -> None:
        with self._cond:
            for admission in self._admission.pop(self.batch.free):
                gen: Generation = admission.ticket.item
                if gen.admitted == 0:
                    gen.started = time.monotonic()
                    self.metrics.queue_wait.observe(gen.started - gen.created)
                    self._running.append(gen)
                for i in range(admission.start, admission.start + admission.count):
                    gen.rows.append(self.batch.add(gen.specs[i], tag=(gen, i)))
                gen.admitted += admission.count
                if gen.admitted == gen.n:
                    del self._pending[gen]
            self._update_gauges()

    def _update_gauges(self) -> None:
        """Caller holds ``_cond``."""
        for cls in CLASSES:
            self.metrics.queue_images.labels(**{"class": cls}).set(self._admission.queued_images(cls))
        self.metrics.active_images.set(len(self.batch))

    def _step(self) -> None:
        rows = len(self.batch)
        start = time.perf_counter()
        try:
            finished = self.batch.step()
        except Exception as exc:  # e.g. out of memory: fail this batch's requests, keep serving
            log.exception("network call failed; failing the %d requests in this batch", len(self._running))
            error = SamplingFailed(f"sampling failed: {type(exc).__name__}: {exc}")
            for gen in list(self._running):
                self._fail(gen, error)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        elapsed = time.perf_counter() - start
        self._step_time = elapsed if self._step_time == 0 else 0.9 * self._step_time + 0.1 * elapsed
        self.metrics.batch_size.observe(rows)
        self.metrics.step_duration.observe(elapsed)
        for row in finished:
            gen, index = row.tag
            gen.rows.remove(row)
            gen.images[index] = row.image
            gen.images_done += 1
            self.metrics.images.inc()
            if gen.progress:
                assert row.image is not None
                gen.emit(ImageReady(index=index, seed=row.spec.seed, image=row.image))
        now = time.monotonic()
        for gen in list(self._running):
            if gen.images_done == gen.n:
                self._complete(gen, now)
            elif gen.progress:
                self._report_progress(gen, now)
        if finished:
            with self._cond:
                self._update_gauges()

    def _complete(self, gen: Generation, now: float) -> None:
        with self._cond:
            self._running.remove(gen)
        gen.finished = now
        gen.emit(Done([image for image in gen.images if image is not None]))

    def _report_progress(self, gen: Generation, now: float) -> None:
        step = gen.step
        previews: dict[int, np.ndarray] = {}
        if gen.preview_every > 0 and gen.rows and step - gen.last_preview_step >= gen.preview_every:
            gen.last_preview_step = step
            indices = [index for _, index in (r.tag for r in gen.rows)]
            previews = dict(zip(indices, self.batch.preview(gen.rows), strict=True))
        elif now - gen.last_progress < self.plan.progress_interval_s:
            return
        gen.last_progress = now
        gen.emit(Progress(step=step, steps=gen.steps, images_done=gen.images_done, n=gen.n, previews=previews))
