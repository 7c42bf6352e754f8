"""The denoiser as an ONNX graph: one portable file that ONNX Runtime, OpenVINO, TensorRT or
Triton's ONNX backend can run.

Inputs ``x`` (N, C, H, W) float32, ``t`` (N,) int64 timesteps, one per row, and, for a
class-conditional network, ``labels`` (N,) int64, where ``num_classes`` is the null label that
classifier-free guidance's unconditional rows carry. The batch dimension is dynamic, so one
graph serves every batch the engine forms (guidance's doubled rows included). The output
``out`` (N, C_out, H, W) is the network's raw prediction, exactly what ``UNet.forward`` returns.
The checkpoint's whole config rides along as metadata (``CONFIG_KEY``), so an exported file is,
like a checkpoint, self-describing. Exact rewrites (``rewrites.py``) then spare ONNX Runtime its
dearest operators without changing an output bit.

Exporting takes seconds (torch.export traces the network), so ``onnx_bytes`` keeps each
network's graph for the life of the process and, given a cache directory, on disk, keyed by
a hash of the weights, the config and the torch version.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CONFIG_KEY, atomic_write
from ..config import ModelConfig
from ..unet import UNet
from .rewrites import REWRITES_VERSION, optimise

log = logging.getLogger("ddpm.onnx")
NARRATORS = ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")

OPSET = 20  # opset 21's GroupNormalization ran 1.1-1.5x slower in ONNX Runtime's CPU provider than
# opset 20's InstanceNormalization decomposition (docs/benchmarks.md, "ONNX Runtime")
INPUTS = ("x", "t", "labels")
OUTPUT = "out"
NULL_LABEL_KEY = "ddpm_serve.null_label"


class OnnxUnavailable(ImportError):
    """onnx / onnxruntime are not installed: the optional ``onnx`` extra."""


def require(module: str) -> None:
    """Import ``module`` or fail with the extra that provides it."""
    try:
        __import__(module)
    except ImportError as exc:
        raise OnnxUnavailable(
            f"{module} is not installed; install the onnx extra: pip install 'ddpm-serve[onnx]'") from exc


class _Conditional(nn.Module):
    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, labels)


class _Unconditional(nn.Module):
    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t)


def export_onnx(unet: UNet, config: ModelConfig) -> bytes:
    """The network as a checked ONNX model (serialized), fp32, contiguous, on the CPU.

    The caller's network is left untouched: a Denoiser may have cast it to bf16 or
    channels_last in place, so a fresh fp32 copy is exported.
    """
    require("onnx")
    import onnx

    net = copy.deepcopy(unet).to("cpu", torch.float32).eval()
    net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    c = config.unet
    # Batch 2, not 1: torch.export specialises a dimension seen as 1.
    x = torch.zeros(2, c.in_channels, c.image_size, c.image_size)
    t = torch.zeros(2, dtype=torch.long)
    batch = torch.export.Dim("batch")
    wrapper: nn.Module
    args: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    if net.conditional:
        wrapper, args, names = _Conditional(net), (x, t, torch.zeros(2, dtype=torch.long)), INPUTS
    else:
        wrapper, args, names = _Unconditional(net), (x, t), INPUTS[:2]
    dynamic = {name: {0: batch} for name in names}
    # The exporter narrates every stage on stdout, warns that torchvision is absent, and its
    # optimizer logs each pass at INFO (hundreds of lines); none of it belongs in a server's log.
    quiet = [logging.getLogger(name) for name in NARRATORS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, args, None, dynamo=True, opset_version=OPSET,
                                        input_names=list(names), output_names=[OUTPUT], dynamic_shapes=dynamic,
                                        external_data=False, optimize=True, verbose=False)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    assert program is not None
    proto = program.model_proto
    rewritten = optimise(proto)  # exact; faster in ONNX Runtime (model/runtimes/rewrites.py)
    log.debug("graph rewrites: %s", rewritten)
    meta = {CONFIG_KEY: config.to_json(), NULL_LABEL_KEY: str(net.null_label if net.conditional else ""),
            "producer": "ddpm-serve"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"ddpm-serve denoiser {config.name}: inputs {', '.join(names)}; output {OUTPUT}"
    onnx.checker.check_model(proto, full_check=True)
    return bytes(proto.SerializeToString())


def weights_key(unet: UNet, config: ModelConfig) -> str:
    """A hash of everything the exported graph depends on: weights, config, exporter."""
    h = hashlib.sha256()
    h.update(config.to_json().encode())
    h.update(f"{torch.__version__} opset{OPSET} rewrites{REWRITES_VERSION}".encode())
    for name, tensor in unet.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


_memory: dict[str, bytes] = {}
_lock = threading.Lock()


def onnx_bytes(unet: UNet, config: ModelConfig, cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The network's ONNX graph, exported at most once per process (and once per cache dir)."""
    key = weights_key(unet, config)
    path = Path(cache_dir) / f"{key}.onnx" if cache_dir else None
    with _lock:
        data = _memory.get(key)
        if data is None and path is not None and path.is_file():
            data = path.read_bytes()
            log.info("ONNX graph of %s from the cache %s", config.name, path)
        if data is None:
            start = time.perf_counter()
            data = export_onnx(unet, config)
            log.info("exported %s to ONNX in %.1fs", config.name, time.perf_counter() - start)
        if path is not None and not path.is_file():
            write_onnx(path, data)
        _memory[key] = data
        return data


def read_metadata(data: bytes) -> dict[str, str]:
    """The metadata of an exported graph (the config JSON under ``CONFIG_KEY``)."""
    require("onnx")
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


def write_onnx(path: str | os.PathLike[str], data: bytes) -> Path:
    """``data`` to ``path`` atomically (a crash leaves the previous file, never half a graph)."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)
