# ruff: noqa: F811  (pytest fixtures imported from tests/job_stores.py and named as arguments)
"""The editing API as jobs (issue 16 on top of issue 13's ``/v1/jobs``), on a live server, both stores:

- every kind's images (and seeds) are byte-identical to its native endpoint's for the same body and
  seed, for kinds with a first phase (variations; an interpolation with a seeded end) and without;
- a drawn seed is drawn once at submission and kept in the job;
- every refusal of the native endpoint is a 4xx at submission, naming the field, and queues nothing;
- cancel and the job deadline work in either phase, and free the rows;
- a ``ddpm serve`` on SQLite killed -9 mid-job and started again finishes the job with the same images;
- Idempotency-Key and webhooks work for an editing kind as for generate;
- a body at a raised DDPM_MAX_BODY_BYTES runs as a job, and a job spec of megabytes is stored and
  read back by both stores.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from standardwebhooks import Webhook

from app.jobs import JobSpec, JobStore
from model.images import encode_png

from .job_stores import Stores, redis_url, store, stores  # noqa: F401  (fixtures)
from .test_jobs_api import server, sse_events, wait_status
from .test_jobs_replicas import SETTINGS, images, post_then_kill, wait_job
from .test_process import serve_process
from .webhook_receiver import SECRET, receiver

SOURCE = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
OTHER = np.random.default_rng(1).integers(0, 256, (8, 8, 1), dtype=np.uint8)
MASK = np.zeros((8, 8, 1), np.uint8)
MASK[:4] = 255


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


# (kind, endpoint, body): each with a first phase or without, and the ones that run no rows at all
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("edit", "/v1/edits", {"image": b64(SOURCE), "n": 2, "seed": 11, "strength": 0.6, "steps": 6, "label": 1}),
    ("edit", "/v1/edits", {"image": b64(SOURCE), "mask": b64(MASK), "n": 2, "seed": 12, "steps": 5,
                           "sampler": "ddpm", "jumps": 1, "jump_length": 2}),
    ("interpolation", "/v1/interpolations", {"a": {"seed": 5}, "b": {"image": b64(OTHER)}, "frames": 4,
                                             "seed": 13, "steps": 6}),
    ("interpolation", "/v1/interpolations", {"a": {"image": b64(SOURCE)}, "b": {"image": b64(OTHER)}, "frames": 3,
                                             "t": 0, "seed": 14}),
    ("variations", "/v1/variations", {"n": 3, "seed": 15, "steps": 8}),
    ("variations", "/v1/variations", {"n": 2, "seed": 16, "steps": 8, "t": 0}),
]


def job_pngs(c: httpx.Client, job: dict[str, Any]) -> list[bytes]:
    return [c.get(im["url"]).content for im in job["images"]]


def native(c: httpx.Client, endpoint: str, body: dict[str, Any]) -> tuple[list[bytes], list[int]]:
    r = c.post(endpoint, json={**body, "response_format": "base64"})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    return [base64.b64decode(im["png_base64"]) for im in images], [im["seed"] for im in images]


def test_each_kind_is_byte_identical_to_its_endpoint(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint) as url, httpx.Client(base_url=url, timeout=60) as c:
        submitted = []
        for kind, endpoint, body in CASES:
            r = c.post("/v1/jobs", json={"kind": kind, **body})
            assert r.status_code == 202, r.text
            assert r.json()["kind"] == kind
            submitted.append((r.json(), endpoint, body))
        for job, endpoint, body in submitted:
            done = wait_status(c, job["id"], ("succeeded", "failed"))
            assert done["status"] == "succeeded", done
            pngs, seeds = native(c, endpoint, body)
            assert done["seeds"] == seeds == job["seeds"], (endpoint, body)
            assert done["n"] == len(pngs) and job_pngs(c, done) == pngs, (endpoint, body)


def test_a_drawn_seed_is_drawn_once_and_kept(stores: Stores, tiny_checkpoint: Path) -> None:
    body = {"image": b64(SOURCE), "n": 2, "steps": 4}
    with server(stores, tiny_checkpoint) as url, httpx.Client(base_url=url, timeout=60) as c:
        job = c.post("/v1/jobs", json={"kind": "edit", **body}).json()
        seed = job["seeds"][0]
        assert job["seeds"] == [seed, seed + 1]
        done = wait_status(c, job["id"], ("succeeded",))
        assert done["seeds"] == job["seeds"]
        assert job_pngs(c, done) == native(c, "/v1/edits", {**body, "seed": seed})[0]
        # the same body again (no Idempotency-Key) is another job with another drawn seed
        other = c.post("/v1/jobs", json={"kind": "edit", **body}).json()
        assert other["seeds"][0] != seed


def test_refusals_are_4xx_at_submission_and_queue_nothing(stores: Stores, tiny_checkpoint: Path) -> None:
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"kind": "edit", "image": "not base64 at all!"}, 422, "image"),
        ({"kind": "edit", "image": b64(SOURCE), "mask": b64(np.zeros((4, 4, 1), np.uint8))}, 422, "mask"),
        ({"kind": "edit", "image": b64(SOURCE), "jumps": 3}, 422, "jumps"),  # over DDPM_MAX_JUMPS=2
        ({"kind": "edit", "image": b64(SOURCE), "strength": 0}, 422, "strength"),
        ({"kind": "edit"}, 422, "image"),
        ({"kind": "interpolation", "a": {"seed": 1, "image": b64(SOURCE)}, "b": {"seed": 2}}, 422, "a"),
        ({"kind": "interpolation", "a": {"seed": 1}, "b": {"seed": 2}, "frames": 9}, 422, "frames"),
        ({"kind": "variations", "t": 101}, 422, "t"),  # T = 100
        ({"kind": "variations", "n": 100000}, 422, "n"),
        ({"kind": "variations", "label": 99}, 422, "label"),
        ({"kind": "paint"}, 422, "kind"),
        ({"kind": 3}, 422, "kind"),
        ({"kind": "generate", "image": b64(SOURCE)}, 422, "image"),  # not a field of /generate's body
        ({"n": 0}, 422, "n"),  # a generate job, as before the kinds
    ]
    with server(stores, tiny_checkpoint, max_jumps=2, max_frames=8) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        for body, status, field in bad:
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == status, (body, r.text)
            assert field in [e["field"] for e in r.json()["detail"]], (body, r.json())
            native_endpoint = {"edit": "/v1/edits", "interpolation": "/v1/interpolations",
                               "variations": "/v1/variations"}.get(str(body.get("kind")))
            if native_endpoint:  # the endpoint refuses the same body the same way
                rest = {k: v for k, v in body.items() if k != "kind"}
                assert c.post(native_endpoint, json=rest).status_code == status
        assert c.get("/v1/jobs").json()["jobs"] == []
        spec = c.get("/openapi.json").json()
        body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        variants = next(v for v in body.get("anyOf", [body]) if "oneOf" in v)["oneOf"]
        schemas = [spec["components"]["schemas"][v["$ref"].rsplit("/", 1)[1]] for v in variants]
        assert [s["properties"]["kind"].get("const") for s in schemas] == ["generate", "edit", "interpolation",
                                                                          "variations"]
        assert "image" in schemas[1]["required"] and "webhook" in schemas[3]["properties"]
        big = {"kind": "edit", "image": "A" * 20000}  # over DDPM_MAX_BODY_BYTES (16 KiB)
        assert c.post("/v1/jobs", json=big).status_code == 413


def phase_two(c: httpx.Client, job_id: str) -> dict[str, Any]:
    """Waits until the job's progress counts more steps than its first phase has (phase 2 runs)."""
    first = wait_status(c, job_id, ("running",))
    deadline = time.monotonic() + 60
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        p, p0 = job.get("progress"), first.get("progress")  # both phases' steps once in the second
        if p and p0 and p["steps"] > p0["steps"]:
            return job
        if p0 is None:
            first = job
        assert job["status"] == "running" and time.monotonic() < deadline, job
        time.sleep(0.02)


