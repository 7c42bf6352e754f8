"""Reading the deployment files (Dockerfile, compose, nginx, Prometheus) the way their tools do,
and rewriting their addresses to loopback so that the real nginx and Prometheus can run them here.

Each rewrite is explicit and fails loudly when what it expects to change is not in the file.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"
PROMETHEUS_YML = ROOT / "docker" / "prometheus.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "ddpm.json"
GRAFANA_PROVISIONING = ROOT / "docker" / "grafana" / "provisioning"
REPLICA_PORT = 8000  # the server's port inside every replica's container


# ---- Dockerfile ----

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, as the builder reads them."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        text = "".join(pending)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD; Docker silently falls back to a shell for anything else."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def stages() -> dict[str, list[Instruction]]:
    """The Dockerfile's instructions by stage name ("" before the first FROM)."""
    out: dict[str, list[Instruction]] = {"": []}
    current = ""
    for ins in dockerfile():
        if ins.keyword == "FROM":
            current = ins.args.split(" AS ")[-1].strip() if " AS " in ins.args else ins.args
            out[current] = [ins]
        else:
            out[current].append(ins)
    return out


def args_of(instructions: list[Instruction]) -> dict[str, str]:
    return dict(ins.args.partition("=")[::2] for ins in instructions if ins.keyword == "ARG")


def healthcheck_command() -> list[str]:
    (check,) = [ins for ins in dockerfile() if ins.keyword == "HEALTHCHECK"]
    return exec_form(check.args[check.args.index("CMD ") + 4:])


# ---- compose ----

class Reset:
    """Compose's ``!reset VALUE``: the file must validate with VALUE; merging removes the key."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """YAML as Docker Compose reads it: merge keys (SafeLoader has them) and the !reset tag."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.load(f, Loader=ComposeLoader)  # a SafeLoader that knows one more tag


def plain(doc: Any) -> Any:
    """The document with each !reset replaced by its value: what the schema sees in one file."""
    if isinstance(doc, Reset):
        return plain(doc.value)
    if isinstance(doc, dict):
        return {k: plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [plain(v) for v in doc]
    return doc


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of two files, for what these files use: mappings merge key by key,
    sequences append, scalars replace, and !reset removes the key."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = plain(value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + plain(override)
    return plain(override)


_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(doc: Any, env: dict[str, str]) -> Any:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$``, as Compose substitutes them."""
    if isinstance(doc, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, op, default = m.group("name"), m.group("op"), m.group("default")
            value = env.get(name)
            if op == ":-" and not value:
                return default
            if op == "-" and value is None:
                return default
            return value or ""
        return _VAR.sub(sub, doc)
    if isinstance(doc, dict):
        return {k: interpolate(v, env) for k, v in doc.items()}
    if isinstance(doc, list):
        return [interpolate(v, env) for v in doc]
    return doc


def compose_model(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The application model of ``docker compose -f A -f B ...`` in an environment (default: empty)."""
    model: Any = {}
    for path in files:
        model = merge(model, load_yaml(path))
    return dict(interpolate(model, env or {}))


def compose_schema_errors(doc: Any) -> list[str]:
    """Where ``doc`` breaks the Compose specification (the vendored compose-spec JSON schema)."""
    import jsonschema

    schema = json.loads((DATA / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(plain(doc))]


def replica_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the server: those built from this repository."""
    return {name: svc for name, svc in model["services"].items() if "build" in svc}


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return list(service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []))


# ---- nginx ----

_UPSTREAM = re.compile(r"upstream\s+ddpm\s*\{(?P<body>[^}]*)\}", re.S)
_SERVER = re.compile(r"^(?P<indent>\s*)server\s+(?P<address>\S+?)(?P<params>(\s+[^;]*)?);", re.M)


def nginx_upstreams(conf: str) -> list[str]:
    """The addresses of the ``server`` lines of the ``ddpm`` upstream."""
    match = _UPSTREAM.search(conf)
    assert match, "docker/nginx.conf has no `upstream ddpm { ... }`"
    return [m.group("address") for m in _SERVER.finditer(match.group("body"))]


def nginx_directive(conf: str, name: str, context: str | None = None) -> list[str]:
    """The values of every ``name ...;`` in the file, or within ``location = context { }``."""
    if context is not None:
        block = re.search(r"location\s+=\s+" + re.escape(context) + r"\s*\{(?P<body>[^}]*)\}", conf, re.S)
        assert block, f"no `location = {context}` block"
        conf = block.group("body")
    return [m.group(1).strip() for m in re.finditer(r"^\s*" + re.escape(name) + r"\s+([^;]*);", conf, re.M)]


def nginx_for_loopback(conf: str, upstreams: dict[str, str], port: int, tmp: Path) -> str:
    """The project's nginx.conf, changed only where it must be to run unprivileged here:

    - each upstream ``server NAME:8000`` becomes the loopback address given for NAME:8000;
    - ``listen 8080`` becomes ``listen 127.0.0.1:PORT``;
    - the temporary directories (system paths by default) move under ``tmp``.

    (The pid file and the error log are set on nginx's command line: see daemons.nginx.)
    """
    body_match = _UPSTREAM.search(conf)
    assert body_match
    body = body_match.group("body")
    seen: list[str] = []

    def server(m: re.Match[str]) -> str:
        seen.append(m.group("address"))
        return f"{m.group('indent')}server {upstreams[m.group('address')]}{m.group('params') or ''};"

    new_body = _SERVER.sub(server, body)
    assert sorted(seen) == sorted(upstreams), (seen, upstreams)
    conf = conf[:body_match.start("body")] + new_body + conf[body_match.end("body"):]

    conf, n = re.subn(r"^(\s*)listen\s+8080;", rf"\1listen 127.0.0.1:{port};", conf, flags=re.M)
    assert n == 1, "expected one `listen 8080;`"

    temp = "".join(f"    {kind}_temp_path {tmp / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf, n = re.subn(r"^http\s*\{\n", lambda m: m.group(0) + temp, conf, flags=re.M)
    assert n == 1, "expected one `http {`"
    return conf


# ---- Prometheus ----

def prometheus_targets(config: dict[str, Any], job: str = "ddpm") -> list[str]:
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == job]
    assert len(jobs) == 1, f"expected one scrape job {job!r}"
    return [t for sc in jobs[0].get("static_configs", []) for t in sc["targets"]]


def prometheus_for_loopback(config: dict[str, Any], targets: dict[str, str]) -> dict[str, Any]:
    """The project's prometheus.yml with each target of the ddpm job replaced by its loopback address."""
    config = copy.deepcopy(config)
    for job in config["scrape_configs"]:
        for sc in job.get("static_configs", []):
            sc["targets"] = [targets[t] for t in sc["targets"]]  # KeyError: a target this test does not know
    return config


# ---- Grafana ----

def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel (rows included)."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """The ddpm_* series that the dashboard's queries (panels and variables) read."""
    variables = [v.get("definition", "") for v in dashboard.get("templating", {}).get("list", [])]
    return set(re.findall(r"\bddpm_[a-z_]+", " ".join(dashboard_queries(dashboard) + variables)))
