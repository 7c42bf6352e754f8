"""Fair admission, measured: one key's single image while another key has 200 images queued.

    python -m bench.fairness --out bench/results/fairness.json

On a `ddpm serve` subprocess (the embedded model, DDPM_MAX_BATCH rows per call), key B's one
20-step image (`/generate`) is timed:
  1. solo, on an idle server;
  2. while key A has 200 images queued as jobs (`/v1/jobs`, 25 jobs of 8);
  3. while key A has 200 images queued as interactive requests (25 concurrent `/generate` of 8);
  4. the same as 3, but from key A itself (one key: FIFO within it, what a server without
     fairness does to everyone).
Each latency is the median of --repeats runs; the ratios to solo are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, write_json
from bench.server import server
from model.pipeline import EMBEDDED_CHECKPOINT

KEYS = {"A": "bench-key-a", "B": "bench-key-b"}
BACKLOG_REQUESTS, BACKLOG_N, STEPS = 25, 8, 20


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


async def wait_busy(client: httpx.AsyncClient, rows: int) -> None:
    """Until the engine runs ``rows`` images: the backlog is in and admission has started."""
    deadline = time.monotonic() + 60
    while f"ddpm_active_images {float(rows)}" not in (await client.get("/metrics")).text:
        if time.monotonic() > deadline:
            raise TimeoutError("the backlog never filled the batch")
        await asyncio.sleep(0.005)


async def one_image(client: httpx.AsyncClient, key: str, seed: int) -> float:
    start = time.perf_counter()
    r = await client.post("/generate", json={"n": 1, "steps": STEPS, "seed": seed}, headers=auth(key))
    assert r.status_code == 200, r.text
    return time.perf_counter() - start


async def with_backlog(url: str, backlog: str, probe_key: str, rows: int, seed: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        body = {"n": BACKLOG_N, "steps": STEPS}
        tasks: list[asyncio.Task[Any]] = []
        if backlog == "jobs":
            job_ids = []
            for i in range(BACKLOG_REQUESTS):
                r = await client.post("/v1/jobs", json={**body, "seed": 10_000 + 100 * i}, headers=auth("A"))
                job_ids.append(r.json()["id"])
        else:
            tasks = [asyncio.create_task(client.post("/generate", json={**body, "seed": 10_000 + 100 * i},
                                                     headers=auth("A"))) for i in range(BACKLOG_REQUESTS)]
        await wait_busy(client, rows)
        latency = await one_image(client, probe_key, seed)
        if backlog == "jobs":  # let the backlog finish: the next run starts on an idle server
            for job_id in job_ids:
                while (await client.get(f"/v1/jobs/{job_id}", headers=auth("A"))).json()["status"] != "succeeded":
                    await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        return latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = args.max_batch
    with tempfile.TemporaryDirectory() as tmp, server(
            EMBEDDED_CHECKPOINT, Path(tmp) / "serve.log", max_batch=rows, api_keys=",".join(KEYS.values()),
            data_dir=tmp, job_poll_s=0.02) as url:
        async def solo(seed: int) -> float:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                await one_image(client, "B", 0)  # connection set-up, not measured
                return await one_image(client, "B", seed)

        results: dict[str, list[float]] = {"solo": [], "jobs_other_key": [], "interactive_other_key": [],
                                           "interactive_same_key": []}
        for r in range(args.repeats):
            results["solo"].append(asyncio.run(solo(r + 1)))
            results["jobs_other_key"].append(asyncio.run(with_backlog(url, "jobs", "B", rows, 100 + r)))
            results["interactive_other_key"].append(asyncio.run(with_backlog(url, "interactive", "B", rows, 200 + r)))
            results["interactive_same_key"].append(asyncio.run(with_backlog(url, "interactive", "A", rows, 300 + r)))
    medians = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "command": f"python -m bench.fairness --max-batch {rows} --repeats {args.repeats}",
        "machine": machine(), "max_batch": rows, "steps": STEPS, "backlog_images": BACKLOG_REQUESTS * BACKLOG_N,
        "latency_s": results, "median_s": medians,
        "ratio_to_solo": {k: medians[k] / medians["solo"] for k in medians},
    }
    for k, v in report["ratio_to_solo"].items():
        print(f"{k:24s} {medians[k] * 1e3:8.1f} ms  {v:6.2f}x solo")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
