"""Against a real ``ddpm serve`` process: SIGTERM drain, and schemathesis on the OpenAPI spec."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .live import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_process(checkpoint: Path, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ddpm serve`` in a subprocess; its log goes to a file (a pipe nobody drains would block it)."""
    port = free_port()
    environ = {**os.environ, "DDPM_CHECKPOINT": str(checkpoint), "PYTHONUNBUFFERED": "1",
               **{f"DDPM_{k.upper()}": v for k, v in env.items()}}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as client:
            wait_ready(client, timeout=60)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_sigterm_drains_without_losing_admitted_requests(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # One row at a time, so that eight 40-step requests are still running or queued at SIGTERM.
    log = tmp_path / "serve.log"
    with serve_process(tiny_checkpoint, log, max_batch="1", drain_timeout_s="60") as (url, proc):
        results: list[int] = []

        def post(seed: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                results.append(c.post("/generate", json={"steps": 40, "seed": seed}).status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=url, timeout=10) as c:
            deadline = time.monotonic() + 10
            while "ddpm_queue_images 7.0" not in c.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            if proc.poll() is None and not results:  # still draining
                assert c.get("/readyz").json() == {"status": "draining"}
                r = c.post("/generate", json={"steps": 2})
                assert r.status_code == 503 and "draining" in r.json()["detail"]
                assert r.headers["retry-after"] == "5"
        for t in threads:
            t.join(60)
        assert results == [200] * 8  # every admitted request finished
        proc.wait(30)
    output = log.read_text()
    assert "draining for up to 60s" in output and "all requests finished" in output


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert st, "schemathesis is a test dependency"
    # Small bounds keep every generated request short, so deadlines (504) cannot be hit.
    log = tmp_path / "serve.log"
    with serve_process(tiny_checkpoint, log, max_batch="32", max_steps="20", max_images_per_request="4") as (url, _):
        result = subprocess.run(
            [st, "run", f"{url}/openapi.json", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,"
             "response_headers_conformance,response_schema_conformance",
             "--max-time", "40", "--workers", "2", "--request-timeout", "30",
             "--report", "junit", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
