"""The editing API's bodies (issue 16) and how each becomes rows; no routes here (``app.routes.edits``).

``prepare_now`` is the one code path from a body to its rows (or its first phase), shared by the
HTTP routes (which run it off the event loop) and by the job pump (``app.edit_jobs``), so a job's
images are those of the native endpoint for the same body and seed.

Bounds that do not depend on the server are in the schema; those that do (n, steps, label,
guidance, the plan's length with jumps) are checked against the runtime plan and refused as
``InvalidRequest`` naming the field, the same 422 as a schema error. Upload problems are
``model.image_input.ImageInputError`` (413 when too large, else 422), mapped in ``http_errors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model import RowSpec
from model.editing import (
    EditError,
    blend_frames,
    edit_specs,
    interpolation_specs,
    shared_start,
    variation_plans,
    variation_prefix_spec,
    variation_specs,
)
from model.image_input import (
    ImageInputError,
    ImageLimits,
    decode_base64,
    mask_tensor,
    read_image_and_mask,
    to_model_range,
)
from model.modes import SamplerName

from .errors import InvalidRequest, UploadTooLarge
from .generation import MAX_SEED, GenerationParams, Resolved, resolve
from .schemas import JsonInt, ResponseFormat
from .service import Service

# Numbers are JSON numbers, as in /generate's body (app.schemas): "4" and true are refused.
JSON_NUMBER = JsonInt.__metadata__[0]  # type: ignore[attr-defined]  # the BeforeValidator of JsonInt
# jumps and frames are bounded by the settings DDPM_MAX_JUMPS and DDPM_MAX_FRAMES (check_bounds),
# upload pixels by DDPM_MAX_IMAGE_PIXELS (limits); the schema holds only what no setting changes.


class Common(BaseModel):
    """The fields every editing request shares with /generate."""

    model_config = ConfigDict(extra="forbid")

    seed: Annotated[int, Field(ge=0, le=MAX_SEED), JSON_NUMBER] | None = None
    label: Annotated[int, Field(ge=0), JSON_NUMBER] | None = None
    guidance: Annotated[float, Field(ge=0, allow_inf_nan=False), JSON_NUMBER] | None = None
    steps: Annotated[int, Field(ge=1), JSON_NUMBER] | None = None
    sampler: SamplerName | None = None
    eta: Annotated[float, Field(ge=0, le=1), JSON_NUMBER] | None = None
    response_format: ResponseFormat = "png"
    timeout_s: Annotated[float, Field(ge=1.0, allow_inf_nan=False), JSON_NUMBER] | None = None
    preview_every: Annotated[int, Field(ge=0), JSON_NUMBER] = 0

    def params(self, n: int) -> GenerationParams:
        return GenerationParams(n=n, seed=self.seed, steps=self.steps, sampler=self.sampler, eta=self.eta,
                                label=self.label, guidance=self.guidance, timeout_s=self.timeout_s,
                                preview_every=self.preview_every)


class EditBody(Common):
    """``POST /v1/edits``: without a mask SDEdit, with one RePaint (white = regenerate)."""

    image: str = Field(description="base64 PNG or JPEG (a data: URL is accepted)")
    mask: str | None = Field(None, description="base64 PNG, the image's size; white = regenerate")
    strength: Annotated[float, Field(gt=0, le=1), JSON_NUMBER] | None = Field(
        None, description="start at t = strength x T; null: 0.5 without a mask, 1 with one")
    n: Annotated[int, Field(ge=1), JSON_NUMBER] = 1
    jumps: Annotated[int, Field(ge=0), JSON_NUMBER] = Field(
        0, description="RePaint's resampling; 0: off; at most DDPM_MAX_JUMPS (default 50)")
    jump_length: Annotated[int, Field(ge=1, le=1000), JSON_NUMBER] = 10
    resize: bool = Field(False, description="scale (and convert) the image to the model's size and mode")


class End(BaseModel):
    """One end of an interpolation: an uploaded image, or a sample drawn with this seed first."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), JSON_NUMBER] | None = None

    @model_validator(mode="after")
    def one_of(self) -> End:
        if (self.image is None) == (self.seed is None):
            raise ValueError("give exactly one of image and seed")
        return self


class InterpolationBody(Common):
    """``POST /v1/interpolations``: sec. 4.3, fig. 8."""

    a: End
    b: End
    t: Annotated[int, Field(ge=0), JSON_NUMBER] | None = Field(
        None, description="encode to step t; null: T/2; 0: the blend")
    frames: Annotated[int, Field(ge=2), JSON_NUMBER] = Field(11, description="at most DDPM_MAX_FRAMES (default 64)")
    resize: bool = False


