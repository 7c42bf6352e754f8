"""The Kubernetes manifests (issue 14), proved without a cluster (there is none here).

- Rendering: ``kubectl kustomize`` renders every overlay; built-in kinds validate strictly against
  Kubernetes 1.33 (kubernetes-validate), KEDA's ScaledObject and the Prometheus operator's
  ServiceMonitor against their published CRDs (vendored in tests/data with licence and origin).
- What the manifests promise: probes, drain timing, restricted security, writable paths, the
  checkpoint from a read-only volume, GPU placement, ingress timeouts, network policies, and
  autoscaling targets equal to the capacity model's.
- Live, on loopback: ``ddpm serve`` started with exactly the Deployment's environment, probed on
  the manifest's schedule, SIGTERMed after the preStop pause with requests in flight; Prometheus
  scraping two such replicas as the ServiceMonitor describes, answering every autoscaler query
  (and the dashboard's); redis-server reporting the job-stream lag the KEDA trigger reads.
"""

from __future__ import annotations

import copy
import json

import pytest

from app.settings import Settings

from .deploy_files import DASHBOARD, DATA, NGINX_CONF, ROOT, nginx_directive
from .k8s_files import (
    CRDS,
    KUBERNETES_VERSION,
    NO_KUBECTL,
    OVERLAYS,
    builtin_errors,
    crd_errors,
    errors,
    kubectl,
    one,
    render,
    server_container,
    settings_data,
    sha256,
)

pytestmark = pytest.mark.skipif(kubectl() is None, reason=NO_KUBECTL)

SETTINGS = Settings()
# Settings other branches are adding (the job queue, webhooks): allowed in the ConfigMap already.
COMING = {"DDPM_REDIS_URL", "DDPM_DATA_DIR", "DDPM_WEBHOOK_SECRET", "DDPM_JOB_TTL_S", "DDPM_RUNTIME"}


def test_every_overlay_renders_with_the_resources_it_promises() -> None:
    assert set(OVERLAYS) == {"cpu", "gpu", "gpu-jobs", "cpu-hpa"}
    common = {"Namespace", "Deployment", "Service", "Ingress", "PodDisruptionBudget", "NetworkPolicy",
              "ServiceMonitor", "ConfigMap"}
    for overlay in OVERLAYS:
        kinds = {d["kind"] for d in render(overlay)}
        assert common <= kinds, (overlay, common - kinds)
        assert ("HorizontalPodAutoscaler" in kinds) == overlay.endswith("-hpa"), overlay
        assert ("ScaledObject" in kinds) != overlay.endswith("-hpa"), overlay  # one autoscaler, not two
        assert ("StatefulSet" in kinds) == (overlay == "gpu-jobs"), overlay
        assert "replicas" not in one(render(overlay), "Deployment")["spec"]  # the autoscaler's to set
        assert {d["metadata"].get("namespace") for d in render(overlay) if d["kind"] != "Namespace"} == {"ddpm"}


def test_vendored_crds_are_the_published_files() -> None:
    readme = (DATA / "README.md").read_text()
    for name in CRDS.values():
        assert sha256(DATA / name) in readme, name
    for licence in ("keda.LICENSE", "prometheus-operator.LICENSE", "prometheus-operator.NOTICE"):
        assert (DATA / licence).stat().st_size > 100 and licence in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_validate_strictly(overlay: str) -> None:
    for doc in render(overlay):
        assert errors(doc) == [], (overlay, doc["kind"], doc["metadata"]["name"])


def test_the_validators_reject_what_a_cluster_would() -> None:
    docs = render("gpu-jobs")
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # misspelt
    assert builtin_errors(deployment), f"Kubernetes {KUBERNETES_VERSION} strict accepted an unknown field"
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    del scaled["spec"]["triggers"][0]["type"]
    scaled["spec"]["minReplicas"] = 1  # HPA's word, not KEDA's (minReplicaCount)
    found = "\n".join(crd_errors(scaled))
    assert "'type' is a required property" in found and "minReplicas" in found, found
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    monitor["spec"]["endpoints"][0]["interval"] = "5 seconds"  # not a Prometheus duration
    found = "\n".join(crd_errors(monitor))
    assert "intervall" in found and "5 seconds" in found, found


def test_settings_in_the_configmap_are_the_servers_and_parse() -> None:
    for overlay in OVERLAYS:
        env = settings_data(render(overlay))
        known = {f"DDPM_{f.upper()}" for f in Settings.model_fields} | COMING
        assert set(env) <= known, (overlay, set(env) - known)
        settings = Settings(**{k.removeprefix("DDPM_").lower(): v for k, v in env.items()
                               if k not in COMING})  # type: ignore[arg-type]
        assert settings.port == 8000 and settings.log_format == "json"


