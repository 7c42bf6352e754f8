"""Background jobs on the page (issue 13: "the page shows a job's progress, and a reload of the
page picks the job up again"), in Chromium against a real ``ddpm serve`` with an API key.

The server runs the tiny network with T = 10000, so that a job of a few thousand steps is still
running (for seconds) when the page is reloaded or the job canceled.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .browser import (
    AUTH,
    KEY,
    NEEDS_BROWSER,
    By,
    decode_data_url,
    decode_png,
    fill,
    js,
    ready_page,
    wait,
)
from .live import free_port, wait_ready
from .test_process import ROOT, serve_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), NEEDS_BROWSER]

LONG_STEPS = 8000  # about 6 s for two images on one core: long enough to reload or cancel mid-job
RESTART_STEPS = 3000  # on PyTorch, slower a step than ONNX Runtime: seconds too


@pytest.fixture(scope="module")
def server(long_checkpoint: Path) -> Iterator[str]:
    with serve_process(long_checkpoint, long_checkpoint.parent / "serve.log", api_keys=KEY, max_batch="2") as (url, _):
        yield url


def job_box(driver: Any) -> dict[str, str]:
    return js(driver, "({...document.getElementById('job-box').dataset,"
                      " text_step: document.getElementById('job-step-text').textContent,"
                      " status: document.getElementById('job-box').dataset.status,"
                      " text: document.getElementById('job-status').textContent})")


def test_a_job_shows_progress_and_a_reload_picks_it_up(browser: Any, server: str, api: httpx.Client) -> None:
    ready_page(browser, server)
    browser.execute_script("localStorage.clear()")
    fill(browser, n="2", steps=str(LONG_STEPS), seed="1234")
    browser.find_element(By.ID, "submit-job").click()
    wait(browser, "document.getElementById('job-box').dataset.status === 'running'"
                  " && Number(document.getElementById('job-box').dataset.events) > 0", errors="job-errors")
    job_id = job_box(browser)["id"]
    assert js(browser, "localStorage.getItem('ddpm-job')") == job_id
    assert re.fullmatch(rf"Step \d+ of {LONG_STEPS} · [01] of 2 images done", job_box(browser)["text_step"])
    on_server = api.get(f"/v1/jobs/{job_id}").json()
    assert on_server["status"] == "running" and on_server["steps"] == LONG_STEPS and on_server["seeds"] == [1234, 1235]

    # Reloaded mid-job: the page finds the job in localStorage and follows it again, from its
    # state and then its events (progress seen after the reload, before the end).
    browser.refresh()
    wait(browser, "document.body.dataset.state === 'ready'")
    wait(browser, f"document.getElementById('job-box').dataset.id === '{job_id}'"
                  " && document.getElementById('job-box').dataset.resumed === 'true'", timeout=5)
    wait(browser, "Number(document.getElementById('job-box').dataset.events) > 0", timeout=10, errors="job-errors")
    picked_up = job_box(browser)
    assert picked_up["status"] == "running", picked_up  # still mid-job
    # and the progress goes on after the reload: a later step, from the job's event stream
    wait(browser, f"Number(document.getElementById('job-box').dataset.step) > {picked_up['step']}"
                  " && document.getElementById('job-box').dataset.status === 'running'",
         timeout=10, errors="job-errors")
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] in ("running", "succeeded")

    wait(browser, "document.getElementById('job-box').dataset.status === 'succeeded'"
                  " && document.getElementById('job-box').dataset.images === '2'", timeout=60, errors="job-errors")
    done = job_box(browser)
    assert done["text_step"] == f"Done: 2 images, {LONG_STEPS} steps" and done["text"] == "succeeded"
    images = js(browser, "[...document.querySelectorAll('#job-results img')].map((i) => "
                         "({src: i.src, alt: i.alt, w: i.naturalWidth}))")
    captions = js(browser, "[...document.querySelectorAll('#job-results figcaption')].map((f) => f.textContent)")
    assert captions == ["#1 · seed 1234", "#2 · seed 1235"]
    for index, image in enumerate(images):  # the job's own images, as the API serves them
        png = api.get(f"/v1/jobs/{job_id}/images/{index}")
        assert png.status_code == 200 and np.array_equal(decode_data_url(image["src"]), decode_png(png.content))
    # And once more: a reload after the end shows the finished images at once.
    browser.refresh()
    wait(browser, "document.getElementById('job-box').dataset.images === '2'", timeout=10, errors="job-errors")
    assert js(browser, "document.getElementById('job-box').dataset.events") == "0"
    assert [i["src"] for i in js(browser, "[...document.querySelectorAll('#job-results img')].map((i) => "
                                          "({src: i.src}))")] == [i["src"] for i in images]


def test_cancel_a_queued_and_a_running_job(browser: Any, server: str, api: httpx.Client) -> None:
    ready_page(browser, server)
    # A job of another client fills both rows: the page's job waits behind its two images.
    blocker = api.post("/v1/jobs", json={"n": 2, "steps": LONG_STEPS}).json()
    try:
        fill(browser, n="1", steps=str(LONG_STEPS))
        browser.find_element(By.ID, "submit-job").click()
        wait(browser, "document.getElementById('job-box').dataset.status === 'queued'", errors="job-errors")
        queued = job_box(browser)
        assert re.fullmatch(r"queued behind [12] images?|queued: starting at the next step", queued["text"]), queued
        browser.find_element(By.ID, "job-cancel").click()
        wait(browser, "document.getElementById('job-box').dataset.status === 'canceled'", errors="job-errors")
        assert job_box(browser)["text_step"] == "Canceled"
        after = api.get(f"/v1/jobs/{queued['id']}")
        # Canceled, and readable as such (or gone, where DELETE also deletes): never run.
        assert after.status_code == 404 or after.json()["status"] == "canceled", after.text
        assert js(browser, "document.querySelectorAll('#job-results li').length") == 0
    finally:
        api.delete(f"/v1/jobs/{blocker['id']}")

    # A running job: its rows leave the batch; the server's job ends canceled, not succeeded.
    browser.find_element(By.ID, "submit-job").click()
    wait(browser, "document.getElementById('job-box').dataset.status === 'running'"
                  " && Number(document.getElementById('job-box').dataset.events) > 0", errors="job-errors")
    job_id = job_box(browser)["id"]
    browser.find_element(By.ID, "job-cancel").click()
    wait(browser, "document.getElementById('job-box').dataset.status === 'canceled'", errors="job-errors")
    assert js(browser, "document.getElementById('job-cancel').disabled") is True
    time.sleep(0.5)  # the stream's own end arrives after the DELETE answer: it must not change the page
    assert job_box(browser)["status"] == "canceled"
    assert js(browser, "document.getElementById('job-errors').innerText") == ""
    after = api.get(f"/v1/jobs/{job_id}")
    assert after.status_code == 404 or after.json()["status"] == "canceled", after.text
    # Forgetting the job clears it from the page and from storage; a reload shows no job.
    browser.find_element(By.ID, "job-forget").click()
    assert js(browser, "localStorage.getItem('ddpm-job')") is None
    browser.refresh()
    wait(browser, "document.body.dataset.state === 'ready'")
    assert js(browser, "document.getElementById('job-box').hidden") is True


def test_a_stored_job_that_is_gone_says_so(browser: Any, server: str) -> None:
    ready_page(browser, server)
    browser.execute_script("localStorage.setItem('ddpm-job', 'no-such-job')")
    browser.refresh()
    wait(browser, "document.getElementById('job-box').dataset.status === 'gone'", errors="job-errors")
    assert "404" in js(browser, "document.getElementById('job-errors').innerText")
    assert js(browser, "localStorage.getItem('ddpm-job')") is None


def test_a_refused_job_names_the_field(browser: Any, server: str, api: httpx.Client) -> None:
    ready_page(browser, server)
    browser.execute_script("localStorage.clear(); document.getElementById('job-forget').click();")
    limit = api.get("/v1/model").json()["limits"]["max_steps"]
    browser.execute_script("document.getElementById('steps').removeAttribute('max')")  # past the browser's check
    fill(browser, steps=str(limit + 1))
    browser.find_element(By.ID, "submit-job").click()
    wait(browser, "document.getElementById('errors').dataset.status === '422'")
    expected = api.post("/v1/jobs", json={"steps": limit + 1})
    assert expected.status_code == 422
    shown = js(browser, "document.getElementById('errors').innerText")
    assert "Could not queue the job (HTTP 422)" in shown
    assert all(e["msg"] in shown for e in expected.json()["detail"]) and "steps" in shown
    assert js(browser, "document.getElementById('job-box').hidden") is True
    assert js(browser, "localStorage.getItem('ddpm-job')") is None


@contextmanager
def serve_at(port: int, checkpoint: Path, data: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``ddpm serve`` on a given port (so that a restart is the same server to the page); killed at the end."""
    env = {**os.environ, "DDPM_CHECKPOINT": str(checkpoint), "DDPM_DATA_DIR": str(data), "DDPM_API_KEYS": KEY,
           "DDPM_MAX_BATCH": "2", "PYTHONUNBUFFERED": "1",
           # the killed server's claim lapses in 2 s, not the default 30; PyTorch starts sooner than an ONNX export
           "DDPM_JOB_LEASE_S": "2", "DDPM_RUNTIME": "torch"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_ready(client, timeout=60)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_the_page_follows_a_job_through_a_server_restart(browser: Any, long_checkpoint: Path, tmp_path: Path) -> None:
    """kill -9 mid-job: the page keeps trying, and when the server is back (same port, same SQLite
    data) the job runs again from its stored seeds and the page shows it finishing."""
    port, data, log = free_port(), tmp_path / "data", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with serve_at(port, long_checkpoint, data, log) as first:
        ready_page(browser, url)
        browser.execute_script("localStorage.clear(); document.getElementById('job-forget').click();")
        fill(browser, n="1", steps=str(RESTART_STEPS), seed="77")
        browser.find_element(By.ID, "submit-job").click()
        wait(browser, "document.getElementById('job-box').dataset.status === 'running'", errors="job-errors")
        job_id = job_box(browser)["id"]
        first.kill()  # SIGKILL: nothing is saved on the way out
        first.wait(10)
        wait(browser, "document.getElementById('job-errors').innerText.includes('trying again')", timeout=15)
        assert js(browser, "document.getElementById('job-errors').dataset.status") == "0"
    with serve_at(port, long_checkpoint, data, log):
        wait(browser, "document.getElementById('job-box').dataset.status === 'succeeded'"
                      " && document.getElementById('job-box').dataset.images === '1'", timeout=90, errors="job-errors")
        assert js(browser, "document.getElementById('job-errors').innerText") == ""  # the retry notice is gone
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as api:
            job = api.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded" and job["attempts"] >= 2, job
            shown = js(browser, "document.querySelector('#job-results img').src")
            assert np.array_equal(decode_data_url(shown), decode_png(api.get(f"/v1/jobs/{job_id}/images/0").content))
            # the same image as the same request run undisturbed
            fresh = api.post("/generate", json={"n": 1, "steps": RESTART_STEPS, "seed": 77}).content
            assert np.array_equal(decode_data_url(shown), decode_png(fresh))
