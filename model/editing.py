"""The rest of the paper as rows: SDEdit, RePaint inpainting, interpolation and shared-x_t variations.

Every function here builds ``RowSpec``s (``model.batch``) that run in any ``RowBatch`` beside
plain rows; ``run_rows`` runs them offline. Images go in as (C, H, W) float tensors in the
model's range [-1, 1] (``model.image_input`` decodes and checks uploads).

Times follow the paper: t in [0, T], x_0 the data, x_T pure noise. The code's timestep index
is t - 1 (index 0 is one step of noise, eq. 2), so "noise to t" starts the plan at index t - 1
and t = 0 means no noise at all.

    SDEdit (Meng et al. 2022): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z (eq. 4, z the row's
        first draw), t = strength * T, then the reverse chain (eq. 11 or a faster sampler) from t,
        under any label.
    RePaint (Lugmayr et al. 2022): the same chain with the known pixels replaced after every move
        by the known image noised to where the move lands (``RowBatch``), and resampling jumps:
        at every ``jump_length``-th step the chain goes back up ``jump_length`` steps through
        q(x_s | x_t) and redoes them, ``jumps`` times.
    Interpolation (Ho et al. 2020, sec. 4.3, fig. 8): both sources encoded by q(x_t | x_0) with
        the same noise, the latents mixed (1 - lambda) x_t^a + lambda x_t^b -- which, by the
        linearity of eq. 4, is the blend (1 - lambda) a + lambda b encoded with that noise -- and
        decoded. Every frame uses the same seed, so the decoder's noise is shared too and
        neighbouring frames differ only through lambda.
    Variations (fig. 7): one seeded chain run from T down to t, then n continuations of that
        shared x_t, each with its own seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batch import Known, LatentSink, Row, RowSpec, Start
from .images import to_uint8
from .pipeline import DiffusionModel
from .samplers import DATA, SamplerPlan, plan_from_moves, select_timesteps


class EditError(ValueError):
    """An edit request outside what the model can do; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def start_index(num_timesteps: int, t: int, field: str = "t") -> int:
    """The timestep index of the paper's t in [1, T] (x_t has had t steps of noise: index t - 1)."""
    if not 1 <= t <= num_timesteps:
        raise EditError(field, f"t={t} must be in [1, {num_timesteps}]")
    return t - 1


def strength_to_t(num_timesteps: int, strength: float) -> int:
    """SDEdit's strength in (0, 1] as the paper's t = round(strength * T), at least 1."""
    if not 0.0 < strength <= 1.0:
        raise EditError("strength", f"strength={strength} must be in (0, 1]")
    return max(1, round(strength * num_timesteps))


def chain_timesteps(model: DiffusionModel, t: int, steps: int | None) -> np.ndarray:
    """``steps`` timesteps of a chain that starts at the paper's t (clipped to t: one call per step)."""
    top = start_index(model.config.diffusion.num_timesteps, t)
    steps = steps or model.config.sampling.steps
    if steps < 1:
        raise EditError("steps", f"steps={steps} must be >= 1")
    return select_timesteps(top + 1, min(steps, top + 1), model.config.sampling.spacing)


def repaint_moves(timesteps: np.ndarray, jumps: int, jump_length: int) -> np.ndarray:
    """RePaint's schedule (Lugmayr et al. 2022, sec. 4.2; their ``get_schedule_jump``) over a
    descending run of timesteps, as moves (t, s): whenever the chain reaches the position
    j * jump_length (j >= 0, below the top jump_length positions) it goes back up jump_length
    positions in one forward jump q(x_s | x_t), ``jumps`` times at each such position."""
    if jumps < 0 or jump_length < 1:
        raise EditError("jumps", f"jumps={jumps} must be >= 0 and jump_length={jump_length} >= 1")
    grid = np.asarray(timesteps, dtype=np.int64)[::-1]  # ascending: grid[p] is position p's timestep
    remaining = {p: jumps for p in range(0, len(grid) - jump_length, jump_length)}
    moves: list[tuple[int, int]] = []
    p = len(grid) - 1
    while p >= 0:
        moves.append((int(grid[p]), int(grid[p - 1]) if p > 0 else DATA))
        p -= 1
        if remaining.get(p, 0) > 0:
            remaining[p] -= 1
            moves.append((int(grid[p]), int(grid[p + jump_length])))
            p += jump_length
    return np.array(moves, dtype=np.int64)


def _plan(model: DiffusionModel, moves: np.ndarray, sampler: str | None, eta: float | None) -> SamplerPlan:
    s = model.config.sampling
    try:
        return plan_from_moves(model.schedule, sampler or s.sampler, moves, eta=s.eta if eta is None else eta,
                               variance=model.config.diffusion.variance)
    except ValueError as exc:
        raise EditError("sampler", str(exc)) from exc


