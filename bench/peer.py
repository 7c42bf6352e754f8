"""Our server against the serving peer, side by side in one run, on the same network.

    python -m bench.peer --out bench/results/peer.json

The servers (each a subprocess on loopback, the clients asyncio/httpx in this process):
  ours        `ddpm serve` on the embedded digits model, default runtime (DDPM_RUNTIME=auto),
              step-level continuous batching (bench/server.py's ``server``);
  ours_torch  the same with DDPM_RUNTIME=torch (the network in PyTorch eager, as the peer's);
  peer        diffusers' DDIMPipeline on the same network exported to diffusers' format, behind
              request-level dynamic batching (bench/peer_server.py), window ``--window-ms`` (20);
  peer_wide   the same peer with a wider window, ``--wide-window-ms`` (100): the clients' requests
              reach the server spread over more than 20 ms, and a wider window fills its batches.
Both loads use closed-loop clients, each sending one-image DDIM requests back to back:
  uniform  every request ``--uniform-steps`` (50) steps;
  mixed    client i's j-th request takes ``--mixed-steps``[(i + j) % 3] (10, 50, 200): equal shares
           at every moment, as three kinds of users would send them.
Reported: images/s and per-class p50/p99 latency, the peer's batch sizes, and the ratios of
ours to each peer; the headline ratio of a measure is against the peer that did best on it.
The servers alternate, one start per server per round, the order reversed every other round,
so the machine's drift hits all of them; images/s is the median over rounds, percentiles pool
every round's requests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from bench.common import machine, write_json
from bench.server import serve_process, server
from model.pipeline import EMBEDDED_CHECKPOINT

# Every `ddpm serve` of a run exports the same network: keep the ONNX graph once on disk.
CACHE = Path(tempfile.gettempdir()) / "ddpm-bench-onnx-cache"
SERVERS = ("ours", "ours_torch", "peer", "peer_wide")
PEERS = ("peer", "peer_wide")


async def run_load(url: str, clients: int, requests_each: int, steps_of: list[int],
                   body: dict) -> tuple[float, list[tuple[int, float]]]:
    """Closed loop: client i's j-th request asks ``steps_of[(i + j) % len(steps_of)]`` steps.

    Returns (images/s, [(steps, latency_s)]). One request per step count first, unmeasured.
    """
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        for steps in sorted(set(steps_of)):  # connection set-up and first-call costs, not measured
            r = await client.post("/generate", json={**body, "steps": steps, "seed": 0})
            assert r.status_code == 200, r.text

        async def worker(i: int) -> None:
            for j in range(requests_each):
                steps = steps_of[(i + j) % len(steps_of)]
                start = time.perf_counter()
                r = await client.post("/generate", json={**body, "steps": steps, "seed": 1000 * i + j})
                results.append((steps, time.perf_counter() - start))
                assert r.status_code == 200, r.text

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return clients * requests_each * body.get("n", 1) / elapsed, results


def by_class(latencies: list[tuple[int, float]]) -> dict[str, dict[str, float]]:
    """p50/p99 latency (s) and count per step count."""
    out: dict[str, dict[str, float]] = {}
    for steps in sorted({s for s, _ in latencies}):
        values = np.asarray([lat for s, lat in latencies if s == steps])
        out[str(steps)] = {"p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99)),
                           "count": int(values.size)}
    return out


@contextmanager
def start(name: str, args: argparse.Namespace) -> Iterator[str]:
    """One server of the comparison, with the same max batch and threads."""
    if name in PEERS:
        window = args.window_ms if name == "peer" else args.wide_window_ms
        argv = ["-m", "bench.peer_server", "--checkpoint", str(args.checkpoint), "--port", "{port}",
                "--window-ms", str(window), "--max-batch", str(args.max_batch),
                "--threads", str(args.threads)]
        with serve_process(argv, args.log) as url:
            yield url
        return
    runtime = "torch" if name == "ours_torch" else args.runtime
    with server(args.checkpoint, args.log, runtime=runtime, onnx_cache_dir=CACHE, max_batch=args.max_batch,
                threads=args.threads) as url:
        yield url


def describe(url: str, name: str) -> dict[str, object]:
    """What the server runs: our /v1/model's runner, or the peer's pipeline calls so far."""
    with httpx.Client(base_url=url, timeout=30) as c:
        if name in PEERS:
            return {"runner": "diffusers DDIMPipeline, torch eager", **c.get("/stats").json()}
        return {"runner": c.get("/v1/model").json()["runner"]}


def peer_calls(before: dict, after: dict) -> dict[str, object]:
    """The peer's pipeline calls between two /stats readings: how full its batches were."""
    calls = after["calls"][len(before["calls"]):]
    images = [n for n, _ in calls]
    return {"pipeline_calls": len(calls), "images_per_call": sum(images) / max(len(calls), 1),
            "calls": calls}


def measure(name: str, args: argparse.Namespace, round_: int) -> dict[str, object]:
    """Both loads on one fresh server; the load order alternates with the round too."""
    body = {"n": 1, "sampler": "ddim", "eta": 0.0}
    loads = {"uniform": ([args.uniform_steps], args.uniform_requests),
             "mixed": (list(args.mixed_steps), args.mixed_requests)}
    order = list(loads) if round_ % 2 == 0 else list(reversed(loads))
    row: dict[str, object] = {}
    with start(name, args) as url:
        for load in order:
            steps_of, each = loads[load]
            before = describe(url, name)
            t0 = time.perf_counter()
            ips, lat = asyncio.run(run_load(url, args.clients, each, steps_of, body))
            row[load] = {"images_per_s": ips, "wall_s": time.perf_counter() - t0, "latencies": lat}
            if name in PEERS:  # the unmeasured warm-up requests are among them
                row[load]["peer_calls"] = peer_calls(before, describe(url, name))  # type: ignore[index]
            print(f"  {name} {load}: {ips:.2f} images/s, " + ", ".join(
                f"{k} steps p50 {v['p50_s']:.2f} s" for k, v in by_class(lat).items()), flush=True)
        row["server"] = {"runner": describe(url, name)["runner"]}
    return row


