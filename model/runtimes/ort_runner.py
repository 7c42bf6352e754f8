"""The denoiser on ONNX Runtime: the contract of ``model.runner.Denoiser``, another engine.

The embedded network's forward pass is a few hundred small operators, so its speed on a CPU is
the cost of dispatching each one; ONNX Runtime pays far less per operator than PyTorch eager
(docs/benchmarks.md, "ONNX Runtime"). The samplers, the batching and the engine are unchanged:
this object takes float32 ``x_t`` and int64 timesteps and labels as torch tensors and returns a
float32 torch tensor, like ``Denoiser``.

Zero-copy: on a CPU the inputs go in as numpy views of the tensors' memory and the output
array comes back wrapped as a tensor; on a GPU, inputs and output are bound in device memory
(I/O binding), so nothing crosses to the host.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch

from ..device import available_cpus, is_small
from .export import INPUTS, OUTPUT, require
from .graph import GraphDenoiser

log = logging.getLogger("ddpm.onnxruntime")

_NP = {torch.float32: np.float32, torch.int64: np.int64}


def default_threads(gflops_per_image: float | None) -> int:
    """The rule of ``model.device.configure_threads``: one for an overhead-bound network, else every CPU."""
    return 1 if is_small(gflops_per_image) else available_cpus()


def spinning_default() -> bool:
    """Spin only where OpenMP is told to: on shared cores a spinning pool starves its own
    stragglers (docs/benchmarks.md, "Threads and OpenMP"), and ``ddpm`` sets PASSIVE."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"


def session_options(threads: int, spinning: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # The graph is one chain of operators: the parallel executor only adds hand-offs.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL adds the NCHWc layout transform and its convolution kernels: 1.8-2x faster than
    # EXTENDED at batch 16 and 64 on the embedded network (docs/benchmarks.md).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # warnings about hardware-specific rewrites are expected
    return so


def _array(tensor: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """A numpy view of a CPU tensor (a copy only when its dtype or layout differ)."""
    assert tensor is not None
    return tensor.detach().to("cpu", dtype).contiguous().numpy()


class OnnxRuntimeDenoiser(GraphDenoiser):
    """Runs the exported network with ONNX Runtime; same call and attributes as ``Denoiser``."""

    runtime = "onnxruntime"

    def __init__(
        self,
        onnx_model: bytes,
        *,
        null_label: int | None,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        spinning: bool | None = None,
    ) -> None:
        require("onnxruntime")
        import onnxruntime as ort

        super().__init__(device=torch.device(device), dtype=torch.float32, null_label=null_label,
                         threads=threads or default_threads(None))
        self.spinning = spinning_default() if spinning is None else spinning
        if self.device.type == "cuda":
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}),
                                    "CPUExecutionProvider"]
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu")
        else:
            providers = ["CPUExecutionProvider"]
        start = time.perf_counter()
        self.session = ort.InferenceSession(onnx_model, session_options(self.threads, self.spinning),
                                            providers=providers)
        self.build_seconds = time.perf_counter() - start
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.conditional = "labels" in self.input_names
        if self.input_names != list(INPUTS[: 3 if self.conditional else 2]):
            raise ValueError(f"not a ddpm-serve denoiser graph: inputs {self.input_names}")
        out_shape = self.session.get_outputs()[0].shape
        self._out_chw = tuple(int(d) for d in out_shape[1:])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.labels_for(x, labels)
        inputs = (x, t, labels) if self.conditional else (x, t)
        if self.device.type == "cuda":
            return self._run_bound(inputs)
        # On the CPU, numpy views of the tensors go in without a copy, and the output array ORT
        # allocates comes back wrapped, not copied. This measured faster than I/O binding with
        # raw pointers, whose extra Python calls cost more than the copies they save
        # (docs/benchmarks.md, "ONNX Runtime").
        feeds = {name: _array(tensor, dtype) for name, tensor, dtype in
                 zip(self.input_names, inputs, (torch.float32, torch.int64, torch.int64), strict=False)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def _run_bound(self, inputs: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """On a GPU: inputs read and the output written in place in device memory (I/O binding)."""
        binding = self.session.io_binding()
        dev = self.device.index or 0
        for name, tensor, dtype in zip(self.input_names, inputs, (torch.float32, torch.int64, torch.int64),
                                       strict=False):
            assert tensor is not None
            tensor = tensor.to(self.device, dtype).contiguous()
            binding.bind_input(name, "cuda", dev, _NP[dtype], tuple(tensor.shape), tensor.data_ptr())
        x = inputs[0]
        assert x is not None
        out = torch.empty((x.shape[0], *self._out_chw), dtype=torch.float32, device=self.device)
        binding.bind_output(OUTPUT, "cuda", dev, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the inputs, written on torch's stream
        self.session.run_with_iobinding(binding)  # returns once the output is written
        return out
