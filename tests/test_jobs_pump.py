# ruff: noqa: F811  (pytest fixtures imported from tests/job_stores.py and named as arguments)
"""The pump (app/jobs/pump.py) between a job store and an engine, on both stores, with a stand-in
engine that runs each image in a few timed steps: jobs pulled only into free rows, progress and
results stored, cancel from any replica reaching the rows, webhooks, hand-back at shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from standardwebhooks import Webhook

from app.jobs import Claim, JobNotReady, JobSpec, JobStore, fingerprint, owner_of
from app.jobs.pump import JobPump, JobSink, PumpOptions
from app.jobs.webhooks import WebhookOptions, WebhookSender

from .job_stores import Stores, redis_url, stores  # noqa: F401  (fixtures)
from .webhook_receiver import SECRET, receiver

A = owner_of("key-a")


def spec(n: int = 1, seed: int = 0, steps: int = 4, webhook: str | None = None,
         events: tuple[str, ...] = ()) -> JobSpec:
    return JobSpec(n=n, seed=seed, params={"steps": steps}, webhook=webhook, webhook_events=events,
                   fingerprint=fingerprint({"n": n, "seed": seed, "steps": steps}))


class FakeEngine:
    """Rows: ``capacity``; each job takes ``steps`` steps of ``step_s``; image i is its seed's bytes."""

    def __init__(self, capacity: int, step_s: float = 0.02, hang: bool = False) -> None:
        self.capacity, self.step_s, self.hang = capacity, step_s, hang
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak = 0
        self.started: list[str] = []
        self.canceled: list[str] = []

    def free_rows(self) -> int:
        with self.lock:
            return self.capacity - sum(self.active.values())

    def start(self, claim: Claim, sink: JobSink) -> Callable[[], None]:
        job = claim.job
        stop = threading.Event()
        with self.lock:
            self.active[job.id] = job.n
            self.peak = max(self.peak, sum(self.active.values()))
            self.started.append(job.id)

        def run() -> None:
            steps = int(job.spec.params["steps"])
            for step in range(1, steps + 1):
                if stop.wait(self.step_s):
                    return
                sink.progress(step, steps, 0)
            images = [str(seed).encode() for seed in job.spec.seeds]
            for index, image in enumerate(images):
                if not stop.is_set():
                    sink.image(index, image)
            while self.hang and not stop.wait(0.05):
                pass
            if not stop.is_set():
                with self.lock:
                    self.active.pop(job.id, None)
                sink.done([str(seed).encode() for seed in job.spec.seeds])

        threading.Thread(target=run, daemon=True).start()

        def cancel() -> None:
            stop.set()
            with self.lock:
                self.active.pop(job.id, None)
                self.canceled.append(job.id)

        return cancel


def pump_for(store: JobStore, engine: FakeEngine, name: str = "replica-1", **kwargs: object) -> JobPump:
    pump = JobPump(store, engine, PumpOptions(consumer=name, poll_s=0.05, progress_interval_s=0.0),
                   encode=lambda image: b"PNG:" + image, **kwargs)  # type: ignore[arg-type]
    pump.start()
    return pump


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_jobs_run_to_success_within_free_rows(stores: Stores) -> None:
    store = stores.open()
    engine = FakeEngine(capacity=3)
    finished: list[str] = []
    jobs = [store.create(A, spec(n=n, seed=10 * i))[0] for i, n in enumerate([1, 2, 1, 3, 1])]
    pump = pump_for(store, engine, on_finish=finished.append)
    try:
        wait_for(lambda: len(finished) == len(jobs))
    finally:
        pump.close()
    assert finished == ["succeeded"] * 5
    # a claim stops once the images it took reach the free rows; only the last job may overshoot
    assert engine.peak <= 3 + 2
    for job in jobs:
        done = store.get(job.id)
        assert done.status == "succeeded" and done.progress is not None and done.progress.images_done == job.n
        assert [store.image(job.id, i) for i in range(job.n)] == [b"PNG:%d" % s for s in job.spec.seeds]


def test_a_full_engine_claims_nothing(stores: Stores) -> None:
    store = stores.open()
    engine = FakeEngine(capacity=0)
    job, _ = store.create(A, spec())
    pump = pump_for(store, engine)
    try:
        time.sleep(0.3)
        assert store.get(job.id).status == "queued" and engine.started == []
        engine.capacity = 1  # rows free up: the job is taken
        wait_for(lambda: store.get(job.id).status == "succeeded")
    finally:
        pump.close()


def test_cancel_on_another_replica_frees_the_rows(stores: Stores) -> None:
    store = stores.open()
    other = stores.open() if stores.kind == "redis" else store  # the HTTP side of another replica
    engine = FakeEngine(capacity=4, hang=True)
    job, _ = store.create(A, spec(n=2))
    pump = pump_for(store, engine)
    try:
        wait_for(lambda: job.id in engine.started)
        assert other.cancel(job.id, A).status == "canceled"
        wait_for(lambda: job.id in engine.canceled)
        assert engine.free_rows() == 4 and pump.held == 0
    finally:
        pump.close()
    assert store.get(job.id).status == "canceled"


