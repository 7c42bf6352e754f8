"""The editing API (issue 16) over real HTTP: /v1/edits, /v1/interpolations, /v1/variations.

``with_editing`` mounts the routes on the live app when ``create_app`` does not yet (the one
line app.api needs: ``app.include_router(edits.make_router(service), dependencies=secured)``).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.routes import edits
from model import load_checkpoint
from model.editing import edit_specs, interpolation_specs, run_rows, run_variations
from model.image_input import mask_tensor, to_model_range
from model.images import decode_png, encode_png

from .live import live_app, slowed

SOURCE = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
TOP = np.zeros((8, 8), bool)
TOP[:4] = True


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def images_of(body: dict) -> np.ndarray:
    return np.stack([decode_png(base64.b64decode(im["png_base64"])) for im in body["images"]])


def with_editing(app: FastAPI) -> FastAPI:
    if not any(getattr(route, "path", None) == "/v1/edits" for route in app.routes):
        app.include_router(edits.make_router(app.state.service))
    return app


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path) -> Iterator[tuple[str, FastAPI]]:
    with live_app(tiny_checkpoint, max_batch=8, max_images_per_request=6) as (url, app):
        yield url, with_editing(app)


@pytest.fixture
def client(served: tuple[str, FastAPI]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(tiny_checkpoint, device="cpu")


def test_inpainting_keeps_the_unmasked_pixels_and_is_the_offline_image(client: httpx.Client, tiny) -> None:  # type: ignore[no-untyped-def]
    mask = np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]
    r = client.post("/v1/edits", json={"image": b64(SOURCE), "mask": b64(mask), "n": 2, "seed": 7, "label": 3,
                                       "steps": 5, "sampler": "ddpm", "jumps": 1, "jump_length": 2,
                                       "response_format": "base64"})
    assert r.status_code == 200, r.text
    assert r.headers["x-seeds"] == "7,8"
    got = images_of(r.json())
    np.testing.assert_array_equal(got[:, 4:], np.repeat(SOURCE[None, 4:], 2, 0))
    specs = edit_specs(tiny, to_model_range(SOURCE), mask_tensor(TOP), n=2, seed=7, label=3, steps=5,
                       sampler="ddpm", jumps=1, jump_length=2, guidance=0.0)
    np.testing.assert_array_equal(got, np.stack([row.image for row in run_rows(tiny, specs)]))


def test_sdedit_png_and_stream(client: httpx.Client) -> None:
    body = {"image": b64(SOURCE), "strength": 0.5, "seed": 3, "steps": 4}
    png = client.post("/v1/edits", json=body)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with client.stream("POST", "/v1/edits/stream", json=body) as s:
        text = "".join(s.iter_text())
    events = [block.split("\n")[0].removeprefix("event: ") for block in text.strip().split("\n\n")
              if block.startswith("event")]
    assert events[0] == "queued" and events[-1] == "done" and "image" in events
    done = json.loads(text.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert (images_of(done)[0] == decode_png(png.content)).all()


def test_interpolation_between_seeds_and_at_t0(client: httpx.Client, tiny) -> None:  # type: ignore[no-untyped-def]
    ends = client.post("/generate", json={"n": 2, "seed": 40, "steps": 4, "label": 1, "response_format": "base64"})
    a, b = images_of(ends.json())
    r = client.post("/v1/interpolations", json={"a": {"seed": 40}, "b": {"image": b64(b)}, "t": 30, "frames": 4,
                                                "seed": 5, "steps": 4, "label": 1, "response_format": "base64"})
    assert r.status_code == 200, r.text
    got = images_of(r.json())
    specs = interpolation_specs(tiny, to_model_range(a), to_model_range(b), t=30, frames=4, seed=5, steps=4,
                                label=1, guidance=0.0)
    np.testing.assert_array_equal(got, np.stack([row.image for row in run_rows(tiny, specs)]))
    blend = client.post("/v1/interpolations", json={"a": {"image": b64(a)}, "b": {"image": b64(b)}, "t": 0,
                                                    "frames": 3, "response_format": "base64"})
    mid = images_of(blend.json())[1].astype(float)
    with client.stream("POST", "/v1/interpolations/stream", json={"a": {"image": b64(a)}, "b": {"image": b64(b)},
                                                                  "t": 0, "frames": 3}) as s:
        text = "".join(s.iter_text())
    assert text.startswith("event: done") and images_of(json.loads(text.split("data: ", 1)[1])).shape[0] == 3
    assert np.abs(mid - (a.astype(float) + b.astype(float)) / 2).max() <= 0.5


def test_variations_are_the_offline_ones(client: httpx.Client, tiny) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/variations", json={"t": 50, "n": 3, "seed": 9, "steps": 6, "label": 2,
                                            "response_format": "base64"})
    assert r.status_code == 200, r.text
    assert [im["seed"] for im in r.json()["images"]] == [10, 11, 12]
    np.testing.assert_array_equal(images_of(r.json()), run_variations(tiny, t=50, seed=9, n=3, steps=6, label=2))


def rows_per_call(metrics: str) -> dict[float, int]:
    """The batch-size histogram's cumulative counts by bucket bound."""
    return {float(le): int(float(v)) for le, v in re.findall(r'ddpm_batch_size_bucket\{le="([0-9.]+)"\} (\S+)',
                                                             metrics)}


