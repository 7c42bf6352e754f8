"""Jobs survive their replica, against real ``ddpm serve`` processes killed with SIGKILL:

- two replicas share a real redis-server; the one running a job is killed -9; the other takes the
  job once the lease has passed and finishes it, its images byte-identical to the same job run
  undisturbed;
- one replica on SQLite is killed -9 mid-job; started again on the same data folder, it runs the
  job to the end, the images identical again.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from app.jobs.redis_store import GROUP, STREAM

from .redis_server import free_port, redis_server
from .test_process import serve_process
from .webhook_receiver import SECRET, receiver

# One row per network call and 100 steps per image: a 12-image job runs for seconds, long enough
# to be caught running; a lease of 1 s brings it back quickly after a kill.
SETTINGS = {"max_batch": "1", "job_lease_s": "1", "job_poll_s": "0.05"}
BODY = {"n": 12, "steps": 100, "seed": 4242, "sampler": "ddpm"}


def active(url: str) -> float:
    m = re.search(r"^ddpm_active_images (\S+)$", httpx.get(f"{url}/metrics", timeout=10).text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_job(url: str, job_id: str, statuses: tuple[str, ...], timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.05)


def post_then_kill(url: str, proc: subprocess.Popen[bytes], body: dict[str, Any], status: str,
                   before_kill: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Queue a job on the replica at ``url``, wait until it is ``status`` (and ``before_kill(url)``
    returns), then kill -9 the replica."""
    job = httpx.post(f"{url}/v1/jobs", json=body, timeout=10).json()
    wait_job(url, job["id"], (status,))
    if before_kill is not None:
        before_kill(url)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return job


def images(url: str, job: dict[str, Any]) -> list[bytes]:
    return [httpx.get(f"{url}{image['url']}", timeout=10).content for image in job["images"]]


def counter(url: str, name: str, label: str) -> float:
    m = re.search(rf'^{name}{{{label}}} (\S+)$', httpx.get(f"{url}/metrics", timeout=10).text, re.M)
    return float(m.group(1)) if m else 0.0


# Webhooks on, to a loopback receiver; the first retry comes 2 to 4 s after the first attempt, time
# enough to kill the replica that made it before it tries again.
HOOKS = {"webhook_secret": SECRET, "webhook_allow_private": "true", "webhook_backoff_s": "4",
         "job_poll_s": "0.05", "job_lease_s": "1", "runtime": "torch"}


def attempted_once(url: str) -> None:
    """Wait until this replica's first attempt failed (the receiver is down) and a retry waits."""
    deadline = time.monotonic() + 60
    while counter(url, "ddpm_webhook_deliveries_total", 'outcome="retry"') < 1:
        assert time.monotonic() < deadline, "no failed first attempt"
        time.sleep(0.05)


def delivered(port: int, job_id: str) -> list[dict[str, Any]]:
    """The receiver comes up on ``port``: the delivery that waited is sent there, signed."""
    with receiver(port=port) as r:
        deadline = time.monotonic() + 60
        while not r.requests:
            assert time.monotonic() < deadline, "the waiting delivery never came"
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate, if one were coming
    payloads = [Webhook(SECRET).verify(body, headers) for _, headers, body, _ in r.requests]
    assert {h["webhook-id"] for _, h, _, _ in r.requests} == {f"msg_{job_id}_job.succeeded"}
    assert all(p["type"] == "job.succeeded" and p["data"]["id"] == job_id for p in payloads)
    return payloads


