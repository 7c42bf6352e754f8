"""A loaded model ready to sample: network, schedule and samplers behind one object."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .batch import RowBatch, RowSpec
from .checkpoint import build_unet, read_checkpoint
from .config import ModelConfig
from .device import resolve_device
from .runner import gflops_per_image
from .runtimes import Runner, RuntimeChoice, RuntimeOptions, build_runner, choose_runtime, runtime_dtype
from .samplers import SamplerPlan, build_plan
from .schedule import NoiseSchedule
from .unet import UNet

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "embedded" / "digits.safetensors"
MAX_SEED = 2**63 - 1


class DiffusionModel:
    """``unet`` (the raw network), ``config``, ``schedule``, and ``sample()``.

    ``runtime`` picks what runs the network: "torch" (``model.runner.Denoiser``), "onnxruntime"
    or "openvino" (the network exported to ONNX, ``model.runtimes``), or "auto" (the rule in
    ``model.runtimes.choice``); ``runtime_choice`` says what was picked and why.
    """

    def __init__(
        self,
        config: ModelConfig,
        unet: UNet,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = torch.float32,
        channels_last: bool = True,
        compile: bool = False,
        buckets: Sequence[int] | None = None,
        runtime: str = "torch",
        runtime_options: RuntimeOptions | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.unet = unet.to(self.device).eval()
        self.schedule = NoiseSchedule.from_config(config.diffusion, self.device)
        self.gflops_per_image = gflops_per_image(self.unet)  # one counted forward pass, before any cast
        self.runtime_choice: RuntimeChoice = choose_runtime(
            runtime, device=self.device, dtype=dtype, gflops_per_image=self.gflops_per_image, compile=compile)
        self.dtype = runtime_dtype(self.runtime_choice, dtype, self.device, self.gflops_per_image)
        self.denoiser: Runner = build_runner(
            self.runtime_choice, self.unet, config, dtype=self.dtype, channels_last=channels_last, compile=compile,
            buckets=buckets, gflops_per_image=self.gflops_per_image, options=runtime_options)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.image_size, self.config.image_size)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - plans are small and the model lives as long as its cache
    def plan(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None) -> SamplerPlan:
        """The coefficient table for one image; defaults come from the checkpoint's config."""
        s = self.config.sampling
        return build_plan(
            self.schedule,
            sampler or s.sampler,
            steps or s.steps,
            eta=s.eta if eta is None else eta,
            variance=self.config.diffusion.variance,
            spacing=s.spacing,
        )

    def row_batch(self, capacity: int, *, max_steps: int | None = None) -> RowBatch:
        """An empty batch that rows of this model can join and leave at any step."""
        return RowBatch(
            self.denoiser,
            image_shape=self.image_shape,
            prediction=self.config.diffusion.prediction,
            clip=self.config.diffusion.clip_denoised,
            capacity=capacity,
            max_steps=max_steps or self.config.diffusion.num_timesteps,
            null_label=self.unet.null_label,
            device=self.device,
        )

    def check_label(self, label: int | None) -> None:
        problem = self.config.label_problem(label)
        if problem:
            raise ValueError(problem)

    def sample(
        self,
        n: int = 1,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: int = 0,
        label: int | Sequence[int | None] | None = None,
        guidance: float | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> np.ndarray:
        """``n`` images as (n, H, W, C) uint8. Image i uses seed + i, so it equals image 0 of seed + i.

        ``label`` is one class for all images, one per image, or None (unconditional).
        ``guidance`` is the classifier-free guidance weight w; None takes the config's default.
        """
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        if not 0 <= seed <= MAX_SEED - (n - 1):
            raise ValueError(f"seed={seed} must be in [0, 2^63 - n]")
        labels = list(label) if isinstance(label, Sequence) else [label] * n
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels given for n={n} images")
        for lab in labels:
            self.check_label(lab)
        w = self.config.sampling.guidance if guidance is None else guidance
        if w < 0:
            raise ValueError(f"guidance={w} must be >= 0")
        plan = self.plan(sampler, steps, eta)
        batch = self.row_batch(min(batch_size, n), max_steps=plan.steps)
        images = np.zeros((n, self.config.image_size, self.config.image_size, self.config.channels), np.uint8)
        pending = list(range(n))
        bar = tqdm(total=n * plan.steps, unit="step", desc="sampling", disable=not progress, leave=False)
        with bar:
            while pending or len(batch):
                while pending and batch.free:
                    i = pending.pop(0)
                    batch.add(RowSpec(plan=plan, seed=seed + i, label=labels[i], guidance=w), tag=i)
                rows = len(batch)
                for row in batch.step():
                    assert row.image is not None
                    images[row.tag] = row.image
                bar.update(rows)
        return images


def load_checkpoint(
    path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = torch.float32,
    channels_last: bool = True,
    compile: bool = False,
    buckets: Sequence[int] | None = None,
    runtime: str = "torch",
    runtime_options: RuntimeOptions | None = None,
) -> DiffusionModel:
    """Rebuild a model from a checkpoint file alone (the embedded digits model when ``path`` is None).

    ``dtype`` may be "auto" (see ``model.device.resolve_dtype``), ``channels_last`` is on by
    default: on a CPU it was measured as fast or faster for both networks in both precisions at
    serving batch sizes (docs/benchmarks.md), and it is the layout GPU tensor cores use; ``compile`` pads batches to
    ``buckets`` and compiles one graph per bucket (``Denoiser.warm_up`` builds them all).
    ``runtime`` is "torch", "onnxruntime", "openvino" or "auto" (``model.runtimes.choice``);
    ``runtime_options`` sets the threads and export cache of the non-torch runtimes.
    """
    path = EMBEDDED_CHECKPOINT if path is None else Path(path)
    config, tensors = read_checkpoint(path)
    unet = build_unet(config, tensors, path)
    return DiffusionModel(config, unet, device=device, dtype=dtype, channels_last=channels_last,
                          compile=compile, buckets=buckets, runtime=runtime, runtime_options=runtime_options)
