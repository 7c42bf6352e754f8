"""The paper's CIFAR-10 U-Net (35.7M parameters): ours against diffusers' UNet2DModel.

Same weights (diffusers' random init, converted with ``model.convert``), same inputs, same
batch, timed in alternation in one process. Reports ms per image per network call, GFLOP/s
(counted with torch.utils.flop_counter), and the share of this machine's measured 3x3
convolution throughput at the same batch and precision.

    python -m bench.unet --batches 1 8 32 --repeats 5 [--compile] --out bench/results/unet.json
    python -m bench.unet --embedded --threads 1 --out bench/results/unet-digits-1thread.json

--compile adds torch.compile columns (one graph per batch, built before timing; minutes).
--embedded times the embedded digits network instead, in each precision and memory format:
the measurement behind the CPU defaults of model/device.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved, machine, median, write_json
from model.config import UNetConfig
from model.convert import PAPER_CIFAR10_LAYOUT, convert_state_dict, unet_config_from_diffusers
from model.unet import UNet


def build_pair() -> tuple[torch.nn.Module, UNet]:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(**PAPER_CIFAR10_LAYOUT).eval()
    config: UNetConfig = unet_config_from_diffusers(dict(ref.config))
    ours = UNet(config).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict()))
    return ref, ours


def conv_throughput(batch: int, dtype: torch.dtype, channels_last: bool) -> float:
    """Best GFLOP/s of a plain 3x3 convolution over the network's three widths/resolutions."""
    best = 0.0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for ch, size in ((128, 32), (256, 16), (256, 8)):
        x = torch.randn(batch, ch, size, size).to(dtype).contiguous(memory_format=fmt)
        w = torch.randn(ch, ch, 3, 3).to(dtype).contiguous(memory_format=fmt)
        with torch.inference_mode():
            t = median(interleaved({"c": lambda x=x, w=w: F.conv2d(x, w, padding=1)}, repeats=7, warmup=2)["c"])
        flops = 2 * batch * ch * ch * 9 * size * size
        best = max(best, flops / t / 1e9)
    return best


def count_flops(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x, t)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 columns")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="add torch.compile columns")
    parser.add_argument("--embedded", action="store_true", help="time the embedded digits network instead")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.embedded:
        embedded(args)
        return
    ref, ours = build_pair()
    ours_cl = UNet(ours.config).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    bf16 = not args.no_bf16
    if bf16:
        # A copy: Module.to(memory_format=...) works in place, and the fp32 column must stay contiguous.
        ref_cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        ours_bf = UNet(ours.config).eval()
        ours_bf.load_state_dict(ours.state_dict())
        ours_bf.to(torch.bfloat16)
        ours_bf_cl = UNet(ours.config).eval()
        ours_bf_cl.load_state_dict(ours.state_dict())
        ours_bf_cl.to(torch.bfloat16).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    rows = []
    print(f"machine: {machine()}")
    for b in args.batches:
        x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b))
        t = torch.randint(0, 1000, (b,), generator=torch.Generator().manual_seed(b + 1))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        x_bf = x.to(torch.bfloat16)
        x_bf_cl = x_cl.to(torch.bfloat16)

        def call(net: torch.nn.Module, inp: torch.Tensor, diffusers: bool = False, autocast: bool = False,
                 t: torch.Tensor = t) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    return net(inp, t).sample if diffusers else net(inp, t)
            return run

        candidates: dict[str, Callable[[], object]] = {
            "diffusers_fp32": call(ref, x, diffusers=True),
            "ours_fp32": call(ours, x),
            "ours_fp32_cl": call(ours_cl, x_cl),
        }
        if bf16:
            # diffusers in autocast: how one runs it in bf16 without converting its weights
            candidates["diffusers_bf16_autocast_cl"] = call(ref_cl, x_cl, diffusers=True, autocast=True)
            candidates["ours_bf16"] = call(ours_bf, x_bf)  # contiguous: does channels_last pay in bf16?
            candidates["ours_bf16_cl"] = call(ours_bf_cl, x_bf_cl)
        if args.compile:
            import torch._inductor.config as inductor

            inductor.freezing = True  # as model.runner compiles: weights pre-packed once
            candidates["ours_fp32_cl_compiled"] = call(torch.compile(ours_cl, dynamic=False), x_cl)
            if bf16:
                candidates["ours_bf16_cl_compiled"] = call(torch.compile(ours_bf_cl, dynamic=False), x_bf_cl)
        times = {k: median(v) for k, v in interleaved(candidates, repeats=args.repeats).items()}
        flops = count_flops(ours, x, t)
        assert abs(count_flops(ref, x, t) - flops) / flops < 0.01, "the two networks should do the same work"
        peak32 = conv_throughput(b, torch.float32, channels_last=True)
        peak16 = conv_throughput(b, torch.bfloat16, channels_last=True) if bf16 else 0.0
        row: dict[str, object] = {"batch": b, "gflop_per_image": flops / b / 1e9,
                                  "conv3x3_gflops_fp32": peak32, "conv3x3_gflops_bf16": peak16}
        for name, sec in times.items():
            gflops = flops / sec / 1e9
            peak = peak16 if "bf16" in name else peak32
            row[name] = {"ms_per_image": sec / b * 1e3, "gflops": gflops, "share_of_conv": gflops / peak,
                         "speedup_vs_diffusers_fp32": times["diffusers_fp32"] / sec}
        rows.append(row)
        print_row(row)
    write_json(args.out, {"machine": machine(), "rows": rows})


def embedded(args: argparse.Namespace) -> None:
    """The embedded digits network in fp32/bf16, contiguous/channels_last, at growing batches."""
    from model import load_checkpoint
    from model.runner import gflops_per_image

    variants = {f"{d}{'_cl' if cl else ''}": load_checkpoint(None, device="cpu", dtype=d, channels_last=cl)
                for d in ("float32", "bfloat16") for cl in (False, True)}
    gflops = gflops_per_image(variants["float32"].unet)
    print(f"machine: {machine()}\nembedded digits network: {gflops:.3f} GFLOP/image")
    print("| batch | " + " | ".join(f"{k} ms" for k in variants) + " |")
    print("| ---: |" + " ---: |" * len(variants))
    rows = []
    for b in args.batches:
        g = torch.Generator().manual_seed(b)
        x, t, y = torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g), torch.arange(b) % 10
        times = interleaved({k: (lambda m=m, x=x, t=t, y=y: m.denoiser(x, t, y)) for k, m in variants.items()},
                            repeats=max(args.repeats, 20), warmup=3)
        row = {"batch": b, **{k: median(v) * 1e3 for k, v in times.items()}}
        rows.append(row)
        print(f"| {b} | " + " | ".join(f"{row[k]:.2f}" for k in variants) + " |")
    write_json(args.out, {"machine": machine(), "gflops_per_image": gflops, "ms_per_call": rows})


def print_row(row: dict[str, object]) -> None:
    print(f"\nbatch {row['batch']}: {row['gflop_per_image']:.2f} GFLOP/image; 3x3 conv reaches "
          f"{row['conv3x3_gflops_fp32']:.0f} GFLOP/s fp32, {row['conv3x3_gflops_bf16']:.0f} bf16 (channels_last)")
    print("| variant | ms/image/step | GFLOP/s | share of conv 3x3 | vs diffusers fp32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, v in row.items():
        if isinstance(v, dict):
            print(f"| {name} | {v['ms_per_image']:.1f} | {v['gflops']:.0f} | {v['share_of_conv']:.0%} "
                  f"| {v['speedup_vs_diffusers_fp32']:.2f}x |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
