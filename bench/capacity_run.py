"""The capacity model measured, checked against the real server, and used (docs/scaling.md).

    python -m bench.capacity_run --out bench/results/capacity.json     (about 3 minutes here)
    python -m bench.capacity_run targets                                the autoscaling targets

In one run, on this machine:
  1. the engine's iteration time at each batch size, for the embedded model as the server runs it
     (RowBatch.step, the server's threads and dtype), before and after the server runs below;
  2. ``ddpm serve`` at 1, 4, 16 and 32 closed-loop clients (bench.server's loop) beside the
     model's prediction for the same clients from the curve of step 1, and its overhead per
     request (a 1-step request on an idle server, less one iteration);
  3. the cold start: spawn to /readyz, and /v1/model's load and warm-up seconds;
  4. the model used: replicas per arrival rate at a p99 target, the autoscaling targets that the
     k8s overlays carry, p99 against rate (Poisson and bursts), scaling from zero.
For the paper's CIFAR-10 network on a GPU the step-time curve is an assumption (GPU_ASSUMPTION)
until bench/gpu.sh has measured one (pass --gpu-json).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.capacity import (
    EngineLimits,
    StepCurve,
    Target,
    Workload,
    cold_start,
    images_held_target,
    job_lag_target,
    max_rate,
    open_loop,
    replicas_needed,
    saturation_rate,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "capacity.json"
CLIENTS = (1, 4, 16, 32)
# The interactive mix the targets are sized for: mostly 50-step DDIM single images, some fast
# 20-step DPM-Solver++ previews, a few 200-step grids of up to 16 images.
INTERACTIVE = Workload(steps=((20, 0.3), (50, 0.6), (200, 0.1)), images=((1, 0.6), (4, 0.3), (16, 0.1)))
# Jobs (the Redis queue): 16-image, 250-step batches; the wait for a job an operator accepts.
JOBS = Workload(steps=((250, 1.0),), images=((16, 1.0),))
JOB_WAIT_S = 600.0
# The paper's CIFAR-10 network (12.1 GFLOP per image per call: torch's FlopCounterMode on
# model.UNetConfig()) on one H100-class GPU in bf16, compiled: ASSUMED 250 TFLOP/s sustained
# (a quarter of the dense bf16 peak) and 3 ms of engine and launch overhead per iteration.
GPU_ASSUMPTION = {"gflop_per_image": 12.1, "tflops": 250.0, "overhead_s": 0.003, "max_batch": 256,
                  "cold_start_s": 180.0, "request_overhead_s": 0.005}
TARGETS_P99_S = {"cpu": 15.0, "gpu": 5.0}


class CurveMeter:
    """Seconds of RowBatch.step at each batch size, for the embedded model as the server runs it
    (its dtype and threads), rows kept at ``b`` (finished ones replaced), the sizes interleaved so
    that the machine's drift spreads over all of them."""

    def __init__(self, batches: list[int], steps: int = 50) -> None:
        from model import load_checkpoint
        from model.device import configure_threads
        from model.pipeline import EMBEDDED_CHECKPOINT

        self.model = load_checkpoint(EMBEDDED_CHECKPOINT, device="cpu", dtype="auto")  # the server's defaults
        configure_threads(None, self.model.gflops_per_image)
        self.plan = self.model.plan("ddim", steps)
        self.batches = {b: self.model.row_batch(b, max_steps=steps) for b in batches}
        self.seed = 0
        self.measure(2)  # warm-up

    def measure(self, rounds: int) -> dict[int, list[float]]:
        import torch

        from model import RowSpec

        out: dict[int, list[float]] = {b: [] for b in self.batches}
        with torch.inference_mode():
            for _ in range(rounds):
                for b, rows in self.batches.items():
                    while rows.free:
                        self.seed += 1
                        rows.add(RowSpec(plan=self.plan, seed=self.seed))
                    start = time.perf_counter()
                    rows.step()
                    out[b].append(time.perf_counter() - start)
        return out


def curve_of(*measured: dict[int, list[float]], source: str) -> StepCurve:
    batches = sorted(measured[0])
    return StepCurve(tuple(batches), tuple(tuple(t for m in measured for t in m[b]) for b in batches), source)