def test_deployment_probes_drain_and_restricted_security() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        c = server_container(docs)
        env = settings_data(docs)
        assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {c[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"http"}
        (port,) = c["ports"]
        assert port["name"] == "http" and port["containerPort"] == int(env["DDPM_PORT"])
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert startup >= (600 if env["DDPM_COMPILE"] == "true" else 120), (overlay, startup)
        # The kubelet kills only after the preStop pause, the drain and uvicorn's 5 s close.
        pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause >= 5
        assert pod["terminationGracePeriodSeconds"] >= pause + float(env["DDPM_DRAIN_TIMEOUT_S"]) + 5 + 5
        # Restricted: non-root, no privilege, no capabilities, RuntimeDefault seccomp, read-only root.
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 1000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
        # Every place the server writes is a volume: /tmp, the data dir, the compile caches.
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        paths = [env["DDPM_DATA_DIR"], env["DDPM_COMPILE_CACHE_DIR"], "/tmp",
                 *(v["value"] for v in c["env"] if v["name"].endswith("_CACHE_DIR"))]
        for path in paths:
            assert any(path == m or path.startswith(m + "/") for m in writable), (overlay, path)
        # Secrets come from a Secret, never from the ConfigMap.
        refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in c["env"] if "valueFrom" in v}
        assert set(refs) == {"DDPM_API_KEYS", "DDPM_WEBHOOK_SECRET"} and not {"DDPM_API_KEYS"} & set(env)


def test_gpu_pods_take_one_gpu_and_a_checkpoint_from_a_read_only_volume() -> None:
    for overlay in ("gpu", "gpu-jobs"):
        docs = render(overlay)
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        c = server_container(docs)
        env = settings_data(docs)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].endswith(":cuda")
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert env["DDPM_DEVICE"] == "cuda"
        checkpoint = env["DDPM_CHECKPOINT"]
        (mount,) = [m for m in c["volumeMounts"] if checkpoint.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True
        (init,) = pod["initContainers"]  # copies the file from the checkpoint's own image
        assert init["image"] != c["image"] and checkpoint in " ".join(init["command"])
        assert any(m["name"] == mount["name"] for m in init["volumeMounts"])
    cpu = server_container(render("cpu"))
    assert cpu["image"].endswith(":cpu") and "nvidia.com/gpu" not in json.dumps(cpu)


def test_ingress_carries_the_timeouts_and_limits_the_server_needs() -> None:
    ann = one(render("cpu"), "Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert float(ann[prefix + "proxy-read-timeout"]) >= SETTINGS.request_timeout_s + 60
    assert ann[prefix + "proxy-buffering"] == "off"
    body = ann[prefix + "proxy-body-size"]
    assert int(body.removesuffix("k")) * 1024 >= SETTINGS.max_body_bytes
    assert set(ann[prefix + "proxy-next-upstream"].split()) == {"error", "timeout"}
    # The same choices as compose's nginx (tests/test_deploy.py runs that one live).
    conf = NGINX_CONF.read_text()
    assert nginx_directive(conf, "proxy_read_timeout") == [ann[prefix + "proxy-read-timeout"] + "s"]
    assert nginx_directive(conf, "client_max_body_size") == [body]
    assert nginx_directive(conf, "proxy_next_upstream") == [ann[prefix + "proxy-next-upstream"]]


def test_network_policies_admit_only_the_ingress_prometheus_and_the_servers() -> None:
    docs = render("gpu-jobs")
    server = one(docs, "NetworkPolicy", "ddpm-server")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    sources = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for rule in server["spec"]["ingress"] for peer in rule["from"]]
    assert sorted(sources) == ["ingress-nginx", "monitoring"]
    assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in server["spec"]["ingress"])
    redis = one(docs, "NetworkPolicy", "ddpm-redis")
    (rule,) = redis["spec"]["ingress"]
    peers = rule["from"]
    assert peers[0] == {"podSelector": {"matchLabels": server["spec"]["podSelector"]["matchLabels"]}}
    assert peers[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "keda"
    redis_pod = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["podSelector"]["matchLabels"].items() <= redis_pod.items()


def test_dashboard_configmap_is_generated_from_the_compose_dashboard() -> None:
    for overlay in OVERLAYS:
        cm = one(render(overlay), "ConfigMap", "ddpm-grafana-dashboard")
        assert cm["data"]["ddpm.json"] == DASHBOARD.read_text()
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not list((ROOT / "k8s").rglob("*.json")), "a copy of the dashboard would drift"


def test_autoscaling_targets_are_the_capacity_models() -> None:
    from bench.capacity_run import RESULTS, targets

    recorded = json.loads(RESULTS.read_text())
    want = {kind: targets(recorded, kind) for kind in ("cpu", "gpu")}  # recomputed from the recorded curves
    for overlay in OVERLAYS:
        docs = render(overlay)
        kind = "gpu" if overlay.startswith("gpu") else "cpu"
        assert "THRESHOLD" not in json.dumps(docs) and "LAGCOUNT" not in json.dumps(docs), overlay
        held = str(want[kind]["images_held"])
        if overlay.endswith("-hpa"):
            (metric,) = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
            assert metric["pods"]["target"]["averageValue"] == held
            continue
        triggers = {t["name"]: t["metadata"] for t in one(docs, "ScaledObject")["spec"]["triggers"]}
        assert triggers["images-held"]["threshold"] == held, (overlay, held)
        if overlay.endswith("-jobs"):
            assert triggers["job-backlog"]["lagCount"] == str(want[kind]["job_lag"])
