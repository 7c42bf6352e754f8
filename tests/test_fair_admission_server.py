"""Fair admission in the real engine (a live server, one row per network call): another key's
single image does not wait for a key's backlog, and an interactive request goes before a
background job's waiting images. Orderings are asserted, never durations."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .live import live_server, slowed

KA, KB = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}


def post_later(url: str, path: str, body: dict[str, Any], headers: dict[str, str],
               finished: dict[str, float], name: str) -> threading.Thread:
    def run() -> None:
        r = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        finished[name] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_active(c: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while "ddpm_active_images 1.0" not in c.get("/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_another_keys_image_does_not_wait_for_a_backlog(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = slowed(tiny_checkpoint, 0.01)
    with live_server(tiny_checkpoint, model=model, max_batch=1, admission_quantum=1, api_keys="key-a,key-b",
                     data_dir=tmp_path) as url, httpx.Client(base_url=url, timeout=30) as c:
        finished: dict[str, float] = {}
        heavy = post_later(url, "/generate", {"n": 8, "steps": 20}, KA, finished, "heavy")
        wait_active(c)
        light = post_later(url, "/generate", {"n": 1, "steps": 20}, KB, finished, "light")
        light.join(60)
        heavy.join(60)
    # FIFO would finish the light image after all eight heavy ones; round robin, after about one
    assert finished["light"] < finished["heavy"]


def test_interactive_goes_before_a_jobs_waiting_images(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = slowed(tiny_checkpoint, 0.01)
    with live_server(tiny_checkpoint, model=model, max_batch=1, data_dir=tmp_path, job_poll_s=0.05) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        job = c.post("/v1/jobs", json={"n": 6, "steps": 20}).json()
        wait_active(c)
        r = c.post("/generate", json={"n": 1, "steps": 20})
        assert r.status_code == 200
        during = c.get(f"/v1/jobs/{job['id']}").json()
        # the interactive image went in ahead of the job's waiting images (same key: the shared owner)
        assert during["status"] == "running" and during["progress"]["images_done"] < 6, during
