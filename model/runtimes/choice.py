"""Which engine runs the network: PyTorch, ONNX Runtime or OpenVINO, chosen once per model.

``choose_runtime`` turns a request (``auto`` or a name) into a ``RuntimeChoice`` that says what
was picked and why; ``build_runner`` builds that runner. The samplers, the batching and the
engine do not change with the runtime: only the network call does.

The ``auto`` rule (measured in docs/benchmarks.md, "ONNX Runtime and OpenVINO", next to the
DDPM_DTYPE rule of ``model.device.resolve_dtype``):
  - on a CPU, ONNX Runtime wherever the network would run in float32: it dispatches the
    operators with a fraction of PyTorch eager's per-operator cost, 2.1-2.3x faster per call for
    the embedded network at batch 1 on a quiet machine (more under contention), 1.5-2x at 16,
    1.15-1.5x at 64;
  - where PyTorch runs bf16 natively (1 GFLOP per image or more, AVX512-BF16 or AMX), OpenVINO
    in bf16 when it is installed (the ``openvino`` extra), else PyTorch's bf16: ONNX Runtime has
    only fp32 there and lost to PyTorch's bf16 in 7 of 9 cells (CIFAR-10 network, batch 1, 8, 32,
    three runs), while OpenVINO's bf16 beat PyTorch's in 8 of 9 (1.25-2.4x per image on a quiet
    machine, all three cells) and served 1.3x the images/s at 8 clients with 2x lower idle
    latency; its outputs are as close to fp32 as PyTorch's bf16 (within 1e-3 on that network;
    on the digits network closer, 97.5 % of pixels within one level against 93 %);
  - on a GPU PyTorch stays (bf16 and CUDA graphs; bench/gpu.sh measures ONNX Runtime's CUDA
    provider beside it where a GPU is lent);
  - OpenVINO in fp32 lost to ONNX Runtime in every cell but one (CIFAR-10 batch 8, within 4 %),
    so ``auto`` never picks it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..config import ModelConfig
from ..device import is_small, resolve_dtype
from ..runner import Denoiser
from ..unet import UNet

log = logging.getLogger("ddpm.runtime")

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
EXTRA = "pip install 'ddpm-serve[openvino]' (onnx and onnxruntime are dependencies)"


class Runner(Protocol):
    """What the samplers and the engine need of a network runner (``model.runner.Denoiser``'s contract)."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    compiled: bool
    buckets: list[int] | None
    compile_seconds: float

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor: ...

    def warm_up(self, image_shape: tuple[int, int, int], conditional: bool) -> float: ...


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings of the non-torch runtimes. ``threads``: the session's intra-op threads (default:
    the rule of ``configure_threads``, one for a network under 1 GFLOP per image, else every
    usable CPU); ``cache_dir``: where exported graphs are kept across restarts (default: in
    memory, one export per process); ``spinning``: let idle session threads spin (default: only
    under ``OMP_WAIT_POLICY=ACTIVE``)."""

    threads: int | None = None
    cache_dir: Path | None = None
    spinning: bool | None = None


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the network, what was asked for, and why; for /v1/model and the start-up log."""

    name: str
    requested: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def installed(runtime: str) -> bool:
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    return importlib.util.find_spec(module) is not None and importlib.util.find_spec("onnx") is not None


