"""The rendered manifests against live processes on loopback (no cluster here; docs/scaling.md).

- ``ddpm serve`` with exactly the environment the cpu overlay's Deployment gives its container
  (the ConfigMap, the Secret's keys; volume paths and the port remapped), probed on the
  manifest's schedule as a kubelet would, then stopped as Kubernetes stops a pod: the preStop
  pause, SIGTERM, and the grace period, with requests in flight.
- Prometheus scraping two such replicas as the ServiceMonitor tells the operator to; every query
  of the KEDA trigger, the HPA's prometheus-adapter rule and the dashboard returns series.
- redis-server holding the job stream and consumer group the KEDA Redis trigger names.
- nginx configured with the directives ingress-nginx derives from the Ingress's annotations, in
  front of such a pod: events unbuffered, the server's 413 below the Ingress's body limit.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from . import daemons
from .deploy_files import ROOT
from .k8s_files import (
    K8S,
    NO_KUBECTL,
    OVERLAYS,
    kubectl,
    manifest_env,
    one,
    render,
    server_container,
    service_monitor_scrape_config,
)
from .live import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(kubectl() is None, reason=NO_KUBECTL)]

KEY = "k8s-test-key"
SECRETS = {"api-keys": KEY, "webhook-secret": "whsec_" + base64.b64encode(b"k8s-test-webhook-secret!").decode()}
AUTH = {"Authorization": f"Bearer {KEY}"}
# Seconds of work even on ONNX Runtime (the embedded network's CPU runtime: 8 rows x 1000 steps
# take ~1.6 s here), so that requests are still in flight when a probe or a scrape looks.
LONG: dict[str, Any] = {"n": 16, "steps": 1000, "sampler": "ddpm", "seed": 7}
HELD_STREAMS = 3


@contextmanager
def pod_process(tmp: Path, name: str) -> Iterator[tuple[str, subprocess.Popen[bytes], dict[str, Any]]]:
    """``ddpm serve`` as the cpu overlay's container: the manifest's environment and nothing of
    ours (no DDPM_* of the test run), its volumes as directories under ``tmp``."""
    docs = render("cpu")
    container = server_container(docs)
    mounts = {m["mountPath"]: tmp / name / m["name"] for m in container["volumeMounts"]}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    env = manifest_env(docs, SECRETS, mounts)
    port = free_port()
    env["DDPM_PORT"] = str(port)  # remapped: every pod has 8000, here they share one host
    base = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:  # the image's CMD is `ddpm serve`, the image's DDPM_HOST 0.0.0.0
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1"], cwd=ROOT,
                                env={**base, **env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc, container
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def probe_ok(url: str, spec: dict[str, Any]) -> bool:
    """One kubelet HTTP probe: success is a status from 200 to 399 within timeoutSeconds."""
    try:
        r = httpx.get(url + spec["httpGet"]["path"], timeout=spec["timeoutSeconds"])
    except httpx.TransportError:
        return False
    return 200 <= r.status_code < 400


def run_startup_probe(url: str, spec: dict[str, Any], proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """The startup probe on its schedule until it succeeds; (failures before, seconds taken).
    Fails as the kubelet would restart the container: after failureThreshold failures."""
    start = time.monotonic()
    failures = 0
    while True:
        assert proc.poll() is None, "the server exited during start-up"
        if probe_ok(url, spec):
            return failures, time.monotonic() - start
        failures += 1
        assert failures < spec["failureThreshold"], "the kubelet would restart the container now"
        time.sleep(spec["periodSeconds"])


def post_async(url: str, body: dict[str, Any], results: list[int]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=300) as c:
            results.append(c.post(f"{url}/generate", json=body, headers=AUTH).status_code)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drain_work(url: str, seconds: float = 8.0) -> dict[str, Any]:
    """LONG with its steps cut so that two such requests take about ``seconds`` here and now: in
    flight when SIGTERM comes (3 s after they are sent), done well within the manifest's drain
    timeout (30 s) however busy the machine is, since it is measured on the same machine."""
    body = {**LONG, "steps": 20}
    start = time.monotonic()
    assert httpx.post(f"{url}/generate", json=body, headers=AUTH, timeout=60).status_code == 200
    step_s = 2 * (time.monotonic() - start) / body["steps"]  # two requests: twice the rows per step
    return {**LONG, "steps": max(20, min(1000, round(seconds / step_s)))}


def gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.timeout(400)
def test_the_deployment_starts_serves_and_drains_on_its_probes_and_grace_period(tmp_path: Path) -> None:
    pod = one(render("cpu"), "Deployment")["spec"]["template"]["spec"]
    with pod_process(tmp_path, "ddpm-0") as (url, proc, c):
        failures, took = run_startup_probe(url, c["startupProbe"], proc)
        # Green only when the model is loaded and warmed up, and the other probes with it.
        card = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=10).json()
        assert card["ready"] is True and card["auth"] is True
        assert probe_ok(url, c["readinessProbe"]) and probe_ok(url, c["livenessProbe"])
        assert httpx.post(f"{url}/generate", json={"steps": 2}, timeout=30).status_code == 401  # the Secret's key
        # The pod is deleted: the preStop pause first, serving all along (endpoints are still
        # being updated), and requests arriving late in it are in flight at SIGTERM.
        work = drain_work(url)
        deleted = time.monotonic()
        pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        results: list[int] = []
        threads: list[threading.Thread] = []
        during_pause = []
        while time.monotonic() - deleted < pause:
            during_pause.append(probe_ok(url, c["readinessProbe"]))
            if not threads and time.monotonic() - deleted > pause - 3:
                threads = [post_async(url, {**work, "seed": i}, results) for i in range(2)]
            time.sleep(0.5)
        assert all(during_pause), "the pod stopped being ready before SIGTERM"
        wait_for(lambda: gauge(url, "ddpm_active_images") == 2 * LONG["n"], 30, "requests not in flight")
        proc.send_signal(signal.SIGTERM)
        # The next readiness probe fails (endpoints drop it) while liveness stays green: the
        # kubelet must not restart a draining pod. New requests get 503 with Retry-After.
        time.sleep(c["readinessProbe"]["periodSeconds"] / 5)
        assert not probe_ok(url, c["readinessProbe"]) and probe_ok(url, c["livenessProbe"])
        late = httpx.post(f"{url}/generate", json={"steps": 2}, headers=AUTH, timeout=30)
        assert late.status_code == 503 and late.headers["retry-after"]
        grace = pod["terminationGracePeriodSeconds"]
        code = proc.wait(timeout=max(1.0, grace - (time.monotonic() - deleted)))
        for t in threads:
            t.join(30)
        exited = time.monotonic() - deleted
    assert results == [200, 200], (results, work)  # admitted before SIGTERM: finished, not cut off
    # uvicorn ends by re-raising the signal it caught: "terminated by SIGTERM" (143 in a container).
    assert code in (0, -signal.SIGTERM) and exited < grace, (code, exited, grace)
    assert "all requests finished" in (tmp_path / "ddpm-0.log").read_text()
    print(f"startup probe: {failures} failures, {took:.1f} s; deleted to exit {exited:.1f} s of {grace} s")


@pytest.fixture(scope="module")
def two_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("pods")
    with ExitStack() as stack:
        pods = {name: stack.enter_context(pod_process(tmp, name)) for name in ("ddpm-0", "ddpm-1")}
        for url, proc, c in pods.values():
            run_startup_probe(url, c["startupProbe"], proc)
        yield {name: url for name, (url, _, _) in pods.items()}


def autoscaler_queries() -> set[str]:
    """The KEDA Prometheus triggers' queries of every overlay (they are one query today)."""
    return {t["metadata"]["query"] for o in OVERLAYS for d in render(o) if d["kind"] == "ScaledObject"
            for t in d["spec"]["triggers"] if t["type"] == "prometheus"}


