"""Generation jobs that outlive a connection and a replica: records, the store/queue (SQLite or
Redis), cross-replica events and webhooks. Nothing here knows HTTP; errors are domain errors."""

from .errors import IdempotencyConflict, InvalidField, JobError, JobExpired, JobNotFound, JobNotReady, QuotaExceeded
from .opening import open_store
from .records import (
    SHARED_OWNER,
    STATUSES,
    Claim,
    Failure,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    Page,
    Progress,
    fingerprint,
    owner_of,
)
from .store import JobStore, StoreOptions

__all__ = [
    "SHARED_OWNER",
    "STATUSES",
    "Claim",
    "Failure",
    "IdempotencyConflict",
    "InvalidField",
    "Job",
    "JobError",
    "JobEvent",
    "JobExpired",
    "JobNotFound",
    "JobNotReady",
    "JobSpec",
    "JobStatus",
    "JobStore",
    "Page",
    "Progress",
    "QuotaExceeded",
    "StoreOptions",
    "fingerprint",
    "open_store",
    "owner_of",
]