def test_cancel_in_either_phase_frees_the_rows(stores: Stores, tiny_checkpoint: Path) -> None:
    # the tiny model has T = 100: 50 steps of shared chain, then 50 of continuation, 30 ms each
    slow = {"kind": "variations", "n": 1, "steps": 100, "seed": 3, "t": 50}
    with server(stores, tiny_checkpoint, 0.03, max_batch=1) as url, httpx.Client(base_url=url, timeout=60) as c:
        in_one = c.post("/v1/jobs", json=slow).json()
        wait_status(c, in_one["id"], ("running",))
        canceled = c.delete(f"/v1/jobs/{in_one['id']}").json()
        assert canceled["status"] == "canceled"
        assert canceled.get("progress") is None or canceled["progress"]["steps"] == 50  # still the shared chain
        in_two = c.post("/v1/jobs", json=slow).json()
        seen = phase_two(c, in_two["id"])
        assert seen["progress"]["step"] >= 1
        assert c.delete(f"/v1/jobs/{in_two['id']}").json()["status"] == "canceled"
        after = c.post("/v1/jobs", json={"n": 1, "steps": 3}).json()  # one row: free only if both left
        assert wait_status(c, after["id"], ("succeeded",))["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{in_two['id']}").json()["status"] == "canceled"


def test_the_deadline_holds_in_either_phase(stores: Stores, tiny_checkpoint: Path) -> None:
    with server(stores, tiny_checkpoint, 0.02, max_batch=1, job_timeout_s=1.2) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        # phase 1: the shared chain alone (99 calls of >= 20 ms, one row at a time) outlasts the deadline;
        # phase 2: the two ends take 20 calls, the 8 frames 80 more
        long_first = c.post("/v1/jobs", json={"kind": "variations", "steps": 100, "t": 1, "seed": 1,
                                              "n": 1}).json()
        long_second = c.post("/v1/jobs", json={"kind": "interpolation", "a": {"seed": 1}, "b": {"seed": 2},
                                               "steps": 10, "t": 100, "frames": 8, "seed": 2}).json()
        for job in (long_first, long_second):
            ended = wait_status(c, job["id"], ("succeeded", "failed"))
            assert ended["status"] == "failed" and ended["error"]["status"] == 504, ended


