"""The server against the bare sampler, side by side in one run, on one checkpoint.

    python -m bench.server --out bench/results/server.json

Measures (the server targets in docs/benchmarks.md):
  1. images/s with C concurrent clients (1 image, S steps each, closed loop) against the
     offline batched sampler at batch C, and against a server that handles one request at a
     time (the same server with DDPM_MAX_BATCH=1);
  2. one request on an idle server against the bare sampler's time for the same image;
  3. a short request arriving while a long one runs, against its solo latency;
  4. latency percentiles and images/s over a sweep of concurrency, and the offline sampler's
     images/s over a sweep of batch sizes (for the plots in docs/benchmarks.md).
The server runs as a subprocess (`ddpm serve`), the clients are asyncio/httpx in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from bench.common import machine, write_json
from model import load_checkpoint
from model.device import configure_threads
from model.pipeline import EMBEDDED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(checkpoint: Path, log: Path, **settings: object) -> Iterator[str]:
    """``ddpm serve`` on a free loopback port with ``DDPM_<KEY>=value`` for each setting; yields its URL."""
    env = {"DDPM_CHECKPOINT": str(checkpoint), **{f"DDPM_{k.upper()}": str(v) for k, v in settings.items()}}
    with serve_process(["-m", "cli", "serve", "--host", "127.0.0.1", "--port", "{port}"], log, env) as url:
        yield url


@contextmanager
def serve_process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python *argv`` (``{port}`` replaced by a free port) as a subprocess, yielded once its
    /readyz answers 200; terminated (killed if it will not stop) however the block ends."""
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1200  # a compiled server builds its buckets first (~50 s each on 2 CPU cores)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready; see {log}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError(f"server did not get ready; see {log}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def closed_loop(url: str, clients: int, requests_each: int, body: dict) -> tuple[float, list[float]]:
    """``clients`` tasks each send ``requests_each`` requests back to back; (images/s, latencies)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await client.post("/generate", json={**body, "seed": 0})  # connection set-up, not measured

        async def worker(i: int) -> None:
            for j in range(requests_each):
                start = time.perf_counter()
                r = await client.post("/generate", json={**body, "seed": 1000 * i + j})
                latencies.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return clients * requests_each * body.get("n", 1) / elapsed, latencies


async def during_long(url: str, short: dict, long: dict) -> tuple[float, float]:
    """Median latency of 5 short requests sent one after another while a long one runs, and the
    seconds the long one still had to go after them (it must outlast them for the measure to hold)."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
        long_task = asyncio.create_task(ac.post("/generate", json=long))
        await asyncio.sleep(0.5)
        lat = []
        for i in range(5):
            start = time.perf_counter()
            await ac.post("/generate", json={**short, "seed": 100 + i})
            lat.append(time.perf_counter() - start)
        start = time.perf_counter()
        await long_task
        return statistics.median(lat), time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99))}


