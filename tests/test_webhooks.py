"""Webhooks (app/jobs/webhooks.py): a real loopback receiver (http.server), signatures checked by
the ``standardwebhooks`` package, retries with backoff when the receiver fails, delivery that never
blocks its caller, and the server-side request forgery refusals (at creation and at delivery)."""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.jobs import InvalidField
from app.jobs.outbox import message
from app.jobs.sqlite_store import SQLiteStore
from app.jobs.webhooks import DEFAULT_EVENTS, WebhookOptions, WebhookSender, validate

from .webhook_receiver import SECRET, receiver


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, outcome: str) -> None:
        with self.lock:
            self.seen.append(outcome)

    def wait(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            assert time.monotonic() < deadline, f"only {self.seen} after {timeout}s"
            time.sleep(0.01)
        return list(self.seen)


@contextmanager
def outbox_store() -> Iterator[SQLiteStore]:
    """The outbox the deliveries wait in: the embedded job store, in a folder of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "jobs.sqlite3")
        try:
            yield store
        finally:
            store.close()


@contextmanager
def sender(outcomes: Outcomes, **options: Any) -> Iterator[WebhookSender]:
    with outbox_store() as store:
        s = WebhookSender(WebhookOptions(**{"secret": SECRET, "allow_private": True, "poll_s": 0.02, **options}),
                          store, on_attempt=outcomes)
        try:
            yield s
        finally:
            s.close()


def test_delivered_and_signed_per_standard_webhooks() -> None:
    outcomes = Outcomes()
    with receiver() as r, sender(outcomes) as s:
        msg_id = s.send(r.url, "job.succeeded", {"id": "job1", "status": "succeeded"})
        assert outcomes.wait(1) == ["delivered"]
    (_, headers, body, path), = r.requests
    assert path == "/hooks/ddpm?x=1"
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "job.succeeded" and payload["data"] == {"id": "job1", "status": "succeeded"}
    assert headers["webhook-id"] == msg_id and headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):  # the signature covers the body
        Webhook(SECRET).verify(body.replace(b"job1", b"job2"), headers)
    with pytest.raises(WebhookVerificationError):  # and depends on the secret
        Webhook("whsec_" + base64.b64encode(b"another secret").decode()).verify(body, headers)


def test_retries_with_backoff_until_the_receiver_answers() -> None:
    outcomes = Outcomes()
    with receiver(fail_first=2) as r, sender(outcomes, backoff_s=0.2, max_attempts=5) as s:
        s.send(r.url, "job.failed", {"id": "job1"}, msg_id="msg_job1_failed")
        assert outcomes.wait(3) == ["retry", "retry", "delivered"]
    times = [t for t, *_ in r.requests]
    assert len(times) == 3
    # delay of attempt k: between half and all of backoff * 2^(k-1)
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2
    for _, headers, body, _ in r.requests:  # one id on every attempt, each attempt freshly signed
        assert headers["webhook-id"] == "msg_job1_failed"
        assert Webhook(SECRET).verify(body, headers)["type"] == "job.failed"


def test_gives_up_after_max_attempts() -> None:
    outcomes = Outcomes()
    with receiver(fail_first=100) as r, sender(outcomes, backoff_s=0.05, max_attempts=3) as s:
        s.send(r.url, "job.canceled", {"id": "job1"})
        assert outcomes.wait(3) == ["retry", "retry", "failed"]
        time.sleep(0.3)
    assert len(r.requests) == 3 and outcomes.seen == ["retry", "retry", "failed"]


def test_a_delivery_outlives_its_sender() -> None:
    """The receiver fails the first attempt; that sender then stops (its replica died). The delivery
    waits in the store; another sender on the same store sends it, with the same webhook-id."""
    first, second = Outcomes(), Outcomes()
    with receiver(fail_first=1) as r, outbox_store() as store:
        opts = WebhookOptions(secret=SECRET, allow_private=True, backoff_s=0.2, poll_s=0.02)
        s1 = WebhookSender(opts, store, on_attempt=first)
        msg_id = s1.send(r.url, "job.succeeded", {"id": "job1"})
        assert first.wait(1) == ["retry"]
        s1.close()
        time.sleep(0.3)
        assert store.pending_deliveries() == 1 and len(r.requests) == 1
        s2 = WebhookSender(opts, store, on_attempt=second)
        try:
            assert second.wait(1) == ["delivered"]
        finally:
            s2.close()
        assert store.pending_deliveries() == 0
    assert [h["webhook-id"] for _, h, _, _ in r.requests] == [msg_id, msg_id]
    assert Webhook(SECRET).verify(r.requests[1][2], r.requests[1][1])["data"] == {"id": "job1"}


def test_a_taken_delivery_returns_after_its_lease() -> None:
    """A sender that took a delivery and died mid-attempt records nothing: once the lease has
    passed, another takes it; before that nobody does."""
    with outbox_store() as store:
        store.enqueue_delivery(message("http://hooks.example/x", "job.failed", {}, msg_id="m1"))
        (taken,) = store.due_deliveries(4, lease_s=0.3)
        assert taken.id == "m1" and taken.attempt == 1
        assert store.due_deliveries(4, lease_s=0.3) == []
        time.sleep(0.35)
        (again,) = store.due_deliveries(4, lease_s=0.3)
        assert again.id == "m1" and again.attempt == 2 and again.body == taken.body


def test_an_unreachable_receiver_is_retried() -> None:
    outcomes = Outcomes()
    with receiver() as r:
        url = r.url
    with sender(outcomes, backoff_s=0.05, max_attempts=2, timeout_s=2) as s:  # nothing listens there now
        s.send(url, "job.succeeded", {})
        assert outcomes.wait(2) == ["retry", "failed"]


def test_send_never_blocks_on_a_slow_receiver() -> None:
    outcomes = Outcomes()
    with receiver() as r, sender(outcomes, workers=2) as s:
        r.gate = threading.Event()
        for i in range(5):
            s.send(r.url, "job.succeeded", {"i": i})  # returns although no receiver has answered
        assert outcomes.seen == [] and r.requests == []
        r.gate.set()
        assert outcomes.wait(5) == ["delivered"] * 5
    assert sorted(json.loads(body)["data"]["i"] for _, _, body, _ in r.requests) == list(range(5))


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://172.16.5.4/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
])
def test_private_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidField) as err:
        validate(url, None, enabled=True, allow_private=False)
    assert err.value.field == "webhook" and reason in err.value.detail
    assert validate(url, None, enabled=True, allow_private=True) == (url, DEFAULT_EVENTS)


def test_names_are_checked_by_every_address_they_resolve_to() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"public.test": ["93.184.215.14"], "mixed.test": ["93.184.215.14", "10.0.0.5"],
                "v6.test": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}[host]

    for host in ("public.test", "v6.test"):
        assert validate(f"https://{host}/h", ["job.started"], enabled=True, allow_private=False,
                        resolver=resolver) == (f"https://{host}/h", ("job.started",))
    with pytest.raises(InvalidField, match="10.0.0.5, private"):
        validate("https://mixed.test/h", None, enabled=True, allow_private=False, resolver=resolver)
    with pytest.raises(InvalidField, match="does not resolve"):
        validate("https://nowhere.invalid/h", None, enabled=True, allow_private=False)


@pytest.mark.parametrize("url, events, enabled, field, text", [
    ("ftp://example.com/x", None, True, "webhook", "http:// or https://"),
    ("http:///nohost", None, True, "webhook", "with a host"),
    ("http://example.com:99999/", None, True, "webhook", "not a URL"),
    ("http://example.com/" + "x" * 3000, None, True, "webhook", "longer than 2048"),
    ("http://93.184.215.14/", ["job.exploded"], True, "webhook_events", "unknown"),
    ("http://93.184.215.14/", None, False, "webhook", "DDPM_WEBHOOK_SECRET"),
])
def test_bad_webhook_fields(url: str | None, events: list[str] | None, enabled: bool, field: str,
                            text: str) -> None:
    with pytest.raises(InvalidField) as err:
        validate(url, events, enabled=enabled, allow_private=False)
    assert err.value.field == field and text in err.value.detail
    assert validate(None, None, enabled=False, allow_private=False) == (None, ())
    assert validate(None, ["job.started"], enabled=True, allow_private=False) == (None, ())


def test_dns_rebinding_is_refused_at_delivery() -> None:
    """The name was public when the job was made; at delivery it resolves to loopback: refused,
    and nothing reaches the loopback receiver."""
    outcomes = Outcomes()
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    with receiver() as r:
        port = r.url.split(":")[2].split("/")[0]
        url = f"http://rebind.test:{port}/hook"

        def resolver(host: str, p: int) -> list[str]:
            return next(answers)

        validate(url, None, enabled=True, allow_private=False, resolver=resolver)
        with outbox_store() as store:
            s = WebhookSender(WebhookOptions(secret=SECRET), store, on_attempt=outcomes, resolver=resolver)
            try:
                s.send(url, "job.succeeded", {})
                assert outcomes.wait(1) == ["refused"]
            finally:
                s.close()
            assert store.pending_deliveries() == 0  # refused: not tried again
    assert r.requests == []


def test_the_connection_goes_to_the_checked_address() -> None:
    """A name is resolved once per attempt and the socket connects to that address, with the name
    kept as the Host header (and, for https, the name the certificate must match)."""
    outcomes = Outcomes()
    with receiver() as r:
        port = r.url.split(":")[2].split("/")[0]
        with outbox_store() as store:
            s = WebhookSender(WebhookOptions(secret=SECRET, allow_private=True), store, on_attempt=outcomes,
                              resolver=lambda host, p: ["127.0.0.1"] if host == "hooks.test" else [])
            try:
                s.send(f"http://hooks.test:{port}/x", "job.started", {"id": "j"})
                assert outcomes.wait(1) == ["delivered"]
            finally:
                s.close()
    assert r.requests[0][1]["Host"] == f"hooks.test:{port}"
