"""An editing job (kind "edit", "interpolation" or "variations") run by the job pump.

Submission (``spec_for``) runs ``prepare_now`` once, so that every refusal is a 4xx then, and
stores the validated body with its seed fixed. The replica that claims the job runs
``prepare_now`` again on that body (the same code path as the native endpoints, hence the same
rows and the same images) and, for a kind with a first phase (variations' shared chain, an
interpolation's seeded ends), submits that phase as a generation whose ``Done`` builds the second
phase (``then_now``) and submits it. The second phase is built on the engine's thread, where
``Done`` is emitted: ``then`` only mixes or copies a few image-sized tensors (the shared x_t, the
frames' q(x_t | x_0) encodings, eq. 4), far less than one network call, and ``Engine.submit``
is safe there (``Done`` is emitted outside the engine's lock). Both phases share one deadline
and report progress to the job, the second phase's steps counted after the first's; the cancel
function cancels whichever generation is current and stops a second phase from starting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from model import RowSpec

from .edit_requests import (
    Built,
    Common,
    EditBody,
    FirstPhase,
    InterpolationBody,
    VariationBody,
    prepare_now,
    then_now,
)
from .engine import Generation
from .errors import QueueFull, ServingError, Unavailable
from .events import Done, Event, Failed, ImageReady, Progress
from .generation import GenerationParams, resolve
from .http_errors import status_of
from .jobs import Claim, JobSpec
from .jobs.pump import JobSink
from .service import Service

BODIES: dict[str, type[Common]] = {"edit": EditBody, "interpolation": InterpolationBody,
                                   "variations": VariationBody}
JOB_FIELDS = {"kind", "webhook", "webhook_events"}  # the job's own fields, not the endpoint's body


def endpoint_body(body: BaseModel, kind: str) -> Common:
    """The endpoint's body inside a job request (which adds ``kind`` and the webhook fields)."""
    return BODIES[kind].model_validate(body.model_dump(exclude=JOB_FIELDS, exclude_unset=True))


def spec_for(service: Service, kind: str, body: Common, **job: Any) -> JobSpec:
    """The job of an editing body, validated now (raises the endpoint's own 4xx errors); its seed is
    drawn now, once, so that every run of the job gives the same images. Blocking: it decodes."""
    seed = body.seed if body.seed is not None else resolve(GenerationParams(), service).seeds[0]
    fixed = body.model_copy(update={"seed": seed})
    prepared = prepare_now(service, fixed)
    seeds = prepared.seeds if isinstance(prepared, FirstPhase) else prepared.resolved.seeds
    r = prepared.resolved
    return JobSpec(n=len(seeds), seed=seed, kind=kind, body=fixed.model_dump(mode="json"), image_seeds=tuple(seeds),
                   params={"steps": r.steps, "sampler": r.sampler, "eta": r.eta, "label": r.label,
                           "guidance": r.guidance, "timeout_s": body.timeout_s}, **job)


class EditJobRun:
    """One run of an editing job on this replica: at most two generations, one after the other."""

    def __init__(self, service: Service, claim: Claim, sink: JobSink, timeout_s: float) -> None:
        self.service, self.claim, self.sink = service, claim, sink
        self.deadline = time.monotonic() + timeout_s
        self.lock = threading.Lock()
        self.current: Generation | None = None
        self.canceled = False
        self.steps_before = 0  # the first phase's steps, once it is done

    def start(self) -> Callable[[], None]:
        spec = self.claim.job.spec
        assert spec.body is not None
        try:
            prepared = prepare_now(self.service, BODIES[spec.kind].model_validate(spec.body))
        except ServingError as exc:  # valid at submission, refused now (the settings changed)
            self.sink.failed(status_of(exc), exc.detail)
            return self.cancel
        if isinstance(prepared, FirstPhase):
            self.submit(prepared.specs, lambda images: self.second(prepared, images), phase=1)
        else:
            self.run(prepared)
        return self.cancel

    def cancel(self) -> None:
        with self.lock:
            self.canceled = True
            gen = self.current
        if gen is not None:
            self.service.engine.cancel(gen)

    def second(self, phase: FirstPhase, images: list[np.ndarray]) -> None:
        """On the engine's thread, at the first phase's Done."""
        try:
            built = then_now(phase, images)
        except ServingError as exc:
            self.sink.failed(status_of(exc), exc.detail)
            return
        self.run(built)

    def run(self, built: Built) -> None:
        if not built.specs:  # an interpolation at t = 0, or variations at t = 0: nothing more to run
            self.sink.done(built.ready)
        else:
            self.submit(built.specs, self.sink.done, phase=2)

    def submit(self, specs: list[RowSpec], on_done: Callable[[list[np.ndarray]], None], *, phase: int) -> None:
        job = self.claim.job

        def emit(event: Event) -> None:  # on the engine's thread: the sink only enqueues
            match event:
                case Progress(step=step, steps=steps, images_done=done):
                    self.sink.progress(self.steps_before + step, self.steps_before + steps,
                                       done if phase == 2 else 0)
                case ImageReady(index=index, image=image) if phase == 2:
                    self.sink.image(index, image)
                case Done(images=images):
                    self.steps_before += gen.steps
                    on_done(images)
                case Failed(error=error):
                    # the replica stops or is full: not the job's fault, so back to the queue
                    self.sink.failed(status_of(error), error.detail, retry=isinstance(error, Unavailable | QueueFull))

        gen = Generation(id=job.id, specs=specs, deadline=self.deadline, emit=emit, progress=True, owner=job.owner,
                         cls="job")
        with self.lock:
            if self.canceled:
                return
            self.current = gen
        try:
            self.service.engine.submit(gen)
        except ServingError as exc:
            self.sink.failed(status_of(exc), exc.detail, retry=True)
