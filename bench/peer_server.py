"""The serving peer: diffusers' DDIMPipeline behind request-level dynamic batching, over HTTP.

    python -m bench.peer_server --port 8001 [--window-ms 20] [--max-batch 64] [--threads 1]

The pattern of SGLang-Diffusion's dynamic batching, Aquiles-Image and Triton's dynamic batcher
(``max_queue_delay``): a request waits at most ``window`` after the oldest waiting request
arrived for others to join; requests that share a step count and eta (and so a scheduler run)
then go to ONE pipeline call of up to ``max_batch`` images, FIFO by the oldest request. A call
runs to the end: requests arriving meanwhile wait for the next call, whatever their step count.
It serves ``POST /generate`` with the body the benchmark's clients send to ``ddpm serve``
(``n``, ``steps``, ``sampler`` = "ddim", ``eta``, ``seed``, ``label``; PNG back, a grid for
n > 1), plus ``/healthz`` and ``/readyz``. Bench-only: no auth, metrics or deadlines.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.py sets it for `ddpm serve`

import argparse
import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from bench.peer_pipeline import PeerPipeline, PeerRow
from model.images import encode_png, make_grid
from model.pipeline import EMBEDDED_CHECKPOINT, MAX_SEED


@dataclass(frozen=True)
class PeerSettings:
    """The batcher's limits: ``window_s`` after the oldest waiting request, ``max_batch`` images per call."""

    window_s: float = 0.020
    max_batch: int = 64
    threads: int = 1
    max_steps: int = 1000


class PeerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    steps: int = Field(50, ge=1)
    sampler: Literal["ddim"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    label: int | None = None
    response_format: Literal["png"] = "png"


@dataclass
class Waiting:
    request: PeerRequest
    seed: int
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[int, float]:
        return self.request.steps, self.request.eta


class DynamicBatcher:
    """Collects requests for a window, then runs one pipeline call per (steps, eta) group."""

    def __init__(self, pipeline: PeerPipeline, settings: PeerSettings) -> None:
        self.pipeline, self.settings = pipeline, settings
        self.waiting: list[Waiting] = []
        self.arrival = asyncio.Event()
        self.calls: list[tuple[int, int]] = []  # (images, steps) of every pipeline call, in order
        # One worker owns the network, as in `ddpm serve`; its torch threads are set on it.
        self.executor = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(settings.threads,))

    async def submit(self, request: PeerRequest, seed: int) -> np.ndarray:
        item = Waiting(request, seed, asyncio.get_running_loop().create_future())
        self.waiting.append(item)
        self.arrival.set()
        return await item.future

    def _group(self, key: tuple[int, float]) -> list[Waiting]:
        """Waiting requests with ``key``, oldest first, up to ``max_batch`` images (the oldest always)."""
        group: list[Waiting] = []
        images = 0
        for w in self.waiting:
            if w.key == key and (not group or images + w.request.n <= self.settings.max_batch):
                group.append(w)
                images += w.request.n
        return group

    async def _next_group(self) -> list[Waiting]:
        while not self.waiting:
            self.arrival.clear()
            await self.arrival.wait()
        oldest = self.waiting[0]
        # Wait for the window after the oldest arrival, or until its group is full.
        while sum(w.request.n for w in self._group(oldest.key)) < self.settings.max_batch:
            left = oldest.arrived + self.settings.window_s - time.monotonic()
            if left <= 0:
                break
            self.arrival.clear()
            try:
                await asyncio.wait_for(self.arrival.wait(), left)
            except TimeoutError:
                break
        group = self._group(oldest.key)
        taken = {id(w) for w in group}
        self.waiting = [w for w in self.waiting if id(w) not in taken]
        return group

    def _call(self, group: list[Waiting]) -> np.ndarray:
        rows = [PeerRow(w.seed + i, w.request.label) for w in group for i in range(w.request.n)]
        steps, eta = group[0].key
        return self.pipeline.generate(rows, steps, eta)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._next_group()
            try:
                images = await loop.run_in_executor(self.executor, self._call, group)
            except Exception as exc:  # a failed call fails its requests, not the batcher
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.calls.append((len(images), group[0].request.steps))
            start = 0
            for w in group:
                if not w.future.done():  # a client that went away cancelled its future
                    w.future.set_result(images[start:start + w.request.n])
                start += w.request.n


def create_peer_app(checkpoint: Path, settings: PeerSettings) -> FastAPI:
    torch.set_num_threads(settings.threads)
    pipeline = PeerPipeline.from_checkpoint(checkpoint)
    batcher = DynamicBatcher(pipeline, settings)
    max_steps = min(settings.max_steps, pipeline.scheduler.config.num_train_timesteps)
    ready = False

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        nonlocal ready
        task = asyncio.create_task(batcher.run())
        await asyncio.get_running_loop().run_in_executor(  # warm-up: the first call pays one-off costs
            batcher.executor, pipeline.generate, [PeerRow(0, None)], 2, 0.0)
        ready = True
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="serving peer: diffusers DDIMPipeline + dynamic batching", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(status_code=200 if ready else 503)

    @app.get("/stats")
    async def stats() -> dict[str, object]:
        return {"pipeline_calls": len(batcher.calls), "calls": batcher.calls}

    @app.post("/generate")
    async def generate(body: PeerRequest) -> Response:
        if body.n > settings.max_batch:
            raise HTTPException(422, f"n: at most {settings.max_batch} (the peer's max batch)")
        if body.steps > max_steps:
            raise HTTPException(422, f"steps: at most {max_steps}")
        if body.label is not None and not 0 <= body.label < pipeline.num_classes:
            raise HTTPException(422, f"label: 0..{pipeline.num_classes - 1} or null")
        seed = body.seed if body.seed is not None else random.randrange(MAX_SEED - body.n)
        images = await batcher.submit(body, seed)
        png = await asyncio.to_thread(encode_png, images[0] if body.n == 1 else make_grid(images))
        return Response(png, media_type="image/png", headers={"X-Seed": str(seed)})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED_CHECKPOINT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--window-ms", type=float, default=20.0, help="batching window after the oldest request")
    parser.add_argument("--max-batch", type=int, default=64, help="images per pipeline call")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (ddpm serve: 1 here)")
    args = parser.parse_args(argv)
    if args.window_ms < 0 or args.max_batch < 1 or args.threads < 1:
        parser.error("--window-ms >= 0, --max-batch >= 1 and --threads >= 1")
    settings = PeerSettings(window_s=args.window_ms / 1e3, max_batch=args.max_batch, threads=args.threads)
    uvicorn.run(create_peer_app(args.checkpoint, settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