def choose_runtime(requested: str, *, device: torch.device, dtype: str | torch.dtype,
                   gflops_per_image: float | None, compile: bool) -> RuntimeChoice:
    """Resolve ``requested`` ("auto" or a runtime name) for this network and these settings."""
    if requested not in RUNTIMES:
        raise ValueError(f"runtime={requested!r} is not one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        if requested != "torch":
            _check_explicit(requested, device, dtype, compile)
        return RuntimeChoice(requested, requested, "asked for")
    if device.type != "cpu":
        return RuntimeChoice("torch", "auto", f"on {device.type} PyTorch runs bf16/fp16 with CUDA graphs")
    if compile:
        return RuntimeChoice("torch", "auto", "compile=True asks for torch.compile")
    if not installed("onnxruntime"):
        return RuntimeChoice("torch", "auto", f"onnxruntime is not installed ({EXTRA})")
    torch_dtype = resolve_dtype(dtype, device, gflops_per_image)
    if torch_dtype == torch.bfloat16 and not is_small(gflops_per_image) and installed("openvino"):
        return RuntimeChoice("openvino", "auto", "bfloat16 on a CPU that runs it natively: OpenVINO runs the "
                                                 "exported graph in bfloat16 faster than PyTorch does")
    if torch_dtype != torch.float32:
        why = "" if is_small(gflops_per_image) else f"; OpenVINO would run it faster ({EXTRA})"
        return RuntimeChoice("torch", "auto", f"PyTorch runs this network in {_name(torch_dtype)} natively, "
                                              f"faster than ONNX Runtime in float32{why}")
    size = f"{gflops_per_image:.3g} GFLOP/image" if gflops_per_image is not None else "float32"
    return RuntimeChoice("onnxruntime", "auto", f"float32 on a CPU ({size}): ONNX Runtime dispatches "
                                                "the network's operators with less overhead than PyTorch eager")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_explicit(runtime: str, device: torch.device, dtype: str | torch.dtype, compile: bool) -> None:
    if not installed(runtime):
        raise ValueError(f"runtime={runtime} needs the {runtime} and onnx packages: {EXTRA}")
    if compile:
        raise ValueError(f"compile=True is torch.compile; it does not apply to runtime={runtime}")
    if runtime == "openvino" and device.type != "cpu":
        raise ValueError(f"runtime=openvino runs on the CPU here, not on {device}")
    allowed = ("auto", "float32", torch.float32) + (("bfloat16", torch.bfloat16) if runtime == "openvino" else ())
    if dtype not in allowed:
        also = "; openvino also runs bfloat16" if runtime == "onnxruntime" else ""
        raise ValueError(f"runtime={runtime} runs float32{also}; dtype={dtype!s} needs runtime=torch")


def runtime_dtype(choice: RuntimeChoice, dtype: str | torch.dtype, device: torch.device,
                  gflops_per_image: float | None) -> torch.dtype:
    """The precision the chosen runtime runs at. The exported graph is float32; ONNX Runtime runs
    it so, OpenVINO runs it in bf16 where ``dtype`` resolves to bf16 (its precision hint), and
    float32 otherwise."""
    if choice.name == "torch":
        return resolve_dtype(dtype, device, gflops_per_image)
    if choice.name == "openvino" and resolve_dtype(dtype, device, gflops_per_image) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def build_runner(choice: RuntimeChoice, unet: UNet, config: ModelConfig, *, dtype: torch.dtype,
                 channels_last: bool, compile: bool, buckets: Sequence[int] | None,
                 gflops_per_image: float | None, options: RuntimeOptions | None = None) -> Runner:
    """The runner ``choice`` names, built once: a torch ``Denoiser``, or a session on the exported graph."""
    if choice.name == "torch":
        return Denoiser(unet, dtype=dtype, channels_last=channels_last, compile=compile, buckets=buckets)
    from .export import onnx_bytes
    from .ort_runner import default_threads

    opts = options or RuntimeOptions()
    threads = opts.threads or default_threads(gflops_per_image)
    data = onnx_bytes(unet, config, opts.cache_dir)
    null_label = unet.null_label if unet.conditional else None
    device = next(unet.parameters()).device
    if choice.name == "onnxruntime":
        from .ort_runner import OnnxRuntimeDenoiser

        return OnnxRuntimeDenoiser(data, null_label=null_label, device=device, threads=threads,
                                   spinning=opts.spinning)
    from .ov_runner import OpenVINODenoiser

    return OpenVINODenoiser(data, null_label=null_label, threads=threads,
                            precision="bf16" if dtype == torch.bfloat16 else "f32")
