"""Jobs survive their replica, against real ``ddpm serve`` processes killed with SIGKILL:

- two replicas share a real redis-server; the one running a job is killed -9; the other takes the
  job once the lease has passed and finishes it, its images byte-identical to the same job run
  undisturbed;
- one replica on SQLite is killed -9 mid-job; started again on the same data folder, it runs the
  job to the end, the images identical again.
"""

from __future__ import annotations

import re
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from .redis_server import redis_server
from .test_process import serve_process

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


def images(url: str, job: dict[str, Any]) -> list[bytes]:
    return [httpx.get(f"{url}{image['url']}", timeout=10).content for image in job["images"]]


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
        deadline = time.monotonic() + 30
        while not any(active(u) for u in urls):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        runner = next(i for i, u in enumerate(urls) if active(u))
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
        job = httpx.post(f"{url}/v1/jobs", json=BODY, timeout=10).json()
        wait_job(url, job["id"], ("running",))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with serve_process(tiny_checkpoint, tmp_path / "second.log", **env) as (url, _):
        done = wait_job(url, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        undisturbed = httpx.post(f"{url}/v1/jobs", json=BODY, timeout=10).json()
        assert images(url, done) == images(url, wait_job(url, undisturbed["id"], ("succeeded",)))


@pytest.mark.slow
def test_bounded_load_across_two_replicas_with_a_kill_and_restart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """120 jobs from three keys through two replicas; one is killed -9 midway and started again:
    every job ends once, succeeded; nothing is left in the queue or held (no duplicate to come)."""
    keys = ["k1", "k2", "k3"]
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path / "redis"))
        env = {"max_batch": "4", "job_lease_s": "1", "job_poll_s": "0.05", "redis_url": redis_url,
               "api_keys": ",".join(keys)}
        first, proc = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "a.log", **env))
        second, _ = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "b.log", **env))
        made: list[tuple[str, str]] = []
        with httpx.Client(timeout=10) as c:
            for i in range(120):
                key = keys[i % 3]
                url = (first, second)[i % 2] if proc.poll() is None else second
                r = c.post(f"{url}/v1/jobs", json={"n": 1 + i % 3, "steps": 10, "seed": i},
                           headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 202, r.text
                made.append((key, r.json()["id"]))
                if i == 60:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
            restarted, _ = stack.enter_context(serve_process(tiny_checkpoint, tmp_path / "c.log", **env))
            deadline = time.monotonic() + 180
            pending = {job_id: key for key, job_id in made}
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} jobs never ended"
                for job_id, key in list(pending.items()):
                    job = c.get(f"{(second, restarted)[len(pending) % 2]}/v1/jobs/{job_id}",
                                headers={"Authorization": f"Bearer {key}"}).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        assert job["status"] == "succeeded" and job["attempts"] in (1, 2), job
                        del pending[job_id]
                time.sleep(0.1)
            r = redis.Redis.from_url(redis_url)
            assert r.xlen("ddpm:jobs") == 0 and r.xpending("ddpm:jobs", "ddpm-engines")["pending"] == 0
