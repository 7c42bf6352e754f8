# ruff: noqa: F811  (pytest fixtures imported from tests/job_stores.py and named as arguments)
"""The webhook outbox of both job stores (app/jobs/outbox.py): a job's event enters the store with
the state change it reports, due deliveries are taken under a lease (no two replicas at once, back
after the lease), retries wait for their time, and a restarted SQLite process frees its leases.
Also the per-image results a running job stores as each image finishes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from app.jobs import Failure, JobEvent, JobNotReady, JobSpec, JobStore, fingerprint, owner_of
from app.jobs.outbox import message

from .job_stores import Stores, redis_url, store, stores  # noqa: F401  (fixtures)

A = owner_of("key-a")
HOOK = "http://hooks.example/ddpm"
ALL = ("job.started", "job.succeeded", "job.failed", "job.canceled")


def spec(n: int = 1, seed: int = 7, events: tuple[str, ...] = ALL, webhook: str | None = HOOK) -> JobSpec:
    return JobSpec(n=n, seed=seed, params={"steps": 4}, webhook=webhook, webhook_events=events,
                   fingerprint=fingerprint({"n": n, "seed": seed}))


def taken(store: JobStore) -> dict[str, dict[str, object]]:
    """Every due delivery, taken (for a long lease), by webhook-id: its parsed body."""
    return {d.id: json.loads(d.body) for d in store.due_deliveries(100, lease_s=60)}


def test_job_events_enter_the_outbox_with_their_state_change(store: JobStore) -> None:
    ok, _ = store.create(A, spec(seed=1))
    bad, _ = store.create(A, spec(seed=2))
    quiet, _ = store.create(A, spec(seed=3, webhook=None, events=()))
    gone, _ = store.create(A, spec(seed=4, events=("job.succeeded",)))
    assert store.pending_deliveries() == 0  # nothing happened yet
    claims = {c.job.id: c for c in store.claim("r1", 8)}
    assert set(claims) == {ok.id, bad.id, quiet.id, gone.id}
    started = taken(store)
    assert set(started) == {f"msg_{ok.id}_job.started", f"msg_{bad.id}_job.started"}
    body = started[f"msg_{ok.id}_job.started"]
    assert body["type"] == "job.started" and body["data"]["status"] == "running"  # type: ignore[index]
    store.complete(claims[ok.id], [b"png"])
    store.fail(claims[bad.id], Failure(500, "out of memory"))
    store.complete(claims[quiet.id], [b"png"])
    store.cancel(gone.id, A)  # it asked for job.succeeded only
    ended = {k: v for k, v in taken(store).items() if not k.endswith("job.started")}
    assert set(ended) == {f"msg_{ok.id}_job.succeeded", f"msg_{bad.id}_job.failed"}
    data = ended[f"msg_{bad.id}_job.failed"]["data"]
    assert data["status"] == "failed" and data["error"] == {"status": 500, "message": "out of memory"}  # type: ignore[index]
    assert ended[f"msg_{ok.id}_job.succeeded"]["data"]["finished_at"] is not None  # type: ignore[index]
    canceled, _ = store.create(A, spec(seed=5))
    store.cancel(canceled.id, A)
    store.cancel(canceled.id, A)  # idempotent: one event
    assert list(taken(store)) == [f"msg_{canceled.id}_job.canceled"]


def test_started_is_sent_for_the_first_run_only(stores: Stores) -> None:
    store = stores.open(lease_s=0.3)
    job, _ = store.create(A, spec())
    store.claim("r1", 1)
    assert list(taken(store)) == [f"msg_{job.id}_job.started"]
    time.sleep(0.4)  # r1 died: the job goes to r2, which does not announce it again
    (again,) = store.claim("r2", 1)
    assert again.job.attempts == 2 and store.due_deliveries(10, 60) == []


def test_leases_retries_and_drops(stores: Stores) -> None:
    one = stores.open()
    other = stores.open() if stores.kind == "redis" else one  # another replica (Redis) or the same process
    for i in range(3):
        one.enqueue_delivery(message(HOOK, "job.succeeded", {"i": i}, msg_id=f"m{i}"))
    one.enqueue_delivery(message(HOOK, "job.succeeded", {"i": 99}, msg_id="m0"))  # the same id: kept once
    first = one.due_deliveries(2, lease_s=0.4)
    assert len(first) == 2 and all(d.attempt == 1 for d in first)
    rest = other.due_deliveries(5, lease_s=0.4)
    assert [d.id for d in rest] == sorted({"m0", "m1", "m2"} - {d.id for d in first})
    assert json.loads(next(d for d in first + rest if d.id == "m0").body)["data"] == {"i": 0}
    assert other.due_deliveries(5, lease_s=0.4) == []  # all taken
    one.drop_delivery(first[0])
    one.retry_delivery(first[1], time.time() + 0.6)
    time.sleep(0.45)  # rest's lease has passed; first[1] waits for its retry time
    assert [(d.id, d.attempt) for d in other.due_deliveries(5, lease_s=5)] == [(rest[0].id, 2)]
    time.sleep(0.25)
    assert [(d.id, d.attempt) for d in one.due_deliveries(5, lease_s=5)] == [(first[1].id, 2)]
    assert one.pending_deliveries() == 2


def test_a_restarted_sqlite_process_frees_its_leases(tmp_path: Path) -> None:
    """(Redis leases pass with time alone: test_leases_retries_and_drops.)"""
    stores = Stores("sqlite", tmp_path, None)
    first = stores.open()
    first.enqueue_delivery(message(HOOK, "job.failed", {}, msg_id="m1"))
    first.enqueue_delivery(message(HOOK, "job.failed", {}, msg_id="m2"))
    (held,) = first.due_deliveries(1, lease_s=600)  # taken when the process was killed
    first.retry_delivery(first.due_deliveries(1, lease_s=600)[0], time.time() + 600)  # waiting for its retry
    restarted = stores.open()
    restarted.recover()
    assert [(d.id, d.attempt) for d in restarted.due_deliveries(5, lease_s=60)] == [(held.id, 2)]
    for opened in stores.opened:
        opened.close()


def test_images_are_stored_as_they_finish(stores: Stores) -> None:
    store = stores.open()
    reader = stores.open() if stores.kind == "redis" else store
    job, _ = store.create(A, spec(n=3, webhook=None, events=()))
    (claim,) = store.claim("r1", 4)
    events: list[JobEvent] = []
    unsubscribe = reader.subscribe(job.id, events.append)
    try:
        assert store.put_image(claim, 1, b"PNG one")
        assert reader.image(job.id, 1, A) == b"PNG one"  # while it still runs, from any replica
        with pytest.raises(JobNotReady):
            reader.image(job.id, 0, A)
        deadline = time.monotonic() + 5
        while not events:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert events[0] == JobEvent(job.id, "image", {"index": 1, "seed": 8})
        store.cancel(job.id, A)
        assert not store.put_image(claim, 2, b"late")  # a canceled job's replica stores nothing more
        with pytest.raises(JobNotReady):
            reader.image(job.id, 2, A)
    finally:
        unsubscribe()
