"""Fair admission into the batch: which waiting images take the rows that are free now.

Pure bookkeeping, no torch: the engine pushes a ticket per request (``key``: the owner of its
API key; ``images``: its rows) and each iteration asks ``pop(free_rows)`` what to admit.

- Across keys: deficit round robin (Shreedhar & Varghese 1995) with the cost counted in images.
  Each visit gives a key ``quantum`` images of credit; a key that used its credit goes to the back
  of the ring. So one key with 1000 images queued delays another key's single image by at most
  one round (``quantum`` images per other waiting key), not by the 1000.
- Across classes: interactive requests (``/generate``) are admitted before background jobs when
  both wait; a job that has waited ``job_aging_s`` joins the interactive lane behind what waits
  there, so a steady stream of interactive work never starves it.
- A quota: a key with ``max_queued_per_key`` images waiting is refused (QuotaExceeded) alone.

Requests are divisible: a ticket's images may be admitted over several pops, as the engine already
admits a request's rows over several steps.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .jobs.errors import QuotaExceeded

Class = Literal["interactive", "job"]
CLASSES: tuple[Class, ...] = ("interactive", "job")


@dataclass(eq=False)
class Ticket:
    key: str
    images: int
    cls: Class
    item: Any  # the engine's request object
    enqueued: float
    admitted: int = 0  # images handed out so far
    lane: Class = "interactive"  # where it waits now: a job ages into the interactive lane

    @property
    def remaining(self) -> int:
        return self.images - self.admitted


@dataclass(frozen=True)
class Admission:
    """Admit images ``start`` .. ``start + count - 1`` of ``ticket``."""

    ticket: Ticket
    start: int
    count: int


class _Lane:
    """Deficit round robin over the keys waiting in one class."""

    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        self.queues: dict[str, collections.deque[Ticket]] = {}
        self.ring: collections.deque[str] = collections.deque()
        self.deficit: dict[str, int] = {}
        self.visiting: str | None = None  # the key at the ring's head whose visit credit is granted

    def push(self, ticket: Ticket) -> None:
        if ticket.key not in self.queues:
            self.queues[ticket.key] = collections.deque()
            self.ring.append(ticket.key)
            self.deficit[ticket.key] = 0
        self.queues[ticket.key].append(ticket)

    def remove(self, ticket: Ticket) -> None:
        queue = self.queues.get(ticket.key)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                self._drop_key(ticket.key)

    def _drop_key(self, key: str) -> None:
        del self.queues[key], self.deficit[key]
        self.ring.remove(key)
        if self.visiting == key:
            self.visiting = None

    def pop(self, free: int) -> list[Admission]:
        out: list[Admission] = []
        while free > 0 and self.ring:
            key = self.ring[0]
            if self.visiting != key:  # a new visit: grant this key its quantum
                self.visiting = key
                self.deficit[key] += self.quantum
            ticket = self.queues[key][0]
            take = min(self.deficit[key], free, ticket.remaining)
            out.append(Admission(ticket, ticket.admitted, take))
            ticket.admitted += take
            self.deficit[key] -= take
            free -= take
            if ticket.remaining == 0:
                self.queues[key].popleft()
            if not self.queues[key]:
                self._drop_key(key)  # an idle key keeps no credit (DRR)
            elif self.deficit[key] == 0:
                self.ring.rotate(-1)
                self.visiting = None
        return out

    def heads(self) -> list[Ticket]:
        return [queue[0] for queue in self.queues.values()]


class FairQueue:
    """Not thread-safe: the engine calls it under its own lock."""

    def __init__(self, *, quantum: int = 4, max_queued_per_key: int | None = None, job_aging_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if quantum < 1:
            raise ValueError(f"quantum must be >= 1, got {quantum}")
        self.max_queued_per_key = max_queued_per_key
        self.job_aging_s = job_aging_s
        self._clock = clock
        self._lanes: dict[Class, _Lane] = {cls: _Lane(quantum) for cls in CLASSES}
        self._per_key: collections.Counter[str] = collections.Counter()
        self._per_class: collections.Counter[str] = collections.Counter()
        self._tickets = 0

    def push(self, key: str, images: int, cls: Class = "interactive", item: Any = None) -> Ticket:
        """Queue ``images`` images of ``key``; QuotaExceeded if that key already has too many waiting."""
        if images < 1:
            raise ValueError(f"images must be >= 1, got {images}")
        limit = self.max_queued_per_key
        if limit is not None and self._per_key[key] + images > limit:
            raise QuotaExceeded(f"this key has {self._per_key[key]} images queued; limit "
                                f"max_queued_images_per_key={limit}", limit=limit, queued=self._per_key[key])
        ticket = Ticket(key, images, cls, item, self._clock(), lane=cls)
        self._lanes[cls].push(ticket)
        self._count(ticket, images)
        self._tickets += 1
        return ticket

    def remove(self, ticket: Ticket) -> None:
        """Forget a ticket's images not yet admitted (its request was canceled or timed out)."""
        lane = self._lanes[ticket.lane]
        if ticket.remaining > 0 and ticket.key in lane.queues and ticket in lane.queues[ticket.key]:
            lane.remove(ticket)
            self._count(ticket, -ticket.remaining)
            self._tickets -= 1

    def pop(self, free_rows: int) -> list[Admission]:
        """What to admit into ``free_rows`` rows now: aged jobs promoted, interactive first, then jobs."""
        self._age()
        out: list[Admission] = []
        for cls in CLASSES:
            taken = self._lanes[cls].pop(free_rows - sum(a.count for a in out))
            out += taken
        for admission in out:
            self._count(admission.ticket, -admission.count)
        # a ticket can be served on two visits of one pop: count each finished one once
        self._tickets -= len({id(a.ticket) for a in out if a.ticket.remaining == 0})
        return out

    def _age(self) -> None:
        jobs, interactive = self._lanes["job"], self._lanes["interactive"]
        now = self._clock()
        while True:
            aged = [t for t in jobs.heads() if now - t.enqueued >= self.job_aging_s]
            if not aged:
                return
            for ticket in sorted(aged, key=lambda t: t.enqueued):
                jobs.remove(ticket)
                ticket.lane = "interactive"
                interactive.push(ticket)

    def _count(self, ticket: Ticket, images: int) -> None:
        self._per_key[ticket.key] += images
        self._per_class[ticket.cls] += images
        if self._per_key[ticket.key] == 0:
            del self._per_key[ticket.key]

    def queued_images(self, cls: Class | None = None) -> int:
        """Images waiting, of one class (by origin: an aged job still counts as a job) or all."""
        if cls is None:
            return sum(self._per_class.values())
        return self._per_class[cls]

    def queued_for(self, key: str) -> int:
        return self._per_key[key]

    def __len__(self) -> int:
        """Tickets with images still waiting."""
        return self._tickets
