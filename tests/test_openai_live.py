"""The OpenAI-compatible API on a live server, driven by the official ``openai`` SDK only
(the native ``/generate`` side, for the comparisons, by plain HTTP)."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent
from PIL import Image

from app import Settings, create_app
from app.openai.router import install
from model import EMBEDDED_CHECKPOINT, DiffusionModel, load_checkpoint
from model.images import decode_png

from .live import free_port, slowed, wait_ready


@contextmanager
def openai_server(checkpoint: Path, *, model: DiffusionModel | None = None,
                  **settings: object) -> Iterator[tuple[str, FastAPI]]:
    """``tests.live.live_app`` with the OpenAI API installed (a no-op once create_app installs it)."""
    app = create_app(Settings(checkpoint=checkpoint, **settings),  # type: ignore[arg-type]
                     model=model or load_checkpoint(checkpoint, device="cpu"))
    install(app, app.state.service)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            wait_ready(client)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(10)


def sdk(url: str, *, key: str = "unused", max_retries: int = 0, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=max_retries, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with openai_server(tiny_checkpoint, max_batch=8, max_images_per_request=4) as (url, _):
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return sdk(server)


@pytest.fixture
def native(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


# ---- images.generate ----

def test_png_is_byte_identical_to_generate_for_the_same_seed(client: openai.OpenAI, native: httpx.Client) -> None:
    result = client.images.generate(model="tiny", prompt="a handwritten 7", n=2,
                                    extra_body={"seed": 11, "steps": 5, "sampler": "ddim", "guidance": 1.0})
    theirs = native.post("/generate", json={"n": 2, "seed": 11, "steps": 5, "sampler": "ddim", "guidance": 1.0,
                                            "label": 7, "response_format": "base64"}).json()
    assert result.data is not None and len(result.data) == 2
    ours = [base64.b64decode(d.b64_json or "") for d in result.data]
    assert ours == [base64.b64decode(im["png_base64"]) for im in theirs["images"]]
    single = native.post("/generate", json={"seed": 12, "steps": 5, "sampler": "ddim", "guidance": 1.0, "label": 7})
    assert ours[1] == single.content  # image 1 of seed 11 is seed 12's, as a raw image/png too
    assert result.output_format == "png" and result.size == "8x8" and result.background == "opaque"
    assert result.data[0].revised_prompt == "class '7' (label 7)"
    extra = result.model_extra or {}
    assert extra["ddpm"]["seeds"] == [11, 12] and extra["ddpm"]["steps"] == 5 and extra["ddpm"]["label"] == 7


def test_empty_prompt_samples_unconditionally_like_label_null(client: openai.OpenAI, native: httpx.Client) -> None:
    result = client.images.generate(prompt="", extra_body={"seed": 3, "steps": 4})
    assert result.data and "unconditional" in (result.data[0].revised_prompt or "")
    assert base64.b64decode(result.data[0].b64_json or "") == native.post(
        "/generate", json={"seed": 3, "steps": 4}).content


@pytest.mark.parametrize(("fmt", "compression"), [("jpeg", None), ("jpeg", 30), ("webp", None), ("webp", 30)])
def test_jpeg_and_webp_at_an_upscaled_size(client: openai.OpenAI, native: httpx.Client, fmt: str,
                                           compression: int | None) -> None:
    extra: dict[str, Any] = {"output_compression": compression} if compression is not None else {}
    result = client.images.generate(prompt="3", size="64x64", output_format=fmt,  # type: ignore[arg-type]
                                    extra_body={"seed": 5, "steps": 4}, **extra)
    assert result.output_format == fmt and result.size == "64x64" and result.data
    data = base64.b64decode(result.data[0].b64_json or "")
    assert Image.open(io.BytesIO(data)).format == fmt.upper()
    assert "upscaled 8x to 64x64 by nearest neighbour" in (result.data[0].revised_prompt or "")
    assert (result.model_extra or {})["ddpm"]["upscale"] == 8
    reference = decode_png(native.post("/generate", json={"seed": 5, "steps": 4, "label": 3}).content)[:, :, 0]
    error = np.abs(pixels(data).astype(int) - reference.repeat(8, 0).repeat(8, 1)).max()
    if compression is None:  # 100: exact for lossless webp, near-exact for jpeg
        assert error <= (0 if fmt == "webp" else 8)
    else:
        assert error > 0


def test_png_upscale_repeats_every_pixel(client: openai.OpenAI, native: httpx.Client) -> None:
    result = client.images.generate(prompt="4", size="256x256", response_format="b64_json",
                                    extra_body={"seed": 8, "steps": 3})
    big = decode_png(base64.b64decode(result.data[0].b64_json or "")) if result.data else None
    small = decode_png(native.post("/generate", json={"seed": 8, "steps": 3, "label": 4}).content)
    assert big is not None and np.array_equal(big, small.repeat(32, 0).repeat(32, 1))
    assert client.images.generate(prompt="4", size="auto", extra_body={"steps": 2}).size == "8x8"


@pytest.mark.parametrize(("kwargs", "param", "says"), [
    ({"size": "1024x1536"}, "size", "allowed: 'auto' (8x8, native) or NxN with N a multiple of 8"),
    ({"size": "12x12"}, "size", "1024x1024"),
    ({"response_format": "url", "stream": True}, "response_format", "cannot be streamed"),
    ({"prompt": "7 or 8"}, "prompt", "names 2 classes (7, 8)"),
    ({"prompt": "a cat"}, "prompt", "name exactly one of 0, 1, 2"),
    ({"output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
    ({"n": 5}, "n", "n: Input should be less than or equal to 4"),
    ({"partial_images": 4, "stream": False}, "partial_images", "less than or equal to 3"),
    ({"extra_body": {"steps": "5"}}, "steps", "steps: Input should be a valid integer"),
    ({"extra_body": {"negative_prompt": "x"}}, "negative_prompt", "Unknown parameter: 'negative_prompt'"),
    ({"quality": "ultra"}, "quality", "quality: Input should be"),
])
def test_bad_requests_are_the_sdks_bad_request_error_with_our_message(client: openai.OpenAI, kwargs: dict[str, Any],
                                                                      param: str, says: str) -> None:
    kwargs = {"prompt": "7", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**kwargs)
    assert info.value.status_code == 400 and info.value.param == param and says in info.value.message
    assert info.value.type == "invalid_request_error"


def test_ignored_openai_fields_are_accepted(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt="1", quality="high", style="vivid", background="auto", moderation="low",
                                    user="u-1", extra_body={"steps": 2})
    assert result.data and len(result.data) == 1 and result.safety_identifier == "u-1"


# ---- streaming ----

def test_stream_sends_partial_x0_images_then_the_final_image(client: openai.OpenAI) -> None:
    final = client.images.generate(prompt="2", n=2, size="16x16", extra_body={"seed": 21, "steps": 12})
    events = list(client.images.generate(prompt="2", n=2, size="16x16", stream=True, partial_images=2,
                                         extra_body={"seed": 21, "steps": 12}))
    partial = [e for e in events if isinstance(e, ImageGenPartialImageEvent)]
    completed = [e for e in events if isinstance(e, ImageGenCompletedEvent)]
    assert isinstance(events[-1], ImageGenCompletedEvent)
    for index in (0, 1):
        mine = [e for e in partial if (e.model_extra or {})["image_index"] == index]
        assert [e.partial_image_index for e in mine] == [0, 1]  # steps 4 and 8 of 12
    assert all(e.size == "16x16" and e.output_format == "png" for e in events)
    by_index = {(e.model_extra or {})["image_index"]: e for e in completed}
    assert sorted(by_index) == [0, 1] and [(by_index[i].model_extra or {})["seed"] for i in (0, 1)] == [21, 22]
    assert [by_index[i].b64_json for i in (0, 1)] == [d.b64_json for d in final.data or []]
    # a partial image is the x0 prediction: an image of the same size that is not yet the final one
    first = decode_png(base64.b64decode(partial[0].b64_json))
    assert first.shape == (16, 16, 1)
    assert partial[0].b64_json != by_index[(partial[0].model_extra or {})["image_index"]].b64_json


def test_stream_without_partial_images_sends_only_the_images(client: openai.OpenAI) -> None:
    events = list(client.images.generate(prompt="5", stream=True, extra_body={"steps": 6}))
    assert [type(e) for e in events] == [ImageGenCompletedEvent] and events[0].usage.total_tokens == 0


# ---- models ----

def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [(m.id, m.object, m.owned_by) for m in client.models.list()] == [("tiny", "model", "ddpm-serve")]
    assert client.models.retrieve("tiny").id == "tiny"
    for call in (lambda: client.models.retrieve("dall-e-3"),
                 lambda: client.images.generate(model="dall-e-3", prompt="7")):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.code == "model_not_found" and "'dall-e-3' does not exist" in info.value.message


def test_unknown_paths_and_methods_are_in_the_envelope(server: str) -> None:
    with httpx2.Client(base_url=server) as raw:
        r = raw.get("/v1/images/generations")
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        r = raw.post("/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"] and r.json()["error"]["param"] == "body"


# ---- authentication, limits, load ----

def test_keys_body_limit_and_deadline(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.05)  # 100 steps: 5 s, past the 1 s deadline
    with openai_server(tiny_checkpoint, model=model, api_keys="right", max_body_bytes=1024,
                       request_timeout_s=1.0) as (url, _):
        with pytest.raises(openai.AuthenticationError) as auth:
            sdk(url, key="wrong").images.generate(prompt="7")
        assert "missing or invalid API key" in auth.value.message and auth.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            sdk(url, key="wrong").models.list()
        client = sdk(url, key="right")
        assert client.images.generate(prompt="7", extra_body={"steps": 2}).data
        with pytest.raises(openai.APIStatusError) as big:
            client.images.generate(prompt="7" * 2000)
        assert big.value.status_code == 413 and "max_body_bytes=1024" in big.value.message
        with pytest.raises(openai.InternalServerError) as late:
            client.images.generate(prompt="7", extra_body={"steps": 100})
        assert late.value.status_code == 504 and "deadline passed" in late.value.message
        events = client.images.generate(prompt="7", stream=True, extra_body={"steps": 100})
        with pytest.raises(openai.APIError, match="deadline passed"):
            list(events)


def occupy(url: str, steps: int) -> threading.Thread:
    """A native request holding the only row for ``steps`` network calls."""
    thread = threading.Thread(target=lambda: httpx.post(f"{url}/generate", json={"steps": steps, "label": 1},
                                                        timeout=60), daemon=True)
    thread.start()
    return thread


def wait_active(url: str, rows: float) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f"ddpm_active_images {rows}" in httpx.get(f"{url}/metrics").text:
            return
        time.sleep(0.01)
    raise TimeoutError("the native request never started")


def test_a_429_is_retried_by_the_sdk_after_our_retry_after(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.03)
    with openai_server(tiny_checkpoint, model=model, max_batch=1, max_queue_images=0) as (url, _):
        busy = occupy(url, 15)  # 0.45 s
        wait_active(url, 1.0)
        with pytest.raises(openai.RateLimitError) as full:
            sdk(url).images.generate(prompt="7", extra_body={"steps": 2})
        retry_after = float(full.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 120 and "queue full" in full.value.message
        with pytest.raises(openai.RateLimitError):  # a stream is refused before it starts, with the status
            sdk(url).images.generate(prompt="7", stream=True, extra_body={"steps": 2})
        busy.join(30)

        seen: list[tuple[int, float, str | None]] = []

        def record(response: httpx2.Response) -> None:
            seen.append((response.status_code, time.monotonic(), response.headers.get("retry-after")))

        busy = occupy(url, 15)
        wait_active(url, 1.0)
        patient = sdk(url, max_retries=1, http_client=httpx2.Client(event_hooks={"response": [record]}))
        result = patient.images.generate(prompt="7", extra_body={"steps": 2})
        busy.join(30)
    assert result.data and [s for s, _, _ in seen] == [429, 200]
    waited, advised = seen[1][1] - seen[0][1], float(seen[0][2] or 0)
    assert waited >= advised - 0.05  # the SDK slept our Retry-After, not its own 0.5-1 s backoff


def test_an_sdk_request_and_a_native_one_share_network_calls(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.02)
    with openai_server(tiny_checkpoint, model=model, max_batch=4) as (url, _):
        before = batch_sizes(url)
        results: dict[str, Any] = {}
        sdk_thread = threading.Thread(target=lambda: results.update(sdk=sdk(url).images.generate(
            prompt="6", extra_body={"steps": 40, "seed": 1})))
        sdk_thread.start()
        wait_active(url, 1.0)
        results["native"] = httpx.post(f"{url}/generate", json={"steps": 15, "seed": 2, "label": 3}, timeout=60)
        sdk_thread.join(60)
        after = batch_sizes(url)
    assert results["native"].status_code == 200 and results["sdk"].data
    calls = after[0] - before[0]
    two_row_calls = (after[0] - after[1]) - (before[0] - before[1])
    assert calls >= 40 and two_row_calls >= 10  # the native request's 15 steps ran beside the SDK's rows


def batch_sizes(url: str) -> tuple[float, float]:
    """(network calls, calls with one row) from the batch-size histogram."""
    text = httpx.get(f"{url}/metrics").text
    count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("ddpm_batch_size_count"))
    ones = next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('ddpm_batch_size_bucket{le="1.0"}'))
    return count, ones


def test_a_failed_network_call_is_a_500_and_the_server_keeps_serving(tiny_checkpoint: Path) -> None:
    armed = threading.Event()
    model = slowed(tiny_checkpoint, 0.0, fail=lambda x: armed.is_set())
    with openai_server(tiny_checkpoint, model=model) as (url, _):
        client = sdk(url)
        armed.set()
        with pytest.raises(openai.InternalServerError) as failed:
            client.images.generate(prompt="7", extra_body={"steps": 3})
        assert failed.value.status_code == 500 and "CUDA out of memory (simulated)" in failed.value.message
        with pytest.raises(openai.APIError, match="CUDA out of memory"):
            list(client.images.generate(prompt="7", stream=True, extra_body={"steps": 3}))
        armed.clear()
        assert client.images.generate(prompt="7", extra_body={"steps": 3}).data


def test_a_client_leaving_a_stream_frees_its_rows(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.04)  # 100 steps: 4 s; the first partial image comes at step 25
    with openai_server(tiny_checkpoint, model=model) as (url, _):
        stream = sdk(url).images.generate(prompt="7", n=2, stream=True, partial_images=3,
                                          extra_body={"steps": 100})
        first = next(iter(stream))
        assert isinstance(first, ImageGenPartialImageEvent)
        left = time.monotonic()
        stream.close()
        wait_active(url, 0.0)
        assert time.monotonic() - left < 1.5  # freed at the next steps, not after the remaining ~3 s


# ---- the README's example ----

README = Path(__file__).resolve().parents[1] / "README.md"
README_ADDRESS = "127.0.0.1:8000"


def test_the_readme_sdk_example_runs_as_written(tmp_path: Path) -> None:
    """The README's five lines, on the embedded model, only the port changed; the PNG they write
    is the one /generate draws for the same seed, steps and class."""
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
              if "from openai import OpenAI" in b]
    assert len(blocks) == 1 and README_ADDRESS in blocks[0] and len(blocks[0].strip().splitlines()) == 5
    with openai_server(EMBEDDED_CHECKPOINT) as (url, _):
        code = blocks[0].replace(README_ADDRESS, url.removeprefix("http://"))
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                timeout=180)
        assert result.returncode == 0, result.stderr
        native = httpx.post(f"{url}/generate", json={"label": 7, "seed": 42, "steps": 20}, timeout=60)
    assert (tmp_path / "seven.png").read_bytes() == native.content


def test_requests_are_counted_by_api_as_the_client_saw_them(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.04)  # 100 steps: 4 s, past the 1 s deadline
    with openai_server(tiny_checkpoint, model=model, request_timeout_s=1.0) as (url, _):
        client = sdk(url)
        client.images.generate(prompt="7", extra_body={"steps": 2, "sampler": "ddim"})
        with pytest.raises(openai.BadRequestError):
            client.images.generate(prompt="7 or 8")
        with pytest.raises(openai.APIError):
            list(client.images.generate(prompt="7", stream=True, extra_body={"steps": 100, "sampler": "ddim"}))
        httpx.post(f"{url}/generate", json={"steps": 2, "sampler": "ddim"}, timeout=30)
        text = httpx.get(f"{url}/metrics").text
    assert 'ddpm_requests_total{api="openai",sampler="ddim",status="200"} 1.0' in text
    assert re.search(r'ddpm_requests_total\{api="openai",sampler="\w+",status="400"\} 1\.0', text)
    assert 'ddpm_requests_total{api="openai",sampler="ddim",status="504"} 1.0' in text  # the stream's error
    assert 'ddpm_requests_total{api="native",sampler="ddim",status="200"} 1.0' in text