class VariationBody(Common):
    """``POST /v1/variations``: fig. 7, continuations of one shared x_t."""

    t: Annotated[int, Field(ge=0), JSON_NUMBER] | None = Field(None, description="share x_t; null: T/2")
    n: Annotated[int, Field(ge=1), JSON_NUMBER] = 4
    sampler: SamplerName | None = Field("ddpm", description="must draw noise: ddpm, or ddim with eta > 0")


def check_bounds(service: Service, body: Common, n: int, field_n: str = "n") -> None:
    """The server's bounds, as InvalidRequest naming the field (the schema's own 422 shape)."""
    plan, config = service.plan, service.model.config
    if n > plan.admissible_images:
        raise InvalidRequest(field_n, f"{n} images; this server takes at most {plan.admissible_images}")
    if body.steps is not None and body.steps > plan.max_steps:
        raise InvalidRequest("steps", f"steps={body.steps} must be <= {plan.max_steps}")
    problem = config.label_problem(body.label)
    if problem:
        raise InvalidRequest("label", problem)
    if body.guidance is not None and body.guidance > service.settings.max_guidance:
        raise InvalidRequest("guidance", f"guidance={body.guidance} must be <= {service.settings.max_guidance}")
    check_editing_limits(service, body)
    num = config.diffusion.num_timesteps
    t = getattr(body, "t", None)
    if t is not None and t > num:
        raise InvalidRequest("t", f"t={t} must be <= {num}")


def check_editing_limits(service: Service, body: Common) -> None:
    """``jumps`` and ``frames`` against their settings, as InvalidRequest naming the field and the limit."""
    s = service.settings
    jumps, frames = getattr(body, "jumps", 0), getattr(body, "frames", 2)
    if jumps > s.max_jumps:
        raise InvalidRequest("jumps", f"jumps={jumps} must be <= {s.max_jumps} (DDPM_MAX_JUMPS)")
    if frames > s.max_frames:
        raise InvalidRequest("frames", f"frames={frames} must be <= {s.max_frames} (DDPM_MAX_FRAMES)")


def limits(service: Service) -> ImageLimits:
    """An upload's bounds: DDPM_MAX_IMAGE_PIXELS, and bytes under the body limit."""
    s = service.settings
    return ImageLimits(max_bytes=min(ImageLimits().max_bytes, s.max_body_bytes), max_pixels=s.max_image_pixels,
                       pixels_setting="DDPM_MAX_IMAGE_PIXELS")


def decode_edit_inputs(service: Service, body: EditBody) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image, mask or None) as the tensors model.editing takes; runs off the event loop."""
    lim = limits(service)
    image = decode_base64(body.image, "image", lim)
    mask = None if body.mask is None else decode_base64(body.mask, "mask", lim)
    pixels, m = read_image_and_mask(image, mask, service.model.image_shape, resize=body.resize, limits=lim)
    return to_model_range(pixels), None if m is None else mask_tensor(m)


def decode_end(service: Service, end: End, field: str, resize: bool) -> torch.Tensor:
    assert end.image is not None
    lim = limits(service)
    data = decode_base64(end.image, f"{field}.image", lim)
    pixels, _ = read_image_and_mask(data, None, service.model.image_shape, resize=resize, limits=lim,
                                    fields=(f"{field}.image", "mask"))
    return to_model_range(pixels)


@dataclass
class Built:
    """What a request runs: its rows, or (an interpolation at t = 0) its finished frames."""

    resolved: Resolved
    specs: list[RowSpec] = field(default_factory=list)
    ready: list[np.ndarray] = field(default_factory=list)


@dataclass
class FirstPhase:
    """Rows a request runs before its own, whose images ``then`` turns into the request's rows:
    ``"ends"``, an interpolation's seeded end samples; ``"shared"``, variations' shared chain.
    ``seeds``: what the request's own images will report (known before the first phase runs)."""

    name: str
    resolved: Resolved
    specs: list[RowSpec]
    then: Callable[[list[np.ndarray]], Built]
    seeds: tuple[int, ...] = ()


def with_seeds(resolved: Resolved, seeds: list[int]) -> Resolved:
    """The seeds a phase reports (frames share one; continuations have their own)."""
    return replace(resolved, seeds=tuple(seeds))


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """model/'s refusals become the HTTP layer's domain errors (statuses in app.http_errors)."""
    try:
        yield
    except ImageInputError as exc:
        raise UploadTooLarge(str(exc)) if exc.too_large else InvalidRequest(exc.field, _reason(exc)) from exc
    except EditError as exc:
        raise InvalidRequest(exc.field, _reason(exc)) from exc


def _reason(exc: Exception) -> str:
    return str(exc).partition(": ")[2]


