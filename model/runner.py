"""How the network is run for sampling: precision, memory format and batch-size buckets.

The samplers keep their state (x_t, x0) in float32 whatever the network runs in; a Denoiser
takes float32 in and gives float32 out, so precision is a property of this one object.
Batches are padded up to a fixed set of sizes ("buckets"), so that a compiled graph or a
captured CUDA graph is reused instead of being rebuilt for every new row count. Padding rows
are zeros with t = 0; every layer of the U-Net works per sample, so they change nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from .unet import UNet


def default_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 8 up to max_batch (powers of two waste up to half a batch)."""
    sizes = {b for b in (1, 2, 4) if b < max_batch}
    sizes.update(range(8, max_batch, 8))
    sizes.add(max_batch)
    return sorted(sizes)


class Denoiser:
    """Runs ``unet(x_t, t, labels)`` for the sampler at a chosen dtype, memory format and batch buckets."""

    def __init__(
        self,
        unet: UNet,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self.unet = unet.eval()
        self.dtype = dtype
        self.channels_last = channels_last
        self.buckets = sorted(buckets) if buckets else None
        self.device = next(unet.parameters()).device
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.unet.to(dtype=dtype)
        self.unet.to(memory_format=self._memory_format)  # type: ignore[call-overload]

    def bucket(self, n: int) -> int:
        """The padded batch size that ``n`` rows run at."""
        if self.buckets is None or n > self.buckets[-1]:
            return n
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        size = self.bucket(n)
        if size != n:
            pad = size - n
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            t = torch.cat([t, t.new_zeros(pad)])
            if labels is not None:
                labels = torch.cat([labels, labels.new_zeros(pad)])
        x = x.to(dtype=self.dtype).contiguous(memory_format=self._memory_format)
        out = self.unet(x, t, labels)
        return out[:n].float().contiguous()