def test_images_are_stored_as_each_finishes(stores: Stores) -> None:
    store = stores.open()
    engine = FakeEngine(capacity=4, hang=True)  # every image done, the job not yet ended
    job, _ = store.create(A, spec(n=2, seed=40))
    pump = pump_for(store, engine)
    try:
        wait_for(lambda: store.pending_deliveries() == 0 and _stored(store, job.id, 2))
        assert store.get(job.id).status == "running"
        assert [store.image(job.id, i, A) for i in range(2)] == [b"PNG:40", b"PNG:41"]
    finally:
        pump.close()


def _stored(store: JobStore, job_id: str, n: int) -> bool:
    try:
        return all(store.image(job_id, i) for i in range(n))
    except JobNotReady:
        return False


def test_close_hands_unfinished_jobs_back(stores: Stores) -> None:
    store = stores.open()
    engine = FakeEngine(capacity=4, hang=True)
    job, _ = store.create(A, spec())
    pump = pump_for(store, engine)
    wait_for(lambda: store.get(job.id).status == "running")
    pump.close()
    back = store.get(job.id)
    assert back.status == "queued" and back.attempts == 0 and job.id in engine.canceled
    engine2 = FakeEngine(capacity=4)
    pump2 = pump_for(store, engine2, name="replica-2")  # the next start (or another replica) runs it
    try:
        wait_for(lambda: store.get(job.id).status == "succeeded")
    finally:
        pump2.close()


def test_webhooks_for_started_and_succeeded(stores: Stores) -> None:
    store = stores.open()
    outcomes: list[str] = []
    sender = WebhookSender(WebhookOptions(secret=SECRET, allow_private=True, poll_s=0.05), store,
                           on_attempt=outcomes.append)
    with receiver() as r:
        job, _ = store.create(A, spec(webhook=r.url, events=("job.started", "job.succeeded")))
        quiet, _ = store.create(A, spec(seed=5))  # no webhook: nothing sent
        pump = pump_for(store, FakeEngine(capacity=4), webhooks=sender)
        try:
            wait_for(lambda: len(outcomes) == 2)
        finally:
            pump.close()
            sender.close()
    assert outcomes == ["delivered", "delivered"]
    payloads = [Webhook(SECRET).verify(body, headers) for _, headers, body, _ in r.requests]
    assert [p["type"] for p in payloads] == ["job.started", "job.succeeded"]
    assert payloads[1]["data"]["id"] == job.id and payloads[1]["data"]["status"] == "succeeded"
    assert r.requests[1][1]["webhook-id"] == f"msg_{job.id}_job.succeeded"
    assert store.get(quiet.id).status == "succeeded"


@pytest.mark.parametrize("retry", [False, True])
def test_engine_failures(stores: Stores, retry: bool) -> None:
    store = stores.open()

    class Failing(FakeEngine):
        def start(self, claim: Claim, sink: JobSink) -> Callable[[], None]:
            cancel = super().start(claim, sink)
            if len(self.started) == 1:  # the first run only
                sink.failed(503 if retry else 500, "shutting down" if retry else "out of memory", retry=retry)
            return cancel

    job, _ = store.create(A, spec())
    engine = Failing(capacity=2)
    pump = pump_for(store, engine)
    try:
        if retry:  # back to the queue, then run again; the hand-back spent no attempt
            wait_for(lambda: store.get(job.id).status == "succeeded")
            assert engine.started == [job.id, job.id] and store.get(job.id).attempts == 1
        else:
            wait_for(lambda: store.get(job.id).status == "failed")
            error = store.get(job.id).error
            assert error is not None and (error.status, error.message) == (500, "out of memory")
    finally:
        pump.close()


def test_a_late_event_of_an_earlier_run_is_ignored(stores: Stores) -> None:
    store = stores.open()
    sinks: list[JobSink] = []

    class Replaying(FakeEngine):
        def start(self, claim: Claim, sink: JobSink) -> Callable[[], None]:
            sinks.append(sink)
            if len(sinks) == 1:
                sink.failed(503, "shutting down", retry=True)  # handed back, then claimed again
            else:
                sinks[0].failed(500, "a stale failure of the first run")
            return super().start(claim, sink)

    job, _ = store.create(A, spec())
    pump = pump_for(store, Replaying(capacity=2))
    try:
        wait_for(lambda: store.get(job.id).status != "running" and len(sinks) >= 2)
        wait_for(lambda: store.get(job.id).status in ("succeeded", "failed"))
    finally:
        pump.close()
    assert store.get(job.id).status == "succeeded"
