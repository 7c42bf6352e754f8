"""``response_format="url"`` through the official ``openai`` SDK: the request runs as a job in the
job store (SQLite and a real redis-server), the URLs are the job's images, fetchable with the
caller's key from any replica that shares the store."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from PIL import Image

from .job_stores import redis_url  # noqa: F401  (a fixture)
from .live import slowed
from .test_openai_live import openai_server, sdk

SEED = {"seed": 21, "steps": 4, "sampler": "ddim"}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def replicas(request: pytest.FixtureRequest, tiny_checkpoint: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two servers sharing one job store, with API keys."""
    settings: dict[str, Any] = {"data_dir": tmp_path_factory.mktemp("jobs"), "api_keys": "alice,bob",
                                "job_poll_s": 0.05}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushall()
        settings["redis_url"] = url
    with ExitStack() as stack:
        a, _ = stack.enter_context(openai_server(tiny_checkpoint, **settings))
        b, _ = stack.enter_context(openai_server(tiny_checkpoint, **settings))
        yield a, b


def fetch(url: str, key: str | None) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def test_url_gives_the_png_bytes_of_b64_json_from_any_replica(replicas: tuple[str, str]) -> None:
    a, b = replicas
    client = sdk(a, key="alice")
    by_url = client.images.generate(prompt="a 7", n=2, response_format="url", extra_body=SEED)
    inline = client.images.generate(prompt="a 7", n=2, extra_body=SEED)
    assert by_url.data and inline.data and len(by_url.data) == 2
    urls = [d.url or "" for d in by_url.data]
    job_id = urls[0].split("/")[-3]
    assert urls == [f"{a}/v1/jobs/{job_id}/images/{i}" for i in range(2)]
    assert all(d.b64_json is None for d in by_url.data)
    assert (by_url.model_extra or {})["ddpm"]["seeds"] == [21, 22]
    for url, image in zip(urls, inline.data, strict=True):
        expected = base64.b64decode(image.b64_json or "")
        got = fetch(url, "alice")
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content == expected
        # another replica sharing the store serves the same bytes
        assert fetch(url.replace(a, b), "alice").content == expected
    # the URL is the caller's: no key is a 401, another key a 404 (no enumeration across keys)
    assert fetch(urls[0], None).status_code == 401
    assert fetch(urls[0], "bob").status_code == 404
    job = httpx.get(f"{b}/v1/jobs/{job_id}", headers={"Authorization": "Bearer alice"}).json()
    assert job["status"] == "succeeded" and job["seeds"] == [21, 22]


@pytest.mark.parametrize(("fmt", "size", "compression"), [("jpeg", "32x32", 60), ("webp", "8x8", None),
                                                          ("png", "64x64", None)])
def test_other_formats_and_sizes_are_reencoded_on_get_to_the_b64_json_bytes(
        replicas: tuple[str, str], fmt: str, size: str, compression: int | None) -> None:
    a, _ = replicas
    client = sdk(a, key="alice")
    extra: dict[str, Any] = {} if compression is None else {"output_compression": compression}
    kwargs: dict[str, Any] = {"prompt": "3", "size": size, "output_format": fmt, "extra_body": SEED, **extra}
    by_url = client.images.generate(response_format="url", **kwargs)
    inline = client.images.generate(**kwargs)
    assert by_url.data and inline.data and by_url.output_format == fmt and by_url.size == size
    url = by_url.data[0].url or ""
    assert "/v1/images/jobs/" in url and f"output_format={fmt}" in url
    got = fetch(url, "alice")
    assert got.status_code == 200 and got.headers["content-type"] == f"image/{fmt}"
    assert got.content == base64.b64decode(inline.data[0].b64_json or "")
    assert Image.open(io.BytesIO(got.content)).size == (int(size.split("x")[0]),) * 2
    assert fetch(url, "bob").json()["error"]["code"] == "not_found"  # OpenAI's envelope, another key's job
    too_big = httpx.get(url.replace("upscale=", "upscale=9999"), headers={"Authorization": "Bearer alice"})
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "upscale"


def test_url_cannot_be_streamed_and_bad_fields_still_fail_first(replicas: tuple[str, str]) -> None:
    client = sdk(replicas[0], key="alice")
    with pytest.raises(openai.BadRequestError) as streamed:
        client.images.generate(prompt="7", response_format="url", stream=True)
    assert streamed.value.param == "response_format" and "cannot be streamed" in streamed.value.message
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(prompt="7", response_format="url", size="100x100")
    assert size.value.param == "size"


def ended(url: str, *statuses: str) -> list[dict[str, Any]]:
    return [j for status in statuses for j in httpx.get(f"{url}/v1/jobs", params={"status": status}).json()["jobs"]]


def wait_ended(url: str, count: int, *statuses: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while len(ended(url, *statuses)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return ended(url, *statuses)


def test_past_the_deadline_or_with_the_client_gone_the_job_ends(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = slowed(tiny_checkpoint, 0.05)  # 100 steps: 5 s
    with openai_server(tiny_checkpoint, model=model, request_timeout_s=1.0, data_dir=tmp_path,
                       runtime="torch", job_poll_s=0.05) as (url, _):
        with pytest.raises(openai.InternalServerError) as late:
            sdk(url).images.generate(prompt="7", response_format="url", extra_body={"steps": 100})
        assert late.value.status_code == 504 and "deadline" in late.value.message
        # canceled by the wait, or failed by the engine's own deadline (the same 1 s): not left running
        [job] = wait_ended(url, 1, "canceled", "failed")
        stored = httpx.get(f"{url}/v1/images/jobs/{job['id']}/images/0?output_format=webp")
        assert stored.status_code == 409 and "has not finished" in stored.json()["error"]["message"]
        with pytest.raises(openai.APITimeoutError):  # the client gives up after 0.3 s, well before 15 steps
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=0.3).images.generate(
                prompt="7", response_format="url", extra_body={"steps": 15})
        before = 1 if job["status"] == "canceled" else 0
        assert len([j for j in wait_ended(url, before + 1, "canceled") if j["id"] != job["id"]]) == 1
        assert ended(url, "succeeded") == []
