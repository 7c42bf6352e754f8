"""Step-level batching: many images, each at its own point of its own trajectory, one network call.

A ``RowBatch`` holds up to ``capacity`` rows. A row is one image: its x_t, its plan (timesteps
and coefficient table), its position in that plan, its label and guidance scale, and its own
random generator. ``step()`` runs ONE network call over every row, each at its own timestep,
then applies every row's own update in one vectorised expression (see ``samplers``). Rows can
be added and removed between any two steps; that is all continuous batching needs, and the
offline sampler (``DiffusionModel.sample``) and the server's engine both run on it.

Reproducibility: a row's randomness comes only from its own CPU generator, seeded by its seed:
first x_T, then blocks of ``noise_block`` steps' noise. So an image depends on (model, seed,
plan, label, guidance) and never on which other rows share its batch, nor on the device.

Editing (``model.editing`` builds these rows): a row may ``start`` from a given image instead of
pure noise, at its plan's first timestep t0, either an x0 that the row encodes by
q(x_t0 | x_0) (eq. 4) with its first draw as the noise (SDEdit, interpolation), or an x_t0 as
it is (variations continue a shared x_t). A row may also carry a ``known`` image and a mask
(1 = regenerate): after every move t -> s the kept pixels are replaced by the known image
noised to s, x_s = m * x_s + (1 - m) * q_sample(x0_known, s), with that noise drawn from the
row's own generator after its step noise (RePaint, Lugmayr et al. 2022, sec. 4.1). The last move
lands on the data, where q_sample is the known image itself: kept pixels come back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .images import to_uint8
from .samplers import NUM_COEFS, SQRT_1M_AB, SQRT_AB, TO_SQRT_1M_AB, TO_SQRT_AB, SamplerPlan, update

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Start:
    """The image a row's chain starts from, at its plan's first timestep t0, in the model's range."""

    image: torch.Tensor  # (C, H, W) float
    encode: bool = True  # True: ``image`` is x0, noised to t0 with the row's first draw; False: it is x_t0


@dataclass(frozen=True, eq=False)
class Known:
    """RePaint's known image (x0, (C, H, W)) and mask ((1 or C, H, W) in [0, 1], 1 = regenerate)."""

    image: torch.Tensor
    mask: torch.Tensor


@dataclass(eq=False)
class LatentSink:
    """Receives a row's final x ((C, H, W) float32 on the CPU) when it finishes, so that a caller
    which only sees images (the server's engine) can continue a chain stopped part-way from it."""

    latent: torch.Tensor | None = None


@dataclass(frozen=True)
class RowSpec:
    """What one image asks for."""

    plan: SamplerPlan
    seed: int
    label: int | None = None  # None: unconditional (the null label of a conditional model)
    guidance: float = 0.0  # classifier-free guidance weight w (Ho & Salimans 2022); 0 is off
    start: Start | None = None  # None: x_T drawn from the row's generator
    known: Known | None = None  # None: nothing is kept
    latent_out: LatentSink | None = None  # also hand back the final x (float), here and in ``Row.latent``

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """Shapes and ranges of the start and known images, refused with the field named."""
        if self.start is not None and tuple(self.start.image.shape) != image_shape:
            raise ValueError(f"start.image has shape {tuple(self.start.image.shape)}, the model's is {image_shape}")
        if self.known is not None:
            k = self.known
            if tuple(k.image.shape) != image_shape:
                raise ValueError(f"known.image has shape {tuple(k.image.shape)}, the model's is {image_shape}")
            if k.mask.ndim != 3 or k.mask.shape[0] not in (1, image_shape[0]) or k.mask.shape[1:] != k.image.shape[1:]:
                raise ValueError(f"known.mask has shape {tuple(k.mask.shape)}; it must be (1 or C, H, W) of the image")
            if not bool(((k.mask >= 0) & (k.mask <= 1)).all()):
                raise ValueError("known.mask values must be in [0, 1]")


