"""Running the app for tests: in-process uvicorn on 127.0.0.1, and models with controllable speed."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
import uvicorn
from fastapi import FastAPI

from app import Settings, create_app
from model import DiffusionModel, UNet, load_checkpoint, read_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SlowUNet(UNet):
    """The real network, plus a floor on each call's time and injected failures."""

    seconds: float = 0.0
    fail: Callable[[torch.Tensor], bool] | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        start = time.perf_counter()
        if self.fail is not None and self.fail(x):
            raise RuntimeError("CUDA out of memory (simulated)")
        out = super().forward(x, t, labels)
        rest = self.seconds - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)
        return out


def slowed(checkpoint: Path, seconds_per_call: float = 0.0,
           fail: Callable[[torch.Tensor], bool] | None = None) -> DiffusionModel:
    """The checkpoint's model on the CPU, its every network call taking at least ``seconds_per_call``
    and raising when ``fail(x)`` says so."""
    config, tensors = read_checkpoint(checkpoint)
    unet = _SlowUNet(config.unet)
    unet.load_state_dict(tensors)
    unet.seconds, unet.fail = seconds_per_call, fail
    return DiffusionModel(config, unet, device="cpu")


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError("server did not become ready")


@contextmanager
def live_server(checkpoint: Path, *, model: DiffusionModel | None = None, **settings: object) -> Iterator[str]:
    """A real uvicorn server in a thread; yields its base URL once /readyz says ready."""
    with live_app(checkpoint, model=model, **settings) as (url, _):
        yield url


@contextmanager
def live_app(checkpoint: Path, *, model: DiffusionModel | None = None,
             **settings: object) -> Iterator[tuple[str, FastAPI]]:
    """``live_server`` that also yields the app, for tests that reach into its service."""
    data_dir = tempfile.TemporaryDirectory(prefix="ddpm-jobs-")  # jobs never land in the working tree
    settings.setdefault("data_dir", data_dir.name)
    app = create_app(Settings(checkpoint=checkpoint, **settings),  # type: ignore[arg-type]
                     model=model or load_checkpoint(checkpoint, device="cpu"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            wait_ready(client)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(10)
        data_dir.cleanup()