def _check_image(model: DiffusionModel, image: torch.Tensor, field: str) -> torch.Tensor:
    if tuple(image.shape) != model.image_shape:
        raise EditError(field, f"shape {tuple(image.shape)} is not the model's {model.image_shape}")
    return image.float()


def sdedit_spec(
    model: DiffusionModel, image: torch.Tensor, *, strength: float, seed: int, label: int | None = None,
    guidance: float = 0.0, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
) -> RowSpec:
    """Image-to-image: ``image`` noised to t = strength * T with the row's generator, then denoised."""
    ts = chain_timesteps(model, strength_to_t(model.config.diffusion.num_timesteps, strength), steps)
    plan = _plan(model, np.stack([ts, np.append(ts[1:], DATA)], axis=1), sampler, eta)
    return RowSpec(plan=plan, seed=seed, label=label, guidance=guidance,
                   start=Start(_check_image(model, image, "image")))


def inpaint_spec(
    model: DiffusionModel, image: torch.Tensor, mask: torch.Tensor, *, seed: int, strength: float = 1.0,
    jumps: int = 0, jump_length: int = 10, label: int | None = None, guidance: float = 0.0,
    steps: int | None = None, sampler: str | None = None, eta: float | None = None,
) -> RowSpec:
    """RePaint: regenerate where ``mask`` (1 or C, H, W) is 1, keep ``image`` where it is 0."""
    image = _check_image(model, image, "image")
    if mask.ndim != 3 or mask.shape[0] not in (1, image.shape[0]) or mask.shape[1:] != image.shape[1:]:
        raise EditError("mask", f"shape {tuple(mask.shape)} does not match the image's {tuple(image.shape)}")
    ts = chain_timesteps(model, strength_to_t(model.config.diffusion.num_timesteps, strength), steps)
    plan = _plan(model, repaint_moves(ts, jumps, jump_length), sampler, eta)
    return RowSpec(plan=plan, seed=seed, label=label, guidance=guidance, start=Start(image),
                   known=Known(image, mask.float()))


DEFAULT_SDEDIT_STRENGTH = 0.5  # without a mask: keep the layout, redraw the details
DEFAULT_INPAINT_STRENGTH = 1.0  # with a mask: the masked part owes nothing to the pixels under it


def edit_specs(
    model: DiffusionModel, image: torch.Tensor, mask: torch.Tensor | None, *, n: int, seed: int,
    strength: float | None = None, jumps: int = 0, jump_length: int = 10, label: int | None = None,
    guidance: float = 0.0, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
) -> list[RowSpec]:
    """``POST /v1/edits`` as rows: ``n`` edits of one image, edit i with seed + i (as /generate).
    Without a mask SDEdit (jumps must be 0), with one RePaint."""
    if n < 1:
        raise EditError("n", f"n={n} must be >= 1")
    if mask is None and jumps:
        raise EditError("jumps", "resampling jumps need a mask (they are RePaint's)")
    specs = []
    for i in range(n):
        if mask is None:
            specs.append(sdedit_spec(model, image, strength=DEFAULT_SDEDIT_STRENGTH if strength is None else strength,
                                     seed=seed + i, label=label, guidance=guidance, steps=steps, sampler=sampler,
                                     eta=eta))
        else:
            specs.append(inpaint_spec(model, image, mask, seed=seed + i, jumps=jumps, jump_length=jump_length,
                                      strength=DEFAULT_INPAINT_STRENGTH if strength is None else strength,
                                      label=label, guidance=guidance, steps=steps, sampler=sampler, eta=eta))
    return specs


def interpolation_specs(
    model: DiffusionModel, a: torch.Tensor, b: torch.Tensor, *, t: int, frames: int, seed: int,
    label: int | None = None, guidance: float = 0.0, steps: int | None = None, sampler: str | None = None,
    eta: float | None = None,
) -> list[RowSpec]:
    """One row per frame, lambda evenly in [0, 1], all encoded at t with the same seed (t >= 1;
    at t = 0 there is nothing to decode: ``blend_frames`` is the answer)."""
    a, b = _check_image(model, a, "a"), _check_image(model, b, "b")
    ts = chain_timesteps(model, t, steps)
    plan = _plan(model, np.stack([ts, np.append(ts[1:], DATA)], axis=1), sampler, eta)
    return [RowSpec(plan=plan, seed=seed, label=label, guidance=guidance, start=Start(blend))
            for blend in _blends(a, b, frames)]


def _blends(a: torch.Tensor, b: torch.Tensor, frames: int) -> list[torch.Tensor]:
    if frames < 2:
        raise EditError("frames", f"frames={frames} must be >= 2")
    return [(1.0 - lam) * a + lam * b for lam in np.linspace(0.0, 1.0, frames).tolist()]


