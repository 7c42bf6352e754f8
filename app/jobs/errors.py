"""Domain errors of the job store, admission and webhooks.

They carry no HTTP status: the HTTP layer maps each class to a status in one place
(JobNotFound: 404, JobExpired: 410, JobNotReady: 409, IdempotencyConflict: 409, QuotaExceeded: 429,
InvalidField: 422 naming ``field``).
"""

from __future__ import annotations


class JobError(Exception):
    """Base class of every job-domain error."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class JobNotFound(JobError):
    """No such job for this owner (another owner's job is not found either: no enumeration)."""


class JobExpired(JobError):
    """The job existed but its results passed DDPM_JOB_TTL_S."""


class JobNotReady(JobError):
    """The job has not succeeded (yet), so it has no images to give."""


class IdempotencyConflict(JobError):
    """The Idempotency-Key was already used by this owner with another body."""


class QuotaExceeded(JobError):
    """This owner already has as many queued images as it may; others are unaffected."""

    def __init__(self, detail: str, *, limit: int, queued: int) -> None:
        super().__init__(detail)
        self.limit = limit
        self.queued = queued


class InvalidField(JobError):
    """A request field the store or the webhook checks refuse; ``field`` names it."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