def test_edit_rows_and_plain_rows_share_engine_iterations(tiny_checkpoint: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """An edit and a /generate request of one row each, in flight together on a network slowed
    to 20 ms a call: network calls of exactly two rows (the batch-size metric) held a row of each,
    and each answer is byte-identical to its row run alone."""
    mask = np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]
    bodies = {"edit": ("/v1/edits", {"image": b64(SOURCE), "mask": b64(mask), "seed": 1, "steps": 30, "label": 4,
                                     "sampler": "ddpm", "response_format": "base64"}),
              "plain": ("/generate", {"seed": 2, "steps": 30, "sampler": "ddim", "label": 6,
                                      "response_format": "base64"})}
    results: dict[str, httpx.Response] = {}
    with live_app(tiny_checkpoint, model=slowed(tiny_checkpoint, 0.02), max_batch=8) as (url, app):
        with_editing(app)
        with httpx.Client(base_url=url) as c:
            before = rows_per_call(c.get("/metrics").text)

        def post(name: str) -> None:
            path, body = bodies[name]
            with httpx.Client(base_url=url, timeout=60) as c:
                results[name] = c.post(path, json=body)

        threads = [threading.Thread(target=post, args=(name,)) for name in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with httpx.Client(base_url=url) as c:
            after = rows_per_call(c.get("/metrics").text)
    two_rows = (after[2.0] - after[1.0]) - (before[2.0] - before[1.0])
    assert two_rows >= 10, (before, after)  # the two requests overlapped for most of their 30 steps
    edit = edit_specs(tiny, to_model_range(SOURCE), mask_tensor(TOP), n=1, seed=1, steps=30, label=4,
                      sampler="ddpm", guidance=0.0)
    np.testing.assert_array_equal(images_of(results["edit"].json())[0], run_rows(tiny, edit)[0].image)
    plain = tiny.sample(1, seed=2, steps=30, sampler="ddim", label=6, guidance=0.0)
    np.testing.assert_array_equal(images_of(results["plain"].json())[0], plain[0])


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"image": "!!"}, 422, "image"),
    ({"image": b64(SOURCE), "mask": b64(np.zeros((4, 4, 1), np.uint8))}, 422, "mask"),
    ({"image": b64(np.zeros((16, 16, 1), np.uint8))}, 422, "image"),
    ({"image": b64(SOURCE), "strength": 0}, 422, "strength"),
    ({"image": b64(SOURCE), "jumps": 2}, 422, "jumps"),
    ({"image": b64(SOURCE), "mask": b64(SOURCE), "jumps": 50, "jump_length": 1, "steps": 100}, 422, "jumps"),
    ({"image": b64(SOURCE), "n": 7}, 422, "n"),
    ({"image": b64(SOURCE), "label": 10}, 422, "label"),
    ({"image": b64(SOURCE), "n": "2"}, 422, "n"),  # a JSON number, as /generate's body
    ({"image": b64(SOURCE), "mode": "x"}, 422, "mode"),
])
def test_bad_edits_name_the_field(client: httpx.Client, body: dict, status: int, field: str) -> None:
    r = client.post("/v1/edits", json=body)
    assert r.status_code == status, r.text
    assert field in json.dumps(r.json()["detail"])