def prepare_now(service: Service, body: Common) -> Built | FirstPhase:
    """Everything that can refuse the request, before anything runs (blocking: it decodes the
    uploads; the routes call it off the event loop, the job pump on its own thread)."""
    with refusals():
        if isinstance(body, EditBody):
            prepared: Built | FirstPhase = build_edit(service, body)
        elif isinstance(body, InterpolationBody):
            prepared = prepare_interpolation(service, body)
        else:
            assert isinstance(body, VariationBody)
            prepared = prepare_variations(service, body)
    check_plan_length(service, prepared.specs)
    return prepared


def then_now(phase: FirstPhase, images: list[np.ndarray]) -> Built:
    """The request's own rows once its first phase is done."""
    with refusals():
        return phase.then(images)


def check_plan_length(service: Service, specs: list[RowSpec]) -> None:
    longest = max((s.plan.steps for s in specs), default=0)
    if longest > service.plan.max_steps:
        raise InvalidRequest("jumps", f"the plan has {longest} row-steps with its jumps; this server runs at "
                                      f"most {service.plan.max_steps}: fewer steps or jumps")


def build_edit(service: Service, body: EditBody) -> Built:
    check_bounds(service, body, body.n)
    r = resolve(body.params(body.n), service)
    image, mask = decode_edit_inputs(service, body)
    return Built(r, edit_specs(service.model, image, mask, n=body.n, seed=r.seeds[0], strength=body.strength,
                               jumps=body.jumps, jump_length=body.jump_length, label=r.label,
                               guidance=r.guidance, steps=r.steps, sampler=r.sampler, eta=r.eta))


def prepare_interpolation(service: Service, body: InterpolationBody) -> Built | FirstPhase:
    check_bounds(service, body, body.frames, "frames")
    model = service.model
    t = model.config.diffusion.num_timesteps // 2 if body.t is None else body.t
    base = resolve(body.params(1), service)
    ends = {name: decode_end(service, end, name, body.resize)
            for name, end in (("a", body.a), ("b", body.b)) if end.image is not None}
    seeded = [(name, end.seed) for name, end in (("a", body.a), ("b", body.b)) if end.seed is not None]
    r = with_seeds(base, [base.seeds[0]] * body.frames)

    def frames(drawn: list[np.ndarray]) -> Built:
        both = {**ends, **{name: to_model_range(im) for (name, _), im in zip(seeded, drawn, strict=True)}}
        if t == 0:
            return Built(r, ready=list(blend_frames(both["a"], both["b"], body.frames)))
        return Built(r, interpolation_specs(model, both["a"], both["b"], t=t, frames=body.frames,
                                            seed=base.seeds[0], label=r.label, guidance=r.guidance, steps=r.steps,
                                            sampler=r.sampler, eta=r.eta))

    if not seeded:
        return frames([])
    # The seeded ends are those seeds' /generate images, drawn first with the request's label.
    plan = model.plan(base.sampler, base.steps, base.eta)
    specs = [RowSpec(plan=plan, seed=s, label=base.label, guidance=base.guidance) for _, s in seeded]
    return FirstPhase("ends", with_seeds(base, [s for _, s in seeded]), specs, frames, r.seeds)


def prepare_variations(service: Service, body: VariationBody) -> Built | FirstPhase:
    check_bounds(service, body, body.n)
    model = service.model
    t = model.config.diffusion.num_timesteps // 2 if body.t is None else body.t
    base = resolve(body.params(1), service)
    seed = base.seeds[0]
    if seed + body.n > MAX_SEED:  # the continuations report seed + 1 .. seed + n
        raise InvalidRequest("seed", f"seed + n must be <= {MAX_SEED} (continuation i uses seed + 1 + i)")
    r = with_seeds(base, [seed + 1 + i for i in range(body.n)])
    prefix_plan, cont = variation_plans(model, t=t, steps=r.steps, sampler=r.sampler, eta=r.eta)
    if prefix_plan is None:  # t = T: nothing is shared but x_T itself
        assert cont is not None
        return Built(r, variation_specs(cont, shared_start(model, None, seed), list(r.seeds), label=r.label,
                                        guidance=r.guidance))
    prefix = variation_prefix_spec(prefix_plan, seed=seed, label=r.label, guidance=r.guidance)
    whole = with_seeds(base, [seed] * body.n)  # t = 0: the whole chain is shared

    def continuations(shared: list[np.ndarray]) -> Built:
        if cont is None:  # every variation is that one sample
            return Built(whole, ready=shared * body.n)
        return Built(r, variation_specs(cont, shared_start(model, prefix, seed), list(r.seeds), label=r.label,
                                        guidance=r.guidance))

    return FirstPhase("shared", with_seeds(base, [seed]), [prefix], continuations,
                      (whole if cont is None else r).seeds)
