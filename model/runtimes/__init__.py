"""Engines that run the network: PyTorch (``model.runner.Denoiser``), or the network exported
to ONNX and run by ONNX Runtime or OpenVINO. onnx, onnxruntime and openvino are optional
(the ``onnx`` extra); nothing here imports them until a non-torch runtime is asked for."""

from .choice import RUNTIMES, Runner, RuntimeChoice, RuntimeOptions, build_runner, choose_runtime, runtime_dtype

__all__ = ["RUNTIMES", "Runner", "RuntimeChoice", "RuntimeOptions", "build_runner", "choose_runtime",
           "runtime_dtype"]
