"""Prometheus metrics (prefix ``ddpm_``), in a registry of their own per server instance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from model import DiffusionModel

# Requests can wait in a queue and run 1000 steps: latency buckets reach ten minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ddpm_requests", "Generation requests by API (native, openai), final HTTP status and sampler",
            ["api", "status", "sampler"],
            registry=r)
        self.request_duration = Histogram(
            "ddpm_request_duration_seconds", "Time from admission to response, per request",
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "ddpm_queue_wait_seconds", "Time a request waited before its first row ran",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "ddpm_batch_size", "Rows (images) in each network call", buckets=BATCH_BUCKETS, registry=r)
        self.step_duration = Histogram(
            "ddpm_step_duration_seconds", "Time of one engine iteration: one network call and the update",
            buckets=STEP_BUCKETS, registry=r)
        self.images = Counter("ddpm_images", "Images generated", registry=r)
        self.queue_images = Gauge("ddpm_queue_images", "Images admitted but waiting for a row, by class "
                                  "(interactive: /generate; job: /v1/jobs)", ["class"], registry=r)
        for cls in ("interactive", "job"):  # both series exist from the start, at 0
            self.queue_images.labels(**{"class": cls})
        # Jobs: never a label per key or per job (cardinality). ddpm_jobs{status} (queued, running: the
        # whole store's) is read from the store at each scrape (app.job_service.JobsCollector).
        self.jobs_finished = Counter("ddpm_jobs_finished", "Jobs this replica ended, by final status",
                                     ["status"], registry=r)
        self.webhook_deliveries = Counter(
            "ddpm_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, failed, refused)",
            ["outcome"], registry=r)
        # Every known label value exists from the start at 0, so that rate() and the dashboards
        # show a flat line, not "no data", on a replica that has not ended a job or sent a webhook.
        for status in ("succeeded", "failed", "canceled"):
            self.jobs_finished.labels(status=status)
        for outcome in ("delivered", "retry", "failed", "refused"):
            self.webhook_deliveries.labels(outcome=outcome)
        self.active_images = Gauge("ddpm_active_images", "Images being sampled now", registry=r)
        self.model_info = Gauge(
            "ddpm_model_info", "The loaded model (value 1)",
            ["name", "image_size", "channels", "classes", "timesteps", "device", "dtype"], registry=r)

    def publish_model(self, name: str, model: DiffusionModel) -> None:
        c = model.config
        self.model_info.labels(
            name=name, image_size=str(c.image_size), channels=str(c.channels),
            classes=str(c.num_classes or 0), timesteps=str(c.diffusion.num_timesteps),
            device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
        ).set(1)
