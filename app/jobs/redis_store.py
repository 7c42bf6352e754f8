"""The shared job store: Redis, for replicas that pull work.

Jobs enter the stream ``ddpm:jobs``; every replica reads it through the consumer group
``ddpm-engines`` (the names an autoscaler such as KEDA's redis-streams trigger watches). A replica
claims with XREADGROUP one job at a time while it has free rows, renews its lease with XCLAIM
(JUSTID) on each progress report, and XACKs + XDELs the entry when the job ends. A replica that
dies stops renewing: after ``lease_s`` XAUTOCLAIM hands its entry to another, which re-runs the
job from its seeds (identical images); the dead claim's token no longer matches, so a slow but
live replica cannot finish a job twice. Events go through pub/sub to every replica's EventHub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from . import redis_lua
from .errors import IdempotencyConflict, JobExpired, JobNotFound, JobNotReady, QuotaExceeded
from .hub import EventHub, Subscriber
from .outbox import Delivery, delivery_for
from .records import (
    Claim,
    Failure,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    Page,
    Progress,
    decode_cursor,
    encode_cursor,
    spec_from_json,
    spec_to_json,
)
from .redis_outbox import DELIVERIES, OUTBOX, RedisOutbox
from .store import StoreOptions

log = logging.getLogger("ddpm.jobs")

STREAM = "ddpm:jobs"
GROUP = "ddpm-engines"
QUEUED = "ddpm:queued"
SEQ = "ddpm:seq"
EVENTS = "ddpm:events:"


def _job_key(job_id: str) -> str:
    return f"ddpm:job:{job_id}"


def _images_key(job_id: str) -> str:
    return f"ddpm:job:{job_id}:images"


def _owner_key(owner: str) -> str:
    return f"ddpm:owner:{owner}"


def _idem_key(owner: str, key: str) -> str:
    return f"ddpm:idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"


def _job(h: dict[bytes, bytes], position: int | None = None) -> Job:
    f = {k.decode(): v.decode() for k, v in h.items()}
    progress, error = f.get("progress"), f.get("error")
    return Job(id=f["id"], owner=f["owner"], status=f["status"], spec=spec_from_json(f["spec"]),  # type: ignore[arg-type]
               created_at=float(f["created_at"]), expires_at=float(f["expires_at"]), seq=int(f["seq"]),
               started_at=float(f["started_at"]) if "started_at" in f else None,
               finished_at=float(f["finished_at"]) if "finished_at" in f else None,
               progress=Progress(**json.loads(progress)) if progress else None,
               error=Failure(**json.loads(error)) if error else None,
               attempts=int(f.get("attempts", 0)), position=position)


class RedisStore(RedisOutbox):
    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        # Any: redis-py's return types are unions over every client mode; the replies here are bytes.
        self._r: Any = redis.Redis.from_url(url, decode_responses=False)
        try:
            self._r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._create = self._r.register_script(redis_lua.CREATE)
        self._claim = self._r.register_script(redis_lua.CLAIM)
        self._transition = self._r.register_script(redis_lua.TRANSITION)
        self._release = self._r.register_script(redis_lua.RELEASE)
        self._take = self._r.register_script(redis_lua.TAKE_DELIVERIES)
        self._hub = EventHub()
        self._stop = threading.Event()
        self._pubsub = self._r.pubsub(ignore_subscribe_messages=False)
        self._pubsub.psubscribe(EVENTS + "*")
        self._await_subscription()
        self._listener = threading.Thread(target=self._listen, name="ddpm-job-events", daemon=True)
        self._listener.start()

    # ---- the client side ----

    def create(self, owner: str, spec: JobSpec, *, idempotency_key: str | None = None,
               max_queued_images: int | None = None) -> tuple[Job, bool]:
        now = time.time()
        expires = now + self.options.ttl_s
        drop_ms = int((expires + self.options.ttl_s) * 1000)  # the record answers 410 for one more TTL
        job_id = uuid.uuid4().hex
        keys = [_job_key(job_id), _owner_key(owner), STREAM, QUEUED, SEQ,
                _idem_key(owner, idempotency_key or "")]
        args: list[Any] = [job_id, owner, spec_to_json(spec), spec.n, repr(now), repr(expires), drop_ms,
                           spec.fingerprint, "1" if idempotency_key is not None else "0",
                           -1 if max_queued_images is None else max_queued_images,
                           int(self.options.ttl_s * 2000)]
        outcome, value = (v.decode() for v in self._create(keys=keys, args=args))
        if outcome == "quota":
            assert max_queued_images is not None
            raise QuotaExceeded(f"this key has {value} images queued; limit max_queued_images_per_key="
                                f"{max_queued_images}", limit=max_queued_images, queued=int(value))
        if outcome == "existing":
            job = self.get(value)
            if job.spec.fingerprint != spec.fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with another body")
            return job, False
        job = self.get(job_id)
        self.publish(JobEvent(job_id, "status", {"status": "queued", "position": job.position}))
        return job, True

    def get(self, job_id: str, owner: str | None = None) -> Job:
        h = self._r.hgetall(_job_key(job_id))
        if not h or (owner is not None and h[b"owner"].decode() != owner):
            raise JobNotFound(f"no job {job_id}")
        if float(h[b"expires_at"]) <= time.time():
            raise JobExpired(f"job {job_id} has expired")
        job = _job(h)
        if job.status == "queued":
            job = _job(h, self._position(h[b"msg"].decode()))
        return job

    def list_jobs(self, owner: str, *, status: JobStatus | None = None, limit: int = 20,
                  cursor: str | None = None) -> Page:
        below = decode_cursor(cursor)
        limit = max(1, min(limit, self.options.max_list))
        top: str = f"({below}" if below is not None else "+inf"
        jobs: list[Job] = []
        now = time.time()
        while len(jobs) <= limit:
            ids = self._r.zrange(_owner_key(owner), top, "-inf", desc=True, byscore=True, offset=0,
                                 num=limit + 1, withscores=True)
            if not ids:
                break
            pipe = self._r.pipeline(transaction=False)
            for job_id, _ in ids:
                pipe.hgetall(_job_key(job_id.decode()))
            for (job_id, score), h in zip(ids, pipe.execute(), strict=True):
                top = f"({int(score)}"
                if not h:  # its record expired away: drop it from the index
                    self._r.zrem(_owner_key(owner), job_id)
                elif float(h[b"expires_at"]) > now and (status is None or h[b"status"].decode() == status):
                    jobs.append(_job(h))
        page = jobs[:limit]
        return Page(page, encode_cursor(page[-1].seq) if len(jobs) > limit else None)

    def position(self, job_id: str) -> int | None:
        h = self._r.hmget(_job_key(job_id), ["status", "msg"])
        if h[0] != b"queued" or h[1] is None:
            return None
        return self._position(h[1].decode())

    def _position(self, msg: str) -> int:
        """Images in stream entries not yet delivered to any replica and older than ``msg``."""
        groups = self._r.xinfo_groups(STREAM)
        last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP.encode()), b"0-0").decode()
        if _stream_id(last) >= _stream_id(msg):
            return 0
        entries = self._r.xrange(STREAM, f"({last}", f"({msg}")
        return sum(int(fields[b"n"]) for _, fields in entries)

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        job = self.get(job_id, owner)
        if not job.terminal:
            now = time.time()
            ended = replace(job, status="canceled", finished_at=now, expires_at=now + self.options.ttl_s,
                            position=None)
            outcome, _ = self._run_transition(job_id, allowed="queued running", new_status="canceled", now=now,
                                              delivery=delivery_for(ended, "job.canceled"),
                                              fields={"finished_at": repr(now),
                                                      "expires_at": repr(now + self.options.ttl_s)})
            if outcome == "ok":
                self.publish(JobEvent(job_id, "status", {"status": "canceled"}))
        return self.get(job_id)

    def image(self, job_id: str, index: int, owner: str | None = None) -> bytes:
        job = self.get(job_id, owner)
        if index >= job.n:
            raise JobNotFound(f"job {job_id} has no image {index} (it has {job.n})")
        png = self._r.hget(_images_key(job_id), str(index))
        if png is None:
            raise JobNotReady(f"job {job_id} is {job.status}: image {index} has not finished")
        return bytes(png)

    # ---- the engine side ----

    def claim(self, consumer: str, max_images: int) -> list[Claim]:
        claims: list[Claim] = []
        images = 0
        while images < max_images:
            entry = self._next_entry(consumer)
            if entry is None:
                break
            msg, fields = entry
            job_id, n, owner = (fields[k].decode() for k in (b"id", b"n", b"owner"))
            token = uuid.uuid4().hex
            args: list[Any] = [token, consumer, repr(time.time()), msg, owner, n, self.options.max_attempts]
            outcome = self._claim(keys=[_job_key(job_id), QUEUED], args=args).decode()
            if outcome != "claimed":  # canceled, expired, gone or poison: it leaves the stream
                self._r.xack(STREAM, GROUP, msg)
                self._r.xdel(STREAM, msg)
                if outcome in ("expired", "poison"):
                    self._enqueue_for(job_id, "job.failed")
                    self.publish(JobEvent(job_id, "status", {"status": "failed"}))
                continue
            job = self.get(job_id)
            if job.attempts == 1:
                self._enqueue_for(job_id, "job.started")
            claims.append(Claim(job, token, msg))
            images += job.n
            self.publish(JobEvent(job_id, "status", {"status": "running", "attempt": job.attempts}))
        return claims

    def _enqueue_for(self, job_id: str, event_type: str) -> None:
        """Right after the claim that made ``event_type`` happen (not in the same script: a replica killed
        in between loses this one event; the job's end is written with the end itself)."""
        try:
            delivery = delivery_for(self.get(job_id), event_type)
        except (JobNotFound, JobExpired):
            return
        if delivery is not None:
            self.enqueue_delivery(delivery)

    def _next_entry(self, consumer: str) -> tuple[str, dict[bytes, bytes]] | None:
        """A dead replica's entry idle past the lease first (XAUTOCLAIM), else a new one (XREADGROUP)."""
        start = "0-0"
        lease_ms = int(self.options.lease_s * 1000)
        while True:
            result = self._r.xautoclaim(STREAM, GROUP, consumer, lease_ms, start_id=start, count=1)
            start, entries = result[0].decode(), result[1]
            entries = [e for e in entries if e and e[1]]
            if entries:
                return entries[0][0].decode(), entries[0][1]
            if start == "0-0":
                break
        read = self._r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1)
        if not read or not read[0][1]:
            return None
        msg, fields = read[0][1][0]
        return msg.decode(), fields

    def _run_transition(self, job_id: str, *, allowed: str, now: float, token: str = "", new_status: str = "",
                        expire_at: float | None = None, pngs: Sequence[tuple[int, bytes]] = (),
                        delivery: Delivery | None = None, fields: dict[str, str] | None = None) -> tuple[str, str]:
        if new_status in ("succeeded", "failed", "canceled"):
            expire_at = now + 2 * self.options.ttl_s
        pairs = [x for kv in (fields or {}).items() for x in kv]
        args: list[Any] = [allowed, token, repr(now), new_status, GROUP,
                           int(expire_at * 1000) if expire_at else "", len(pngs),
                           int((now + self.options.ttl_s) * 1000), *self._delivery_args(delivery),
                           *[x for index, png in pngs for x in (str(index), png)], *pairs]
        keys = [_job_key(job_id), QUEUED, STREAM, _images_key(job_id), OUTBOX, DELIVERIES]
        result = self._transition(keys=keys, args=args)
        return result[0].decode(), result[1].decode()

    def extend(self, claim: Claim) -> bool:
        return self._run_transition(claim.job.id, allowed="running", token=claim.token, now=time.time())[0] == "ok"

    def progress(self, claim: Claim, progress: Progress) -> bool:
        data = {"step": progress.step, "steps": progress.steps, "images_done": progress.images_done}
        held = self._run_transition(claim.job.id, allowed="running", token=claim.token, now=time.time(),
                                    fields={"progress": json.dumps(data)})[0] == "ok"
        if held:
            self.publish(JobEvent(claim.job.id, "progress", {**data, "n": claim.job.n}))
        return held

    def put_image(self, claim: Claim, index: int, png: bytes) -> bool:
        held = self._run_transition(claim.job.id, allowed="running", token=claim.token, now=time.time(),
                                    pngs=[(index, png)])[0] == "ok"
        if held:
            self.publish(JobEvent(claim.job.id, "image", {"index": index, "seed": claim.job.spec.seeds[index]}))
        return held

    def complete(self, claim: Claim, pngs: Sequence[bytes]) -> Job | None:
        now = time.time()
        steps = int(claim.job.spec.params.get("steps") or 0)
        progress = Progress(steps, steps, len(pngs))
        done = json.dumps({"step": steps, "steps": steps, "images_done": len(pngs)})
        ended = replace(claim.job, status="succeeded", finished_at=now, expires_at=now + self.options.ttl_s,
                        progress=progress)
        outcome, _ = self._run_transition(
            claim.job.id, allowed="running", token=claim.token, now=now, new_status="succeeded",
            pngs=list(enumerate(pngs)), delivery=delivery_for(ended, "job.succeeded"),
            fields={"finished_at": repr(now), "expires_at": repr(now + self.options.ttl_s), "progress": done})
        if outcome != "ok":
            return None
        self.publish(JobEvent(claim.job.id, "status", {"status": "succeeded"}))
        return self.get(claim.job.id)

    def fail(self, claim: Claim, failure: Failure) -> Job | None:
        now = time.time()
        error = {"status": failure.status, "message": failure.message}
        ended = replace(claim.job, status="failed", finished_at=now, expires_at=now + self.options.ttl_s,
                        error=failure)
        outcome, _ = self._run_transition(
            claim.job.id, allowed="running", token=claim.token, now=now, new_status="failed",
            delivery=delivery_for(ended, "job.failed"),
            fields={"finished_at": repr(now), "expires_at": repr(now + self.options.ttl_s),
                    "error": json.dumps(error)})
        if outcome != "ok":
            return None
        self.publish(JobEvent(claim.job.id, "status", {"status": "failed", "error": error}))
        return self.get(claim.job.id)

    def release(self, claim: Claim) -> bool:
        held = bool(self._release(keys=[_job_key(claim.job.id), QUEUED, STREAM], args=[claim.token, GROUP]))
        if held:
            position = self.position(claim.job.id)
            self.publish(JobEvent(claim.job.id, "status", {"status": "queued", "position": position}))
        return held

    def recover(self) -> int:
        """Nothing to do: a dead replica's claims come back through XAUTOCLAIM after the lease."""
        return 0

    # ---- events, metrics ----

    def subscribe(self, job_id: str, callback: Subscriber) -> Callable[[], None]:
        return self._hub.subscribe(job_id, callback)

    def publish(self, event: JobEvent) -> None:
        self._r.publish(EVENTS + event.job_id, json.dumps({"kind": event.kind, "data": event.data}))

    def _await_subscription(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "psubscribe":
                return
        raise TimeoutError("redis did not confirm the job-events subscription")

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            except (redis.ConnectionError, ValueError):  # reconnects and re-subscribes on the next call
                if not self._stop.is_set():
                    log.warning("job events: redis connection lost; retrying")
                    time.sleep(0.5)
                continue
            if message is None or message["type"] != "pmessage":
                continue
            job_id = message["channel"].decode().removeprefix(EVENTS)
            body = json.loads(message["data"])
            self._hub.publish(JobEvent(job_id, body["kind"], body["data"]))

    def counts(self) -> dict[str, int]:
        """Queued and running jobs across all replicas: undelivered and delivered stream entries."""
        pending = self._r.xpending(STREAM, GROUP)["pending"]
        return {"queued": int(self._r.xlen(STREAM)) - int(pending), "running": int(pending)}

    def close(self) -> None:
        self._stop.set()
        self._listener.join(5)
        self._pubsub.close()
        self._r.close()


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
