"""Timing helpers shared by the benchmarks: interleaved, repeated, reported as medians.

These machines are shared and noisy, so candidates are timed in alternation (A B A B ...)
within one run and compared by ratio of medians, never against numbers from another run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

Timed = Callable[[], object]


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Timed], *, repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each candidate, alternating between them ``repeats`` times."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=False).stdout.strip()
    return info


def write_json(path: str | None, data: object) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))


@contextlib.contextmanager
def neighbour(busy: bool) -> Iterator[None]:
    """A process holding one core, as another container or replica would (bench/omp.py)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
