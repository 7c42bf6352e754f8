"""The runtime plan: how this replica runs its model, worked out once from the settings and the model.

``Service``, the engine, the request schema and ``/v1/model`` all read this one object, so a
bound the card shows is the bound that is enforced, and nothing is recomputed elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import DiffusionModel
from model.device import rows_that_fit
from model.runner import default_buckets

from .settings import Settings

CPU_MAX_BATCH = 64  # rows per call on a CPU when unset: docs/benchmarks.md, "images/s vs batch size"


def network_rows(images: int, conditional: bool) -> int:
    """Rows one network call may need for ``images`` images: classifier-free guidance adds an
    unconditional copy of each guided image to the same call (model.batch.RowBatch)."""
    return images * (2 if conditional else 1)


@dataclass(frozen=True)
class RuntimePlan:
    max_batch: int  # images per network call
    conditional: bool  # guidance may double a call's rows
    buckets: tuple[int, ...] | None  # network batch sizes compiled at warm-up (None: eager)
    max_steps: int
    default_steps: int
    default_sampler: str
    max_queue_images: int
    admissible_images: int  # the largest n a request may ask for
    progress_interval_s: float
    threads: int  # torch intra-op threads

    @property
    def max_rows(self) -> int:
        return network_rows(self.max_batch, self.conditional)

    @classmethod
    def resolve(cls, settings: Settings, model: DiffusionModel, threads: int) -> RuntimePlan:
        c = model.config
        T = c.diffusion.num_timesteps
        max_steps = min(settings.max_steps or T, T)
        conditional = c.num_classes is not None
        max_batch = settings.max_batch or default_max_batch(model)
        rows = network_rows(max_batch, conditional)
        return cls(
            max_batch=max_batch,
            conditional=conditional,
            buckets=tuple(default_buckets(rows)) if settings.compile else None,
            max_steps=max_steps,
            default_steps=min(settings.default_steps or c.sampling.steps, max_steps),
            default_sampler=settings.default_sampler or c.sampling.sampler,
            max_queue_images=settings.max_queue_images,
            # A request larger than the batch plus the queue could never be admitted: it is
            # refused with a 422 naming this bound, not a 429 whose Retry-After would never help.
            admissible_images=min(settings.max_images_per_request, max_batch + settings.max_queue_images),
            progress_interval_s=settings.progress_interval_s,
            threads=threads,
        )


def default_max_batch(model: DiffusionModel) -> int:
    """Images per call when unset: a fixed batch on a CPU; what free memory holds on a GPU."""
    if model.device.type != "cuda":
        return CPU_MAX_BATCH
    c = model.config
    conditional = c.num_classes is not None

    def probe(rows: int) -> None:
        model.denoiser(torch.zeros((rows, *model.image_shape), device=model.device),
                       torch.zeros(rows, dtype=torch.long, device=model.device),
                       torch.zeros(rows, dtype=torch.long, device=model.device) if conditional else None)

    return max(1, rows_that_fit(probe, model.device) // network_rows(1, conditional))
