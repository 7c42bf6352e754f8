"""Where and how the network runs: device, precision and CPU threads, chosen automatically."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_CHOICES: tuple[str, ...] = get_args(DtypeName)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device that this machine does not have; the message names it and what there is."""


def resolve_device(device: str | torch.device = "auto", setting: str = "device") -> torch.device:
    """"auto" is CUDA when there is one, else the CPU. A device torch cannot parse, or one this
    host lacks, is a DeviceError naming ``setting`` (e.g. "--device", "DDPM_DEVICE"), raised
    before anything is built on it."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{setting}={name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{setting}={name!r}: this host has no CUDA device (use cpu or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"{setting}={name!r}: this host has {count} CUDA device(s)")
    elif resolved.type != "cpu":
        raise DeviceError(f"{setting}={name!r}: only cpu and cuda devices are supported")
    return resolved


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX), so bf16 is faster, not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Below this much work per image a CPU forward pass is bound by the fixed cost of each of its
# few hundred operators, not by arithmetic, so bf16 only adds conversions and a second thread
# only adds wake-ups. docs/benchmarks.md ("The embedded network: precision and threads") has
# the measurements behind both rules, for the digits network and the paper's CIFAR-10 one.
SMALL_NETWORK_GFLOPS = 1.0


def resolve_dtype(name: str | torch.dtype, device: torch.device, gflops_per_image: float | None = None) -> torch.dtype:
    """"auto": bf16 on a GPU that has it, else fp16; on a CPU, bf16 where it runs natively and the
    network does enough work per image (``gflops_per_image``) to gain from it, else fp32.

    The quality table in docs/benchmarks.md is what licenses bf16 as a default.
    """
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() and not is_small(gflops_per_image) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def is_small(gflops_per_image: float | None) -> bool:
    """Whether a network is overhead-bound on a CPU (unknown: assume not)."""
    return gflops_per_image is not None and gflops_per_image < SMALL_NETWORK_GFLOPS


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

    torch's default is every core the machine has; in a container limited to 2 CPUs on a
    64-core host that oversubscribes the quota and every parallel region waits on throttled
    threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup may use per period (e.g. 1.5), or None when unlimited."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period_us
    except (OSError, ValueError):
        return None


def configure_threads(threads: int | None = None, gflops_per_image: float | None = None) -> int:
    """Set torch's intra-op threads; returns the number set.

    Default: one thread for a small network (``is_small``), else ``available_cpus()``. Threads
    that start later (the server's engine) take this number on their first parallel operator.
    """
    n = threads or (1 if is_small(gflops_per_image) else available_cpus())
    torch.set_num_threads(n)
    return n


def rows_that_fit(forward: Callable[[int], object], device: torch.device, *, probe_rows: int = 8,
                  headroom: float = 0.25, limit: int = 1024) -> int:
    """How many rows one network call can take in the GPU memory that is free now.

    Inference activations grow linearly with the batch, so one call at ``probe_rows`` rows
    gives the cost of a row; ``headroom`` of the free memory is left for the allocator's
    fragmentation and for other processes.
    """
    if device.type != "cuda":
        raise ValueError("rows_that_fit measures GPU memory; on a CPU set the batch size")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward(probe_rows)
    torch.cuda.synchronize(device)
    per_row = max((torch.cuda.max_memory_allocated(device) - base) / probe_rows, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(limit, free * (1.0 - headroom) // per_row)))