def engine_counters(url: str) -> dict[str, float]:
    """The server's own step-time and batch-size sums and counts (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"ddpm_step_duration_seconds_sum", "ddpm_step_duration_seconds_count", "ddpm_batch_size_sum"}
    return {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
            for s in f.samples if s.name in wanted}


def measure_server(meter: CurveMeter, rounds: int, requests_total: int, log: Path, chunks: int = 4) -> dict[str, Any]:
    """The real server at each client count, its requests in ``chunks`` with the curve measured
    between them (the model predicts each client count from the curve measured among its runs:
    this shared machine's speed drifts by tens of per cent within minutes); the server's own mean
    step time and batch over the same requests; and the overhead of one request outside the engine."""
    from bench.server import closed_loop, percentiles, server
    from model.pipeline import EMBEDDED_CHECKPOINT

    body = {"n": 1, "steps": 50, "sampler": "ddim"}
    out: dict[str, Any] = {"body": body, "sweep": []}
    with server(EMBEDDED_CHECKPOINT, log, max_batch=64) as url, httpx.Client(base_url=url, timeout=60) as c:
        one = []
        for i in range(20):
            start = time.perf_counter()
            assert c.post("/generate", json={"n": 1, "steps": 1, "sampler": "ddim", "seed": i}).status_code == 200
            one.append(time.perf_counter() - start)
        curve = curve_of(meter.measure(rounds), source="around the overhead")
        out["overhead_s"] = max(0.0, statistics.median(one[5:]) - curve.seconds(1))
        for clients in CLIENTS:
            each = max(1, requests_total // clients // chunks)
            curves, latencies, rates = [meter.measure(rounds)], [], []
            counters = engine_counters(url)
            for _ in range(chunks):
                ips, lat = asyncio.run(closed_loop(url, clients, each, body))
                rates.append(ips)
                latencies += lat
                curves.append(meter.measure(rounds))
            done = {k: v - counters[k] for k, v in engine_counters(url).items()}
            calls = done["ddpm_step_duration_seconds_count"]
            out["sweep"].append({
                "clients": clients, "requests_each": each, "chunks": chunks, "images_per_s": statistics.mean(rates),
                **percentiles(latencies), "curve": curve_json(curve_of(*curves, source=f"among {clients} clients")),
                "server_step_s": done["ddpm_step_duration_seconds_sum"] / calls,
                "server_mean_batch": done["ddpm_batch_size_sum"] / calls})
            print(f"  server, {clients} clients: {statistics.mean(rates):.1f} images/s, "
                  f"p50 {out['sweep'][-1]['p50']:.3f} s", flush=True)
    return out


def measure_cold_start(log: Path, repeats: int = 2) -> dict[str, Any]:
    """Seconds from spawning ``ddpm serve`` to /readyz 200, and the server's own load/warm-up split."""
    from bench.server import free_port

    runs = []
    for _ in range(repeats):
        port = free_port()
        start = time.perf_counter()
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - start > 300:
                    raise TimeoutError("server not ready in 300 s")
                time.sleep(0.05)
            ready = time.perf_counter() - start
            runner = httpx.get(f"{url}/v1/model", timeout=10).json()["runner"]
            runs.append({"ready_s": ready, "load_s": runner["load_seconds"], "warmup_s": runner["warmup_seconds"]})
        finally:
            proc.terminate()
            proc.wait(60)
    return {"runs": runs, "ready_s": statistics.median(r["ready_s"] for r in runs)}


def gpu_curve(gpu_json: Path | None) -> StepCurve:
    """bench/gpu.sh's measured bf16-compiled ms per call when given, else GPU_ASSUMPTION."""
    if gpu_json is not None:
        rows = [r for r in json.loads(gpu_json.read_text())["network"] if "batch" in r]
        return StepCurve.from_medians({r["batch"]: r["bf16_compiled"]["ms"] / 1e3 + GPU_ASSUMPTION["overhead_s"]
                                       for r in rows}, source=f"measured: {gpu_json}")
    a = GPU_ASSUMPTION
    return StepCurve.from_medians({b: a["overhead_s"] + b * a["gflop_per_image"] / (a["tflops"] * 1e3)
                                   for b in (1, 8, 32, 64, 128, 256)}, source="assumed: GPU_ASSUMPTION")


def curve_json(curve: StepCurve) -> dict[str, Any]:
    return {"batches": list(curve.batches), "samples": [list(s) for s in curve.samples], "source": curve.source}


def curve_from_json(d: dict[str, Any]) -> StepCurve:
    return StepCurve(tuple(d["batches"]), tuple(tuple(s) for s in d["samples"]), d.get("source", ""))


def hardware(results: dict[str, Any], kind: str) -> tuple[StepCurve, Workload, Workload, EngineLimits, Target]:
    """The model's inputs for ``kind`` (cpu: measured here; gpu: bench/gpu.sh or the assumption)."""
    h = results["hardware"][kind]
    curve = curve_from_json(h["curve"])
    interactive = dataclasses.replace(INTERACTIVE, overhead_s=h["request_overhead_s"])
    return curve, interactive, JOBS, EngineLimits(max_batch=h["max_batch"]), Target(p99_s=h["p99_s"])


def targets(results: dict[str, Any], kind: str) -> dict[str, Any]:
    """What the k8s overlays carry for ``kind``: a pure function of the recorded curve (seeded)."""
    curve, interactive, jobs, limits, target = hardware(results, kind)
    return {"images_held": images_held_target(curve, interactive, limits, target),
            "job_lag": job_lag_target(curve, jobs, limits, JOB_WAIT_S)}


def use(results: dict[str, Any], kind: str) -> dict[str, Any]:
    curve, interactive, _, limits, target = hardware(results, kind)
    per_replica = max_rate(curve, interactive, limits, target)
    out: dict[str, Any] = {"saturation_rate": saturation_rate(curve, interactive, limits),
                           "max_rate_per_replica": per_replica, **targets(results, kind)}
    rates = [per_replica * k for k in (0.5, 1, 2, 4, 8, 16)]
    out["replicas"] = [{"rate": r, "replicas": replicas_needed(curve, interactive, limits, target, r)} for r in rates]
    sat = out["saturation_rate"]
    out["p99_vs_rate"] = [{"rate": f * sat, **{f"burst{b}": open_loop(curve, interactive, limits, f * sat, burst=b)
                                                .percentile(99) for b in (1, 8)}}
                          for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    cold = results["hardware"][kind]["cold_start_s"]
    out["cold_start"] = []
    for c in sorted({0.0, 5.0, 15.0, 30.0, 60.0, 120.0, round(cold, 1)}):
        r = cold_start(curve, interactive, limits, 0.5 * per_replica, c)
        out["cold_start"].append({"cold_start_s": c, "p50": r.percentile(50), "p99": r.percentile(99),
                                  "rejected": r.rejected, "requests": len(r.latencies) + r.rejected + r.timed_out})
    return out


def validate(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's prediction for each client count beside the measurement: from the curve
    measured among the server's runs ("model"), and, to tell the queueing model's error from the
    machine's drift, from that curve rescaled to the step time the server itself reported at its
    mean batch over the same requests ("model_at_server_speed")."""
    from bench.capacity import Simulation

    rows = []
    workload = Workload(overhead_s=measured["overhead_s"])
    keys = ("images_per_s", "p50", "p99")
    for m in measured["sweep"]:
        curve = curve_from_json(m["curve"])
        speed = m["server_step_s"] / curve.seconds(round(m["server_mean_batch"]))
        scaled = StepCurve(curve.batches, tuple(tuple(t * speed for t in s) for s in curve.samples), "rescaled")
        row: dict[str, Any] = {"clients": m["clients"], "measured": {k: m[k] for k in keys},
                               "server_speed_vs_curve": speed}
        for name, c in (("model", curve), ("model_at_server_speed", scaled)):
            sim = Simulation(c, workload, EngineLimits(max_batch=64), seed=m["clients"]).closed_loop(
                m["clients"], m["requests_each"] * m["chunks"]).summary()
            row[name] = {k: sim[k] for k in keys}
            row[f"{name}_ratio"] = {k: sim[k] / m[k] for k in keys}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "targets"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS, help="for `targets`: the recorded run")
    parser.add_argument("--gpu-json", type=Path, default=None, help="bench/gpu.sh's gpu.json")
    parser.add_argument("--rounds", type=int, default=10, help="curve samples per batch size between runs")
    parser.add_argument("--requests", type=int, default=128, help="requests per client count")
    parser.add_argument("--log", type=Path, default=Path("/tmp/ddpm-bench-capacity.log"))
    args = parser.parse_args()
    if args.command == "targets":
        recorded = json.loads(args.results.read_text())
        print(json.dumps({kind: targets(recorded, kind) for kind in recorded["hardware"]}, indent=2))
        return
    from bench.common import machine, write_json

    meter = CurveMeter([1, 2, 4, 8, 16, 24, 32, 48, 64])
    server = measure_server(meter, args.rounds, args.requests, args.log)
    curve = curve_of(*(curve_from_json(m["curve"]).samples_by_batch() for m in server["sweep"]),
                     source="measured: this run")
    cold = measure_cold_start(args.log)
    print(f"cold start: {cold}", flush=True)
    results: dict[str, Any] = {
        "machine": machine(), "command": "python -m bench.capacity_run --out bench/results/capacity.json",
        "interactive": dataclasses.asdict(INTERACTIVE), "jobs": dataclasses.asdict(JOBS),
        "job_wait_s": JOB_WAIT_S, "gpu_assumption": GPU_ASSUMPTION,
        "server": server, "cold_start": cold,
        "validation": validate(server),
        "hardware": {
            "cpu": {"curve": curve_json(curve), "max_batch": 64, "p99_s": TARGETS_P99_S["cpu"],
                    "request_overhead_s": server["overhead_s"], "cold_start_s": cold["ready_s"]},
            "gpu": {"curve": curve_json(gpu_curve(args.gpu_json)), "max_batch": GPU_ASSUMPTION["max_batch"],
                    "p99_s": TARGETS_P99_S["gpu"], "request_overhead_s": GPU_ASSUMPTION["request_overhead_s"],
                    "cold_start_s": GPU_ASSUMPTION["cold_start_s"]},
        },
    }
    for row in results["validation"]:
        print(f"  {row['clients']:2d} clients: model/measured " +
              " ".join(f"{k} {v:.2f}" for k, v in row["model_ratio"].items()) + "; at the server's speed " +
              " ".join(f"{k} {v:.2f}" for k, v in row["model_at_server_speed_ratio"].items()), flush=True)
    results["use"] = {kind: use(results, kind) for kind in ("cpu", "gpu")}
    print(json.dumps({k: {kk: v[kk] for kk in ("max_rate_per_replica", "images_held", "job_lag")}
                      for k, v in results["use"].items()}, indent=2))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
