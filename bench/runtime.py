"""PyTorch eager against ONNX Runtime and OpenVINO on the same network, side by side in one run.

    python -m bench.runtime --out bench/results/runtime.json                 # all sections
    python -m bench.runtime --sections network --out ...                     # one section

Sections (every candidate timed in alternation with the others, medians and ratios to torch):
  network  the embedded digits network per call at batch 1, 16, 64: torch eager (the served
           default: fp32, channels_last, one thread) against ONNX Runtime (the default session,
           and its variants: I/O binding instead of numpy views, two threads with and without
           spinning) and OpenVINO, on an idle machine and beside a busy neighbour process;
  cifar    the paper's CIFAR-10 network at batch 1, 8, 32 (all CPUs): today's best eager torch
           path (bf16 channels_last) and fp32 channels_last, against ONNX Runtime fp32 and
           OpenVINO in f32 and bf16;
  cifar-server  the CIFAR-10 network served in bf16 by PyTorch and by OpenVINO (bench/runtime_server.py);
  server   the embedded model served with each runtime (bench/runtime_server.py), rounds
           alternating the runtimes: idle latency, images/s at 16 clients, one-at-a-time
           images/s, the offline sampler, a short request during a long one.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import machine, median, neighbour, write_json
from model import UNet, UNetConfig, load_checkpoint
from model.runtimes.export import export_onnx, onnx_bytes
from model.runtimes.ort_runner import OnnxRuntimeDenoiser
from model.runtimes.ov_runner import OpenVINODenoiser


def ort_bound(den: OnnxRuntimeDenoiser) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]:
    """I/O binding on the CPU: inputs by pointer, the output written into a torch tensor: the
    alternative to the runner's numpy-view session.run path, timed to choose between them."""
    import numpy as np

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> object:
        binding = den.session.io_binding()
        for name, tensor, dt in (("x", x, np.float32), ("t", t, np.int64), ("labels", y, np.int64)):
            binding.bind_input(name, "cpu", 0, dt, tuple(tensor.shape), tensor.data_ptr())
        out = torch.empty_like(x)
        binding.bind_output("out", "cpu", 0, np.float32, tuple(out.shape), out.data_ptr())
        den.session.run_with_iobinding(binding)
        return out
    return call


# Two groups, each interleaved within itself: spinning session threads keep a core busy after
# their own call and would slow whichever candidate runs next, so they are never timed beside
# the main comparison.
GROUPS = {"runtimes": ("torch", "onnxruntime", "ort_io_binding", "openvino"),
          "threads": ("torch", "onnxruntime", "ort_2threads", "ort_2threads_spin")}


