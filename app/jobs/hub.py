"""In-process fan-out of job events to the subscribers of each job.

The SQLite store publishes into it directly; the Redis store feeds it from one pub/sub
connection per replica, so an SSE client on any replica sees events made on any other.
Callbacks run on the publisher's thread: they must be quick and thread-safe (the HTTP layer
hands events to its event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .records import JobEvent

log = logging.getLogger("ddpm.jobs")

Subscriber = Callable[[JobEvent], None]


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Subscriber]] = {}

    def subscribe(self, job_id: str, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with each later event of ``job_id``; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get(job_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._subscribers.pop(job_id, None)

        return unsubscribe

    def publish(self, event: JobEvent) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(event.job_id, ()))
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("job event subscriber failed")

    def __len__(self) -> int:
        with self._lock:
            return len(self._subscribers)
