"""Step-level continuous batching, seen from outside: determinism, joining mid-run, cancellation."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from model import RowSpec, load_checkpoint
from model.images import decode_png

from .live import live_server, slowed


def gauge(client: httpx.Client, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_an_image_does_not_depend_on_its_batch_mates(tiny_checkpoint: Path) -> None:
    """A seeded image alone, then again while 7 concurrent requests with other step counts,
    samplers, labels and guidance share its batches: the PNG bytes are identical."""
    model = slowed(tiny_checkpoint, 0.003)
    target = {"seed": 1234, "steps": 30, "sampler": "ddpm", "label": 6, "guidance": 1.0}
    others = [
        {"seed": 1, "steps": 50, "sampler": "ddim", "eta": 0.5},
        {"seed": 2, "steps": 7, "sampler": "dpmpp_2m", "label": 1, "guidance": 2.0},
        {"seed": 3, "steps": 100, "sampler": "ddpm", "n": 3},
        {"seed": 4, "steps": 12, "sampler": "ddim", "label": 9},
        {"seed": 5, "steps": 25, "sampler": "dpmpp_2m", "n": 2, "label": 0, "guidance": 4.0},
        {"seed": 6, "steps": 3, "sampler": "ddpm"},
        {"seed": 7, "steps": 60, "sampler": "ddim", "label": 2, "guidance": 0.5},
    ]
    with live_server(tiny_checkpoint, model=model, max_batch=16) as url, httpx.Client(base_url=url, timeout=60) as c:
        alone = c.post("/generate", json=target).content

        def post(body: dict) -> bytes:
            with httpx.Client(base_url=url, timeout=60) as cc:
                r = cc.post("/generate", json=body)
                assert r.status_code == 200
                return r.content

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, body) for body in others[:4]]
            time.sleep(0.02)  # the target joins batches already under way
            shared = pool.submit(post, target)
            futures += [pool.submit(post, body) for body in others[4:]]
            together = shared.result()
            for f in futures:
                f.result()
        batch_sizes = c.get("/metrics").text
    assert re.search(r'ddpm_batch_size_bucket\{le="16.0"\} [1-9]', batch_sizes)  # batches really were shared
    assert decode_png(alone).shape == (8, 8, 1) and alone == together


def test_short_request_overtakes_a_long_one(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.01)
    with live_server(tiny_checkpoint, model=model) as url:
        done: dict[str, float] = {}

        def post(name: str, steps: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                assert c.post("/generate", json={"steps": steps, "sampler": "ddpm"}).status_code == 200
                done[name] = time.monotonic()

        long = threading.Thread(target=post, args=("long", 100))
        long.start()
        time.sleep(0.2)
        start = time.monotonic()
        post("short", 5)
        short_latency = done["short"] - start
        long.join(30)
    assert done["short"] < done["long"]
    assert short_latency < 0.5  # 5 steps of ~10 ms, not the 1 s the long request still had to go


def test_client_disconnect_frees_its_rows(tiny_checkpoint: Path) -> None:
    model = slowed(tiny_checkpoint, 0.02)
    with live_server(tiny_checkpoint, model=model) as url, httpx.Client(base_url=url, timeout=30) as c:
        # 100 steps of 20 ms is 2 s; the client gives up after 0.3 s
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(f"{url}/generate", json={"n": 4, "steps": 100}, timeout=0.3)
        deadline = time.monotonic() + 1.0
        while gauge(c, "ddpm_active_images") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gauge(c, "ddpm_active_images") == 0
        assert time.monotonic() < deadline
        # a stream closed after its first progress event frees its rows too
        with httpx.stream("POST", f"{url}/generate/stream", json={"n": 2, "steps": 100}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: progress"):
                    break
        deadline = time.monotonic() + 1.0
        while gauge(c, "ddpm_active_images") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gauge(c, "ddpm_active_images") == 0
        assert c.post("/generate", json={"steps": 3}).status_code == 200


def test_a_failure_on_the_engine_thread_fails_what_it_held_and_the_engine_goes_on(tiny_checkpoint: Path) -> None:
    """A bug on the worker thread (here: a caller's callback that raises) fails the generations it
    held with SamplingFailed naming the error; the worker survives and serves the next ones."""
    from app.engine import Engine, Generation
    from app.errors import SamplingFailed
    from app.events import Done, Event, Failed, Progress
    from app.metrics import Metrics
    from app.runtime import RuntimePlan
    from app.settings import Settings

    model = load_checkpoint(tiny_checkpoint, device="cpu")
    engine = Engine(model, RuntimePlan.resolve(Settings(max_batch=4), model, threads=1), Metrics())
    engine.start()
    ends: dict[str, list[Event]] = {"bad": [], "bystander": [], "after": []}
    finished = threading.Semaphore(0)

    def recorder(name: str, raise_on_progress: bool = False) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            if isinstance(event, Progress) and raise_on_progress:
                raise KeyError("bug in a callback")
            if isinstance(event, Done | Failed):
                ends[name].append(event)
                finished.release()
        return emit

    def generation(name: str, seed: int, **kw: bool) -> Generation:
        spec = RowSpec(plan=model.plan("ddim", 20), seed=seed)
        return Generation(id=name, specs=[spec], deadline=time.monotonic() + 30, emit=recorder(name, **kw),
                          progress=True)

    try:
        engine.submit(generation("bad", 0, raise_on_progress=True))
        engine.submit(generation("bystander", 1))
        assert finished.acquire(timeout=30) and finished.acquire(timeout=30)
        for name in ("bad", "bystander"):
            (end,) = ends[name]
            assert isinstance(end, Failed) and isinstance(end.error, SamplingFailed)
            assert "internal error: KeyError" in end.error.detail
        engine.submit(generation("after", 2))
        assert finished.acquire(timeout=30)
        assert isinstance(ends["after"][0], Done) and engine.alive
    finally:
        engine.stop()
