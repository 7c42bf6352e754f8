"""The server on the embedded model with each runtime, side by side (bench/runtime.py --server).

Each server is ``ddpm serve`` in a subprocess with ``DDPM_RUNTIME=R`` (bench/server.py's
``server``), the exported graph kept once on disk for all of them (``DDPM_ONNX_CACHE_DIR``). The
clients are asyncio/httpx in the benchmark's process (bench/server.py's closed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.server import closed_loop, during_long, offline_images_per_s, percentiles, server
from model.pipeline import EMBEDDED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
# Every server of a run exports the same network: keep the graph once on disk.
CACHE = Path(tempfile.gettempdir()) / "ddpm-bench-onnx-cache"


def idle_latency(url: str, body: dict, repeats: int) -> float:
    """Median seconds of one request on an otherwise idle server."""
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/generate", json={**body, "seed": 0})
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            assert c.post("/generate", json={**body, "seed": i}).status_code == 200
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def short_during_long(url: str, short: dict, long: dict) -> float:
    """Median latency of short requests sent while a long one runs, over their solo latency."""
    solo = idle_latency(url, short, 5)
    during, _ = asyncio.run(during_long(url, short, {**long, "seed": 1}))
    return during / solo


def measure(runtime: str, args: argparse.Namespace, log: Path) -> dict[str, float]:
    """One round for one runtime: idle latency, images/s at ``clients``, one-at-a-time, short-during-long."""
    from model import load_checkpoint
    from model.runtimes import RuntimeOptions

    body = {"n": 1, "steps": args.steps, "sampler": "ddim"}
    row: dict[str, float] = {}
    model = load_checkpoint(None, device="cpu", runtime=runtime, runtime_options=RuntimeOptions(cache_dir=CACHE))
    row["offline_images_per_s"] = offline_images_per_s(model, args.clients, args.steps, "ddim",
                                                       args.clients * args.requests_each)
    start = time.perf_counter()
    model.sample(1, steps=args.steps, sampler="ddim", seed=1)
    row["bare_s"] = time.perf_counter() - start
    del model
    with server(EMBEDDED_CHECKPOINT, log, runtime=runtime, onnx_cache_dir=CACHE, max_batch=64) as url:
        row["idle_s"] = idle_latency(url, body, 7)
        ips, lat = asyncio.run(closed_loop(url, args.clients, args.requests_each, body))
        row["images_per_s"] = ips
        row.update({f"{k}_s": v for k, v in percentiles(lat).items()})
        row["short_during_long_ratio"] = short_during_long(
            url, {"n": 1, "steps": 10, "sampler": "ddim"}, {"n": 1, "steps": 1000, "sampler": "ddpm"})
    with server(EMBEDDED_CHECKPOINT, log, runtime=runtime, onnx_cache_dir=CACHE, max_batch=1) as url:
        row["one_at_a_time_images_per_s"], _ = asyncio.run(
            closed_loop(url, args.clients, max(1, args.requests_each // 4), body))
    return row


# The paper's CIFAR-10 network (random weights) served by each engine `auto` could pick for it
# on a CPU with native bf16: PyTorch's bf16 and OpenVINO's bf16 on the exported graph.
CIFAR_ENGINES = {"torch_bf16": {"runtime": "torch", "dtype": "bfloat16"},
                 "openvino_bf16": {"runtime": "openvino", "dtype": "bfloat16"}}


def cifar_served(args: argparse.Namespace, log: Path) -> dict[str, list[dict[str, float]]]:
    """Images/s at ``args.cifar_clients`` one-image requests and idle latency, engines alternating."""
    from bench.runtime import paper_unet
    from model import ModelConfig
    from model.checkpoint import save_checkpoint

    unet = paper_unet()
    checkpoint = Path(tempfile.gettempdir()) / "ddpm-bench-cifar10-random.safetensors"
    save_checkpoint(checkpoint, unet, ModelConfig(name="paper-cifar10-random", unet=unet.config))
    body = {"n": 1, "steps": args.cifar_steps, "sampler": "ddim"}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CIFAR_ENGINES}
    for i in range(args.server_rounds):
        for name in CIFAR_ENGINES if i % 2 == 0 else reversed(CIFAR_ENGINES):
            with server(checkpoint, log, onnx_cache_dir=CACHE, max_batch=16, **CIFAR_ENGINES[name]) as url:
                idle = idle_latency(url, body, 3)
                ips, lat = asyncio.run(closed_loop(url, args.cifar_clients, 3, body))
            rounds[name].append({"idle_s": idle, "images_per_s": ips, "p50_s": statistics.median(lat)})
            print(f"CIFAR-10 served, round {i}, {name}: {rounds[name][-1]}", flush=True)
    return rounds
