"""Domain errors of the job store, admission and webhooks.

They are ``app.errors.ServingError``s and carry no HTTP status: ``app.http_errors`` maps each
class to one (JobNotFound: 404, JobExpired: 410, JobNotReady: 409, IdempotencyConflict: 409,
QuotaExceeded: 429, InvalidField: 422 naming ``field``).
"""

from __future__ import annotations

from ..errors import InvalidRequest, ServingError


class JobError(ServingError):
    """Base class of every job-domain error."""


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

    def __init__(self, detail: str, *, limit: int, queued: int, retry_after: float | None = None) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.limit = limit
        self.queued = queued


class InvalidField(InvalidRequest):
    """A request field the store or the webhook checks refuse; ``field`` names it (a 422)."""
