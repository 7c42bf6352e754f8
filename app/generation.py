"""A generation as the HTTP layer sees it: parameters resolved, submitted to the engine, events awaited.

Every API builds its rows here (``/generate``, and the other APIs as they are added), so an
image is the same pure function of (model, seed, steps, sampler, eta, label, guidance) whichever
API asked for it. The engine's events cross from its thread into the event loop through an
``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from model import RowSpec

from .engine import Generation
from .errors import InvalidRequest
from .events import Event
from .jobs.records import SHARED_OWNER
from .service import Service

# Seeds the API takes and draws: the largest integer a JSON client holds exactly (JavaScript's
# Number.MAX_SAFE_INTEGER), so a seed read back from a response reproduces its image in any client.
# The model itself takes seeds up to 2^63 - 1 (model.MAX_SEED).
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class GenerationParams:
    """What a client asked for, in the engine's terms; None takes the server's default."""

    n: int = 1
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    label: int | None = None
    guidance: float | None = None
    timeout_s: float | None = None
    preview_every: int = 0


@dataclass(frozen=True)
class Resolved:
    """Every default filled in: exactly what the engine runs and what the response reports."""

    seeds: tuple[int, ...]
    steps: int
    sampler: str
    eta: float | None
    label: int | None
    guidance: float
    timeout_s: float
    preview_every: int


def resolve(params: GenerationParams, service: Service) -> Resolved:
    """Fill in the defaults and draw a seed when none is given (image i uses seed + i)."""
    n = params.n
    if params.seed is None:
        # Room for the largest request's images after it (variations' continuations start at
        # seed + 1), so that a drawn seed can be sent back with any n.
        seed = secrets.randbelow(MAX_SEED - service.plan.admissible_images + 1)
    elif params.seed + n - 1 > MAX_SEED:
        raise InvalidRequest("seed", f"seed + n - 1 must be <= {MAX_SEED}")
    else:
        seed = params.seed
    plan, config = service.plan, service.model.config
    ceiling = service.settings.request_timeout_s
    return Resolved(
        seeds=tuple(range(seed, seed + n)),
        steps=params.steps or plan.default_steps,
        sampler=params.sampler or plan.default_sampler,
        eta=params.eta,
        label=params.label,
        guidance=config.sampling.guidance if params.guidance is None else params.guidance,
        timeout_s=min(params.timeout_s or ceiling, ceiling),
        preview_every=params.preview_every,
    )


class Submission:
    """A generation in the engine, with the queue its events arrive on in the event loop."""

    def __init__(self, service: Service, resolved: Resolved, request_id: str, *, progress: bool,
                 owner: str = SHARED_OWNER) -> None:
        self.service = service
        self.resolved = resolved
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called on the engine's thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self._events.put_nowait, event)

        r = resolved
        row_plan = service.model.plan(r.sampler, r.steps, r.eta)
        self.generation = Generation(
            id=request_id,
            specs=[RowSpec(plan=row_plan, seed=s, label=r.label, guidance=r.guidance) for s in r.seeds],
            deadline=time.monotonic() + r.timeout_s,
            emit=emit,
            progress=progress,
            preview_every=r.preview_every if progress else 0,
            owner=owner,
        )

    async def next_event(self, timeout: float | None = None) -> Event:
        """The engine's next event; raises TimeoutError after ``timeout`` seconds."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def events(self, keepalive_s: float) -> AsyncIterator[Event | None]:
        """The engine's events for a stream; None whenever ``keepalive_s`` passes without one."""
        while True:
            try:
                yield await self.next_event(keepalive_s)
            except TimeoutError:
                yield None

    def cancel(self) -> None:
        if self.generation.finished is None:
            self.service.engine.cancel(self.generation)

    def seed_headers(self) -> dict[str, str]:
        seeds = self.resolved.seeds
        return {"X-Seed": str(seeds[0]), "X-Seeds": ",".join(map(str, seeds))}

    def timings(self) -> dict[str, float]:
        gen, now = self.generation, time.monotonic()
        started = gen.started or now
        return {"queue_s": round(started - gen.created, 6),
                "sampling_s": round((gen.finished or now) - started, 6),
                "total_s": round(now - gen.created, 6)}


def submit(service: Service, params: GenerationParams, request_id: str, *, progress: bool,
           owner: str = SHARED_OWNER) -> Submission:
    """Check the server takes work, resolve the parameters, and queue the generation (fairly
    among ``owner``s: API keys)."""
    service.check_accepting()
    submission = Submission(service, resolve(params, service), request_id, progress=progress, owner=owner)
    service.engine.submit(submission.generation)
    return submission