def claims(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels: a bomb is refused from its header."""
    data = bytearray(encode_png(SOURCE))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 13:ihdr + 17] = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])).to_bytes(4, "big")
    return bytes(data)


def test_an_image_over_the_pixel_cap_is_a_413(client: httpx.Client) -> None:
    r = client.post("/v1/edits", json={"image": base64.b64encode(claims(5000, 5000)).decode(), "resize": True})
    assert r.status_code == 413 and "image" in r.json()["detail"]
    r = client.post("/v1/interpolations", json={"a": {"seed": 1, "image": b64(SOURCE)}, "b": {"seed": 2}})
    assert r.status_code == 422 and "exactly one" in r.text
    r = client.post("/v1/variations", json={"sampler": "ddim", "eta": 0})
    assert r.status_code == 422 and "stochastic" in r.text


def test_variations_refuse_continuation_seeds_past_the_json_safe_bound(client: httpx.Client) -> None:
    """Continuations report seed + 1 .. seed + n; one past 2**53 - 1 once came back in the answer."""
    r = client.post("/v1/variations", json={"n": 2, "seed": 2**53 - 2, "steps": 4})
    assert r.status_code == 422 and "seed + n must be <= 9007199254740991" in r.text
    r = client.post("/v1/variations", json={"n": 2, "seed": 2**53 - 3, "steps": 4, "response_format": "base64"})
    assert r.status_code == 200 and [im["seed"] for im in r.json()["images"]] == [2**53 - 2, 2**53 - 1]



def test_editing_limits_are_settings_enforced_at_their_edge(tiny_checkpoint: Path) -> None:
    """DDPM_MAX_IMAGE_PIXELS, DDPM_MAX_JUMPS and DDPM_MAX_FRAMES: at the limit served, one past it
    refused naming the field, the limit and the setting."""
    masked = {"mask": b64(np.where(TOP, 255, 0).astype(np.uint8)[:, :, None]), "steps": 4, "sampler": "ddpm",
              "jump_length": 1}
    with live_app(tiny_checkpoint, max_image_pixels=63, max_jumps=1, max_frames=3) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as c:
        with_editing(app)
        limits = c.get("/v1/model").json()["limits"]
        assert (limits["max_image_pixels"], limits["max_jumps"], limits["max_frames"]) == (63, 1, 3)
        r = c.post("/v1/edits", json={"image": b64(SOURCE), "steps": 2})  # 8 x 8 = 64 pixels
        assert r.status_code == 413 and "image: 8x8 pixels exceed the limit of 63 (DDPM_MAX_IMAGE_PIXELS)" in r.text
        r = c.post("/v1/interpolations", json={"a": {"seed": 1}, "b": {"seed": 2}, "t": 0, "frames": 4})
        assert r.status_code == 422 and "frames=4 must be <= 3 (DDPM_MAX_FRAMES)" in r.text
        assert r.json()["detail"][0]["field"] == "frames"
        r = c.post("/v1/interpolations", json={"a": {"seed": 1}, "b": {"seed": 2}, "t": 0, "frames": 3,
                                               "steps": 2, "response_format": "base64"})
        assert r.status_code == 200 and len(r.json()["images"]) == 3
    with live_app(tiny_checkpoint, max_image_pixels=64, max_jumps=1) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as c:
        with_editing(app)
        r = c.post("/v1/edits", json={"image": b64(SOURCE), **masked, "jumps": 2})
        assert r.status_code == 422 and "jumps=2 must be <= 1 (DDPM_MAX_JUMPS)" in r.text
        assert r.json()["detail"][0]["field"] == "jumps"
        r = c.post("/v1/edits", json={"image": b64(SOURCE), **masked, "jumps": 1})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        r = c.post("/v1/edits", json={"image": b64(SOURCE), **masked, "jumps": 51})  # the old constant: now the
        assert r.status_code == 422 and "DDPM_MAX_JUMPS" in r.text                    # setting's words


@pytest.mark.parametrize(("name", "value"), [("max_image_pixels", 0), ("max_jumps", -1), ("max_frames", 1)])
def test_absurd_editing_limits_stop_the_start(name: str, value: int) -> None:
    from pydantic import ValidationError

    from app import Settings
    from app.settings import settings_errors

    with pytest.raises(ValidationError) as info:
        Settings(**{name: value})  # type: ignore[arg-type]
    assert any(line.startswith(f"DDPM_{name.upper()}") for line in settings_errors(info.value))


def sse_blocks(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each server-sent event, keep-alive comments left out."""
    out = []
    for block in text.strip().split("\n\n"):
        if block.startswith("event: "):
            head, _, data = block.partition("\ndata: ")
            out.append((head.removeprefix("event: "), json.loads(data)))
    return out


@pytest.mark.parametrize(("path", "body", "phase"), [
    ("/v1/variations", {"t": 50, "n": 2, "seed": 9, "steps": 6, "label": 2}, "shared"),
    ("/v1/interpolations", {"a": {"seed": 40}, "b": {"seed": 41}, "t": 30, "frames": 3, "seed": 5, "steps": 6,
                            "label": 1}, "ends"),
])
def test_a_first_phase_streams_its_progress_and_the_answer_is_the_plain_one(
        client: httpx.Client, path: str, body: dict, phase: str) -> None:
    """Variations' shared chain and an interpolation's seeded ends run before the request's own
    rows: the stream reports them (queued and progress marked with the phase), then the request's
    own events, and its answer is the plain endpoint's, image for image."""
    plain = client.post(path, json={**body, "response_format": "base64"})
    assert plain.status_code == 200, plain.text
    with client.stream("POST", path + "/stream", json=body) as s:
        assert s.status_code == 200
        events = sse_blocks("".join(s.iter_text()))
    kinds = [(kind, data.get("phase")) for kind, data in events]
    assert kinds[0] == ("queued", phase), kinds
    first = [i for i, (kind, p) in enumerate(kinds) if kind == "progress" and p == phase]
    own = [i for i, (kind, p) in enumerate(kinds) if kind == "progress" and p is None]
    assert first and own and max(first) < min(own), kinds
    assert ("queued", None) in kinds and kinds[-1] == ("done", None)
    assert sum(1 for kind, _ in kinds if kind == "image") == len(plain.json()["images"])
    np.testing.assert_array_equal(images_of(events[-1][1]), images_of(plain.json()))


def test_a_first_phase_past_its_deadline_ends_the_stream_with_an_error(tiny_checkpoint: Path) -> None:
    """A deadline that passes during the first phase is a 504 ``error`` event, and its rows go."""
    body = {"t": 1, "n": 2, "steps": 100, "timeout_s": 1}  # the shared chain: ~100 calls of 50 ms
    with live_app(tiny_checkpoint, model=slowed(tiny_checkpoint, 0.05), max_batch=8) as (url, app):
        with_editing(app)
        with httpx.Client(base_url=url, timeout=60) as c:
            with c.stream("POST", "/v1/variations/stream", json=body) as s:
                text = "".join(s.iter_text())
                assert s.status_code == 200, text
            events = sse_blocks(text)
            assert events[0][0] == "queued" and events[0][1]["phase"] == "shared"
            assert events[-1][0] == "error" and events[-1][1]["status"] == 504, events[-1]
            assert not any(kind == "done" for kind, _ in events)
            assert app.state.service.engine.idle
