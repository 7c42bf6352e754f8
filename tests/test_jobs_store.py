# ruff: noqa: F811  (pytest fixtures imported from tests/job_stores.py and named as arguments)
"""The job store/queue (app/jobs), every test on BOTH stores: SQLite in a temp folder and a real
Debian redis-server on loopback. Leases and TTLs are short so the clock runs in real time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from app.jobs import (
    SHARED_OWNER,
    Failure,
    IdempotencyConflict,
    InvalidField,
    JobEvent,
    JobExpired,
    JobNotFound,
    JobNotReady,
    JobSpec,
    JobStore,
    Progress,
    QuotaExceeded,
    StoreOptions,
    fingerprint,
    open_store,
    owner_of,
)
from app.jobs.redis_store import GROUP, STREAM

from .job_stores import Stores, redis_url, store, stores  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
A, B = owner_of("key-a"), owner_of("key-b")


def spec(n: int = 1, seed: int = 7, steps: int = 10, **extra: object) -> JobSpec:
    body = {"n": n, "seed": seed, "steps": steps, **extra}
    return JobSpec(n=n, seed=seed, params={"steps": steps, "sampler": "ddim"}, fingerprint=fingerprint(body))


def wait_for(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_create_get_and_position(store: JobStore) -> None:
    first, created = store.create(A, spec(n=3))
    assert created and first.status == "queued" and first.position == 0 and first.owner == A
    second, _ = store.create(B, spec(n=2))
    assert second.position == 3  # images queued ahead, whoever owns them
    assert store.position(second.id) == 3
    got = store.get(first.id, A)
    assert got.spec == first.spec and got.spec.seeds == [7, 8, 9] and got.expires_at > got.created_at


def test_another_owner_gets_not_found(store: JobStore) -> None:
    job, _ = store.create(A, spec())
    with pytest.raises(JobNotFound):
        store.get(job.id, B)
    with pytest.raises(JobNotFound):
        store.cancel(job.id, B)
    with pytest.raises(JobNotFound):
        store.get("no-such-job", A)
    assert store.get(job.id).id == job.id  # the engine reads without an owner


def test_a_store_never_written_makes_no_file(tmp_path: Path) -> None:
    """A replica that never gets a job writes nothing (no data folder in a read-only image)."""
    store = open_store(data_dir=tmp_path / "data", redis_url=None, options=StoreOptions())
    assert store.recover() == 0 and store.claim("r1", 8) == [] and store.counts() == {"queued": 0, "running": 0}
    assert store.list_jobs(A).jobs == [] and store.position("x") is None
    with pytest.raises(JobNotFound):
        store.get("x")
    assert not (tmp_path / "data").exists()
    job, _ = store.create(A, spec())
    assert (tmp_path / "data" / "jobs.sqlite3").exists()
    store.close()
    reopened = open_store(data_dir=tmp_path / "data", redis_url=None, options=StoreOptions())
    assert reopened.get(job.id).status == "queued"
    reopened.close()


def test_owner_hashes_keys() -> None:
    assert owner_of(None) == owner_of("") == SHARED_OWNER
    assert owner_of("secret") == owner_of("secret") != owner_of("secret2")
    assert "secret" not in owner_of("secret")


def test_idempotency(store: JobStore) -> None:
    job, created = store.create(A, spec(), idempotency_key="k1")
    again, created_again = store.create(A, spec(), idempotency_key="k1")
    assert created and not created_again and again.id == job.id
    with pytest.raises(IdempotencyConflict):
        store.create(A, spec(seed=8), idempotency_key="k1")
    other, created_other = store.create(B, spec(), idempotency_key="k1")  # keys are per owner
    assert created_other and other.id != job.id
    assert store.create(A, spec())[0].id != job.id  # no key: always a new job


def test_list_newest_first_filter_and_cursor(store: JobStore) -> None:
    ids = [store.create(A, spec(seed=i))[0].id for i in range(7)]
    store.create(B, spec())
    claimed = store.claim("r1", 1)[0]
    assert claimed.job.id == ids[0]
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_jobs(A, limit=3, cursor=cursor)
        seen += [j.id for j in page.jobs]
        assert len(page.jobs) <= 3
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert [j.id for j in store.list_jobs(A, status="running").jobs] == [ids[0]]
    assert len(store.list_jobs(A, status="queued", limit=100).jobs) == 6
    assert store.list_jobs(owner_of("nobody")).jobs == []
    with pytest.raises(InvalidField) as err:
        store.list_jobs(A, cursor="garbage")
    assert err.value.field == "cursor"


def test_claim_takes_images_up_to_free_rows(store: JobStore) -> None:
    jobs = [store.create(A, spec(n=2, seed=i))[0] for i in range(4)]
    assert store.claim("r1", 0) == []
    first = store.claim("r1", 3)  # 2 < 3, so a second job: its rows join as rows free
    assert [c.job.id for c in first] == [jobs[0].id, jobs[1].id]
    assert all(c.job.status == "running" and c.job.attempts == 1 and c.job.started_at for c in first)
    assert store.get(jobs[2].id).position == 0 and store.get(jobs[3].id).position == 2
    assert [c.job.id for c in store.claim("r2", 1)] == [jobs[2].id]
    assert store.counts() == {"queued": 1, "running": 3}


def test_progress_complete_and_images(store: JobStore) -> None:
    job, _ = store.create(A, spec(n=2))
    with pytest.raises(JobNotReady):
        store.image(job.id, 0, A)
    claim = store.claim("r1", 4)[0]
    assert store.progress(claim, Progress(step=3, steps=10, images_done=0))
    assert store.get(job.id).progress == Progress(3, 10, 0)
    assert store.extend(claim)
    pngs = [b"\x89PNG first", b"\x89PNG second"]
    done = store.complete(claim, pngs)
    assert done is not None and done.status == "succeeded" and done.finished_at is not None
    assert [store.image(job.id, i, A) for i in range(2)] == pngs
    with pytest.raises(JobNotFound):
        store.image(job.id, 2, A)
    with pytest.raises(JobNotFound):
        store.image(job.id, 0, B)
    assert store.complete(claim, pngs) is None  # a claim ends once
    assert not store.progress(claim, Progress(10, 10, 2)) and not store.extend(claim)
    assert store.claim("r2", 8) == []


def test_fail(store: JobStore) -> None:
    job, _ = store.create(A, spec())
    claim = store.claim("r1", 1)[0]
    failed = store.fail(claim, Failure(500, "sampling failed: out of memory"))
    assert failed is not None and failed.status == "failed"
    assert failed.error == Failure(500, "sampling failed: out of memory")
    assert store.fail(claim, Failure(500, "again")) is None
    assert store.get(job.id).error == Failure(500, "sampling failed: out of memory")


def test_cancel_queued_and_running(store: JobStore) -> None:
    queued, _ = store.create(A, spec(seed=1))
    running, _ = store.create(A, spec(seed=2))
    later, _ = store.create(A, spec(seed=3))
    claim = store.claim("r1", 1)[0]
    assert claim.job.id == queued.id
    canceled = store.cancel(queued.id, A)
    assert canceled.status == "canceled" and store.cancel(queued.id, A).status == "canceled"  # idempotent
    # the running replica learns it at its next progress or lease renewal
    assert not store.progress(claim, Progress(1, 10, 0)) and not store.extend(claim)
    assert store.complete(claim, [b"png"]) is None and store.get(queued.id).status == "canceled"
    assert store.cancel(running.id, A).status == "canceled"
    assert store.get(later.id).position == 0  # canceled jobs no longer count ahead
    assert [c.job.id for c in store.claim("r1", 8)] == [later.id]
    succeeded = store.claim("r1", 8)
    assert succeeded == []


def test_release_requeues_without_counting_an_attempt(stores: Stores) -> None:
    store = stores.open(max_attempts=1)
    job, _ = store.create(A, spec(n=2))
    other, _ = store.create(B, spec(n=1))
    claim = store.claim("r1", 1)[0]
    assert store.release(claim) and not store.release(claim)  # once
    again = store.get(job.id)
    assert again.status == "queued" and again.attempts == 0
    assert not store.progress(claim, Progress(1, 10, 0))
    taken = store.claim("r2", 8)  # max_attempts=1 and it still runs: the release was no failure
    assert {c.job.id for c in taken} == {job.id, other.id}
    assert all(c.job.attempts == 1 for c in taken)
    assert store.counts() == {"queued": 0, "running": 2}


def test_cancel_after_success_keeps_success(store: JobStore) -> None:
    job, _ = store.create(A, spec())
    store.complete(store.claim("r1", 1)[0], [b"png"])
    assert store.cancel(job.id, A).status == "succeeded"


def test_expiry(stores: Stores) -> None:
    store = stores.open(ttl_s=0.4)
    done, _ = store.create(A, spec(seed=1))
    store.complete(store.claim("r1", 1)[0], [b"png"])
    waiting, _ = store.create(A, spec(seed=2), idempotency_key="k")
    time.sleep(0.5)
    for job_id in (done.id, waiting.id):
        with pytest.raises(JobExpired):
            store.get(job_id, A)
    with pytest.raises(JobExpired):
        store.image(done.id, 0, A)
    with pytest.raises(JobExpired):
        store.cancel(waiting.id, A)
    assert store.list_jobs(A).jobs == []
    assert store.claim("r1", 8) == []  # a job that expired in the queue never runs
    with pytest.raises(JobExpired):
        store.create(A, spec(seed=2), idempotency_key="k")


def test_quota_per_owner(store: JobStore) -> None:
    store.create(A, spec(n=3), max_queued_images=4)
    with pytest.raises(QuotaExceeded) as err:
        store.create(A, spec(n=2, seed=1), max_queued_images=4)
    assert err.value.limit == 4 and err.value.queued == 3 and "max_queued_images_per_key=4" in err.value.detail
    store.create(B, spec(n=4), max_queued_images=4)  # another key is not affected
    store.claim("r1", 1)  # A's 3 images leave the queue
    store.create(A, spec(n=4, seed=2), max_queued_images=4)
    job, _ = store.create(A, spec(n=1, seed=3), max_queued_images=None)
    store.cancel(job.id)
    with pytest.raises(QuotaExceeded):
        store.create(A, spec(n=1, seed=4), max_queued_images=4)


def test_lease_expiry_redelivers_to_another_replica(stores: Stores) -> None:
    one, two = stores.open(lease_s=0.3), stores.open(lease_s=0.3)
    job, _ = one.create(A, spec(n=2))
    held = one.claim("replica-1", 4)[0]
    for _ in range(3):  # a live replica renews its lease and keeps the job
        time.sleep(0.15)
        assert one.extend(held)
        assert two.claim("replica-2", 4) == []
    time.sleep(0.45)  # replica-1 stops renewing: the job goes to replica-2
    taken = two.claim("replica-2", 4)
    assert [c.job.id for c in taken] == [job.id] and taken[0].job.attempts == 2
    assert not one.progress(held, Progress(5, 10, 0))  # the old holder learns it lost the job
    assert one.complete(held, [b"stale", b"stale"]) is None
    assert two.complete(taken[0], [b"a", b"b"]) is not None
    assert one.image(job.id, 1) == b"b"  # every replica reads every result


def test_a_job_that_kills_its_replicas_fails(stores: Stores) -> None:
    store = stores.open(lease_s=0.1, max_attempts=2)
    job, _ = store.create(A, spec())
    for consumer in ("r1", "r2"):
        assert [c.job.id for c in store.claim(consumer, 1)] == [job.id]
        time.sleep(0.2)
        if stores.kind == "sqlite":
            store.recover()
    assert store.claim("r3", 1) == []
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error is not None and "2 times" in failed.error.message


def test_events_reach_subscribers_of_every_replica(stores: Stores) -> None:
    one = stores.open()
    two = stores.open() if stores.kind == "redis" else one
    job, _ = one.create(A, spec(n=1))
    seen: list[JobEvent] = []
    lock = threading.Lock()

    def record(event: JobEvent) -> None:
        with lock:
            seen.append(event)

    unsubscribe = two.subscribe(job.id, record)
    claim = one.claim("r1", 1)[0]
    one.progress(claim, Progress(4, 10, 0))
    one.complete(claim, [b"png"])
    wait_for(lambda: any(e.data.get("status") == "succeeded" for e in seen))
    kinds = [(e.kind, e.data.get("status")) for e in seen]
    # Delivery is asynchronous: the "queued" of the create just before subscribing may still arrive.
    if kinds[0] == ("status", "queued"):
        kinds, seen = kinds[1:], seen[1:]
    assert kinds == [("status", "running"), ("progress", None), ("status", "succeeded")], seen
    assert seen[1].data == {"step": 4, "steps": 10, "images_done": 0, "n": 1}
    unsubscribe()
    one.cancel(one.create(A, spec(seed=9))[0].id)
    time.sleep(0.1)
    assert len(seen) == 3


HOLDER = """
import sys, time
from pathlib import Path
from app.jobs import StoreOptions, open_store
store = open_store(data_dir=Path(sys.argv[1]), redis_url=sys.argv[2] or None, options=StoreOptions(lease_s=0.5))
claims = store.claim("doomed", 4)
print(claims[0].job.id, flush=True)
time.sleep(600)
"""


def test_kill_9_of_a_claim_holder(stores: Stores) -> None:
    """A process holding a claim is killed -9: SQLite runs the job again at the next start; on
    Redis another consumer gets it once the lease has passed, not before."""
    store = stores.open(lease_s=0.5)
    job, _ = store.create(A, spec(n=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(stores.tmp), stores.url or ""], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == job.id
        assert store.get(job.id).status == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    if stores.kind == "sqlite":
        store.close()
        stores.opened.remove(store)
        store = stores.open(lease_s=0.5)  # the next start
        assert store.recover() == 1
    else:
        assert store.claim("survivor", 4) == []  # the lease has not passed yet
        pending = redis.Redis.from_url(stores.url).xpending(STREAM, GROUP)  # type: ignore[arg-type]
        assert pending["pending"] == 1
        time.sleep(0.6)
    taken = store.claim("survivor", 4)
    assert [c.job.id for c in taken] == [job.id] and taken[0].job.attempts == 2
    assert store.complete(taken[0], [b"x", b"y"]) is not None