@pytest.mark.slow
def test_a_pending_webhook_survives_kill_9_redis(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Replica A ends a job, its first delivery fails (receiver down) and A is killed -9 before it
    retries; replica B, started afterwards on the same Redis, delivers it once the receiver is up."""
    port = free_port()
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path / "redis"))
        env = {**HOOKS, "redis_url": redis_url}
        first, proc = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "a.log", **env))
        job = post_then_kill(first, proc, {"steps": 3, "webhook": f"http://127.0.0.1:{port}/hook"}, "succeeded",
                             attempted_once)
        assert redis.Redis.from_url(redis_url).zcard("ddpm:outbox") == 1
        second, _ = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "b.log", **env))
        delivered(port, job["id"])
        assert counter(second, "ddpm_webhook_deliveries_total", 'outcome="delivered"') == 1
        assert redis.Redis.from_url(redis_url).zcard("ddpm:outbox") == 0


@pytest.mark.slow
def test_a_pending_webhook_survives_kill_9_sqlite(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """One replica on SQLite: killed -9 with a delivery waiting; started again, it delivers it."""
    port = free_port()
    env = {**HOOKS, "data_dir": str(tmp_path / "data")}
    with serve_process(tiny_checkpoint, tmp_path / "first.log", **env) as (url, proc):
        job = post_then_kill(url, proc, {"steps": 3, "webhook": f"http://127.0.0.1:{port}/hook"}, "succeeded",
                             attempted_once)
    with serve_process(tiny_checkpoint, tmp_path / "second.log", **env) as (url, _):
        delivered(port, job["id"])
        assert counter(url, "ddpm_webhook_deliveries_total", 'outcome="delivered"') == 1


@pytest.mark.slow
def test_kill_9_of_one_of_two_replicas_sharing_redis(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path / "redis"))
        env = {**SETTINGS, "redis_url": redis_url}
        replicas = [stack.enter_context(serve_process(tiny_checkpoint, tmp_path / f"serve-{i}.log", **env))
                    for i in range(2)]
        urls = [url for url, _ in replicas]
        job = httpx.post(f"{urls[0]}/v1/jobs", json=BODY, timeout=10).json()
        wait_job(urls[1], job["id"], ("running",))  # every replica reads every job
        # The runner is the replica seen with a row in its batch, from one reading: between two of
        # the job's rows (one at a time here) the gauge reads 0 for an instant, so asking again
        # could find neither.
        deadline = time.monotonic() + 30
        while (runner := next((i for i, u in enumerate(urls) if active(u)), None)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _, proc = replicas[runner]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        survivor = urls[1 - runner]
        done = wait_job(survivor, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        undisturbed = httpx.post(f"{survivor}/v1/jobs", json=BODY, timeout=10).json()
        again = wait_job(survivor, undisturbed["id"], ("succeeded",))
        assert again["attempts"] == 1
        assert images(survivor, done) == images(survivor, again)


@pytest.mark.slow
def test_kill_9_of_a_sqlite_replica_then_restart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    env = {**SETTINGS, "data_dir": str(tmp_path / "data")}
    with serve_process(tiny_checkpoint, tmp_path / "first.log", **env) as (url, proc):
        job = post_then_kill(url, proc, BODY, "running")
    with serve_process(tiny_checkpoint, tmp_path / "second.log", **env) as (url, _):
        done = wait_job(url, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        undisturbed = httpx.post(f"{url}/v1/jobs", json=BODY, timeout=10).json()
        assert images(url, done) == images(url, wait_job(url, undisturbed["id"], ("succeeded",)))


class EventCounter:
    """Counts, from Redis pub/sub (every replica publishes there), how often each job was claimed
    (``running``) and how often it ended (``succeeded``, ``failed``, ``canceled``): a store ends a job
    only through its token-checked transition, which publishes once."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("ddpm:events:*")
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            m = self.pubsub.get_message(timeout=0.2)
            if m is not None and m["type"] == "pmessage":
                body = json.loads(m["data"])
                if body["kind"] == "status":
                    self.counts[m["channel"].decode().removeprefix("ddpm:events:")][body["data"]["status"]] += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pubsub.close()


def finished_by_key(c: httpx.Client, url: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Every ended job of every key, read through the API (pages of 100)."""
    jobs: dict[str, dict[str, Any]] = {}
    for key in keys:
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = c.get(f"{url}/v1/jobs", params=params, headers={"Authorization": f"Bearer {key}"}).json()
            jobs.update({j["id"]: j for j in page["jobs"] if j["status"] not in ("queued", "running")})
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return jobs


LOAD_JOBS = 500


def running_on(r: redis.Redis, pid: int) -> set[str]:
    """The jobs the replica with process id ``pid`` runs now: claimed by its consumer (the stream
    entry is pending there) and marked running by it (an entry it has read but not yet claimed is
    not: it runs once, elsewhere)."""
    jobs: set[str] = set()
    for consumer in r.xinfo_consumers(STREAM, GROUP):
        name = consumer["name"].decode()
        if name.split("-")[-2] != str(pid) or not consumer["pending"]:
            continue
        for entry in r.xpending_range(STREAM, GROUP, min="-", max="+", count=10_000, consumername=name):
            found = r.xrange(STREAM, entry["message_id"], entry["message_id"])
            job_id = found[0][1][b"id"].decode() if found else ""
            status, holder = r.hmget(f"ddpm:job:{job_id}", ["status", "consumer"])
            if status == b"running" and holder == name.encode():
                jobs.add(job_id)
    return jobs


def kill_while_holding(redis_url: str, proc: subprocess.Popen[bytes]) -> set[str]:
    """Kill -9 the replica ``proc`` as soon as it runs a job; returns the jobs it ran then, read
    after its death (nothing it does can change them any more)."""
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while not running_on(r, proc.pid):
        assert time.monotonic() < deadline, "the replica never ran a job"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    held = running_on(r, proc.pid)
    r.close()
    return held


@pytest.mark.slow
def test_bounded_load_across_two_replicas_with_a_kill_and_restart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """500 jobs of 2 to 4 steps from four keys through two replicas sharing Redis; one is killed -9
    halfway and started again. Every job ends exactly once (one end event each), succeeded; none is
    lost, none run more often than its attempts say (a re-run only for the killed replica's jobs),
    none stuck (bounded wait); the queue and the outbox end empty."""
    keys = ["k1", "k2", "k3", "k4"]
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path / "redis"))
        events = EventCounter(redis_url)
        stack.callback(events.close)
        # a lease of 3 s: long enough that a busy (not dead) replica keeps its jobs on a loaded box
        env = {"max_batch": "8", "job_lease_s": "3", "job_poll_s": "0.05", "redis_url": redis_url,
               "api_keys": ",".join(keys), "runtime": "torch"}
        first, proc = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "a.log", **env))
        second, _ = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "b.log", **env))
        made: dict[str, str] = {}

        urls = [first, second]

        def post(i: int) -> None:
            """Job i, to replica i % 2; one that died meanwhile: to the other, with the same
            Idempotency-Key, so a job made just before the kill is answered, not made twice."""
            headers = {"Authorization": f"Bearer {keys[i % len(keys)]}", "Idempotency-Key": f"load-{i}"}
            body = {"n": 1, "steps": 2 + i % 3, "seed": i}
            try:
                r = httpx.post(f"{urls[i % 2]}/v1/jobs", json=body, headers=headers, timeout=30)
            except httpx.TransportError:
                r = httpx.post(f"{second}/v1/jobs", json=body, headers=headers, timeout=30)
            assert r.status_code == 202, r.text
            made[r.json()["id"]] = headers["Authorization"]

        with httpx.Client(timeout=10) as c:
            with ThreadPoolExecutor(8) as pool:
                posted = pool.map(post, range(LOAD_JOBS // 2))
                held = kill_while_holding(redis_url, proc)  # the first replica, midway through the first half
                urls[0] = second
                list(posted)
            urls[0], proc = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "c.log", **env))
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(post, range(LOAD_JOBS // 2, LOAD_JOBS)))
            deadline = time.monotonic() + 90
            while len(ended := finished_by_key(c, second, keys)) < LOAD_JOBS:
                assert time.monotonic() < deadline, f"{LOAD_JOBS - len(ended)} jobs never ended"
                time.sleep(0.5)
        time.sleep(0.5)  # the last end events are on their way
        assert len(made) == LOAD_JOBS and set(ended) == set(made)  # none lost, none made up
        statuses = Counter(j["status"] for j in ended.values())
        assert statuses == {"succeeded": LOAD_JOBS}, statuses
        for job_id, job in ended.items():
            seen = events.counts[job_id]
            assert seen["succeeded"] == 1 and seen["failed"] == seen["canceled"] == 0, (job_id, seen)
            # each claim is recorded (attempts); its event may die with a replica killed right after it
            assert job["attempts"] in (1, 2) and 1 <= seen["running"] <= job["attempts"], (job, seen)
        # the jobs the killed replica was running ran again elsewhere (a job of a replica too busy
        # to renew its lease in time may run twice too: it ends once all the same)
        reruns = {i for i, j in ended.items() if j["attempts"] == 2}
        assert held and held <= reruns, (held, reruns)
        r = redis.Redis.from_url(redis_url)
        assert r.xlen("ddpm:jobs") == 0 and r.xpending("ddpm:jobs", "ddpm-engines")["pending"] == 0
        assert r.zcard("ddpm:outbox") == 0
