"""The OpenAPI document tells the truth: schemathesis, with every check on, finds nothing.

Run without keys (no security declared, none needed) and with keys (Bearer declared on exactly
the protected operations; schemathesis passes a key, and also checks that a missing or wrong
one is refused).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .live import live_server
from .test_process import SCHEMATHESIS_CONFIG, SILENCED, WARNINGS


def schemathesis(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert st, "schemathesis is a test dependency"
    return subprocess.run(
        [st, "--config-file", str(SCHEMATHESIS_CONFIG),
         # use_after_free (ST301) expects a DELETE to remove its resource; DELETE /v1/jobs/{id}, the
         # only DELETE, cancels and the job stays readable as canceled (issue 13; tests/test_jobs_api.py)
         "run", f"{url}/openapi.json", "--checks", "all", "--exclude-checks", "use_after_free",
         "--max-time", "30", "--workers", "2",
         "--request-timeout", "30", "--warnings", ",".join(w for w in WARNINGS if w not in SILENCED), *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("keys", [None, "k1,k2"])
def test_schemathesis_all_checks(tiny_checkpoint: Path, tmp_path: Path, keys: str | None) -> None:
    # Small bounds keep every generated request short, so deadlines (504) cannot be hit.
    settings = {"max_batch": 32, "max_steps": 20, "max_images_per_request": 4}
    with live_server(tiny_checkpoint, **settings, **({"api_keys": keys} if keys else {})) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
        schemes = spec.get("components", {}).get("securitySchemes", {})
        secured = {path: bool(op.get("security")) for path, ops in spec["paths"].items() for op in ops.values()}
        result = schemathesis(url, tmp_path, *(["--header", "Authorization: Bearer k2"] if keys else []))
    if keys:
        assert [s["scheme"] for s in schemes.values()] == ["bearer"]
        assert secured == {path: path.startswith(("/generate", "/v1/")) for path in secured}
    else:
        assert not schemes and not any(secured.values())
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout
