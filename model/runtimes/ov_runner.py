"""The denoiser on OpenVINO's CPU runtime, from the same ONNX graph; the contract of ``Denoiser``.

Measured beside ONNX Runtime (docs/benchmarks.md, "ONNX Runtime"): in f32 it lost everywhere,
in bf16 it is the fastest engine for a large network on a CPU with native bf16, where ``auto``
picks it. Precision is pinned (``precision``, f32 unless asked): on such a CPU OpenVINO would
otherwise run bf16 silently, which is a precision choice, not a runtime one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import require
from .graph import GraphDenoiser
from .ort_runner import default_threads


class OpenVINODenoiser(GraphDenoiser):
    """Runs the exported network with OpenVINO on the CPU; same call and attributes as ``Denoiser``."""

    runtime = "openvino"

    def __init__(self, onnx_model: bytes, *, null_label: int | None, threads: int | None = None,
                 precision: str = "f32") -> None:
        require("openvino")
        import openvino as ov

        super().__init__(device=torch.device("cpu"), dtype=torch.float32 if precision == "f32" else torch.bfloat16,
                         null_label=null_label, threads=threads or default_threads(None))
        start = time.perf_counter()
        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:  # the ONNX frontend reads files
            path = Path(tmp) / "denoiser.onnx"
            path.write_bytes(onnx_model)
            network = core.read_model(str(path))
        config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": precision,
                  # Pinning threads to cores is for a machine of one's own; these cores are shared.
                  "ENABLE_CPU_PINNING": False}
        self._compiled: Any = core.compile_model(network, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.build_seconds = time.perf_counter() - start
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.conditional = "labels" in self.input_names

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.labels_for(x, labels)
        feeds: dict[str, np.ndarray] = {
            "x": x.to("cpu", torch.float32).contiguous().numpy(),
            "t": t.to("cpu", torch.int64).contiguous().numpy(),
        }
        if labels is not None:
            feeds["labels"] = labels.to("cpu", torch.int64).contiguous().numpy()
        # Inputs are read in place; the output buffer belongs to the request and is reused by
        # its next call, so it is copied out once (a Denoiser's output belongs to the caller).
        result = self._request.infer(feeds, share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(result[0], copy=True))
