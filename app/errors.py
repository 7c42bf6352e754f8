"""Domain errors: why a generation could not be served, in the engine's words.

None of them knows HTTP. ``app.http.errors`` maps each to a status, headers and a body in one
place, so that every API (native, jobs, OpenAI-compatible) answers the same failure the same way.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request that could not be served. ``retry_after``: seconds after which trying again may work."""

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class InvalidRequest(ServingError):
    """A request whose fields cannot be served together (e.g. seed + n - 1 past the seed range)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


class QueueFull(ServingError):
    """Every row and every queue slot is taken; ``retry_after`` estimates when one frees."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its last image finished."""


class Unavailable(ServingError):
    """Not ready yet (loading, warming up), or draining for shutdown."""


class SamplingFailed(ServingError):
    """The network call (or an engine iteration) failed; only the requests it held fail."""


class Cancelled(ServingError):
    """The client went away; nobody is left to read the answer."""
