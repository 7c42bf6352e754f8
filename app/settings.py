"""Server settings, from environment variables prefixed ``DDPM_`` (pydantic-settings).

Every bound the server enforces is here, and ``GET /v1/model`` shows them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.device import DtypeName
from model.modes import SamplerName
from model.validation import error_entries

ENV_PREFIX = "DDPM_"


class Settings(BaseSettings):
    # An empty variable (DDPM_CHECKPOINT= in a compose file) means "unset", not "" or ".".
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    # The model
    checkpoint: Path | None = Field(None, description="a .safetensors checkpoint; empty: the embedded digits model")
    model_name: str | None = Field(None, min_length=1, max_length=128,
                                   description="the name served in /v1/model, metrics and the OpenAI API; "
                                   "empty: the checkpoint's own name")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    dtype: DtypeName = Field(
        "auto", description="network precision; auto: bf16 on a GPU (fp16 where it lacks bf16); on a CPU "
                "bf16 where it runs natively and the network needs >= 1 GFLOP per image, else fp32")
    channels_last: bool = Field(True, description="channels_last memory format (docs/benchmarks.md: as fast "
                                  "or faster than contiguous at serving batch sizes)")
    compile: bool = Field(False, description="torch.compile the network, one graph per batch bucket "
                                             "(slower start, faster steps)")
    compile_cache_dir: Path | None = Field(None, description="where compiled kernels are cached across restarts")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="what runs the network: auto (ONNX Runtime on a CPU where the network runs in "
        "float32, else PyTorch; the rule in model/runtimes/choice.py, measured in docs/benchmarks.md), torch, "
        "onnxruntime, openvino")
    onnx_cache_dir: Path | None = Field(None, description="where the network exported to ONNX is kept across "
                                        "restarts; empty: exported once per process, in memory")
    threads: int | None = Field(None, ge=1, description="CPU threads for the network; empty: 1 for a network "
                                "under 1 GFLOP per image, else the CPUs this process may use (affinity, cgroup quota)")

    # The engine
    max_batch: int | None = Field(None, ge=1, le=4096, description="rows (images) per network call; "
                                  "empty: 64 on a CPU, what free memory holds on a GPU")
    max_queue_images: int = Field(256, ge=0, description="images waiting for a row before 429")
    max_images_per_request: int = Field(16, ge=1, description="largest n of one request (at most "
                                        "max_batch + max_queue_images, which is all a request can be admitted to)")
    max_steps: int | None = Field(None, ge=1, description="largest steps of one request; empty: the model's T")
    default_steps: int | None = Field(None, ge=1, description="empty: the checkpoint's default")
    default_sampler: SamplerName | None = Field(None, description="empty: the checkpoint's default")
    max_guidance: float = Field(50.0, ge=0, description="largest classifier-free guidance weight")
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of a request; a request may ask for less")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    progress_interval_s: float = Field(0.05, ge=0, description="least time between two progress events of a stream")

    # Jobs (POST /v1/jobs): durable queue, fair admission, webhooks
    data_dir: Path = Field(Path("data"), description="where the embedded job store (SQLite) keeps its file")
    redis_url: str | None = Field(None, description="a Redis shared by the replicas for jobs (redis://host:6379/0); "
                                  "empty: the embedded SQLite store, one replica")
    job_ttl_s: float = Field(86400.0, gt=0, description="a job and its images are kept this long after it ends "
                             "(and a queued job expires this long after it was made); then 410")
    job_lease_s: float = Field(30.0, gt=0, description="a replica that has not renewed its claim for this long "
                               "is taken for dead; its job goes to another replica")
    job_max_attempts: int = Field(3, ge=1, description="a job whose replica died this many times fails")
    job_timeout_s: float = Field(3600.0, gt=0, description="deadline of a running job")
    job_poll_s: float = Field(0.25, gt=0, description="how often a replica with free rows looks for jobs")
    job_aging_s: float = Field(30.0, ge=0, description="a job waiting this long is admitted alongside "
                               "interactive requests instead of after them (never starved)")
    max_queued_images_per_key: int | None = Field(
        1024, ge=1, description="images one API key may have waiting (interactive and jobs, each queue "
        "counted apart) before 429; empty: no limit")
    admission_quantum: int = Field(4, ge=1, description="images each waiting key is admitted per round "
                                   "(deficit round robin across keys)")
    webhook_secret: str | None = Field(None, description="Standard Webhooks secret (whsec_ + base64); empty: "
                                       "webhooks refused")
    webhook_allow_private: bool = Field(False, description="let webhooks reach loopback, private, link-local "
                                        "and metadata addresses (a trusted network only)")
    webhook_max_attempts: int = Field(6, ge=1, description="attempts per webhook event before it is dropped")
    webhook_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles per attempt, with jitter")
    webhook_timeout_s: float = Field(10.0, gt=0, description="one webhook attempt: connect, send, read status")

    # Editing (/v1/edits, /v1/interpolations, /v1/variations, /v1/images/edits and /variations)
    max_image_pixels: int = Field(2048 * 2048, ge=1, description="width x height of an uploaded image or mask, "
                                  "read from its header before decoding; above it 413")
    max_jumps: int = Field(50, ge=0, description="largest RePaint jumps of an edit (RePaint's own experiments use "
                           "10; the plan's length is also bounded by max_steps)")
    max_frames: int = Field(64, ge=2, description="largest frames of an interpolation")

    # HTTP
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024, ge=256, description="request bodies above this get 413")
    api_keys: str = Field("", description="comma-separated Bearer tokens; unset or empty: no authentication; "
                          "set but holding no key (\",\" or \" \"): a start-up error, never silently open")
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"

    @model_validator(mode="after")
    def _compile_is_torch(self) -> Settings:
        if self.compile and self.runtime not in ("auto", "torch"):
            raise ValueError(f"compile=true is torch.compile; it does not apply to runtime={self.runtime}")
        return self

    @field_validator("api_keys")
    @classmethod
    def _keys_or_nothing(cls, value: str) -> str:
        # A set variable that holds no key is a mistake (a template left half-filled); failing
        # open would serve everyone, so it stops the start instead.
        if value and not any(k.strip() for k in value.split(",")):
            raise ValueError("is set but holds no key; unset it to turn authentication off")
        return value

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    # ---- Connections (app/edge.py): what a server facing clients with no proxy in front needs ----
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a request's complete "
                                    "headers within this, counted from accept or from the request's first byte")
    keep_alive_timeout_s: int = Field(75, ge=1, description="an idle keep-alive connection is closed after "
                                      "this; above nginx's 60 s keepalive_timeout, so nginx closes first")
    body_grace_s: float = Field(5.0, ge=0, description="time a request body may take before "
                                "min_body_bytes_per_s applies")
    min_body_bytes_per_s: int = Field(1024, ge=1, description="after body_grace_s a body must keep arriving "
                                      "at least this fast, else 408 and the connection is closed")
    max_connections: int = Field(1000, ge=1, description="open connections at once; the excess gets 503 "
                                 "with Connection: close")


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting, named as the operator wrote it: ``DDPM_DTYPE: ... (got 'float8')``."""
    return [ENV_PREFIX + e["field"].upper() + e["msg"][len(e["field"]):] for e in error_entries(exc)]
