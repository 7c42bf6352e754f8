"""The embedded job store: the standard library's sqlite3 in WAL mode, owned by one process.

One connection behind a lock serves every thread (the engine's and the HTTP threads). A claim
is a row in status ``running`` with a token and a lease; ``recover`` at start requeues what a
killed process left running, and its seeds make the re-run's images identical.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import IdempotencyConflict, JobExpired, JobNotFound, JobNotReady, QuotaExceeded
from .hub import EventHub, Subscriber
from .records import (
    Claim,
    Failure,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    Page,
    Progress,
    decode_cursor,
    encode_cursor,
    spec_from_json,
    spec_to_json,
)
from .sqlite_outbox import SCHEMA as OUTBOX_SCHEMA
from .sqlite_outbox import SQLiteOutbox
from .store import StoreOptions

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    n INTEGER NOT NULL,
    idem TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL NOT NULL,
    progress TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT,
    lease_until REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(owner, idem) WHERE idem IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""
PURGE_EVERY_S = 60.0


def _job(row: sqlite3.Row, position: int | None = None) -> Job:
    progress = json.loads(row["progress"]) if row["progress"] else None
    error = json.loads(row["error"]) if row["error"] else None
    return Job(id=row["id"], owner=row["owner"], status=row["status"], spec=spec_from_json(row["spec"]),
               created_at=row["created_at"], expires_at=row["expires_at"], seq=row["seq"],
               started_at=row["started_at"], finished_at=row["finished_at"],
               progress=Progress(**progress) if progress else None,
               error=Failure(**error) if error else None, attempts=row["attempts"], position=position)


class SQLiteStore(SQLiteOutbox):
    _row_to_job = staticmethod(_job)

    def __init__(self, path: Path, options: StoreOptions | None = None, *, clock: Callable[[], float] = time.time
                 ) -> None:
        self.options = options or StoreOptions()
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._hub = EventHub()
        self._last_purge = 0.0

    def _open(self) -> sqlite3.Connection:
        with self._open_lock:
            if self._db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
                db.executescript(SCHEMA + OUTBOX_SCHEMA)
                self._db = db
            return self._db

    def _absent(self) -> bool:
        """True while no job was ever stored here: a replica that never gets a job writes nothing
        (the file is made by the first ``create``)."""
        if self._db is None and self.path.exists():
            self._open()
        return self._db is None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so readers never upgrade and deadlock."""
        db = self._open()
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        db = self._open()
        with self._lock:
            row: sqlite3.Row | None = db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        db = self._open()
        with self._lock:
            return db.execute(sql, args).fetchall()

    # ---- the client side ----

    def create(self, owner: str, spec: JobSpec, *, idempotency_key: str | None = None,
               max_queued_images: int | None = None) -> tuple[Job, bool]:
        self._maybe_purge()
        now = self._clock()
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE owner = ? AND idem = ?", (owner, idempotency_key)).fetchone()
                if row is not None:
                    return self._replay(_job(row), spec), False
            if max_queued_images is not None:
                queued = db.execute("SELECT COALESCE(SUM(n), 0) FROM jobs WHERE owner = ? AND status = 'queued' "
                                    "AND expires_at > ?", (owner, now)).fetchone()[0]
                if queued + spec.n > max_queued_images:
                    raise QuotaExceeded(f"this key has {queued} images queued; limit max_queued_images_per_key="
                                        f"{max_queued_images}", limit=max_queued_images, queued=queued)
            job_id = uuid.uuid4().hex
            db.execute("INSERT INTO jobs (id, owner, status, spec, n, idem, created_at, expires_at) "
                       "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                       (job_id, owner, spec_to_json(spec), spec.n, idempotency_key, now, now + self.options.ttl_s))
        job = self.get(job_id)
        self.publish(JobEvent(job_id, "status", {"status": "queued", "position": job.position}))
        return job, True

    def _replay(self, job: Job, spec: JobSpec) -> Job:
        if job.spec.fingerprint != spec.fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used with another body")
        if job.expires_at <= self._clock():
            raise JobExpired(f"job {job.id} (of this Idempotency-Key) has expired")
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        row = None if self._absent() else self._one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None or (owner is not None and row["owner"] != owner):
            raise JobNotFound(f"no job {job_id}")
        if row["expires_at"] <= self._clock():
            raise JobExpired(f"job {job_id} has expired")
        return _job(row, self.position(job_id) if row["status"] == "queued" else None)

    def list_jobs(self, owner: str, *, status: JobStatus | None = None, limit: int = 20,
                  cursor: str | None = None) -> Page:
        below = decode_cursor(cursor)
        if self._absent():
            return Page([])
        limit = max(1, min(limit, self.options.max_list))
        sql = "SELECT * FROM jobs WHERE owner = ? AND expires_at > ? AND seq < ?"
        args: list[Any] = [owner, self._clock(), below if below is not None else 2**62]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        rows = self._all(sql + " ORDER BY seq DESC LIMIT ?", *args, limit + 1)
        jobs = [_job(r) for r in rows[:limit]]
        return Page(jobs, encode_cursor(jobs[-1].seq) if len(rows) > limit else None)

    def position(self, job_id: str) -> int | None:
        if self._absent():
            return None
        row = self._one("SELECT seq, status FROM jobs WHERE id = ?", job_id)
        if row is None or row["status"] != "queued":
            return None
        ahead = self._one("SELECT COALESCE(SUM(n), 0) FROM jobs WHERE status = 'queued' AND seq < ? AND expires_at > ?",
                          row["seq"], self._clock())
        assert ahead is not None
        return int(ahead[0])

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        job = self.get(job_id, owner)
        if job.terminal:
            return job
        with self._tx() as db:
            changed = db.execute("UPDATE jobs SET status = 'canceled', finished_at = ?, expires_at = ?, token = NULL "
                                 "WHERE id = ? AND status IN ('queued', 'running')",
                                 (now := self._clock(), now + self.options.ttl_s, job_id)).rowcount
            if changed:
                self._outbox_add(db, job_id, "job.canceled")
        job = self.get(job_id)
        if changed:
            self.publish(JobEvent(job_id, "status", {"status": "canceled"}))
        return job

    def image(self, job_id: str, index: int, owner: str | None = None) -> bytes:
        job = self.get(job_id, owner)
        if index >= job.n:
            raise JobNotFound(f"job {job_id} has no image {index} (it has {job.n})")
        row = self._one("SELECT png FROM images WHERE job_id = ? AND idx = ?", job_id, index)
        if row is None:
            raise JobNotReady(f"job {job_id} is {job.status}: image {index} has not finished")
        return bytes(row["png"])

    # ---- the engine side ----

    def claim(self, consumer: str, max_images: int) -> list[Claim]:
        if max_images <= 0 or self._absent():
            return []
        now = self._clock()
        taken: list[tuple[str, str]] = []
        with self._tx() as db:
            images = 0
            rows = db.execute("SELECT id, n, attempts FROM jobs WHERE expires_at > ? AND (status = 'queued' OR "
                              "(status = 'running' AND lease_until < ?)) ORDER BY seq", (now, now)).fetchall()
            for row in rows:
                if images >= max_images:
                    break
                if row["attempts"] >= self.options.max_attempts:  # it took its process down that often
                    db.execute("UPDATE jobs SET status = 'failed', finished_at = ?, expires_at = ?, token = NULL, "
                               "error = ? WHERE id = ?", (now, now + self.options.ttl_s, json.dumps(
                                   {"status": 500, "message": f"the process running this job died "
                                    f"{row['attempts']} times"}), row["id"]))
                    self._outbox_add(db, row["id"], "job.failed")
                    continue
                token = uuid.uuid4().hex
                db.execute("UPDATE jobs SET status = 'running', token = ?, lease_until = ?, attempts = attempts + 1, "
                           "started_at = COALESCE(started_at, ?) WHERE id = ?",
                           (token, now + self.options.lease_s, now, row["id"]))
                if row["attempts"] == 0:
                    self._outbox_add(db, row["id"], "job.started")
                taken.append((row["id"], token))
                images += row["n"]
        claims = [Claim(self.get(job_id), token) for job_id, token in taken]
        for c in claims:
            self.publish(JobEvent(c.job.id, "status", {"status": "running", "attempt": c.job.attempts}))
        return claims

    def _held(self, db: sqlite3.Connection, claim: Claim, sets: str, args: Sequence[Any]) -> bool:
        """Apply ``sets`` only while this claim still holds a running, unexpired job."""
        return db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND token = ? AND status = 'running' "
                          "AND expires_at > ?", (*args, claim.job.id, claim.token, self._clock())).rowcount == 1

    def extend(self, claim: Claim) -> bool:
        with self._tx() as db:
            return self._held(db, claim, "lease_until = ?", (self._clock() + self.options.lease_s,))

    def progress(self, claim: Claim, progress: Progress) -> bool:
        data = {"step": progress.step, "steps": progress.steps, "images_done": progress.images_done}
        with self._tx() as db:
            held = self._held(db, claim, "progress = ?, lease_until = ?",
                              (json.dumps(data), self._clock() + self.options.lease_s))
        if held:
            self.publish(JobEvent(claim.job.id, "progress", {**data, "n": claim.job.n}))
        return held

    def put_image(self, claim: Claim, index: int, png: bytes) -> bool:
        with self._tx() as db:
            held = self._held(db, claim, "lease_until = ?", (self._clock() + self.options.lease_s,))
            if held:
                db.execute("INSERT OR REPLACE INTO images (job_id, idx, png) VALUES (?, ?, ?)",
                           (claim.job.id, index, png))
        if held:
            self.publish(JobEvent(claim.job.id, "image", {"index": index, "seed": claim.job.spec.seeds[index]}))
        return held

    def complete(self, claim: Claim, pngs: Sequence[bytes]) -> Job | None:
        now = self._clock()
        steps = int(claim.job.spec.params.get("steps") or 0)
        done = json.dumps({"step": steps, "steps": steps, "images_done": len(pngs)})
        with self._tx() as db:
            if not self._held(db, claim, "status = 'succeeded', finished_at = ?, expires_at = ?, token = NULL, "
                              "progress = ?", (now, now + self.options.ttl_s, done)):
                return None
            db.executemany("INSERT OR REPLACE INTO images (job_id, idx, png) VALUES (?, ?, ?)",
                           [(claim.job.id, i, png) for i, png in enumerate(pngs)])
            self._outbox_add(db, claim.job.id, "job.succeeded")
        self.publish(JobEvent(claim.job.id, "status", {"status": "succeeded"}))
        return self.get(claim.job.id)

    def fail(self, claim: Claim, failure: Failure) -> Job | None:
        now = self._clock()
        error = json.dumps({"status": failure.status, "message": failure.message})
        with self._tx() as db:
            if not self._held(db, claim, "status = 'failed', finished_at = ?, expires_at = ?, token = NULL, error = ?",
                              (now, now + self.options.ttl_s, error)):
                return None
            self._outbox_add(db, claim.job.id, "job.failed")
        self.publish(JobEvent(claim.job.id, "status", {"status": "failed", "error": json.loads(error)}))
        return self.get(claim.job.id)

    def release(self, claim: Claim) -> bool:
        with self._tx() as db:
            held = self._held(db, claim, "status = 'queued', token = NULL, lease_until = NULL, "
                              "attempts = attempts - 1", ())
        if held:  # it keeps its seq: back at its old place in the queue
            position = self.position(claim.job.id)
            self.publish(JobEvent(claim.job.id, "status", {"status": "queued", "position": position}))
        return held

    def recover(self) -> int:
        """Requeue every running job: this store belongs to one process, so they are the dead one's."""
        if self._absent():
            return 0
        with self._tx() as db:
            self._outbox_recover(db)
            return int(db.execute("UPDATE jobs SET status = 'queued', token = NULL, lease_until = NULL "
                                  "WHERE status = 'running'").rowcount)

    # ---- events, metrics, housekeeping ----

    def subscribe(self, job_id: str, callback: Subscriber) -> Callable[[], None]:
        return self._hub.subscribe(job_id, callback)

    def publish(self, event: JobEvent) -> None:
        self._hub.publish(event)

    def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0}
        if self._absent():
            return counts
        rows = self._all("SELECT status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') "
                         "AND expires_at > ? GROUP BY status", self._clock())
        return {**counts, **{status: count for status, count in rows}}

    def _maybe_purge(self) -> None:
        now = self._clock()
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            self.purge()

    def purge(self) -> int:
        """Drop expired jobs' images now, and their rows one TTL later (until then they answer 410)."""
        now = self._clock()
        if self._absent():
            return 0
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE job_id IN (SELECT id FROM jobs WHERE expires_at <= ?)", (now,))
            return int(db.execute("DELETE FROM jobs WHERE expires_at <= ?", (now - self.options.ttl_s,)).rowcount)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