def blend_frames(a: torch.Tensor, b: torch.Tensor, frames: int) -> np.ndarray:
    """Interpolation at t = 0: the exact blends of the inputs, (frames, H, W, C) uint8."""
    return to_uint8(torch.stack(_blends(a.float(), b.float(), frames))).numpy()


def variation_plans(
    model: DiffusionModel, *, t: int, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
) -> tuple[SamplerPlan | None, SamplerPlan | None]:
    """(shared prefix, continuation) of one run of ``steps``, split where it reaches the paper's t:
    the prefix lands on the first timestep at or below t - 1 and the continuation starts there.
    None for a part with no moves: t = T shares x_T only, t = 0 shares the whole chain."""
    num = model.config.diffusion.num_timesteps
    if not 0 <= t <= num:
        raise EditError("t", f"t={t} must be in [0, {num}]")
    s = model.config.sampling
    ts = select_timesteps(num, steps or s.steps, s.spacing)
    moves = np.stack([ts, np.append(ts[1:], DATA)], axis=1)
    if not _plan(model, moves, sampler, eta).stochastic:
        raise EditError("sampler", "variations need a stochastic sampler (ddpm, or ddim with eta > 0)")
    k = int((ts > t - 1).sum())  # moves that start above the shared x_t
    prefix = _plan(model, moves[:k], sampler, eta) if k else None
    cont = _plan(model, moves[k:], sampler, eta) if k < len(ts) else None
    return prefix, cont


def variation_prefix_spec(
    plan: SamplerPlan, *, seed: int, label: int | None = None, guidance: float = 0.0,
) -> RowSpec:
    """The shared chain from x_T down to t; when its row finishes, ``spec.latent_out.latent`` (and
    ``Row.latent``) hold the shared x_t."""
    return RowSpec(plan=plan, seed=seed, label=label, guidance=guidance, latent_out=LatentSink())


def shared_start(model: DiffusionModel, prefix: RowSpec | None, seed: int) -> torch.Tensor:
    """The shared x_t: the finished prefix row's final x, or (no prefix: t = T) the seed's x_T as a
    plain row draws it."""
    if prefix is not None:
        if prefix.latent_out is None or prefix.latent_out.latent is None:
            raise ValueError("the prefix row has not finished, or did not ask for its latent")
        return prefix.latent_out.latent
    return torch.randn(model.image_shape, generator=torch.Generator().manual_seed(seed))


def variation_specs(
    plan: SamplerPlan, xt: torch.Tensor, seeds: Sequence[int], *, label: int | None = None, guidance: float = 0.0,
) -> list[RowSpec]:
    """``len(seeds)`` continuations of the shared ``xt``, each drawing its own noise from its own seed."""
    return [RowSpec(plan=plan, seed=s, label=label, guidance=guidance, start=Start(xt, encode=False))
            for s in seeds]


def run_rows(model: DiffusionModel, specs: Sequence[RowSpec], batch_size: int = 64) -> list[Row]:
    """Run rows offline, ``batch_size`` at a time; the finished rows in the order of ``specs``."""
    if not specs:
        return []
    longest = max(spec.plan.steps for spec in specs)
    batch = model.row_batch(min(batch_size, len(specs)), max_steps=longest)
    done: dict[int, Row] = {}
    pending = list(enumerate(specs))
    while pending or len(batch):
        while pending and batch.free:
            i, spec = pending.pop(0)
            batch.add(spec, tag=i)
        for row in batch.step():
            done[row.tag] = row
    return [done[i] for i in range(len(specs))]


def run_variations(
    model: DiffusionModel, *, t: int, seed: int, n: int, label: int | None = None, guidance: float = 0.0,
    steps: int | None = None, sampler: str | None = "ddpm", eta: float | None = None,
) -> np.ndarray:
    """Offline fig. 7: (n, H, W, C) uint8 continuations of the shared x_t of ``seed``; continuation
    i uses seed + 1 + i. At t = 0 every variation is the seed's own sample."""
    prefix_plan, cont = variation_plans(model, t=t, steps=steps, sampler=sampler, eta=eta)
    prefix = None if prefix_plan is None else variation_prefix_spec(prefix_plan, seed=seed, label=label,
                                                                    guidance=guidance)
    if prefix is not None:
        image = run_rows(model, [prefix])[0].image
        if cont is None:  # t = 0: the whole chain is shared
            assert image is not None
            return np.repeat(image[None], n, axis=0)
    assert cont is not None
    xt = shared_start(model, prefix, seed)
    seeds = [seed + 1 + i for i in range(n)]
    rows = run_rows(model, variation_specs(cont, xt, seeds, label=label, guidance=guidance))
    return np.stack([r.image for r in rows if r.image is not None])
