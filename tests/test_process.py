"""Against a real ``ddpm serve`` process: SIGTERM drain (within and past its deadline), a busy
port, and schemathesis on the OpenAPI spec."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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
WARNINGS = ("missing_auth", "missing_test_data", "base_url_mismatch", "validation_mismatch", "missing_deserializer",
            "unused_openapi_auth", "unsupported_regex", "method_not_allowed", "unmatched_filter",
            "unresolvable_reference", "low_valid_rate", "rate_limited")
# Warnings left out, each for a reason JSON Schema cannot help: made-up job ids rightly get 404
# (missing_test_data; the stateful phase reaches real jobs through POST /v1/jobs's id), and
# generated strings are never decodable PNGs, so the editing API refuses most generated bodies
# (validation_mismatch, low_valid_rate; SCHEMATHESIS_CONFIG states that rule per operation, and
# tests/test_edits_api.py tests the accepted bodies).
SILENCED = ("missing_test_data", "validation_mismatch", "low_valid_rate")
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


@contextmanager
def serve_process(checkpoint: Path, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ddpm serve`` in a subprocess; its log goes to a file (a pipe nobody drains would block it)."""
    port = free_port()
    environ = {**os.environ, "DDPM_CHECKPOINT": str(checkpoint), "PYTHONUNBUFFERED": "1",
               "DDPM_DATA_DIR": str(log.parent / "data"),  # jobs never land in the working tree
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
            queued = 'ddpm_queue_images{class="interactive"} 7.0'
            while queued not in c.get("/metrics").text and time.monotonic() < deadline:
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


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.slow
def test_sigterm_past_the_drain_deadline_answers_every_open_request_with_503(
        long_checkpoint: Path, tmp_path: Path) -> None:
    # Two rows: two requests running and two queued, none of which can finish within the drain.
    log = tmp_path / "serve.log"
    drain = 2.0
    with serve_process(long_checkpoint, log, max_batch="2", drain_timeout_s=str(drain)) as (url, proc):
        plain: list[httpx.Response] = []
        streams: list[str] = []
        failures: list[BaseException] = []
        body = {"steps": 10_000, "sampler": "ddim"}

        def post() -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as c:
                    plain.append(c.post("/generate", json=body))
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)

        def stream() -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/generate/stream",
                                                                            json=body) as r:
                    streams.append(r.read().decode())  # raises if the chunked body is cut
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=f) for f in (post, stream, post, stream)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=url, timeout=10) as c:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # all four admitted: two running, two queued
                text = c.get("/metrics").text
                if 'ddpm_queue_images{class="interactive"} 2.0' in text and "ddpm_active_images 2.0" in text:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("the four requests were not admitted")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(drain + 10)
        took = time.monotonic() - start
        for t in threads:
            t.join(10)
    assert not failures, failures
    assert len(plain) == 2 and len(streams) == 2
    for r in plain:
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", (r.status_code, r.text)
        assert "shutting down" in r.json()["detail"]
        assert r.headers["x-request-id"] and int(r.headers["retry-after"]) >= 1
    for text in streams:
        kind, data = sse_events(text)[-1]
        assert kind == "error" and data["status"] == 503, text[-500:]
    output = log.read_text()
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    assert "drain deadline of 2s passed with 4 requests open" in output
    assert took < drain + 2.0, f"exited {took:.2f}s after SIGTERM"


@pytest.mark.slow
def test_a_busy_port_is_one_line_and_exit_2(tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {**os.environ, "DDPM_CHECKPOINT": str(tiny_checkpoint)}
        for args, env in (([f"--port={port}"], {}), ([], {"DDPM_PORT": str(port)})):
            result = subprocess.run([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", *args],
                                    cwd=ROOT, env={**environ, **env}, capture_output=True, text=True, timeout=60)
            lines = (result.stdout + result.stderr).strip().splitlines()
            assert result.returncode == 2, (result.returncode, lines)
            assert len(lines) == 1, lines
            assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
            assert "--port" in lines[0] and "DDPM_PORT" in lines[0]
    result = subprocess.run([sys.executable, "-m", "cli", "serve", "--port", "70000"], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and ":70000" in lines[0] and "--port" in lines[0], lines


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert st, "schemathesis is a test dependency"
    # Small bounds keep every generated request short, so deadlines (504) cannot be hit.
    log = tmp_path / "serve.log"
    with serve_process(tiny_checkpoint, log, max_batch="32", max_steps="20", max_images_per_request="4") as (url, _):
        result = subprocess.run(
            [st, "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{url}/openapi.json", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,"
             "response_headers_conformance,response_schema_conformance",
             "--max-time", "40", "--workers", "2", "--request-timeout", "30",
             "--warnings", ",".join(w for w in WARNINGS if w not in SILENCED),
             "--report", "junit", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
