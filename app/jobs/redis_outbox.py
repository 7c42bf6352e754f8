"""The Redis store's webhook outbox (see ``outbox.py``), shared by every replica.

``ddpm:outbox`` is a sorted set of delivery ids scored by the time (ms) each is due; a replica
takes due ones in one Lua script that also pushes their score a lease ahead, the same claim and
lease pattern as the job stream: a replica killed mid-attempt stops touching them and another
takes them once the lease has passed. ``ddpm:deliveries`` holds each one's record and attempts.
"""

from __future__ import annotations

import time
from typing import Any

from .outbox import Delivery, from_json, to_json

OUTBOX = "ddpm:outbox"
DELIVERIES = "ddpm:deliveries"


class RedisOutbox:
    """Mixed into ``RedisStore`` (its client ``_r`` and the registered ``_take`` script)."""

    _r: Any
    _take: Any

    @staticmethod
    def _delivery_args(delivery: Delivery | None) -> list[Any]:
        """The TRANSITION script's arguments that put ``delivery`` in the outbox with the state change."""
        if delivery is None:
            return ["", "", ""]
        return [delivery.id, int(time.time() * 1000), to_json(delivery)]

    def enqueue_delivery(self, delivery: Delivery) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hsetnx(DELIVERIES, delivery.id, to_json(delivery))
        pipe.zadd(OUTBOX, {delivery.id: int(time.time() * 1000)}, nx=True)
        pipe.execute()

    def due_deliveries(self, limit: int, lease_s: float) -> list[Delivery]:
        if limit <= 0:
            return []
        out = self._take(keys=[OUTBOX, DELIVERIES], args=[int(time.time() * 1000), int(lease_s * 1000), limit])
        return [from_json(out[i].decode(), out[i + 1], int(out[i + 2])) for i in range(0, len(out), 3)]

    def retry_delivery(self, delivery: Delivery, due_at: float) -> None:
        self._r.zadd(OUTBOX, {delivery.id: int(due_at * 1000)}, xx=True)

    def drop_delivery(self, delivery: Delivery) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(OUTBOX, delivery.id)
        pipe.hdel(DELIVERIES, delivery.id, f"{delivery.id}:n")
        pipe.execute()

    def pending_deliveries(self) -> int:
        return int(self._r.zcard(OUTBOX))