def network(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)  # configure_threads' choice for this network
    model = load_checkpoint(None, device="cpu")
    data = onnx_bytes(model.unet, model.config)
    null = model.unet.null_label
    ort1 = OnnxRuntimeDenoiser(data, null_label=null, threads=1, spinning=False)
    runners: dict[str, Callable[..., object]] = {
        "torch": model.denoiser,
        "onnxruntime": ort1,
        "ort_io_binding": ort_bound(ort1),
        "openvino": OpenVINODenoiser(data, null_label=null, threads=1),
        "ort_2threads": OnnxRuntimeDenoiser(data, null_label=null, threads=2, spinning=False),
        "ort_2threads_spin": OnnxRuntimeDenoiser(data, null_label=null, threads=2, spinning=True),
    }
    rows = []
    for group, names in GROUPS.items():
        for busy in (False, True):
            with neighbour(busy):
                for b in args.batches:
                    g = torch.Generator().manual_seed(b)
                    x = torch.randn(b, 1, 8, 8, generator=g)
                    t, y = torch.randint(0, 1000, (b,), generator=g), torch.arange(b) % 11
                    calls = {k: (lambda r=runners[k], x=x, t=t, y=y: r(x, t, y)) for k in names}
                    times = shuffled(calls, repeats=args.repeats if b < 64 else max(5, args.repeats // 3))
                    row = ratios({k: median(v) for k, v in times.items()}, "torch")
                    rows.append({"group": group, "batch": b, "busy_neighbour": busy, **row})
                    print_row(f"{group} batch {b}{' busy' if busy else ''}", row)
    return rows


def shuffled(candidates: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 2,
             seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each candidate, in a fresh random order every round.

    ``bench.common.interleaved`` keeps one order, and on this crowded machine the call right
    after a long one pays for the time slice that one used up (measured: the same session,
    timed right after torch, ran 10x slower than when timed third); a random order spreads
    that cost over every candidate alike.
    """
    rng = random.Random(seed)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratios(ms: dict[str, float], base: str) -> dict[str, dict[str, float]]:
    return {k: {"ms": v * 1e3, "speedup": ms[base] / v} for k, v in ms.items()}


def print_row(label: str, row: dict[str, dict[str, float]]) -> None:
    print(f"{label}: " + "  ".join(f"{k} {v['ms']:.2f} ms ({v['speedup']:.2f}x)" for k, v in row.items()), flush=True)


def paper_unet() -> UNet:
    """The paper's CIFAR-10 network with every weight random, so every path does work."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(dropout=0.0)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02)
    return unet


def cifar(args: argparse.Namespace) -> list[dict]:
    from model import ModelConfig
    from model.device import available_cpus
    from model.runner import Denoiser

    threads = available_cpus()
    torch.set_num_threads(threads)
    unet = paper_unet()
    config = ModelConfig(name="paper-cifar10-random", unet=unet.config)
    start = time.perf_counter()
    data = export_onnx(unet, config)
    print(f"exported the CIFAR-10 network in {time.perf_counter() - start:.0f} s", flush=True)
    twin = UNet(unet.config).eval()
    twin.load_state_dict(unet.state_dict())
    runners: dict[str, Callable[..., torch.Tensor]] = {
        "torch_bf16_cl": Denoiser(unet, dtype=torch.bfloat16, channels_last=True),
        "torch_fp32_cl": Denoiser(twin, dtype=torch.float32, channels_last=True),
        "onnxruntime": OnnxRuntimeDenoiser(data, null_label=None, threads=threads, spinning=False),
        "openvino_f32": OpenVINODenoiser(data, null_label=None, threads=threads),
        "openvino_bf16": OpenVINODenoiser(data, null_label=None, threads=threads, precision="bf16"),
    }
    rows = []
    for b in args.cifar_batches:
        g = torch.Generator().manual_seed(b)
        x, t = torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 1000, (b,), generator=g)
        ref = runners["torch_fp32_cl"](x, t)
        diff = {k: float((r(x, t) - ref).abs().max()) for k, r in runners.items()}
        times = shuffled({k: (lambda r=r, x=x, t=t: r(x, t)) for k, r in runners.items()},
                         repeats=args.cifar_repeats, warmup=1)
        row = ratios({k: median(v) / b for k, v in times.items()}, "torch_bf16_cl")  # per image
        rows.append({"batch": b, "threads": threads, "max_abs_diff_vs_fp32": diff, **row})
        print_row(f"CIFAR-10 batch {b} (ms/image)", row)
    return rows


def server(args: argparse.Namespace) -> dict:
    from bench.runtime_server import measure

    log = Path("/tmp/ddpm-bench-runtime-server.log")
    rounds: dict[str, list[dict[str, float]]] = {r: [] for r in args.runtimes}
    for i in range(args.server_rounds):
        for runtime in args.runtimes if i % 2 == 0 else reversed(args.runtimes):
            rounds[runtime].append(measure(runtime, args, log))
            print(f"server round {i} {runtime}: {rounds[runtime][-1]}", flush=True)
    summary = {r: {k: statistics.median(row[k] for row in rs) for k in rs[0]} for r, rs in rounds.items()}
    for r, s in summary.items():
        s["server_vs_offline"] = s["images_per_s"] / s["offline_images_per_s"]
        s["server_vs_one_at_a_time"] = s["images_per_s"] / s["one_at_a_time_images_per_s"]
        s["idle_vs_bare"] = s["idle_s"] / s["bare_s"]
        print(f"server {r}: {s}", flush=True)
    return {"rounds": rounds, "median": summary}


def cifar_server(args: argparse.Namespace) -> dict:
    from bench.runtime_server import cifar_served

    return {"rounds": cifar_served(args, Path("/tmp/ddpm-bench-runtime-server.log"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["network", "cifar", "server"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cifar-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--cifar-repeats", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--server-rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--requests-each", type=int, default=6)
    parser.add_argument("--cifar-clients", type=int, default=8)
    parser.add_argument("--cifar-steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    results: dict[str, object] = {"machine": machine(), "args": vars(args)}
    for section in args.sections:
        results[section] = {"network": network, "cifar": cifar, "server": server,
                            "cifar-server": cifar_server}[section](args)
        write_json(args.out, results)  # after each section, so a long run keeps what it has


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
