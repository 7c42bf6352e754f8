"""The README's API examples, run as written against a live server on the embedded model (what
`make serve` serves), so that they cannot rot: the shell block with curl, the Python block with
this interpreter, and (in tests/test_browser.py) the JavaScript block in a browser. The only
change is the port: `localhost:8000` becomes the live server's `localhost:PORT`."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from model import EMBEDDED_CHECKPOINT

from .live import live_server

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ADDRESS = "localhost:8000"
pytestmark = pytest.mark.slow


def readme_blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language`` that talk to the server (name its address)."""
    text = (ROOT / "README.md").read_text()
    return [body for lang, body in FENCE.findall(text) if lang == language and ADDRESS in body]


def at(block: str, url: str) -> str:
    return block.replace(ADDRESS, f"localhost:{urlsplit(url).port}")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(EMBEDDED_CHECKPOINT) as url:
        yield url


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for chunk in re.split(r"\r?\n\r?\n", text.strip()):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_the_readme_has_examples_to_run() -> None:
    assert len(readme_blocks("sh")) >= 1 and len(readme_blocks("python")) >= 1 and len(readme_blocks("js")) == 1


def test_shell_examples_run_as_written(server: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the README's shell examples use curl (apt-get install curl)")
    size = httpx_card(server)["image_size"]
    [block] = readme_blocks("sh")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", at(block, server)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    # 1. one PNG, written to a file
    assert png_size((tmp_path / "seven.png").read_bytes()) == (size, size)
    # 2. then the JSON body of four images, 3. then the stream's events
    body, end = json.JSONDecoder().raw_decode(result.stdout)
    assert len(body["images"]) == 4 and body["label"] == 3 and body["steps"] == 20 and body["sampler"] == "dpmpp_2m"
    assert set(body["timings"]) >= {"queue_s", "sampling_s", "total_s"}
    events = sse_events(result.stdout[end:])
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and names.count("image") == 2, names
    progress = [data for name, data in events if name == "progress"]
    steps = [data["step"] for data in progress]  # progress events are rate-limited: not every step
    assert steps == sorted(set(steps)) and all(data["steps"] == 50 for data in progress), progress
    assert any(data.get("previews") for data in progress)  # preview_every: 10


def test_python_examples_run_as_written(server: str, tmp_path: Path) -> None:
    size = httpx_card(server)["image_size"]
    for block in readme_blocks("python"):
        result = subprocess.run([sys.executable, "-c", at(block, server)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.glob("five-*.png"))
    assert written == [f"five-{seed}.png" for seed in (1, 2, 3, 4)]
    assert all(png_size((tmp_path / name).read_bytes()) == (size, size) for name in written)
    printed = result.stdout.splitlines()
    assert printed[0] == "event: queued" and printed[-1] == "event: done" and "event: progress" in printed


def test_the_python_examples_need_only_what_make_serve_installs() -> None:
    """Every package the Python examples import is the standard library's or a runtime
    dependency in pyproject.toml (not a test extra: `make serve` installs no extra)."""
    # (tomllib is Python 3.11+; the project supports 3.10.) The list's entries are quoted strings.
    listed = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)
    assert listed is not None
    requirements = re.findall(r'^\s*"([^"]+)"', listed.group(1), re.MULTILINE)
    runtime = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in requirements}
    assert {"torch", "fastapi"} <= runtime  # the list was read
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for block in readme_blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported if m not in sys.stdlib_module_names)
    assert third_party  # httpx at least: the check below has something to check
    for module in third_party:
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        assert names & runtime, f"the README's Python example imports {module}, which is not a runtime dependency"


def httpx_card(url: str) -> dict:
    import httpx

    return httpx.get(url + "/v1/model", timeout=10).json()
