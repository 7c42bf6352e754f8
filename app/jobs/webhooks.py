"""Webhooks: job events POSTed to a client's URL, signed per the Standard Webhooks specification.

- Signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (v1, HMAC-SHA256 under
  DDPM_WEBHOOK_SECRET, made by the ``standardwebhooks`` package). The id is the same on every
  attempt, so a receiver can drop duplicates.
- Delivery never blocks the engine: ``send`` queues and returns; a scheduler thread hands due
  attempts to a small pool. A failed attempt (network error, any non-2xx) is retried with
  exponential backoff and jitter up to ``max_attempts``; each attempt's outcome goes to
  ``on_attempt`` (delivered, retry, failed, refused) for the metrics.
- Server-side request forgery: a URL whose host resolves to a loopback, private, link-local,
  multicast, reserved, unspecified, shared (CGNAT) or cloud metadata address is refused, at
  creation (InvalidField naming ``webhook``) and again at each attempt, where the connection goes
  to the very address that was checked (no second lookup a rebinding DNS server could answer).
  ``allow_private`` turns this off for a trusted network (and the tests' loopback receiver).
"""

from __future__ import annotations

import heapq
import http.client
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from .errors import InvalidField
from .records import Job

log = logging.getLogger("ddpm.webhooks")

EVENTS = ("job.started", "job.succeeded", "job.failed", "job.canceled")
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled")  # job.started only on request
MAX_URL_LENGTH = 2048
# Cloud metadata services; most are link-local or private already, listed so the message says why.
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))

