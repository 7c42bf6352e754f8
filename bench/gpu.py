"""The GPU benchmark behind bench/gpu.sh: one table, in under eight minutes.

  - the paper's CIFAR-10 network (35.7M parameters) at batch 1..256 in fp32, bf16 and bf16
    compiled: ms per network call, images/s of network calls, TFLOP/s and the share of the
    chip's measured dense bf16 matmul throughput; and, in the same alternation, the network
    exported to ONNX and run by ONNX Runtime's CUDA provider (fp32 graph; ORT's default lets
    its convolutions use TF32), when onnxruntime-gpu, onnx and onnxscript are importable;
  - images/s of 50-step DDIM through the sampler (RowBatch), bf16 compiled, batch 256;
  - server images/s at 64 concurrent clients (`ddpm serve` with bf16 and compile), when the
    server's dependencies are importable.

    python -m bench.gpu [--smoke]      (--smoke: a tiny network on whatever device, to check the script)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved, machine, median, write_json
from model import ModelConfig, UNet, UNetConfig, resolve_device
from model.pipeline import DiffusionModel


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured dense matmul TFLOP/s: the chip's practical ceiling for this dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t = median(interleaved({"mm": lambda: a @ b}, repeats=10, warmup=3, device=device)["mm"])
    return 2 * size**3 / t / 1e12


def network_table(config: UNetConfig, device: torch.device, batches: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    fp32 = UNet(config).to(device).eval()
    bf16 = UNet(config).to(device).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # One compiled graph with a symbolic batch serves every size in the table (a per-size compile
    # would not fit the time budget); the server compiles one static graph per bucket instead.
    compiled = torch.compile(bf16, dynamic=True)
    onnx_runner = onnxruntime_runner(fp32, config, device)
    rows = []
    peak = matmul_peak(device, torch.bfloat16, 8192 if device.type == "cuda" else 512)
    s = config.image_size
    for b in batches:
        x = torch.randn(b, config.in_channels, s, s, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            fp32(x, t)
        flops = counter.get_total_flops()
        candidates = {"fp32": lambda x=x, t=t: fp32(x, t), "bf16": lambda xb=xb, t=t: bf16(xb, t),
                      "bf16_compiled": lambda xb=xb, t=t: compiled(xb, t)}
        if not isinstance(onnx_runner, str):
            candidates["onnxruntime_fp32"] = lambda x=x, t=t: onnx_runner(x, t)
        with torch.inference_mode():
            times = interleaved(candidates, repeats=repeats, warmup=2, device=device)
        row: dict[str, object] = {"batch": b, "gflop_per_call": flops / 1e9}
        if isinstance(onnx_runner, str):
            row["onnxruntime_fp32"] = onnx_runner
        for name, values in times.items():
            sec = median(values)
            row[name] = {"ms": sec * 1e3, "images_per_s": b / sec, "tflops": flops / sec / 1e12,
                         "share_of_bf16_matmul_peak": flops / sec / 1e12 / peak}
        rows.append(row)
        if isinstance(onnx_runner, str) and b == batches[0]:
            print(f"onnxruntime_fp32: {onnx_runner}", flush=True)
        print(f"batch {b:4d}: " + "  ".join(
            f"{k} {v['ms']:.2f} ms {v['images_per_s']:.0f} img/s {v['tflops']:.1f} TFLOP/s "
            f"({v['share_of_bf16_matmul_peak']:.0%})" for k, v in row.items() if isinstance(v, dict)), flush=True)
    return [{"bf16_matmul_peak_tflops": peak}, *rows]


def onnxruntime_runner(net: UNet, config: UNetConfig, device: torch.device) -> Callable[..., torch.Tensor] | str:
    """The network exported to ONNX on ONNX Runtime's CUDA provider (on a CPU in --smoke), or why not."""
    try:
        import onnxruntime as ort

        from model.runtimes.export import export_onnx
        from model.runtimes.ort_runner import OnnxRuntimeDenoiser
    except ImportError as exc:
        return f"skipped: {exc}"
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"skipped: onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    try:
        start = time.perf_counter()
        data = export_onnx(net, ModelConfig(unet=config))
        runner = OnnxRuntimeDenoiser(data, null_label=None, device=device)
        print(f"ONNX export and {runner.session.get_providers()[0]} session: "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        return runner
    except Exception as exc:  # a GPU run must still print the PyTorch table
        return f"skipped: {type(exc).__name__}: {exc}"


def sampler_images_per_s(config: UNetConfig, device: torch.device, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = DiffusionModel(ModelConfig(unet=config), UNet(config), device=device, dtype=torch.bfloat16,
                           channels_last=True, compile=True, buckets=[batch])
    model.denoiser.warm_up((config.in_channels, config.image_size, config.image_size), conditional=False)
    model.sample(batch, steps=2, sampler="ddim", batch_size=batch)
    start = time.perf_counter()
    model.sample(batch, steps=steps, sampler="ddim", seed=1, batch_size=batch)
    return batch / (time.perf_counter() - start)


def server_images_per_s(checkpoint: str, clients: int, steps: int) -> float | str:
    try:
        from bench.server import closed_loop, server
    except ImportError as exc:  # fastapi/uvicorn/httpx not installed on this machine
        return f"skipped: {exc}"
    import tempfile
    from pathlib import Path

    log = Path(tempfile.gettempdir()) / "ddpm-gpu-server.log"
    with server(Path(checkpoint), log, dtype="bfloat16", compile="true", max_batch=clients) as url:
        ips, _ = asyncio.run(closed_loop(url, clients, 4, {"n": 1, "steps": steps, "sampler": "ddim"}))
    return ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny network, tiny batches: checks the script runs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device("auto")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("bench.gpu needs CUDA (use --smoke to check the script elsewhere)")
    if args.smoke:
        config = UNetConfig(image_size=8, base_channels=32, channel_mult=(1, 2), attention_resolutions=(4,))
        batches, repeats, sampler_batch, clients = [1, 2], 2, 2, 2
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
        config = UNetConfig()  # the paper's CIFAR-10 network
        batches, repeats, sampler_batch, clients = [1, 2, 4, 8, 16, 32, 64, 128, 256], 10, 256, 64
    print(f"machine: {machine()}", flush=True)
    results: dict[str, object] = {"machine": machine(), "network": network_table(config, device, batches, repeats)}
    ddim = sampler_images_per_s(config, device, sampler_batch, 50)
    results["ddim50_images_per_s"] = ddim
    print(f"50-step DDIM, bf16 compiled, batch {sampler_batch}: {ddim:.1f} images/s", flush=True)
    ckpt = "/tmp/ddpm-gpu-bench.safetensors"
    from model import save_checkpoint

    save_checkpoint(ckpt, UNet(config), ModelConfig(name="paper-cifar10-random", unet=config))
    served = server_images_per_s(ckpt, clients, 50)
    results["server_images_per_s"] = served
    print(f"server, {clients} clients, 50-step DDIM: {served if isinstance(served, str) else f'{served:.1f}'} images/s")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
