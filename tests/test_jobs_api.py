# ruff: noqa: F811  (pytest fixtures imported from tests/job_stores.py and named as arguments)
"""``/v1/jobs`` on a live server (uvicorn in a thread, the tiny model), every test on both stores:
the life cycle, images identical to ``/generate``'s, position, cancel, events, expiry (410),
ownership (404 across keys), idempotency (409), the per-key quota (429), webhooks and metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from .job_stores import Stores, redis_url, stores  # noqa: F401  (fixtures)
from .live import live_server, slowed
from .webhook_receiver import SECRET, receiver

KA, KB = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}


@contextmanager
def server(stores: Stores, checkpoint: Path, seconds_per_call: float = 0.0, **settings: Any) -> Iterator[str]:
    with live_server(checkpoint, model=slowed(checkpoint, seconds_per_call), data_dir=stores.tmp / "data",
                     redis_url=stores.url, job_poll_s=0.05, **settings) as url:
        yield url


def wait_status(c: httpx.Client, job_id: str, statuses: tuple[str, ...], headers: dict[str, str] | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job}"
        time.sleep(0.05)


def test_life_cycle_and_images_equal_generate(stores: Stores, tiny_checkpoint: Path) -> None:
    body = {"n": 3, "steps": 6, "seed": 1234, "sampler": "ddim", "label": 2}
    with server(stores, tiny_checkpoint) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("queued", "running") and job["seeds"] == [1234, 1235, 1236]
        done = wait_status(c, job["id"], ("succeeded",))
        assert done["progress"]["images_done"] == 3 and done["started_at"] <= done["finished_at"]
        pngs = []
        for image in done["images"]:
            got = c.get(image["url"])
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert "immutable" in got.headers["cache-control"]
            pngs.append(got.content)
        direct = c.post("/generate", json={**body, "response_format": "base64"}).json()
        assert pngs == [base64.b64decode(im["png_base64"]) for im in direct["images"]]
        assert c.get(f"/v1/jobs/{job['id']}/images/3").status_code == 404
        listed = c.get("/v1/jobs").json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["next_cursor"] is None


def test_position_cancel_and_rows_freed(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, 0.02, max_batch=1) as url, httpx.Client(base_url=url, timeout=30) as c:
        first = c.post("/v1/jobs", json={"n": 2, "steps": 100}).json()
        second = c.post("/v1/jobs", json={"n": 1, "steps": 5}).json()
        wait_status(c, first["id"], ("running",))
        waiting = c.get(f"/v1/jobs/{second['id']}").json()
        assert waiting["status"] == "queued" and waiting["position"] == 0
        third = c.post("/v1/jobs", json={"n": 1, "steps": 5}).json()
        assert third["position"] == 1  # one image queued ahead of it
        canceled = c.delete(f"/v1/jobs/{first['id']}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        again = c.delete(f"/v1/jobs/{first['id']}")  # idempotent: the same canceled job
        assert again.status_code == 200 and again.json() == canceled.json()
        wait_status(c, third["id"], ("succeeded",))  # the canceled job's rows were freed
        assert c.get(f"/v1/jobs/{first['id']}/images/0").status_code == 409
        assert c.get(f"/v1/jobs/{first['id']}").json()["status"] == "canceled"
        assert c.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"][0]["id"] == third["id"]


def sse_events(c: httpx.Client, path: str, headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    events = []
    with c.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name in ("done", "error"):
                    break
    return events


def test_events_stream(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, 0.01, max_batch=2) as url, httpx.Client(base_url=url, timeout=30) as c:
        job = c.post("/v1/jobs", json={"n": 2, "steps": 40}).json()
        events = sse_events(c, f"/v1/jobs/{job['id']}/events")
        kinds = [name for name, _ in events]
        assert kinds[-1] == "done" and "progress" in kinds
        assert set(kinds) <= {"queued", "progress", "image", "done"}  # /generate/stream's types
        steps = [data["step"] for name, data in events if name == "progress"]
        assert steps == sorted(steps)
        assert events[-1][1]["status"] == "succeeded" and len(events[-1][1]["images"]) == 2
        images = sorted((data for name, data in events if name == "image"), key=lambda d: d["index"])
        assert [(d["index"], d["seed"]) for d in images] == [(0, job["seeds"][0]), (1, job["seeds"][1])]
        assert kinds.index("image") < kinds.index("done")
        for d in images:  # as /generate/stream's image event, plus where the PNG stays
            assert d["url"] == f"/v1/jobs/{job['id']}/images/{d['index']}"
            assert base64.b64decode(d["png_base64"]) == c.get(d["url"]).content
        again = sse_events(c, f"/v1/jobs/{job['id']}/events")  # an ended job: done at once
        assert [name for name, _ in again] == ["done"]
        canceled = c.post("/v1/jobs", json={"n": 1, "steps": 100}).json()
        c.delete(f"/v1/jobs/{canceled['id']}")
        (name, data), = sse_events(c, f"/v1/jobs/{canceled['id']}/events")
        assert name == "error" and data["detail"] == "the job was canceled"


def test_delete_cancels_and_the_job_stays_readable(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, 0.02, max_batch=1) as url, httpx.Client(base_url=url, timeout=30) as c:
        running = c.post("/v1/jobs", json={"n": 1, "steps": 100}, headers={"Idempotency-Key": "k1"}).json()
        done = c.post("/v1/jobs", json={"n": 1, "steps": 2}).json()
        wait_status(c, running["id"], ("running",))
        r = c.delete(f"/v1/jobs/{running['id']}")
        assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["finished_at"]
        wait_status(c, done["id"], ("succeeded",))  # the canceled job's row was freed
        ended = c.delete(f"/v1/jobs/{done['id']}")  # an ended job is answered as it is
        assert ended.status_code == 200 and ended.json()["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{done['id']}/images/0").status_code == 200
        got = c.get(f"/v1/jobs/{running['id']}").json()
        assert got["status"] == "canceled" and got["expires_at"] > time.time()
        assert c.delete(f"/v1/jobs/{running['id']}").json() == got  # a second DELETE: the same job, 200
        assert c.get("/v1/jobs", params={"status": "canceled"}).json()["jobs"][0]["id"] == running["id"]
        replay = c.post("/v1/jobs", json={"n": 1, "steps": 100}, headers={"Idempotency-Key": "k1"})
        assert replay.json()["id"] == running["id"] and replay.json()["status"] == "canceled"
        assert c.post(f"/v1/jobs/{running['id']}/cancel").status_code in (404, 405)  # one way to cancel
        allow = c.request("OPTIONS", f"/v1/jobs/{done['id']}")
        assert allow.status_code == 405 and set(allow.headers["allow"].split(", ")) >= {"GET", "DELETE"}


def test_expired_jobs_answer_410(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, job_ttl_s=1.0) as url, httpx.Client(base_url=url, timeout=30) as c:
        job = c.post("/v1/jobs", json={"steps": 3}).json()
        wait_status(c, job["id"], ("succeeded",))
        time.sleep(1.2)
        for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/images/0", f"/v1/jobs/{job['id']}/events"):
            r = c.get(path)
            assert r.status_code == 410 and "expired" in r.json()["detail"], path
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 410


def test_jobs_belong_to_their_key(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, api_keys="key-a,key-b") as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/jobs", json={}).status_code == 401
        job = c.post("/v1/jobs", json={"steps": 3}, headers=KA).json()
        for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/images/0"),
                             ("GET", "/events")):
            r = c.request(method, f"/v1/jobs/{job['id']}{path}", headers=KB)
            assert r.status_code == 404, (method, path)
        assert c.get("/v1/jobs", headers=KB).json()["jobs"] == []
        assert wait_status(c, job["id"], ("succeeded",), KA)["status"] == "succeeded"
        assert c.get("/v1/jobs/no-such-job", headers=KA).status_code == 404


def test_idempotency_key(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, api_keys="key-a,key-b") as url, httpx.Client(base_url=url, timeout=30) as c:
        first = c.post("/v1/jobs", json={"n": 2}, headers={**KA, "Idempotency-Key": "abc"})
        again = c.post("/v1/jobs", json={"n": 2}, headers={**KA, "Idempotency-Key": "abc"})
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert again.json()["seeds"] == first.json()["seeds"]  # the drawn seed too
        conflict = c.post("/v1/jobs", json={"n": 3}, headers={**KA, "Idempotency-Key": "abc"})
        assert conflict.status_code == 409 and "Idempotency-Key" in conflict.json()["detail"]
        other = c.post("/v1/jobs", json={"n": 2}, headers={**KB, "Idempotency-Key": "abc"})
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
        long = c.post("/v1/jobs", json={}, headers={**KA, "Idempotency-Key": "x" * 300})
        assert long.status_code == 422 and long.json()["detail"][0]["field"] == "Idempotency-Key"


def test_quota_per_key(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, 0.02, api_keys="key-a,key-b", max_batch=1,
                max_queued_images_per_key=3) as url, httpx.Client(base_url=url, timeout=30) as c:
        running = c.post("/v1/jobs", json={"n": 1, "steps": 100}, headers=KA).json()
        wait_status(c, running["id"], ("running",), KA)
        assert c.post("/v1/jobs", json={"n": 3, "steps": 2}, headers=KA).status_code == 202
        refused = c.post("/v1/jobs", json={"n": 1, "steps": 2}, headers=KA)
        assert refused.status_code == 429 and "max_queued_images_per_key=3" in refused.json()["detail"]
        assert c.post("/v1/jobs", json={"n": 3, "steps": 2}, headers=KB).status_code == 202  # B is not affected
        c.delete(f"/v1/jobs/{running['id']}", headers=KA)


def test_bad_bodies_name_the_field(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, webhook_secret=SECRET) as url, httpx.Client(base_url=url, timeout=30) as c:
        for body, field in (({"n": 0}, "n"), ({"steps": 10_000}, "steps"), ({"webhook": "ftp://x"}, "webhook"),
                            ({"webhook": "http://127.0.0.1:9/hook"}, "webhook"),
                            ({"webhook": "http://169.254.169.254/"}, "webhook"),
                            ({"webhook_events": ["job.exploded"], "webhook": "http://93.184.215.14/"},
                             "webhook_events[0]")):
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["field"] == field, r.json()
        assert c.get("/v1/jobs", params={"limit": 0}).status_code == 422
        assert c.get("/v1/jobs", params={"cursor": "nonsense"}).json()["detail"][0]["field"] == "cursor"
        assert c.get("/v1/jobs", params={"cursor": "s99"}).json() == {"jobs": [], "next_cursor": None}


def test_webhooks_and_metrics(stores: Stores, tiny_checkpoint: Path) -> None:
    with receiver() as r, server(stores, tiny_checkpoint, webhook_secret=SECRET, webhook_allow_private=True) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        job = c.post("/v1/jobs", json={"steps": 3, "webhook": r.url,
                                       "webhook_events": ["job.started", "job.succeeded"]}).json()
        wait_status(c, job["id"], ("succeeded",))
        deadline = time.monotonic() + 20
        while len(r.requests) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Deliveries run concurrently and may arrive in either order (Standard Webhooks promise no
        # order); the events' own timestamps say which happened first.
        payloads = {p["type"]: p for p in (Webhook(SECRET).verify(body, headers)
                                           for _, headers, body, _ in r.requests)}
        assert sorted(payloads) == ["job.started", "job.succeeded"]
        when = {kind: datetime.fromisoformat(p["timestamp"]) for kind, p in payloads.items()}
        assert when["job.started"] <= when["job.succeeded"]
        assert payloads["job.succeeded"]["data"]["id"] == job["id"]
        metrics = c.get("/metrics").text
        for line in ('ddpm_jobs_finished_total{status="succeeded"} 1.0',
                     'ddpm_webhook_deliveries_total{outcome="delivered"} 2.0',
                     'ddpm_jobs{status="queued"} 0.0', 'ddpm_queue_images{class="job"} 0.0'):
            assert line in metrics, line
        assert "key-" not in metrics and job["id"] not in metrics