Resolver = Callable[[str, int], Sequence[str]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def forbidden(address: Address) -> str | None:
    """Why a webhook may not be sent to ``address``, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, hit in (("a cloud metadata address", address in METADATA), ("loopback", address.is_loopback),
                        ("link-local", address.is_link_local), ("multicast", address.is_multicast),
                        ("unspecified", address.is_unspecified), ("reserved", address.is_reserved),
                        ("private", address.is_private), ("not globally routable", not address.is_global)):
        if hit:
            return reason
    return None


def _target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL, or InvalidField naming ``webhook``."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidField("webhook", f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidField("webhook", f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField("webhook", "must be an http:// or https:// URL with a host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_address(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> str:
    """The address to connect to for ``url``; InvalidField (``webhook``) if any of its host's
    addresses is forbidden (one bad record among good ones is refused too) or it does not resolve."""
    _, host, port = _target(url)
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port)]
    except (OSError, ValueError) as exc:
        raise InvalidField("webhook", f"host {host!r} does not resolve: {exc}") from None
    if not addresses:
        raise InvalidField("webhook", f"host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = forbidden(address)
            if reason:
                raise InvalidField("webhook", f"host {host!r} resolves to {address}, {reason}; refused "
                                   "(DDPM_WEBHOOK_ALLOW_PRIVATE allows it)")
    return str(addresses[0])


def validate(url: str | None, events: Sequence[str] | None, *, enabled: bool, allow_private: bool,
             resolver: Resolver = resolve) -> tuple[str | None, tuple[str, ...]]:
    """Check a job's ``webhook`` and ``webhook_events`` at creation; returns them normalised
    (events without a webhook have nowhere to go: they are dropped)."""
    if url is None:
        return None, ()
    if not enabled:
        raise InvalidField("webhook", "webhooks are off on this server (DDPM_WEBHOOK_SECRET is not set)")
    unknown = [e for e in events or () if e not in EVENTS]
    if unknown:
        raise InvalidField("webhook_events", f"unknown {unknown}; known: {', '.join(EVENTS)}")
    check_address(url, allow_private=allow_private, resolver=resolver)
    return url, tuple(dict.fromkeys(events)) if events else DEFAULT_EVENTS


@dataclass(frozen=True)
class WebhookOptions:
    secret: str  # "whsec_" + base64, as Standard Webhooks has it
    max_attempts: int = 6
    backoff_s: float = 1.0  # first retry after about this; doubles each time
    max_backoff_s: float = 300.0
    timeout_s: float = 10.0  # one attempt: connect, send, read the status
    allow_private: bool = False
    workers: int = 4


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    msg_id: str = field(compare=False)
    body: str = field(compare=False)
    attempt: int = field(default=0, compare=False)


class WebhookSender:
    def __init__(self, options: WebhookOptions, *, on_attempt: Callable[[str], None] | None = None,
                 resolver: Resolver = resolve, rng: random.Random | None = None) -> None:
        self.options = options
        self._signer = Webhook(options.secret)
        self._on_attempt = on_attempt or (lambda outcome: None)
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._heap: list[_Delivery] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(options.workers, thread_name_prefix="ddpm-webhook")
        self._thread = threading.Thread(target=self._schedule, name="ddpm-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, event_type: str, data: dict[str, Any], *, msg_id: str | None = None) -> str:
        """Queue one event for ``url`` and return its webhook-id at once."""
        msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
        body = json.dumps({"type": event_type, "timestamp": datetime.now(timezone.utc).isoformat(), "data": data})
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, _Delivery(time.monotonic(), self._seq, url, msg_id, body))
            self._cond.notify()
        return msg_id

    def close(self, timeout: float = 5.0) -> None:
        """Stop; attempts in flight finish (bounded by their timeout), later retries are dropped."""
        with self._cond:
            self._stopping = True
            dropped = len(self._heap)
            self._cond.notify()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if dropped:
            log.warning("dropped %d webhook deliveries at shutdown", dropped)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0].due > time.monotonic()):
                    self._cond.wait(self._heap[0].due - time.monotonic() if self._heap else None)
                if self._stopping:
                    return
                delivery = heapq.heappop(self._heap)
            self._pool.submit(self._attempt, delivery)

    def _attempt(self, delivery: _Delivery) -> None:
        delivery.attempt += 1
        try:
            address = check_address(delivery.url, allow_private=self.options.allow_private, resolver=self._resolver)
        except InvalidField as exc:  # it resolves elsewhere now (DNS rebinding) or not at all
            log.warning("webhook %s refused: %s", delivery.msg_id, exc.detail)
            self._on_attempt("refused")
            return
        try:
            status = self._post(delivery, address)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self._on_attempt("delivered")
        elif delivery.attempt >= self.options.max_attempts:
            log.warning("webhook %s failed after %d attempts: %s", delivery.msg_id, delivery.attempt, error)
            self._on_attempt("failed")
        else:
            self._on_attempt("retry")
            self._retry(delivery)

    def _retry(self, delivery: _Delivery) -> None:
        # Exponential backoff with "equal jitter": half the delay fixed, half random, so retries of
        # many receivers that failed together spread out instead of arriving together again.
        delay = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (delivery.attempt - 1))
        delivery.due = time.monotonic() + delay / 2 + self._rng.uniform(0, delay / 2)
        with self._cond:
            heapq.heappush(self._heap, delivery)
            self._cond.notify()

    def _post(self, delivery: _Delivery, address: str) -> int:
        scheme, host, port = _target(delivery.url)
        parts = urlsplit(delivery.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        timestamp = datetime.now(timezone.utc)
        headers = {
            "content-type": "application/json",
            "user-agent": "ddpm-serve-webhooks",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._signer.sign(delivery.msg_id, timestamp, delivery.body),
        }
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = cls(host, port, timeout=self.options.timeout_s)
        # Connect to the address just checked; TLS still verifies the certificate for ``host``.
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda _addr, *args, **kwargs: socket.create_connection((address, port), *args, **kwargs))
        try:
            conn.request("POST", path, body=delivery.body.encode(), headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()


def job_payload(job: Job) -> dict[str, Any]:
    """The ``data`` of a job event: what GET /v1/jobs/{id} says, less the URLs (the receiver has the id)."""
    return {
        "id": job.id, "status": job.status, "n": job.n, "seeds": job.spec.seeds, "attempts": job.attempts,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "error": {"status": job.error.status, "message": job.error.message} if job.error else None,
    }


def notify(sender: WebhookSender | None, job: Job, event_type: str) -> str | None:
    """Send ``event_type`` for ``job`` if it asked for it; the webhook-id is fixed per job and event,
    so a receiver drops the duplicate a re-delivered job can cause."""
    if sender is None or job.spec.webhook is None or event_type not in job.spec.webhook_events:
        return None
    return sender.send(job.spec.webhook, event_type, job_payload(job), msg_id=f"msg_{job.id}_{event_type}")
