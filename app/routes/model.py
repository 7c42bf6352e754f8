"""``/v1/model`` (the model card: what is served, how, and within which limits) and ``/v1/schedule``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from model import SAMPLERS, NoiseSchedule
from model.samplers import sampler_descriptions
from model.unet import count_parameters

from ..service import Service


def model_card(service: Service) -> dict[str, Any]:
    c, s, plan, model = service.model.config, service.settings, service.plan, service.model
    denoiser = model.denoiser
    return {
        "name": service.name,
        "checkpoint": service.checkpoint.name,
        "image_size": c.image_size,
        "channels": c.channels,
        "num_classes": c.num_classes,
        "class_names": list(c.class_names) if c.class_names else None,
        "class_aliases": {name: list(aliases) for name, aliases in c.class_aliases.items()},
        "timesteps": c.diffusion.num_timesteps,
        "schedule": c.diffusion.schedule,
        "prediction": c.diffusion.prediction,
        "variance": c.diffusion.variance,
        "parameters": count_parameters(model.unet),
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "runner": {
            **model.runtime_choice.as_dict(),
            "channels_last": denoiser.channels_last,
            "compiled": denoiser.compiled,
            "buckets": list(plan.buckets) if plan.buckets else None,
            "threads": getattr(denoiser, "threads", plan.threads),  # an ONNX session's own, else torch's
            "warmup_seconds": service.warmup_seconds,
            "load_seconds": service.load_seconds,
        },
        "samplers": list(SAMPLERS),
        "sampler_descriptions": sampler_descriptions(),
        "defaults": {"sampler": plan.default_sampler, "steps": plan.default_steps, "eta": c.sampling.eta,
                     "guidance": c.sampling.guidance, "spacing": c.sampling.spacing},
        "limits": {
            "max_images_per_request": plan.admissible_images,
            "max_steps": plan.max_steps,
            "max_batch": plan.max_batch,
            "max_queue_images": plan.max_queue_images,
            "max_guidance": s.max_guidance,
            "request_timeout_s": s.request_timeout_s,
            "max_body_bytes": s.max_body_bytes,
            "max_image_pixels": s.max_image_pixels,
            "max_jumps": s.max_jumps,
            "max_frames": s.max_frames,
        },
        "auth": bool(s.keys),
        "ready": service.ready.is_set(),
        "provenance": c.provenance,
    }


def make_router(service: Service) -> APIRouter:
    router = APIRouter()
    alphas_cumprod = NoiseSchedule.from_config(service.model.config.diffusion).f64.alphas_cumprod.tolist()

    @router.get("/v1/model", summary="Model card and limits")
    async def card() -> dict[str, Any]:
        return model_card(service)

    @router.get("/v1/schedule", summary="The noise schedule: alpha-bar_t for t in [0, T)")
    async def schedule() -> dict[str, Any]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4): enough for a client to show the
        forward process on any image without another round trip per t."""
        c = service.model.config
        return {"timesteps": c.diffusion.num_timesteps, "schedule": c.diffusion.schedule,
                "alphas_cumprod": alphas_cumprod}

    return router
