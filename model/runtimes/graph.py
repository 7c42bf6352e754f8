"""What the denoisers that run the exported graph share: ``Denoiser``'s attributes, the label
rule, and the warm-up. Each runtime (ONNX Runtime, OpenVINO) adds only how it runs the graph."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import torch


class GraphDenoiser(ABC):
    """The contract of ``model.runner.Denoiser`` for a network exported to ONNX: never compiled,
    no batch buckets, contiguous memory; ``conditional`` is read from the graph's inputs."""

    runtime = ""
    conditional = False

    def __init__(self, *, device: torch.device, dtype: torch.dtype, null_label: int | None, threads: int) -> None:
        self.device = device
        self.dtype = dtype
        self.channels_last = False
        self.compiled = False
        self.buckets: list[int] | None = None
        self.compile_seconds = 0.0
        self.null_label = null_label
        self.threads = threads

    def labels_for(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """As UNet.forward: no labels on a conditional network means every row is unconditional."""
        if not self.conditional:
            if labels is not None:
                raise ValueError("labels were given to an unconditional network")
            return None
        if labels is None:
            return torch.full((x.shape[0],), self.null_label or 0, dtype=torch.int64, device=self.device)
        return labels

    @abstractmethod
    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output for these rows; each runtime runs the graph its own way."""

    def warm_up(self, image_shape: tuple[int, int, int], conditional: bool) -> float:
        """Run the batch sizes the engine starts with once: the first run of each shape plans its
        memory and pre-packs the weights."""
        start = time.perf_counter()
        for size in (1, 2):
            x = torch.zeros((size, *image_shape), device=self.device)
            t = torch.zeros(size, dtype=torch.long, device=self.device)
            labels = torch.zeros(size, dtype=torch.long, device=self.device) if conditional else None
            self(x, t, labels)
        return time.perf_counter() - start
