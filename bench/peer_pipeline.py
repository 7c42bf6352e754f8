"""The serving peer's model: our checkpoint in diffusers' format, run by diffusers' own DDIMPipeline.

The network is the checkpoint exported with ``model.convert.export_diffusers`` and loaded as a
real ``UNet2DModel`` (outputs within 1e-5 of ours, tests/test_convert.py). Class conditioning
maps exactly (``num_class_embeds`` = our classes + the null label), but ``DDIMPipeline`` calls
``unet(x, t)`` without labels; rather than copy its loop, ``LabelledUNet2DModel`` is a
``UNet2DModel`` that takes the batch's labels from an attribute set before each call, so the
pipeline's sampling code runs unmodified.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from model.convert import export_diffusers


class LabelledUNet2DModel(UNet2DModel):
    """``UNet2DModel`` whose ``class_labels`` default to ``bound_labels`` (set per pipeline call)."""

    bound_labels: torch.Tensor | None = None

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        labels = class_labels if class_labels is not None else self.bound_labels
        return super().forward(sample, timestep, class_labels=labels, **kwargs)  # type: ignore[misc]


@dataclass(frozen=True)
class PeerRow:
    """One image to make: its seed and label (None: unconditional, the null class)."""

    seed: int
    label: int | None


class PeerPipeline:
    """diffusers' DDIMPipeline on the exported network; ``generate`` is one pipeline call."""

    def __init__(self, folder: Path) -> None:
        self.unet = LabelledUNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
        self.scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        self.pipe = DDIMPipeline(unet=self.unet, scheduler=self.scheduler)
        self.pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
        embeds = self.unet.config.num_class_embeds
        # The exported table's last row is our null label ("no class", classifier-free guidance's row).
        self.null_label: int | None = embeds - 1 if embeds else None
        self.num_classes = embeds - 1 if embeds else 0

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, folder: str | Path | None = None) -> PeerPipeline:
        """Export ``checkpoint`` to diffusers' format (in ``folder`` or a temporary one) and load it."""
        out = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="ddpm-peer-"))
        return cls(export_diffusers(checkpoint, out))

    def generate(self, rows: list[PeerRow], steps: int, eta: float) -> np.ndarray:
        """(N, H, W, C) uint8 images, one pipeline call for all ``rows`` (they share ``steps`` and ``eta``)."""
        if self.null_label is not None:
            self.unet.bound_labels = torch.tensor(
                [self.null_label if r.label is None else r.label for r in rows])
        generators = [torch.Generator().manual_seed(r.seed) for r in rows]  # x_T of image i from its seed alone
        with torch.inference_mode():
            images = self.pipe(  # type: ignore[operator]
                batch_size=len(rows), generator=generators, eta=eta, num_inference_steps=steps,
                output_type="pt").images
        # The pipeline returns [0, 1]; the same rounding as model.images.to_uint8 on [-1, 1].
        return (images * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
