"""The serving state's life cycle: load, warm up, ready, drain, close.

``Service.open`` loads and checks the model before the port opens, so a checkpoint or a
setting that cannot serve stops the start with one line (``ddpm serve`` exits 2). Warm-up (and
compilation, when on) runs on a background thread, so ``/healthz`` answers while ``/readyz``
still says 503; a failure there is reported through ``on_fatal`` so the process exits instead
of lingering unready.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model import DiffusionModel, RowSpec, load_checkpoint
from model.device import configure_threads, resolve_device
from model.pipeline import EMBEDDED_CHECKPOINT
from model.runner import Denoiser
from model.runtimes import RuntimeOptions

from .admission import FairQueue
from .engine import Engine
from .errors import Unavailable
from .metrics import Metrics
from .runtime import RuntimePlan
from .settings import Settings

log = logging.getLogger("ddpm.service")
RETRY_WHILE_UNAVAILABLE_S = 5


class Service:
    def __init__(self, settings: Settings, model: DiffusionModel, checkpoint: Path) -> None:
        self.settings = settings
        self.model = model
        self.checkpoint = checkpoint
        self.name = settings.model_name or model.config.name
        threads = (configure_threads(settings.threads, model.gflops_per_image) if model.device.type == "cpu"
                   else torch.get_num_threads())
        self.plan = RuntimePlan.resolve(settings, model, threads)
        self.metrics = Metrics()
        admission = FairQueue(quantum=settings.admission_quantum,
                              max_queued_per_key=settings.max_queued_images_per_key,
                              job_aging_s=settings.job_aging_s)
        self.engine = Engine(model, self.plan, self.metrics, admission)
        self.ready = threading.Event()
        self.draining = False
        self.failure: str | None = None  # why warm-up failed, once it has
        self.on_fatal: Callable[[str], None] | None = None
        self.load_seconds = 0.0
        self.warmup_seconds: float | None = None

    @classmethod
    def open(cls, settings: Settings, model: DiffusionModel | None = None) -> Service:
        """Load the model (or take ``model`` as built) and resolve the runtime plan; raises on any error."""
        start = time.perf_counter()
        checkpoint = Path(settings.checkpoint or EMBEDDED_CHECKPOINT)
        if model is None:
            device = resolve_device(settings.device, "DDPM_DEVICE")
            # Compilation is torch's and happens at warm-up, once the batch buckets are known.
            runtime = "torch" if settings.compile else settings.runtime
            model = load_checkpoint(checkpoint, device=device, dtype=settings.dtype,
                                    channels_last=settings.channels_last, runtime=runtime,
                                    runtime_options=RuntimeOptions(threads=settings.threads,
                                                                   cache_dir=settings.onnx_cache_dir))
        service = cls(settings, model, checkpoint)
        service.load_seconds = time.perf_counter() - start
        auth = f"on ({len(settings.keys)} keys)" if settings.keys else "off"
        choice = model.runtime_choice
        log.info("loaded %s: %s on %s (%s), runtime %s (%s), max_batch %d, authentication %s", checkpoint,
                 service.name, model.device, str(model.dtype).removeprefix("torch."), choice.name, choice.reason,
                 service.plan.max_batch, auth)
        return service

    # ---- start-up ----

    def start(self) -> None:
        threading.Thread(target=self._warm_up_and_start, name="ddpm-warmup", daemon=True).start()

    def _warm_up_and_start(self) -> None:
        try:
            start = time.perf_counter()
            self._warm_up()
            self.engine.start()
            self.warmup_seconds = time.perf_counter() - start
            self.metrics.publish_model(self.name, self.model)
            self.ready.set()
            log.info("ready in %.1fs (warm-up %.1fs)", self.load_seconds + self.warmup_seconds, self.warmup_seconds)
        except Exception as exc:
            self.failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.error("%s", self.failure)
            if self.on_fatal is not None:
                self.on_fatal(self.failure)

    def _warm_up(self) -> None:
        """Run every code path once (allocations, kernels, compiled graphs) before reporting ready."""
        model, plan = self.model, self.plan
        if plan.buckets is not None:
            if self.settings.compile_cache_dir:
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.settings.compile_cache_dir))
            assert isinstance(model.denoiser, Denoiser)  # compile is torch's: Settings refuses other runtimes
            model.denoiser.compile(plan.buckets)
        model.denoiser.warm_up(model.image_shape, conditional=plan.conditional)
        batch = model.row_batch(2, max_steps=2)
        labels = [0, None] if plan.conditional else [None, None]
        for seed, label in enumerate(labels):
            batch.add(RowSpec(plan=model.plan(plan.default_sampler, 2), seed=seed, label=label,
                              guidance=1.0 if label is not None else 0.0))
        while len(batch):
            batch.step()

    def check_accepting(self) -> None:
        """Raise Unavailable unless new generations can be taken now."""
        if self.draining:
            raise Unavailable("draining: the server is shutting down", retry_after=RETRY_WHILE_UNAVAILABLE_S)
        if not self.ready.is_set():
            raise Unavailable(f"not ready: {self.failure or 'the model is warming up'}",
                              retry_after=RETRY_WHILE_UNAVAILABLE_S)

    # ---- shutdown ----

    def drain(self, timeout: float) -> bool:
        """Stop taking requests and wait (blocking) until in-flight ones finish; True if they did."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while not self.engine.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.engine.idle

    def close(self) -> None:
        """Stop the engine: whatever still waits or runs fails with Unavailable (503)."""
        self.engine.stop()
