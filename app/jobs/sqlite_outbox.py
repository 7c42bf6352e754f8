"""The SQLite store's webhook outbox (see ``outbox.py``): table ``outbox``, one row per delivery.

A row is due when ``due_at`` has passed and no live lease holds it; the store belongs to one
process, so ``recover`` at the next start frees the leases a killed process held at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .outbox import Delivery, delivery_for, from_json, to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(due_at);
"""


class SQLiteOutbox:
    """Mixed into ``SQLiteStore``, whose transaction and query helpers it uses."""

    _clock: Callable[[], float]
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _all: Callable[..., list[sqlite3.Row]]
    _absent: Callable[[], bool]
    _row_to_job: Callable[[sqlite3.Row], Any]

    def _outbox_add(self, db: sqlite3.Connection, job_id: str, event_type: str) -> None:
        """Within the transaction that made ``event_type`` happen: its delivery, if the job asked for one."""
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        delivery = delivery_for(self._row_to_job(row), event_type) if row is not None else None
        if delivery is not None:
            self._outbox_insert(db, delivery)

    def _outbox_insert(self, db: sqlite3.Connection, delivery: Delivery) -> None:
        db.execute("INSERT OR IGNORE INTO outbox (id, record, due_at) VALUES (?, ?, ?)",
                   (delivery.id, to_json(delivery), self._clock()))

    def enqueue_delivery(self, delivery: Delivery) -> None:
        with self._tx() as db:
            self._outbox_insert(db, delivery)

    def due_deliveries(self, limit: int, lease_s: float) -> list[Delivery]:
        if limit <= 0 or self._absent():
            return []
        now = self._clock()
        due = "due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
        if not self._all(f"SELECT 1 FROM outbox WHERE {due} LIMIT 1", now, now):
            return []  # polled often: no write transaction while nothing is due
        with self._tx() as db:
            rows = db.execute(f"SELECT id, record, attempts FROM outbox WHERE {due} ORDER BY due_at LIMIT ?",
                              (now, now, limit)).fetchall()
            db.executemany("UPDATE outbox SET attempts = attempts + 1, lease_until = ? WHERE id = ?",
                           [(now + lease_s, row["id"]) for row in rows])
        return [from_json(row["id"], row["record"], row["attempts"] + 1) for row in rows]

    def retry_delivery(self, delivery: Delivery, due_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET due_at = ?, lease_until = NULL WHERE id = ?", (due_at, delivery.id))

    def drop_delivery(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (delivery.id,))

    def pending_deliveries(self) -> int:
        if self._absent():
            return 0
        return int(self._all("SELECT COUNT(*) FROM outbox")[0][0])

    def _outbox_recover(self, db: sqlite3.Connection) -> None:
        """The leases of a killed process: its deliveries are due again at once (those waiting for a
        retry keep their time)."""
        db.execute("UPDATE outbox SET lease_until = NULL WHERE lease_until IS NOT NULL")