class LoadSampler:
    """The machine's load average every ``every`` seconds while the run goes (the machine is shared)."""

    def __init__(self, every: float = 5.0) -> None:
        import os

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every, os.getloadavg), daemon=True)

    def _run(self, every: float, read) -> None:  # type: ignore[no-untyped-def]
        while not self._stop.is_set():
            self.samples.append(read()[0])
            self._stop.wait(every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [float("nan")]
        return {"min": min(s), "median": statistics.median(s), "max": max(s), "samples": len(s)}


def summarize(rounds: list[dict[str, dict]], servers: list[str], args: argparse.Namespace) -> dict[str, object]:
    """Median images/s over rounds, percentiles over every round's requests, and the ratios to the peer."""
    summary: dict[str, dict[str, dict]] = {}
    for load in ("uniform", "mixed"):
        summary[load] = {}
        for name in servers:
            runs = [r[name][load] for r in rounds]
            pooled = [(int(s), float(lat)) for run in runs for s, lat in run["latencies"]]
            summary[load][name] = {"images_per_s": statistics.median(run["images_per_s"] for run in runs),
                                   "images_per_s_runs": [run["images_per_s"] for run in runs],
                                   "classes": by_class(pooled)}
    short = str(min(args.mixed_steps))
    uniform, mixed = summary["uniform"], summary["mixed"]
    by_peer: dict[str, dict[str, dict[str, float]]] = {}
    for peer in (p for p in servers if p in PEERS):
        by_peer[peer] = {name: {
            "uniform_images_per_s": uniform[name]["images_per_s"] / uniform[peer]["images_per_s"],
            "mixed_images_per_s": mixed[name]["images_per_s"] / mixed[peer]["images_per_s"],
            "mixed_short_p50_sooner": mixed[peer]["classes"][short]["p50_s"] / mixed[name]["classes"][short]["p50_s"],
        } for name in servers if name not in PEERS}
    # The headline: each measure against the peer configuration that did best on it.
    ratios: dict[str, dict[str, float]] = {}
    for peer_ratios in by_peer.values():
        for name, r in peer_ratios.items():
            ratios[name] = {k: min(v, ratios.get(name, r)[k]) for k, v in r.items()}
    aims = {"uniform_images_per_s": 2.0, "mixed_images_per_s": 3.0, "mixed_short_p50_sooner": 15.0}
    met = {name: {k: r[k] >= v for k, v in aims.items()} for name, r in ratios.items()}
    return {"summary": summary, "ratios": ratios, "ratios_by_peer": by_peer, "aims": aims, "aims_met": met}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED_CHECKPOINT)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--runtime", default="auto", help="DDPM_RUNTIME of `ours` (ours_torch is always torch)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each starts every server once, the order reversed every other round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--uniform-steps", type=int, default=50)
    parser.add_argument("--uniform-requests", type=int, default=4, help="requests per client, uniform load")
    parser.add_argument("--mixed-steps", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--mixed-requests", type=int, default=6, help="requests per client, mixed load")
    parser.add_argument("--max-batch", type=int, default=64, help="images per network call, both servers")
    parser.add_argument("--window-ms", type=float, default=20.0, help="the batching window of `peer`")
    parser.add_argument("--wide-window-ms", type=float, default=100.0,
                        help="the batching window of `peer_wide`: long enough to fill its uniform batches here")
    parser.add_argument("--threads", type=int, default=1, help="torch/ONNX Runtime intra-op threads, both servers")
    parser.add_argument("--log", type=Path, default=Path("/tmp/ddpm-bench-peer.log"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if min(args.rounds, args.clients, args.uniform_requests, args.mixed_requests, args.max_batch) < 1:
        parser.error("--rounds, --clients, --*-requests and --max-batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    import os

    args = parse_args(argv)
    servers = list(dict.fromkeys(args.servers))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "log")}
    results: dict[str, object] = {"machine": machine(), "settings": settings,
                                  "load_average_start": list(os.getloadavg())}
    rounds: list[dict[str, dict]] = []
    orders: list[list[str]] = []
    start_time = time.perf_counter()
    with LoadSampler() as load:
        for i in range(args.rounds):
            order = servers if i % 2 == 0 else list(reversed(servers))
            print(f"round {i + 1}/{args.rounds}: {' -> '.join(order)}", flush=True)
            orders.append(order)
            rounds.append({name: measure(name, args, i) for name in order})
    results["wall_s"] = time.perf_counter() - start_time
    results["load_average_during"] = load.summary()
    results["load_average_end"] = list(os.getloadavg())
    results["orders"] = orders
    results["rounds"] = rounds
    results.update(summarize(rounds, servers, args))
    for name, r in results["ratios"].items():  # type: ignore[attr-defined]
        print(f"{name} / best peer: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print(f"wall {results['wall_s']:.0f} s, load average during: {results['load_average_during']}")
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
