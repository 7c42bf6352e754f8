"""How the network is run for sampling: precision, memory format, batch buckets, torch.compile.

The samplers keep their state (x_t, x0) in float32 whatever the network runs in; a Denoiser
takes float32 in and gives float32 out, so precision is a property of this one object.

With ``compile=True`` batches are padded up to a fixed set of sizes ("buckets"), so that each
compiled graph (and, on CUDA, each captured CUDA graph: mode "reduce-overhead") is built once
at warm-up and reused, instead of being rebuilt for every new row count. Padding rows are zeros
at t = 0; every layer of the U-Net works per sample, so they change no other row. Eager runs
use no buckets: padding would only waste work.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import torch

from .unet import UNet

log = logging.getLogger("ddpm.runner")


def gflops_per_image(unet: UNet) -> float:
    """Floating-point work of one image's network call, counted once on a zero input."""
    from torch.utils.flop_counter import FlopCounterMode

    c = unet.config
    param = next(unet.parameters())
    x = torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=param.device, dtype=param.dtype)
    t = torch.zeros(1, dtype=torch.long, device=param.device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        unet(x, t)
    return counter.get_total_flops() / 1e9


def default_buckets(max_rows: int) -> list[int]:
    """Powers of two up to ``max_rows``, and ``max_rows``: at most half a batch is padding, and
    there are few enough sizes to compile them all at start-up."""
    sizes = {1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows}
    sizes.add(max_rows)
    return sorted(sizes)


class Denoiser:
    """Runs ``unet(x_t, t, labels)`` for the sampler at a chosen dtype, memory format and batch buckets."""

    def __init__(
        self,
        unet: UNet,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        compile: bool = False,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self.unet = unet.eval()
        self.dtype = dtype
        self.channels_last = channels_last
        self.device = next(unet.parameters()).device
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.unet.to(dtype=dtype)
        self.unet.to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self.compiled = False
        self.buckets: list[int] | None = None
        self.compile_seconds = 0.0
        self._forward: Callable[..., torch.Tensor] = self.unet
        if compile:
            self.compile(buckets)
        elif buckets:
            self.buckets = sorted(buckets)

    def compile(self, buckets: Sequence[int] | None) -> None:
        """Switch to torch.compile'd graphs, one per batch bucket; ``warm_up`` builds them.

        A server decides this only once its batch size is known (on a GPU, after measuring
        free memory with the eager network), so it is a step of the same object, not a new one.
        """
        import torch._inductor.config as inductor

        # Freezing turns the weights into constants, so convolution weights are pre-packed
        # once for oneDNN instead of being reordered at every call.
        inductor.freezing = True
        cuda = self.device.type == "cuda"
        # On CUDA "reduce-overhead" captures one CUDA graph per bucket: the per-kernel launch
        # cost, large next to a small network's kernels, is paid once.
        self._forward = torch.compile(self.unet, mode="reduce-overhead" if cuda else "default", dynamic=False)
        self.buckets = sorted(buckets) if buckets else None
        self.compiled = True

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
        out = self._forward(x, t, labels)[:n]
        # A CUDA graph's output buffer is overwritten by its next replay: always hand out a copy.
        return out.float() if out.dtype != torch.float32 else out.clone()

    def warm_up(self, image_shape: tuple[int, int, int], conditional: bool) -> float:
        """Run every bucket once (compiling it when compiled); returns the seconds it took."""
        start = time.perf_counter()
        for size in self.buckets or [1]:
            x = torch.zeros((size, *image_shape), device=self.device)
            t = torch.zeros(size, dtype=torch.long, device=self.device)
            labels = torch.zeros(size, dtype=torch.long, device=self.device) if conditional else None
            self(x, t, labels)
            self(x, t, labels)  # CUDA graph trees record on the second call
        seconds = time.perf_counter() - start
        if self.compiled:
            self.compile_seconds = seconds
            log.info("compiled %d batch buckets %s in %.1fs", len(self.buckets or [1]), self.buckets, seconds)
        return seconds
