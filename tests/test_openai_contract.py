"""The OpenAI API's part of the OpenAPI document tells the truth: schemathesis, every check on.

One rule is beyond JSON Schema: whether a prompt names exactly one class. A schema-valid prompt
can therefore be a 400, and a body over ``max_body_bytes`` is a 413 whatever its schema says;
the config below says so for this one operation (tests/schemathesis.toml), and every other
check and status holds as for the native API. The warnings silenced are the native run's
(tests/test_process.py): made-up job ids in the stored-image URLs rightly get 404, and generated
uploads are never decodable images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .test_openai_live import openai_server
from .test_process import SILENCED, WARNINGS

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.slow
@pytest.mark.parametrize("keys", [None, "k1,k2"])
def test_schemathesis_finds_nothing_in_the_openai_api(tiny_checkpoint: Path, tmp_path: Path,
                                                      keys: str | None) -> None:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert st, "schemathesis is a test dependency"
    settings = {"max_batch": 32, "max_steps": 20, "max_images_per_request": 4}
    with openai_server(tiny_checkpoint, **settings, **({"api_keys": keys} if keys else {})) as (url, _):
        spec = httpx.get(f"{url}/openapi.json").json()
        assert "/v1/images/generations" in spec["paths"] and "/v1/models/{model_id}" in spec["paths"]
        result = subprocess.run(
            [st, "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all",
             "--include-path-regex", "^/v1/(images|models)", "--max-time", "30", "--workers", "2",
             "--request-timeout", "30", "--warnings", ",".join(w for w in WARNINGS if w not in SILENCED),
             *(["--header", "Authorization: Bearer k2"] if keys else [])],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "No issues found" in result.stdout
