"""The job store and queue: one interface, two implementations.

- ``SQLiteStore`` (embedded, one process): the standard library's sqlite3 in WAL mode under
  DDPM_DATA_DIR. Jobs left queued or running by a process that died run again at the next start.
- ``RedisStore`` (shared by replicas): a Redis stream ``ddpm:jobs`` read by the consumer group
  ``ddpm-engines``; a replica claims only as many images as it has free rows, a dead replica's
  claim is re-delivered after the lease (XAUTOCLAIM), and every replica reads every job.

A claim carries a token: every later call about it (progress, complete, fail, extend) is refused
(False / None) once the job was canceled, expired or re-delivered to another replica, which is how
the replica running a job learns that it must drop its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .hub import Subscriber
from .outbox import Outbox
from .records import Claim, Failure, Job, JobEvent, JobSpec, JobStatus, Page, Progress

DEFAULT_TTL_S = 86400.0
DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True)
class StoreOptions:
    ttl_s: float = DEFAULT_TTL_S  # results (and a job never run) expire this long after they end (were made)
    lease_s: float = DEFAULT_LEASE_S  # a claim not extended for this long goes to another replica
    max_list: int = 100  # largest page of list_jobs
    max_attempts: int = 3  # a job whose replica died this often is failed, not handed to another


class JobStore(Outbox, Protocol):
    """A job's webhook events enter the outbox (``outbox.py``) in the same atomic step as the state
    change they report: ``claim`` (job.started, the first time; job.failed for a job that killed its
    replicas), ``complete``, ``fail`` and ``cancel``."""

    options: StoreOptions

    def create(self, owner: str, spec: JobSpec, *, idempotency_key: str | None = None,
               max_queued_images: int | None = None) -> tuple[Job, bool]:
        """Queue a job; (job, True). The same owner and key again: (that job, False) if the body's
        fingerprint matches, else IdempotencyConflict. QuotaExceeded past ``max_queued_images``."""
        ...

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job (with its position while queued). JobNotFound also for another owner's job; JobExpired."""
        ...

    def list_jobs(self, owner: str, *, status: JobStatus | None = None, limit: int = 20,
                  cursor: str | None = None) -> Page:
        """The owner's live jobs, newest first; ``next_cursor`` continues below the last one."""
        ...

    def position(self, job_id: str) -> int | None:
        """Images queued ahead of this job; None unless it is queued."""
        ...

    def claim(self, consumer: str, max_images: int) -> list[Claim]:
        """Take queued jobs (and expired claims of dead replicas), one at a time, while the images
        taken are fewer than ``max_images``: the last job may hold more images than rows are free,
        its rows then join over several steps as the engine already allows."""
        ...

    def extend(self, claim: Claim) -> bool:
        """Renew the lease; False once the claim is no longer this replica's to run."""
        ...

    def progress(self, claim: Claim, progress: Progress) -> bool:
        """Record and publish progress (renews the lease); False as ``extend``."""
        ...

    def put_image(self, claim: Claim, index: int, png: bytes) -> bool:
        """Store one finished image while the job runs and publish an ``image`` event {index, seed}
        (renews the lease); False as ``extend``."""
        ...

    def complete(self, claim: Claim, pngs: Sequence[bytes]) -> Job | None:
        """Store image i's PNG for each i and mark the job succeeded; None if the claim was lost."""
        ...

    def fail(self, claim: Claim, failure: Failure) -> Job | None:
        ...

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued or running job; a job already ended is returned as it is (idempotent)."""
        ...

    def image(self, job_id: str, index: int, owner: str | None = None) -> bytes:
        """PNG bytes of image ``index`` once it has finished (while the job still runs too):
        JobNotReady before that, JobNotFound past n."""
        ...

    def subscribe(self, job_id: str, callback: Subscriber) -> Callable[[], None]:
        """Events of this job made on any replica, from now on; returns the unsubscribe function."""
        ...

    def publish(self, event: JobEvent) -> None:
        ...

    def counts(self) -> dict[str, int]:
        """Jobs queued and running now, across every replica ({"queued": q, "running": r}), for the
        metrics; ended jobs are counted by the replica that ends them."""
        ...

    def release(self, claim: Claim) -> bool:
        """Give a held job back to the queue unfinished (this replica is shutting down); the attempt
        does not count towards ``max_attempts``. False if the claim was already lost."""
        ...

    def recover(self) -> int:
        """Requeue the jobs this store's previous process held when it died; how many."""
        ...

    def close(self) -> None:
        ...
