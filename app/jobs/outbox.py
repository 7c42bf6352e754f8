"""The webhook outbox: deliveries kept in the job store until a replica has sent them.

A job's webhook event is written into the store in the same atomic step as the state change it
reports (SQLite: one transaction; Redis: one Lua script), so a replica killed right after a job
ended cannot lose it: whichever replica is alive (or the restarted one) sends it. A replica takes
due deliveries under a lease (as it takes jobs), so one killed mid-attempt only delays its
deliveries by the lease. The guarantee is at-least-once: a delivery whose attempt reached the
receiver but whose replica died before recording it is sent again, with the same ``webhook-id``
(fixed per job and event), so the receiver can drop the duplicate.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from .records import Job

EVENTS = ("job.started", "job.succeeded", "job.failed", "job.canceled")


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id: the same on every attempt
    url: str
    body: str  # the JSON payload, fixed when the event happened
    attempt: int = 0  # attempts made so far, this one included once it is taken from the outbox


class Outbox(Protocol):
    """Where deliveries wait (implemented by both job stores)."""

    def enqueue_delivery(self, delivery: Delivery) -> None:
        """Keep ``delivery`` until it is sent (due now); one with the same id already waiting is kept as it is."""
        ...

    def due_deliveries(self, limit: int, lease_s: float) -> list[Delivery]:
        """Take up to ``limit`` due deliveries for ``lease_s`` (no other replica takes them meanwhile),
        counting the attempt about to be made."""
        ...

    def retry_delivery(self, delivery: Delivery, due_at: float) -> None:
        """Send ``delivery`` again from wall-clock time ``due_at``."""
        ...

    def drop_delivery(self, delivery: Delivery) -> None:
        """Delivered, or given up: it leaves the outbox."""
        ...

    def pending_deliveries(self) -> int:
        ...


def message(url: str, event_type: str, data: dict[str, Any], *, msg_id: str | None = None,
            at: float | None = None) -> Delivery:
    """A delivery of ``event_type`` with ``data``, stamped with the time it happened (``at``, Unix seconds)."""
    when = datetime.fromtimestamp(at, timezone.utc) if at is not None else datetime.now(timezone.utc)
    body = json.dumps({"type": event_type, "timestamp": when.isoformat(), "data": data})
    return Delivery(msg_id or f"msg_{uuid.uuid4().hex}", url, body)


def job_payload(job: Job) -> dict[str, Any]:
    """The ``data`` of a job event: what GET /v1/jobs/{id} says, less the URLs (the receiver has the id)."""
    return {
        "id": job.id, "status": job.status, "n": job.n, "seeds": job.spec.seeds, "attempts": job.attempts,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "error": {"status": job.error.status, "message": job.error.message} if job.error else None,
    }


def delivery_for(job: Job, event_type: str) -> Delivery | None:
    """The delivery of ``event_type`` for ``job`` (as it is after the event), or None if it did not ask
    for it. The webhook-id is fixed per job and event: a receiver drops the duplicate a re-delivery makes."""
    if job.spec.webhook is None or event_type not in job.spec.webhook_events:
        return None
    at = job.started_at if event_type == "job.started" else job.finished_at
    return message(job.spec.webhook, event_type, job_payload(job), msg_id=f"msg_{job.id}_{event_type}", at=at)


def to_json(delivery: Delivery) -> str:
    return json.dumps({"url": delivery.url, "body": delivery.body})


def from_json(msg_id: str, text: str | bytes, attempt: int) -> Delivery:
    d = json.loads(text)
    return Delivery(msg_id, d["url"], d["body"], attempt)