def test_idempotency_and_webhooks_for_an_editing_kind(stores: Stores, tiny_checkpoint: Path) -> None:
    settings = {"webhook_secret": SECRET, "webhook_allow_private": True}
    with receiver() as hook, server(stores, tiny_checkpoint, **settings) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        body = {"kind": "variations", "n": 2, "steps": 6, "webhook": hook.url, "webhook_events": ["job.succeeded"]}
        key = {"Idempotency-Key": "variations-1"}
        first = c.post("/v1/jobs", json=body, headers=key)
        again = c.post("/v1/jobs", json=body, headers=key)  # a retry: the same job, its drawn seed kept
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"] and again.json()["seeds"] == first.json()["seeds"]
        assert c.post("/v1/jobs", json={**body, "n": 3}, headers=key).status_code == 409
        assert c.post("/v1/jobs", json={**body, "webhook": "ftp://x"}).json()["detail"][0]["field"] == "webhook"
        done = wait_status(c, first.json()["id"], ("succeeded",))
        deadline = time.monotonic() + 20
        while not hook.requests:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        payload = Webhook(SECRET).verify(hook.requests[0][2], hook.requests[0][1])
        assert payload["type"] == "job.succeeded" and payload["data"]["seeds"] == done["seeds"]


def test_a_body_at_the_size_limit_runs_as_a_job(stores: Stores, tiny_checkpoint: Path) -> None:
    big = np.random.default_rng(2).integers(0, 256, (600, 600, 1), dtype=np.uint8)  # noise: PNG barely shrinks it
    body = {"image": b64(big), "resize": True, "seed": 9, "steps": 3}
    size = len(json.dumps({"kind": "edit", **body}))
    assert size > 400_000
    with server(stores, tiny_checkpoint, max_body_bytes=size + 100) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        job = c.post("/v1/jobs", json={"kind": "edit", **body})
        assert job.status_code == 202, job.text
        done = wait_status(c, job.json()["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        assert job_pngs(c, done) == native(c, "/v1/edits", body)[0]


def test_both_stores_keep_a_spec_of_megabytes(store: JobStore) -> None:
    image = base64.b64encode(np.random.default_rng(3).bytes(6 * 1024 * 1024)).decode()  # an 8 MiB body
    spec = JobSpec(n=1, seed=4, params={"steps": 3, "sampler": "ddpm", "eta": None, "label": None, "guidance": 0.0},
                   kind="edit", body={"image": image, "seed": 4}, image_seeds=(4,), fingerprint="f")
    job, created = store.create("owner", spec)
    assert created and store.get(job.id, "owner").spec == spec
    (claim,) = store.claim("replica", 10)
    assert claim.job.spec == spec and claim.job.spec.seeds == [4]


@pytest.mark.slow
def test_kill_9_of_a_sqlite_replica_mid_variations_job_then_restart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The jobs' invariant for an editing kind with two phases: killed -9 mid-job, the restarted replica
    runs it again from its stored body and seed, and its images are those of /v1/variations."""
    env = {**SETTINGS, "data_dir": str(tmp_path / "data")}
    body = {"n": 12, "steps": 100, "t": 90, "seed": 77}  # 10 shared steps, then 12 x 90, one row at a time
    with serve_process(tiny_checkpoint, tmp_path / "first.log", **env) as (url, proc):
        job = post_then_kill(url, proc, {"kind": "variations", **body}, "running")
    with serve_process(tiny_checkpoint, tmp_path / "second.log", **env) as (url, _):
        done = wait_job(url, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        with httpx.Client(base_url=url, timeout=60) as c:
            pngs, seeds = native(c, "/v1/variations", body)
        assert done["seeds"] == seeds and images(url, done) == pngs


def test_events_of_a_two_phase_job(stores: Stores, tiny_checkpoint: Path) -> None:
    """Progress from both phases, never going back; ``image`` events only for the job's own images,
    with the seeds the endpoint reports (continuation i: seed + 1 + i)."""
    with server(stores, tiny_checkpoint, 0.01, max_batch=2) as url, httpx.Client(base_url=url, timeout=60) as c:
        job = c.post("/v1/jobs", json={"kind": "variations", "n": 2, "steps": 60, "t": 30, "seed": 40}).json()
        events = sse_events(c, f"/v1/jobs/{job['id']}/events")
        kinds = [name for name, _ in events]
        assert kinds[-1] == "done" and events[-1][1]["status"] == "succeeded", events[-1]
        # (the first event may be the job's state before any report: step 0 of its ``steps``)
        progress = [(d["step"], d["steps"]) for name, d in events if name == "progress" and d["step"] > 0]
        assert [s for s, _ in progress] == sorted(s for s, _ in progress)
        totals = [total for _, total in progress]  # the shared chain's steps (down to t), then all 60
        assert totals == sorted(totals) and len(set(totals)) <= 2 and totals[-1] == 60, totals
        images = sorted((d for name, d in events if name == "image"), key=lambda d: d["index"])
        assert [(d["index"], d["seed"]) for d in images] == [(0, 41), (1, 42)]
        assert [base64.b64decode(d["png_base64"]) for d in images] == job_pngs(c, events[-1][1])
