"""The serving state: settings, model, engine, readiness and draining.

The checkpoint's config is read at once (a missing or corrupt file stops the start with a
clear error, and the request schema needs its bounds); the weights load, and the engine warms
up, on a background thread so that ``/healthz`` answers while ``/readyz`` still says 503.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch

from model import DiffusionModel, NoiseSchedule, RowSpec, load_checkpoint, read_config
from model.device import configure_threads, rows_that_fit
from model.pipeline import EMBEDDED_CHECKPOINT
from model.runner import Denoiser, default_buckets
from model.unet import count_parameters

from .engine import Engine
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("ddpm.service")


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
        self.warmup_seconds: float | None = None
        self.max_batch = settings.max_batch or 64  # final once the model is on its device
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
            s = self.settings
            if self.model is None:
                self.model = load_checkpoint(self.checkpoint, device=s.device, dtype=s.dtype,
                                             channels_last=s.channels_last)
            model = self.model
            if model.device.type == "cpu":
                configure_threads(s.threads, model.gflops_per_image)
            self.max_batch = s.max_batch or self._default_max_batch(model)
            if s.compile:
                if s.compile_cache_dir:
                    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(s.compile_cache_dir))
                rows = self.max_batch * (2 if model.config.num_classes else 1)  # guidance doubles rows
                model.denoiser = Denoiser(model.unet, dtype=model.dtype, channels_last=model.denoiser.channels_last,
                                          compile=True, buckets=default_buckets(rows))
            self.engine = Engine(
                model,
                max_batch=self.max_batch,
                max_queue_images=s.max_queue_images,
                metrics=self.metrics,
                progress_interval_s=s.progress_interval_s,
                max_steps=self.max_steps,
            )
            self._warm_up(model)
            self.engine.start()
            self.load_seconds = time.perf_counter() - start
            self._publish_info(self.model)
            self.ready.set()
            log.info("ready: %s on %s (%s) in %.1fs", self.config.name, self.model.device,
                     str(self.model.dtype).removeprefix("torch."), self.load_seconds)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")

    def _default_max_batch(self, model: DiffusionModel) -> int:
        if model.device.type != "cuda":
            return 64
        c = model.config
        shape = (c.channels, c.image_size, c.image_size)

        def probe(rows: int) -> None:
            model.denoiser(torch.zeros((rows, *shape), device=model.device),
                           torch.zeros(rows, dtype=torch.long, device=model.device),
                           torch.zeros(rows, dtype=torch.long, device=model.device) if c.num_classes else None)

        fit = rows_that_fit(probe, model.device)
        return max(1, fit // (2 if c.num_classes else 1))

    def _warm_up(self, model: DiffusionModel) -> None:
        """Run every code path once (allocations, kernels, compiled graphs) before reporting ready."""
        c = model.config
        self.warmup_seconds = model.denoiser.warm_up((c.channels, c.image_size, c.image_size),
                                                     conditional=c.num_classes is not None)
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
            "runner": {
                "channels_last": model.denoiser.channels_last,
                "compiled": model.denoiser.compiled,
                "buckets": model.denoiser.buckets,
                "threads": torch.get_num_threads(),
                "warmup_seconds": self.warmup_seconds,
                "load_seconds": self.load_seconds,
            } if model else None,
            "samplers": ["ddpm", "ddim", "dpmpp_2m"],
            "defaults": {"sampler": self.default_sampler, "steps": self.default_steps, "eta": c.sampling.eta,
                         "guidance": c.sampling.guidance, "spacing": c.sampling.spacing},
            "limits": {
                "max_images_per_request": s.admissible_images,
                "max_steps": self.max_steps,
                "max_batch": self.max_batch,
                "max_queue_images": s.max_queue_images,
                "max_guidance": s.max_guidance,
                "request_timeout_s": s.request_timeout_s,
                "max_body_bytes": s.max_body_bytes,
            },
            "auth": bool(s.keys),
            "ready": self.ready.is_set(),
            "provenance": c.provenance,
        }