@pytest.mark.timeout(300)
def test_prometheus_answers_every_autoscaler_and_dashboard_query(two_pods: dict[str, str], tmp_path: Path) -> None:
    prometheus, promtool = daemons.tool("prometheus"), daemons.tool("promtool")
    if not (prometheus and promtool):
        pytest.skip("prometheus/promtool are not installed (Debian: apt-get install prometheus)")
    docs = render("cpu")
    config = service_monitor_scrape_config(one(docs, "ServiceMonitor"), one(docs, "Service"),
                                           {name: url.removeprefix("http://") for name, url in two_pods.items()})
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    url0 = two_pods["ddpm-0"]
    for url in two_pods.values():  # series for the counters: a 200 and a 401 on each replica
        assert httpx.post(f"{url}/generate", json={"steps": 2}, headers=AUTH, timeout=60).status_code == 200
        assert httpx.post(f"{url}/generate", json={"steps": 2}, timeout=60).status_code == 401
    with daemons.prometheus(prometheus, path, tmp_path, free_port()) as prom, \
            httpx.Client(timeout=300) as client, ExitStack() as holding:
        for i in range(HELD_STREAMS):
            held = holding.enter_context(client.stream("POST", f"{url0}/generate/stream",
                                                       json={**LONG, "seed": i}, headers=AUTH))
            assert held.status_code == 200
        images_held = HELD_STREAMS * LONG["n"]

        def query(expr: str) -> list[dict[str, Any]]:
            body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert body["status"] == "success", (expr, body)
            return list(body["data"]["result"])

        def targets_up() -> bool:
            active = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        wait_for(targets_up, 40, "Prometheus never scraped both pods")
        # The KEDA trigger: one series, the images the replicas hold (all running on ddpm-0).
        for expr in autoscaler_queries():
            wait_for(lambda e=expr: [float(s["value"][1]) for s in query(e)] == [images_held], 60,
                     f"{expr} never counted the {images_held} images held")
        # The HPA's rule as prometheus-adapter fills it in for the Deployment's pods: one series per pod.
        rule = yaml.safe_load((K8S / "components" / "hpa" / "prometheus-adapter-rules.yaml").read_text())
        (custom,) = rule["rules"]["custom"]
        expr = custom["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="ddpm", pod=~"ddpm-0|ddpm-1"') \
            .replace("<<.GroupBy>>", "pod")
        per_pod = {s["metric"]["pod"]: float(s["value"][1]) for s in query(expr)}
        assert per_pod == {"ddpm-0": images_held, "ddpm-1": 0.0}, per_pod
        assert query(custom["seriesQuery"]), custom["seriesQuery"]
        # A 429 (ddpm-1's rows and queue full) and a 504 (a deadline passed), for the error panels.
        url1 = two_pods["ddpm-1"]
        with ExitStack() as streams:
            for i in range(20):  # 20 x 16 images: 64 rows running, 256 waiting, the queue's limit
                stream = streams.enter_context(client.stream(
                    "POST", f"{url1}/generate/stream", json={"n": 16, "steps": 1000, "sampler": "ddpm", "seed": i},
                    headers=AUTH))
                assert stream.status_code == 200
            assert httpx.post(f"{url1}/generate", json={"steps": 2}, headers=AUTH, timeout=30).status_code == 429
        late = {"steps": 1000, "sampler": "ddpm", "timeout_s": 1}
        assert httpx.post(f"{url0}/generate", json=late, headers=AUTH, timeout=60).status_code == 504
        # The dashboard, from the rendered ConfigMap: every panel's query returns series.
        time.sleep(11)  # two scrapes since the counters moved, for rate()
        dashboard = json.loads(one(docs, "ConfigMap", "ddpm-grafana-dashboard")["data"]["ddpm.json"])
        empty = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])
                 if not query(t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*"))]
        assert empty == [], empty


@pytest.mark.timeout(60)
def test_redis_reports_the_backlog_the_keda_redis_trigger_reads(tmp_path: Path) -> None:
    server = daemons.tool("redis-server")
    if not server:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    import redis

    docs = render("gpu-jobs")
    (trigger,) = [t for t in one(docs, "ScaledObject")["spec"]["triggers"] if t["type"] == "redis-streams"]
    meta = trigger["metadata"]
    host, port_text = meta["address"].rsplit(":", 1)
    service = one(docs, "Service", host.split(".")[0])
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert int(port_text) == service["spec"]["ports"][0]["port"]
    settings = one(docs, "ConfigMap", server_container(docs)["envFrom"][0]["configMapRef"]["name"])["data"]
    assert settings["DDPM_REDIS_URL"].startswith(f"redis://{service['metadata']['name']}:{port_text}/")
    port = free_port()
    with daemons.daemon([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                        tmp_path / "redis.log", tmp_path) as proc:
        r = redis.Redis(port=port)
        daemons.wait_until(lambda: bool(r.ping()), 15, "redis", proc, tmp_path / "redis.log")
        r.xgroup_create(meta["stream"], meta["consumerGroup"], id="0", mkstream=True)
        for i in range(5):
            r.xadd(meta["stream"], {"job": f"j{i}"})
        r.xreadgroup(meta["consumerGroup"], "engine-0", {meta["stream"]: ">"}, count=2)
        (group,) = r.xinfo_groups(meta["stream"])
        # KEDA's lagCount reads the group's lag: jobs no engine has taken yet (pending: taken, not done).
        assert (group["lag"], group["pending"]) == (3, 2)
        assert int(meta["lagCount"]) >= 1 and int(meta["activationLagCount"]) == 0


# What ingress-nginx writes into its nginx.conf for each annotation the Ingress uses (its
# annotations reference); `load-balance: ewma` is its Lua balancer, which plain nginx has not.
INGRESS_NGINX_DIRECTIVES = {
    "proxy-read-timeout": "proxy_read_timeout {}s", "proxy-send-timeout": "proxy_send_timeout {}s",
    "proxy-connect-timeout": "proxy_connect_timeout {}s", "proxy-buffering": "proxy_buffering {}",
    "proxy-request-buffering": "proxy_request_buffering {}", "proxy-body-size": "client_max_body_size {}",
    "proxy-next-upstream": "proxy_next_upstream {}", "proxy-next-upstream-tries": "proxy_next_upstream_tries {}",
}


def ingress_nginx_conf(ingress: dict[str, Any], upstream: str, port: int, tmp: Path) -> str:
    prefix = "nginx.ingress.kubernetes.io/"
    annotations = {k.removeprefix(prefix): v for k, v in ingress["metadata"]["annotations"].items()}
    assert set(annotations) - {"load-balance"} == set(INGRESS_NGINX_DIRECTIVES), annotations
    directives = "".join(f"            {INGRESS_NGINX_DIRECTIVES[k].format(v)};\n" for k, v in annotations.items()
                         if k in INGRESS_NGINX_DIRECTIVES)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"    {kind}_temp_path {tmp / kind};\n" for kind in kinds)
    return (f"events {{}}\nhttp {{\n{temp}    upstream ddpm {{ server {upstream}; }}\n"
            f"    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n"
            f"            proxy_pass http://ddpm;\n            proxy_http_version 1.1;\n{directives}"
            "        }\n    }\n}\n")


@pytest.mark.timeout(180)
def test_nginx_with_the_ingress_settings_streams_events_and_passes_the_servers_limits(
        two_pods: dict[str, str], tmp_path: Path) -> None:
    binary = daemons.tool("nginx")
    if not binary:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(ingress_nginx_conf(one(render("cpu"), "Ingress"), two_pods["ddpm-1"].removeprefix("http://"),
                                       port, tmp_path))
    with daemons.nginx(binary, conf, tmp_path, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        # Events pass one by one (the server spaces progress events >= 50 ms), not in one burst
        # (the server's X-Accel-Buffering: no asks nginx for this too; the annotation makes sure).
        with client.stream("POST", "/generate/stream", json={"steps": 1000, "sampler": "ddpm", "seed": 1},
                           headers=AUTH) as stream:
            assert stream.status_code == 200
            arrivals = []
            for line in stream.iter_lines():
                if line == "event: progress":
                    arrivals.append(time.monotonic())
                if len(arrivals) == 4:
                    break
            assert arrivals[-1] - arrivals[0] >= 0.1, arrivals
        # Between the server's limit and the Ingress's: the server's own 413, naming its limit.
        padded = {"steps": 2, "pad": "x" * 20_000}
        r = client.post("/generate", json=padded, headers=AUTH)
        assert r.status_code == 413 and "max_body_bytes=16384" in r.json()["detail"]
        # Above the Ingress's limit: nginx stops it.
        r = client.post("/generate", json={"steps": 2, "pad": "x" * 70_000}, headers=AUTH)
        assert r.status_code == 413 and "nginx" in r.text
