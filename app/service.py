"""The serving state: settings, model, engine, readiness and draining.

The checkpoint's config is read at once (a missing or corrupt file stops the start with a
clear error, and the request schema needs its bounds); the weights load, and the engine warms
up, on a background thread so that ``/healthz`` answers while ``/readyz`` still says 503.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

from model import DiffusionModel, NoiseSchedule, RowSpec, load_checkpoint, read_config, resolve_device
from model.pipeline import EMBEDDED_CHECKPOINT
from model.unet import count_parameters

from .engine import Engine
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("ddpm.service")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on a GPU that has it (fp16 on one that does not), fp32 on a CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class Service:
    def __init__(self, settings: Settings, model: DiffusionModel | None = None) -> None:
        self.settings = settings
        self.checkpoint = settings.checkpoint or EMBEDDED_CHECKPOINT
        self.config = model.config if model is not None else read_config(self.checkpoint)
        self.metrics = Metrics()
        self.model = model
        self.engine: Engine | None = None
        self.ready = threading.Event()
        self.draining = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        T = self.config.diffusion.num_timesteps
        self.max_steps = min(settings.max_steps or T, T)
        self.default_steps = min(settings.default_steps or self.config.sampling.steps, self.max_steps)
        self.default_sampler = settings.default_sampler or self.config.sampling.sampler
        self.alphas_cumprod = NoiseSchedule.from_config(self.config.diffusion).f64.alphas_cumprod.tolist()

    # ---- start-up ----

    def start(self) -> None:
        threading.Thread(target=self._load, name="ddpm-load", daemon=True).start()

    def _load(self) -> None:
        try:
            start = time.perf_counter()
            if self.settings.threads:
                torch.set_num_threads(self.settings.threads)
            if self.model is None:
                device = resolve_device(self.settings.device)
                self.model = load_checkpoint(
                    self.checkpoint, device=device, dtype=resolve_dtype(self.settings.dtype, device))
            self.engine = Engine(
                self.model,
                max_batch=self.settings.max_batch,
                max_queue_images=self.settings.max_queue_images,
                metrics=self.metrics,
                progress_interval_s=self.settings.progress_interval_s,
                max_steps=self.max_steps,
            )
            self._warm_up(self.model)
            self.engine.start()
            self.load_seconds = time.perf_counter() - start
            self._publish_info(self.model)
            self.ready.set()
            log.info("ready: %s on %s (%s) in %.1fs", self.config.name, self.model.device,
                     str(self.model.dtype).removeprefix("torch."), self.load_seconds)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")

    def _warm_up(self, model: DiffusionModel) -> None:
        """Run every code path once (allocations, kernels, compiled graphs) before reporting ready."""
        batch = model.row_batch(2, max_steps=2)
        labels = [0, None] if model.config.num_classes else [None, None]
        for seed, label in enumerate(labels):
            batch.add(RowSpec(plan=model.plan(self.default_sampler, 2), seed=seed, label=label,
                              guidance=1.0 if label is not None else 0.0))
        while len(batch):
            batch.step()

    def _publish_info(self, model: DiffusionModel) -> None:
        c = self.config
        self.metrics.model_info.labels(
            name=c.name, image_size=str(c.image_size), channels=str(c.channels),
            classes=str(c.num_classes or 0), timesteps=str(c.diffusion.num_timesteps),
            device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
        ).set(1)

    # ---- shutdown ----

    def drain(self, timeout: float) -> bool:
        """Stop taking requests and wait (blocking) until in-flight ones finish; True if they did."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.engine is not None and not self.engine.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.engine is None or self.engine.idle

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    # ---- the model card ----

    def card(self) -> dict[str, Any]:
        c, s = self.config, self.settings
        model = self.model
        return {
            "name": c.name,
            "image_size": c.image_size,
            "channels": c.channels,
            "num_classes": c.num_classes,
            "class_names": list(c.class_names) if c.class_names else None,
            "timesteps": c.diffusion.num_timesteps,
            "schedule": c.diffusion.schedule,
            "prediction": c.diffusion.prediction,
            "variance": c.diffusion.variance,
            "parameters": count_parameters(model.unet) if model else None,
            "device": str(model.device) if model else None,
            "dtype": str(model.dtype).removeprefix("torch.") if model else None,
            "samplers": ["ddpm", "ddim", "dpmpp_2m"],
            "defaults": {"sampler": self.default_sampler, "steps": self.default_steps, "eta": c.sampling.eta,
                         "guidance": c.sampling.guidance, "spacing": c.sampling.spacing},
            "limits": {
                "max_images_per_request": s.max_images_per_request,
                "max_steps": self.max_steps,
                "max_batch": s.max_batch,
                "max_queue_images": s.max_queue_images,
                "max_guidance": s.max_guidance,
                "request_timeout_s": s.request_timeout_s,
                "max_body_bytes": s.max_body_bytes,
            },
            "auth": bool(s.keys),
            "ready": self.ready.is_set(),
            "provenance": c.provenance,
        }
