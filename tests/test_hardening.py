"""What broke when the server was attacked (issue 11), each held to the answer it must give."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app import Settings

from .live import free_port, live_app, live_server, slowed
from .test_server import parse_sse

ROOT = Path(__file__).resolve().parents[1]


def run_serve(env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], int]:
    """``ddpm serve`` that is expected to stop by itself; returns its result and the port it was given."""
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    return result, port


# ---- start-up and configuration ----

@pytest.mark.parametrize("value", [",", " ", " , "])
def test_api_keys_that_hold_no_key_stop_the_start(value: str) -> None:
    with pytest.raises(ValidationError, match="holds no key"):
        Settings(api_keys=value)
    result, _ = run_serve({"DDPM_API_KEYS": value})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ddpm serve: error: DDPM_API_KEYS: ") and "holds no key" in line


def test_settings_errors_name_the_variable() -> None:
    result, _ = run_serve({"DDPM_DTYPE": "float8", "DDPM_MAX_BATCH": "-3"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any(line.startswith("ddpm serve: error: DDPM_DTYPE: ") and "'float8'" in line for line in lines)
    assert any(line.startswith("ddpm serve: error: DDPM_MAX_BATCH: ") and "-3" in line for line in lines)


@pytest.mark.parametrize(("env", "named"), [
    ({"DDPM_DEVICE": "cuda"}, "DDPM_DEVICE='cuda': this host has no CUDA device"),
    ({"DDPM_DEVICE": "gpu7"}, "DDPM_DEVICE='gpu7' is not a device"),
    ({"DDPM_CHECKPOINT": "/nonexistent/model.safetensors"}, "/nonexistent/model.safetensors"),
])
def test_a_model_that_cannot_load_exits_2_in_one_line_before_the_port_opens(env: dict[str, str], named: str) -> None:
    if env.get("DDPM_DEVICE") == "cuda" and shutil.which("nvidia-smi"):
        pytest.skip("this machine has CUDA")
    result, port = run_serve(env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ddpm serve: error: ") and named in line
    with socket.socket() as s:  # nobody ever listened there
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_start_up_log_names_the_file_the_name_and_authentication(tiny_checkpoint: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ddpm.service")
    with live_server(tiny_checkpoint, api_keys="a,b", model_name="my-digits") as url:
        card = httpx.get(f"{url}/v1/model", headers={"Authorization": "Bearer a"}).json()
        metrics = httpx.get(f"{url}/metrics").text
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert str(tiny_checkpoint) in loaded and "my-digits" in loaded and "authentication on (2 keys)" in loaded
    assert card["name"] == "my-digits" and card["checkpoint"] == tiny_checkpoint.name
    assert card["class_aliases"] == {}  # the tiny model has none; the embedded one: test_embedded_model
    assert 'name="my-digits"' in metrics


# ---- the request path ----

def test_authentication_is_checked_before_the_body_is_read(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, api_keys="k") as url, httpx.Client(base_url=url) as c:
        r = c.post("/generate", content=b'{"n": ', headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
        assert c.post("/generate", json={"n": "x"}, headers={"Authorization": "Basic k"}).status_code == 401
        r = c.post("/generate", content=b'{"n": ', headers={"content-type": "application/json",
                                                          "Authorization": "Bearer k"})
        assert r.status_code == 422


@pytest.mark.parametrize(("body", "field"), [
    ({"n": "4"}, "n"), ({"n": True}, "n"), ({"seed": "1"}, "seed"), ({"steps": 2.5}, "steps"),
    ({"eta": "0.5"}, "eta"), ({"guidance": True}, "guidance"), ({"preview_every": False}, "preview_every"),
])
def test_no_loose_types(tiny_checkpoint: Path, body: dict, field: str) -> None:
    with live_server(tiny_checkpoint) as url:
        r = httpx.post(f"{url}/generate", json=body)
        # A JSON number without a fraction is an integer (JSON Schema): 1e1 asks for 10 steps.
        assert httpx.post(f"{url}/generate", json={"steps": 1e1, "response_format": "base64"}).json()["steps"] == 10
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["field"] == field and error["msg"].startswith(f"{field}: ")


def test_malformed_json_names_no_field_but_where_it_broke(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint) as url:
        r = httpx.post(f"{url}/generate", content=b'{"n": ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["field"] == "" and error["msg"].startswith("not valid JSON at character 6")


def test_head_answers_like_get_without_a_body(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint) as url, httpx.Client(base_url=url) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            get, head = c.get(path), c.head(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_a_failed_stream_is_counted_as_the_client_saw_it(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.04)  # 100 steps: 4 s, past the 1 s deadline
    with live_server(tiny_checkpoint, model=model) as url, httpx.Client(base_url=url, timeout=30) as c:
        events = parse_sse(c.post("/generate/stream", json={"steps": 100, "timeout_s": 1}).text)
        assert events[-1] == ("error", {"status": 504, "detail": events[-1][1]["detail"]})
        metrics = c.get("/metrics").text
    assert re.search(r'ddpm_requests_total\{api="native",sampler="\w+",status="504"\} 1\.0', metrics)
    assert not re.search(r'ddpm_requests_total\{api="native",sampler="\w+",status="200"\}', metrics)


def test_retry_after_predicts_the_wait_for_admission(tiny_checkpoint: Path) -> None:
    """A full queue of long requests: the advertised Retry-After is within 0.5x-2x (+1 s of
    rounding) of how long a client really waits until it is admitted."""
    model = slowed(tiny_checkpoint, 0.05)
    steps = 100  # two running rows and four queued images of 100 steps of >= 50 ms: ~5 s to the first free slot
    with live_app(tiny_checkpoint, model=model, max_batch=2, max_queue_images=4) as (url, app):
        engine = app.state.service.engine

        def hold(seed: int) -> None:
            with contextlib.suppress(httpx.HTTPError):  # ended by engine.stop() below
                httpx.post(f"{url}/generate", json={"steps": steps, "seed": seed}, timeout=30)

        holders = [threading.Thread(target=hold, args=(s,), daemon=True) for s in range(6)]
        for h in holders:
            h.start()
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 10
            while not ("ddpm_queue_images{class=\"interactive\"} 4.0" in (text := c.get("/metrics").text)
                       and "ddpm_active_images 2.0" in text):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.5)  # the step time is measured at the full batch
            start = time.monotonic()
            r = c.post("/generate", json={"steps": 1})
            assert r.status_code == 429
            advertised = int(r.headers["retry-after"])

            def admitted() -> bool:  # a stream answers 200 as soon as its request is queued
                with c.stream("POST", "/generate/stream", json={"steps": 1}) as s:
                    assert s.status_code in (200, 429)
                    return s.status_code == 200

            while not admitted():
                time.sleep(0.05)
            waited = time.monotonic() - start
        assert 0.5 * waited - 1 <= advertised <= 2 * waited + 1, (advertised, waited)
        engine.stop()  # the holders' requests end now (503), not after their 100 steps
        for h in holders:
            h.join(10)


def test_a_warm_up_failure_is_fatal_not_a_zombie(tiny_checkpoint: Path) -> None:
    """A model that loads but cannot run (here: every network call fails) reports why, turns
    /healthz red and asks the process to exit (``ddpm serve`` then exits 2) instead of lingering."""
    from app.service import Service

    broken = threading.Event()  # armed once the model is built: its constructor counts FLOPs with one call
    model = slowed(tiny_checkpoint, fail=lambda x: broken.is_set())
    service = Service.open(Settings(checkpoint=tiny_checkpoint), model)
    broken.set()
    reasons: list[str] = []
    called = threading.Event()
    service.on_fatal = lambda reason: (reasons.append(reason), called.set())
    service.start()
    assert called.wait(30)
    assert reasons == [service.failure] and "warm-up failed: RuntimeError" in reasons[0]
    assert not service.ready.is_set()
    service.close()
