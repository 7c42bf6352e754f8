"""The HTTP contract (README.md, "The API"): every endpoint and every error."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from model import load_checkpoint
from model.images import decode_png

from .live import live_server, slowed


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with live_server(tiny_checkpoint, max_batch=8, max_images_per_request=6) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_png_single_image(client: httpx.Client) -> None:
    r = client.post("/generate", json={"seed": 42, "steps": 4, "label": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "42" and r.headers["x-seeds"] == "42"
    assert len(r.headers["x-request-id"]) >= 16
    assert "sampling;dur=" in r.headers["server-timing"]
    assert decode_png(r.content).shape == (8, 8, 1)


def test_png_grid_for_several_images(client: httpx.Client) -> None:
    r = client.post("/generate", json={"n": 4, "seed": 5, "steps": 3})
    assert r.headers["x-seeds"] == "5,6,7,8"
    assert decode_png(r.content).shape == (2 * 9 + 1, 2 * 9 + 1, 1)  # a 2x2 grid with 1-pixel gaps


def test_base64_response_matches_the_model(client: httpx.Client, tiny_checkpoint: Path) -> None:
    r = client.post("/generate", json={"n": 3, "seed": 10, "steps": 6, "sampler": "ddpm", "label": 2,
                                       "guidance": 1.5, "response_format": "base64"},
                    headers={"X-Request-ID": "my-trace-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-trace-1"
    body = r.json()
    assert body["request_id"] == "my-trace-1" and body["model"] == "tiny"
    assert (body["steps"], body["sampler"], body["label"], body["guidance"]) == (6, "ddpm", 2, 1.5)
    assert set(body["timings"]) == {"queue_s", "sampling_s", "total_s"}
    assert [im["seed"] for im in body["images"]] == [10, 11, 12]
    got = np.stack([decode_png(base64.b64decode(im["png_base64"])) for im in body["images"]])
    expected = load_checkpoint(tiny_checkpoint, device="cpu").sample(
        3, seed=10, steps=6, sampler="ddpm", label=2, guidance=1.5)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_server_draws_a_seed_when_none_is_given(client: httpx.Client) -> None:
    a = client.post("/generate", json={"steps": 2, "response_format": "base64"}).json()
    b = client.post("/generate", json={"steps": 2, "response_format": "base64"}).json()
    assert a["images"][0]["seed"] != b["images"][0]["seed"]
    again = client.post("/generate", json={"steps": 2, "seed": a["images"][0]["seed"]})
    assert base64.b64decode(a["images"][0]["png_base64"]) == again.content


def test_empty_body_uses_defaults(client: httpx.Client) -> None:
    r = client.post("/generate", json={"response_format": "base64"})
    body = r.json()
    assert (body["sampler"], body["steps"]) == ("ddim", 10)  # the tiny checkpoint's defaults
    assert client.post("/generate").status_code == 200


def test_stream_reports_queue_progress_images_and_done(client: httpx.Client) -> None:
    r = client.post("/generate/stream", json={"n": 2, "steps": 8, "seed": 1, "preview_every": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "done"
    assert events[0][1]["position"] >= 0 and "request_id" in events[0][1]
    progress = [d for k, d in events if k == "progress"]
    assert progress and all(d["steps"] == 8 and 0 <= d["step"] <= 8 for d in progress)
    assert any("previews" in d for d in progress)
    preview = next(d for d in progress if "previews" in d)["previews"][0]
    assert decode_png(base64.b64decode(preview["png_base64"])).shape == (8, 8, 1)
    images = [d for k, d in events if k == "image"]
    assert sorted(d["index"] for d in images) == [0, 1]
    done = events[-1][1]
    assert [im["seed"] for im in done["images"]] == [1, 2]
    # the streamed images are the final ones
    assert {d["png_base64"] for d in images} == {im["png_base64"] for im in done["images"]}


def test_health_readiness_model_card_docs_and_page(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    card = client.get("/v1/model").json()
    assert card["image_size"] == 8 and card["channels"] == 1 and card["num_classes"] == 10
    assert card["timesteps"] == 100 and card["schedule"] == "linear" and card["device"] == "cpu"
    assert card["samplers"] == ["ddpm", "ddim", "dpmpp_2m"]
    assert card["limits"]["max_images_per_request"] == 6 and card["limits"]["max_batch"] == 8
    assert card["parameters"] > 1000 and card["dtype"] == "float32"
    schedule = client.get("/v1/schedule").json()
    assert schedule["timesteps"] == 100 and len(schedule["alphas_cumprod"]) == 100
    assert schedule["alphas_cumprod"][0] == pytest.approx(1 - 1e-4) and np.all(np.diff(schedule["alphas_cumprod"]) < 0)
    spec = client.get("/openapi.json").json()
    n_schema = spec["components"]["schemas"]["GenerateRequestBody"]["properties"]["n"]
    assert n_schema["maximum"] == 6  # the schema shows the configured bound
    assert client.get("/docs").status_code == 200
    assert "<html" in client.get("/").text.lower()


def test_metrics_exposition(client: httpx.Client) -> None:
    client.post("/generate", json={"steps": 3, "sampler": "dpmpp_2m"})
    text = client.get("/metrics").text
    for name in ("ddpm_requests_total", "ddpm_request_duration_seconds_bucket", "ddpm_queue_wait_seconds_bucket",
                 "ddpm_batch_size_bucket", "ddpm_step_duration_seconds_bucket", "ddpm_images_total",
                 "ddpm_queue_images", "ddpm_active_images", "ddpm_model_info"):
        assert name in text, name
    assert 'ddpm_requests_total{api="native",sampler="dpmpp_2m",status="200"}' in text
    assert 'le="600.0"' in text  # latency buckets reach minutes


def test_metrics_pass_promtools_lint(client: httpx.Client) -> None:
    promtool = shutil.which("promtool", path=f"{os.environ.get('PATH', '')}:/usr/bin:/usr/sbin")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    client.post("/generate", json={"steps": 2})
    result = subprocess.run([promtool, "check", "metrics"], input=client.get("/metrics").text,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"n": 7}, "n", "less than or equal to 6"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"steps": 101}, "steps", "less than or equal to 100"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"sampler": "euler"}, "sampler", "'ddpm', 'ddim' or 'dpmpp_2m'"),
        ({"eta": 1.5}, "eta", "less than or equal to 1"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": 2**53}, "seed", f"less than or equal to {2**53 - 6}"),  # room for n = 6: seed + 5 <= 2^53 - 1
        ({"seed": 2**53 - 5, "n": 1}, "seed", f"less than or equal to {2**53 - 6}"),
        ({"label": 10}, "label", "less than or equal to 9"),
        ({"guidance": -0.5}, "guidance", "greater than or equal to 0"),
        ({"guidance": 51}, "guidance", "less than or equal to 50"),
        ({"response_format": "jpeg"}, "response_format", "'png' or 'base64'"),
        ({"timeout_s": 0.5}, "timeout_s", "greater than or equal to 1"),
        ({"preview_every": -1}, "preview_every", "greater than or equal to 0"),
        ({"colour": "red"}, "colour", "unknown key"),
        ({"n": "many"}, "n", "JSON number, not str"),
    ],
)
def test_out_of_bounds_fields_get_422_naming_field_and_limit(
    client: httpx.Client, body: dict, field: str, limit: str
) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["field"] == field and error["msg"].startswith(f"{field}: ") and limit in error["msg"]


def test_non_finite_and_malformed_json_get_422(client: httpx.Client) -> None:
    r = client.post("/generate", content=b'{"guidance": Infinity}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "guidance"
    r = client.post("/generate", content=b'{"n": ', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_label_for_an_unconditional_model(tiny_uncond_checkpoint: Path) -> None:
    with live_server(tiny_uncond_checkpoint) as url, httpx.Client(base_url=url) as c:
        r = c.post("/generate", json={"label": 1})
        assert r.status_code == 422 and "unconditional" in r.json()["detail"][0]["msg"]
        assert c.post("/generate", json={"steps": 2}).status_code == 200
        assert c.get("/v1/model").json()["num_classes"] is None


def test_oversized_bodies_get_413(client: httpx.Client) -> None:
    big = b'{"n": 1, "pad": "' + b"x" * 20000 + b'"}'
    r = client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes=16384" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"n": 1, "pad": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_api_keys(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, api_keys="k1, k2") as url, httpx.Client(base_url=url) as c:
        assert c.post("/generate", json={"steps": 2}).status_code == 401
        r = c.post("/generate", json={"steps": 2}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/generate/stream", json={"steps": 2}).status_code == 401
        assert c.get("/v1/model").status_code == 401
        for key in ("k1", "k2"):
            assert c.post("/generate", json={"steps": 2},
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # stay open for probes and scrapers
            assert c.get(path).status_code == 200


def test_queue_full_gives_429_with_retry_after_and_no_5xx(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.01)
    with live_server(tiny_checkpoint, model=model, max_batch=2, max_queue_images=2) as url:
        statuses: list[int] = []
        retry_after: list[str] = []

        def call() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                r = c.post("/generate", json={"steps": 40, "n": 1})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    retry_after.append(r.headers["retry-after"])
                    assert "max_queue_images=2" in r.json()["detail"]

        threads = [threading.Thread(target=call) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert statuses.count(200) >= 4  # two rows running plus two queued
        assert statuses.count(429) >= 1 and all(int(s) >= 1 for s in retry_after)
        assert set(statuses) <= {200, 429}


def test_deadline_gives_504_and_frees_rows(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.04)  # 100 steps: 4 s
    with live_server(tiny_checkpoint, model=model) as url, httpx.Client(base_url=url, timeout=30) as c:
        start = time.monotonic()
        r = c.post("/generate", json={"steps": 100, "timeout_s": 1})
        assert r.status_code == 504 and "deadline passed" in r.json()["detail"]
        assert time.monotonic() - start < 2.5
        assert "ddpm_active_images 0.0" in c.get("/metrics").text
        events = parse_sse(c.post("/generate/stream", json={"steps": 100, "timeout_s": 1}).text)
        assert events[-1][0] == "error" and events[-1][1]["status"] == 504


def test_failing_network_call_fails_only_its_batch(tiny_checkpoint: Path) -> None:
    """A network call that raises (out of memory, say) fails the requests in that batch with
    500 and a clear message; the server keeps serving the next ones."""
    armed = threading.Event()
    model = slowed(tiny_checkpoint, 0.0, fail=lambda x: armed.is_set())
    with live_server(tiny_checkpoint, model=model) as url, httpx.Client(base_url=url, timeout=30) as c:
        armed.set()
        r = c.post("/generate", json={"steps": 5})
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]
        armed.clear()
        assert c.post("/generate", json={"steps": 5}).status_code == 200
        assert c.get("/readyz").status_code == 200
        assert 'ddpm_requests_total{api="native",sampler="ddim",status="500"} 1.0' in c.get("/metrics").text


def test_a_request_that_could_never_be_admitted_gets_422(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, max_batch=1, max_queue_images=0) as url, httpx.Client(base_url=url) as c:
        r = c.post("/generate", json={"n": 2, "steps": 2})
        assert r.status_code == 422 and "less than or equal to 1" in r.json()["detail"][0]["msg"]
        assert c.post("/generate", json={"n": 1, "steps": 2}).status_code == 200
        # the model card tells clients the bound that is enforced, not the looser setting
        assert c.get("/v1/model").json()["limits"]["max_images_per_request"] == 1


def test_empty_environment_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import Settings

    monkeypatch.setenv("DDPM_CHECKPOINT", "")
    monkeypatch.setenv("DDPM_MAX_STEPS", "")
    monkeypatch.setenv("DDPM_MAX_BATCH", "8")
    s = Settings()
    assert s.checkpoint is None and s.max_steps is None and s.max_batch == 8