@dataclass(eq=False)
class Row:
    """A live image in a RowBatch. ``tag`` belongs to the caller (the server keeps its request there)."""

    spec: RowSpec
    tag: Any = None
    step: int = 0  # steps done so far
    slot: int = -1  # position in the batch; -1 once the row has left
    image: np.ndarray | None = field(default=None, repr=False)  # (H, W, C) uint8 once finished
    latent: torch.Tensor | None = field(default=None, repr=False)  # (C, H, W) float, with spec.latent_out

    @property
    def steps(self) -> int:
        return self.spec.plan.steps

    @property
    def done(self) -> bool:
        return self.step >= self.steps


class RowBatch:
    @torch.inference_mode()
    def __init__(
        self,
        denoise: DenoiseFn,
        *,
        image_shape: tuple[int, int, int],
        prediction: str,
        clip: bool,
        capacity: int,
        max_steps: int,
        null_label: int | None,
        device: torch.device | str = "cpu",
        noise_block: int = 16,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.denoise = denoise
        self.image_shape = image_shape
        self.prediction = prediction
        self.clip = clip
        self.capacity = capacity
        self.max_steps = max_steps
        self.null_label = null_label
        self.device = torch.device(device)
        self.noise_block = noise_block
        c, h, w = image_shape
        dev = self.device
        self.rows: list[Row] = []
        self._generators: list[torch.Generator] = []
        # Per-slot state on the device.
        self._x = torch.zeros(capacity, c, h, w, device=dev)
        self._x0 = torch.zeros(capacity, c, h, w, device=dev)
        self._noise = torch.zeros(capacity, noise_block, c, h, w, device=dev)
        self._coefs = torch.zeros(capacity, max_steps, NUM_COEFS, device=dev)
        self._timesteps = torch.zeros(capacity, max_steps, dtype=torch.long, device=dev)
        self._labels = torch.zeros(capacity, dtype=torch.long, device=dev)
        # Per-slot bookkeeping on the CPU, where the loop reads it without a device sync.
        self._step = torch.zeros(capacity, dtype=torch.long)
        self._guidance = torch.zeros(capacity)
        self._stochastic = torch.zeros(capacity, dtype=torch.bool)
        self._has_label = torch.zeros(capacity, dtype=torch.bool)
        self._masked = torch.zeros(capacity, dtype=torch.bool)
        # RePaint's buffers (known image, mask, the known part's noise) exist once a masked row
        # has joined, so plain batches pay nothing for them.
        self._known: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._known_noise: torch.Tensor | None = None
        self._slot_base = torch.arange(capacity, dtype=torch.long) * max_steps
        # Finished images leave as uint8 through one reused page-locked buffer, so the copy from
        # the GPU is a single DMA rather than a pageable copy through a bounce buffer.
        self._host = (torch.empty((capacity, h, w, c), dtype=torch.uint8, pin_memory=True)
                      if self.device.type == "cuda" else None)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self.rows)

    @torch.inference_mode()
    def add(self, spec: RowSpec, tag: Any = None) -> Row:
        """Admit a row; it takes part from the next ``step()``."""
        if not self.free:
            raise RuntimeError("RowBatch is full")
        plan = spec.plan
        if plan.steps > self.max_steps:
            raise ValueError(f"plan has {plan.steps} steps; this batch holds at most {self.max_steps}")
        if spec.label is not None and self.null_label is None:
            raise ValueError("label given for an unconditional model")
        spec.check(self.image_shape)
        slot = len(self.rows)
        row = Row(spec=spec, tag=tag, slot=slot)
        gen = torch.Generator().manual_seed(spec.seed)
        self.rows.append(row)
        self._generators.append(gen)
        self._x[slot] = self._initial_x(spec, gen).to(self.device)
        self._x0[slot].zero_()
        self._masked[slot] = spec.known is not None
        if spec.known is not None:
            known, mask = self._known_buffers()
            known[slot] = spec.known.image.to(self.device, torch.float32)
            mask[slot] = spec.known.mask.to(self.device, torch.float32).expand(self.image_shape)
        self._coefs[slot, : plan.steps] = plan.coefs.to(self.device)
        self._timesteps[slot, : plan.steps] = plan.timesteps.to(self.device)
        label = spec.label if spec.label is not None else self.null_label
        self._labels[slot] = 0 if label is None else label
        self._step[slot] = 0
        self._guidance[slot] = spec.guidance if spec.label is not None else 0.0
        self._has_label[slot] = spec.label is not None
        self._stochastic[slot] = plan.stochastic
        return row

    def _initial_x(self, spec: RowSpec, gen: torch.Generator) -> torch.Tensor:
        """x at the plan's first timestep t0: drawn noise, or the start image (encoded by eq. 4)."""
        start = spec.start
        if start is not None and not start.encode:
            return start.image.float().clone()
        z = torch.randn(self.image_shape, generator=gen)
        if start is None:
            return z
        first = spec.plan.coefs[0]
        return first[SQRT_AB] * start.image.float().cpu() + first[SQRT_1M_AB] * z

    def _known_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._known is None or self._mask is None:
            shape = (self.capacity, *self.image_shape)
            self._known = torch.zeros(shape, device=self.device)
            self._mask = torch.ones(shape, device=self.device)
            self._known_noise = torch.zeros_like(self._noise)
        return self._known, self._mask

    @torch.inference_mode()
    def remove(self, row: Row) -> None:
        """Take a row out (cancelled, expired, or finished); its slot is refilled by the last row."""
        if row.slot < 0:
            return
        slot, last = row.slot, len(self.rows) - 1
        if slot != last:
            moved = self.rows[last]
            for buf in (self._x, self._x0, self._noise, self._coefs, self._timesteps, self._labels,
                        self._step, self._guidance, self._stochastic, self._has_label, self._masked,
                        self._known, self._mask, self._known_noise):
                if buf is not None:
                    buf[slot] = buf[last]
            self.rows[slot] = moved
            self._generators[slot] = self._generators[last]
            moved.slot = slot
        self.rows.pop()
        self._generators.pop()
        row.slot = -1

    def _refill_noise(self, n: int) -> None:
        """Rows at the start of a noise block draw the next ``noise_block`` steps from their generator:
        the step noise if their plan draws any, then the known part's noise if they carry a mask."""
        drawing = self._stochastic[:n] | self._masked[:n]
        due = (drawing & (self._step[:n] % self.noise_block == 0)).nonzero().flatten().tolist()
        if not due:
            return
        shape = (self.noise_block, *self.image_shape)
        steps, known = [], []
        for i in due:
            gen = self._generators[i]
            if self._stochastic[i]:
                steps.append((i, torch.randn(shape, generator=gen)))
            if self._masked[i]:
                known.append((i, torch.randn(shape, generator=gen)))
        for buf, draws in ((self._noise, steps), (self._known_noise, known)):
            if draws and buf is not None:
                buf[[i for i, _ in draws]] = torch.stack([d for _, d in draws]).to(self.device, non_blocking=True)

    def _replace_known(self, x: torch.Tensor, x0: torch.Tensor, coefs: torch.Tensor, k: torch.Tensor) -> None:
        """RePaint's step (Lugmayr et al. 2022, sec. 4.1) for the masked rows, in place:
        x_s = m * x_s + (1 - m) * (sqrt(abar_s) x0_known + sqrt(1 - abar_s) z), and x0 likewise."""
        assert self._known is not None and self._mask is not None and self._known_noise is not None
        rows = self._masked[: len(x)].nonzero().flatten().to(self.device)
        col = coefs.index_select(0, rows)[:, :, None, None, None]
        known, mask = self._known.index_select(0, rows), self._mask.index_select(0, rows)
        z = self._known_noise[rows, k.index_select(0, rows)]
        noised = col[:, TO_SQRT_AB] * known + col[:, TO_SQRT_1M_AB] * z
        x[rows] = mask * x.index_select(0, rows) + (1.0 - mask) * noised
        x0[rows] = mask * x0.index_select(0, rows) + (1.0 - mask) * known

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
        """One network call for all rows; guided rows add an unconditional copy to the same call."""
        if self.null_label is None:
            return self.denoise(x, t, None)
        labels = self._labels[:n]
        guided = (self._guidance[:n] > 0).nonzero().flatten()
        if not len(guided):
            return self.denoise(x, t, labels)
        g = guided.to(self.device)
        null = torch.full((len(guided),), self.null_label, dtype=torch.long, device=self.device)
        out = self.denoise(torch.cat([x, x[g]]), torch.cat([t, t[g]]), torch.cat([labels, null]))
        cond, uncond = out[:n], out[n:]
        w = self._guidance[guided].to(self.device)[:, None, None, None]
        # eps~ = (1 + w) eps(x, c) - w eps(x)  (Ho & Salimans 2022, eq. 6)
        cond[g] = cond[g] + w * (cond[g] - uncond)
        return cond

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Advance every row by one step; returns the rows that finished (already removed, with ``image``)."""
        n = len(self.rows)
        if n == 0:
            return []
        gather = (self._slot_base[:n] + self._step[:n]).to(self.device, non_blocking=True)
        coefs = self._coefs.view(-1, NUM_COEFS).index_select(0, gather)
        t = self._timesteps.view(-1).index_select(0, gather)
        x = self._x[:n]
        output = self._model_output(x, t, n)
        noise = None
        stochastic, masked = bool(self._stochastic[:n].any()), bool(self._masked[:n].any())
        if stochastic or masked:
            self._refill_noise(n)
            k = (self._step[:n] % self.noise_block).to(self.device, non_blocking=True)
        if stochastic:
            # Rows that never draw noise have sigma = 0, so whatever their slot holds is ignored.
            noise = self._noise[:n][torch.arange(n, device=self.device), k]
        x_next, x0 = update(self.prediction, output, x, self._x0[:n], coefs, noise, self.clip)
        if masked:
            self._replace_known(x_next, x0, coefs, k)
        self._x[:n] = x_next
        self._x0[:n] = x0
        self._step[:n] += 1
        for row, s in zip(self.rows, self._step[:n].tolist(), strict=True):
            row.step = s
        finished = [row for row in self.rows if row.done]
        if finished:
            images = self._snapshot(self._x, finished)
            for row, image in zip(finished, images, strict=True):
                row.image = image
                if row.spec.latent_out is not None:
                    row.latent = row.spec.latent_out.latent = self._x[row.slot].float().cpu().clone()
            for row in sorted(finished, key=lambda r: r.slot, reverse=True):
                self.remove(row)
        return finished

    @torch.inference_mode()
    def preview(self, rows: Sequence[Row]) -> np.ndarray:
        """The current prediction of x0 for live rows, (len(rows), H, W, C) uint8."""
        return self._snapshot(self._x0, rows)

    @torch.inference_mode()
    def noisy(self, rows: Sequence[Row]) -> np.ndarray:
        """The current x_t of live rows, (len(rows), H, W, C) uint8 (clipped to the data range)."""
        return self._snapshot(self._x, rows)

    def _snapshot(self, buffer: torch.Tensor, rows: Sequence[Row]) -> np.ndarray:
        """Rows of ``buffer`` as (len(rows), H, W, C) uint8 on the host, converted on the device."""
        slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=self.device)
        images = to_uint8(buffer.index_select(0, slots))
        if self._host is None:
            return np.ascontiguousarray(images.numpy())  # index_select made a fresh tensor
        host = self._host[: len(rows)]
        host.copy_(images, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()  # the buffer is reused by the next call