def offline_images_per_s(model, batch: int, steps: int, sampler: str, images: int) -> float:  # type: ignore[no-untyped-def]
    model.sample(batch, steps=steps, sampler=sampler, seed=0, batch_size=batch)  # warm-up at this shape
    start = time.perf_counter()
    model.sample(images, steps=steps, sampler=sampler, seed=1, batch_size=batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED_CHECKPOINT)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--requests-each", type=int, default=6)
    parser.add_argument("--dtype", default="auto", help="the server's DDPM_DTYPE; the offline sampler matches it")
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32],
                        help="concurrency levels for the latency sweep (empty: skip)")
    parser.add_argument("--batch-sweep", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--long-steps", type=int, default=1000)
    parser.add_argument("--short-steps", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=["bf16:dtype=bfloat16", "compiled:compile=true"],
                        help="extra server configurations, NAME:SETTING=VALUE,...: their images/s at --clients")
    parser.add_argument("--log", type=Path, default=Path("/tmp/ddpm-bench-server.log"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, device="cpu", dtype=args.dtype)  # the server's own defaults
    threads = configure_threads(None, model.gflops_per_image)  # as the server configures itself
    body = {"n": 1, "steps": args.steps, "sampler": args.sampler}
    results: dict[str, object] = {"machine": machine(), "checkpoint": str(args.checkpoint), "threads": threads,
                                  "dtype": str(model.dtype), "body": body, "clients": args.clients}
    images = args.clients * args.requests_each

    # 1. throughput: offline batched sampler, batching server, one-at-a-time server (interleaved twice)
    runs: dict[str, list[float]] = {"offline": [], "server": [], "one_at_a_time": []}
    for _ in range(2):
        runs["offline"].append(offline_images_per_s(model, args.clients, args.steps, args.sampler, images))
        with server(args.checkpoint, args.log, max_batch=64, dtype=args.dtype) as url:
            ips, _ = asyncio.run(closed_loop(url, args.clients, args.requests_each, body))
            runs["server"].append(ips)
        with server(args.checkpoint, args.log, max_batch=1, dtype=args.dtype) as url:
            ips, _ = asyncio.run(closed_loop(url, args.clients, max(1, args.requests_each // 4), body))
            runs["one_at_a_time"].append(ips)
    throughput = {k: statistics.median(v) for k, v in runs.items()}
    results["throughput"] = {**throughput, "runs": runs,
                             "server_vs_offline": throughput["server"] / throughput["offline"],
                             "server_vs_one_at_a_time": throughput["server"] / throughput["one_at_a_time"]}
    print(f"images/s at {args.clients} clients: {throughput}")

    variants: dict[str, float] = {"default": throughput["server"]}
    for spec in args.variants:
        name, _, settings = spec.partition(":")
        extra = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
        with server(args.checkpoint, args.log, **{"max_batch": args.clients, "dtype": args.dtype, **extra}) as url:
            variants[name], _ = asyncio.run(closed_loop(url, args.clients, args.requests_each, body))
        print(f"  variant {name} ({settings}): {variants[name]:.1f} images/s")
    results["variants"] = variants

    with server(args.checkpoint, args.log, max_batch=64, dtype=args.dtype) as url, \
            httpx.Client(base_url=url, timeout=600) as c:
        # 2. one request on an idle server vs the bare sampler, alternating
        bare, served = [], []
        c.post("/generate", json={**body, "seed": 0})
        model.sample(1, steps=args.steps, sampler=args.sampler, seed=0)
        for i in range(10):
            start = time.perf_counter()
            model.sample(1, steps=args.steps, sampler=args.sampler, seed=i)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert c.post("/generate", json={**body, "seed": i}).status_code == 200
            served.append(time.perf_counter() - start)
        results["idle"] = {"bare_s": statistics.median(bare), "server_s": statistics.median(served),
                           "ratio": statistics.median(served) / statistics.median(bare)}
        print(f"idle: {results['idle']}")

        # 3. a short request arriving during a long one
        short = {"n": 1, "steps": args.short_steps, "sampler": args.sampler}
        solo = []
        for i in range(5):
            start = time.perf_counter()
            c.post("/generate", json={**short, "seed": i})
            solo.append(time.perf_counter() - start)

        long = {"n": 1, "steps": args.long_steps, "sampler": "ddpm", "seed": 1}
        during, long_left = asyncio.run(during_long(url, short, long))
        results["short_during_long"] = {"solo_s": statistics.median(solo), "during_s": during,
                                        "ratio": during / statistics.median(solo), "long_still_running_s": long_left}
        print(f"short during long: {results['short_during_long']}")

        # 4. latency and throughput over concurrency
        sweep = []
        for clients in args.sweep:
            ips, lat = asyncio.run(closed_loop(url, clients, max(2, 48 // clients), body))
            sweep.append({"clients": clients, "images_per_s": ips, **percentiles(lat)})
            print(f"  {clients} clients: {ips:.1f} images/s, p50 {sweep[-1]['p50'] * 1e3:.0f} ms")
        results["concurrency_sweep"] = sweep

    batch_sweep = []
    for b in args.batch_sweep:
        batch_sweep.append({"batch": b, "images_per_s": offline_images_per_s(
            model, b, args.steps, args.sampler, max(b, 2 * b if b < 16 else b))})
        print(f"  offline batch {b}: {batch_sweep[-1]['images_per_s']:.1f} images/s")
    results["batch_sweep"] = batch_sweep
    write_json(args.out, results)


if __name__ == "__main__":
    main()
