"""What a job is, independent of where it is stored.

Times are wall-clock seconds (``time.time()``): several replicas read them. A job's images are
fixed by ``params`` and ``seeds``, so a job run again after a crash gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
SHARED_OWNER = "shared"


def owner_of(api_key: str | None) -> str:
    """The owner id of an API key: a hash, so that no store ever holds a key. No key: the shared owner."""
    if not api_key:
        return SHARED_OWNER
    return "k" + hashlib.sha256(b"ddpm-owner\0" + api_key.encode()).hexdigest()[:32]


def fingerprint(body: Mapping[str, Any]) -> str:
    """A stable hash of a request body, to tell a retried request from another one under one key."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobSpec:
    """What a client asked for, with the seed already drawn (image i uses seed + i, unless
    ``image_seeds`` says otherwise).

    ``kind`` "generate": ``params`` is all there is. An editing kind ("edit", "interpolation",
    "variations") also keeps ``body``, its endpoint's validated body with the seed filled in, which
    the running replica turns into rows again, and ``image_seeds``, the seeds its images report
    (an interpolation's frames share one seed; variations' continuations start at seed + 1).
    """

    n: int
    seed: int
    params: dict[str, Any]  # steps, sampler, eta, label, guidance: JSON-able
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    fingerprint: str = ""  # of the client's body; see ``fingerprint``
    kind: str = "generate"
    body: dict[str, Any] | None = None
    image_seeds: tuple[int, ...] | None = None

    @property
    def seeds(self) -> list[int]:
        if self.image_seeds is not None:
            return list(self.image_seeds)
        return [self.seed + i for i in range(self.n)]


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    images_done: int


@dataclass(frozen=True)
class Failure:
    status: int  # the status the engine's error carries (e.g. 500, 504)
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    status: JobStatus
    spec: JobSpec
    created_at: float
    expires_at: float
    seq: int  # creation order within the store: the list cursor
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    error: Failure | None = None
    attempts: int = 0  # how many times a replica claimed it
    position: int | None = None  # images queued ahead, while queued (filled by ``get``)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def n(self) -> int:
        return self.spec.n


@dataclass(frozen=True)
class Claim:
    """A job a replica holds under a lease; ``token`` proves the hold to every later call."""

    job: Job
    token: str
    ref: str = ""  # the store's handle (the Redis stream entry id)


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None = None


@dataclass(frozen=True)
class JobEvent:
    """Published to every replica: ``kind`` is status, progress or image."""

    job_id: str
    kind: Literal["status", "progress", "image"]
    data: dict[str, Any] = field(default_factory=dict)


def spec_to_json(spec: JobSpec) -> str:
    d: dict[str, Any] = {"n": spec.n, "seed": spec.seed, "params": spec.params, "webhook": spec.webhook,
                         "webhook_events": list(spec.webhook_events), "fingerprint": spec.fingerprint}
    if spec.kind != "generate":  # a generate job's record is as it was before the editing kinds
        d |= {"kind": spec.kind, "body": spec.body, "image_seeds": spec.image_seeds}
    return json.dumps(d, separators=(",", ":"))


def spec_from_json(text: str) -> JobSpec:
    d = json.loads(text)
    seeds = d.get("image_seeds")
    return JobSpec(n=d["n"], seed=d["seed"], params=d["params"], webhook=d["webhook"],
                   webhook_events=tuple(d["webhook_events"]), fingerprint=d["fingerprint"],
                   kind=d.get("kind", "generate"), body=d.get("body"),
                   image_seeds=None if seeds is None else tuple(seeds))


def encode_cursor(seq: int) -> str:
    return f"s{seq}"


def decode_cursor(cursor: str | None) -> int | None:
    """The seq a cursor continues below; raises InvalidField naming ``cursor``."""
    from .errors import InvalidField

    if cursor is None:
        return None
    if not cursor.startswith("s") or not cursor[1:].isdigit():
        raise InvalidField("cursor", "not a cursor this server gave out")
    return int(cursor[1:])
