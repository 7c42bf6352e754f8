"""Webhooks: job events POSTed to a client's URL, signed per the Standard Webhooks specification.

- Signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (v1, HMAC-SHA256 under
  DDPM_WEBHOOK_SECRET, made by the ``standardwebhooks`` package). The id is the same on every
  attempt, so a receiver can drop duplicates.
- Delivery never blocks the engine: events wait in the job store's outbox (``outbox.py``, written
  with the state change they report), and a scheduler thread on every replica takes due ones
  under a lease and hands them to a small pool, so a delivery outlives the replica that made it
  (at-least-once, the same webhook-id each time). A failed attempt (network error, any non-2xx) is
  retried with exponential backoff and jitter up to ``max_attempts``, whichever replica makes it;
  each attempt's outcome goes to ``on_attempt`` (delivered, retry, failed, refused) for the metrics.
- Server-side request forgery: a URL whose host resolves to a loopback, private, link-local,
  multicast, reserved, unspecified, shared (CGNAT) or cloud metadata address is refused, at
  creation (InvalidField naming ``webhook``) and again at each attempt, where the connection goes
  to the very address that was checked (no second lookup a rebinding DNS server could answer).
  ``allow_private`` turns this off for a trusted network (and the tests' loopback receiver).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from .errors import InvalidField
from .outbox import EVENTS, Delivery, Outbox, message

log = logging.getLogger("ddpm.webhooks")

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
    poll_s: float = 0.25  # how often the outbox is read for due deliveries (at once after ``send``)

    @property
    def lease_s(self) -> float:
        """How long a taken delivery is this replica's: longer than one attempt can take (connect,
        send, read: each bounded by the timeout)."""
        return 3 * self.timeout_s + 1


class WebhookSender:
    def __init__(self, options: WebhookOptions, outbox: Outbox, *, on_attempt: Callable[[str], None] | None = None,
                 resolver: Resolver = resolve, rng: random.Random | None = None) -> None:
        self.options = options
        self.outbox = outbox
        self._signer = Webhook(options.secret)
        self._on_attempt = on_attempt or (lambda outcome: None)
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._wake = False
        self._stopping = False
        self._pool = ThreadPoolExecutor(options.workers, thread_name_prefix="ddpm-webhook")
        self._thread = threading.Thread(target=self._schedule, name="ddpm-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, event_type: str, data: dict[str, Any], *, msg_id: str | None = None) -> str:
        """Put one event for ``url`` in the outbox and return its webhook-id at once."""
        delivery = message(url, event_type, data, msg_id=msg_id)
        self.outbox.enqueue_delivery(delivery)
        self.wake()
        return delivery.id

    def wake(self) -> None:
        """Read the outbox now (something was just put in it on this replica)."""
        with self._cond:
            self._wake = True
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop; attempts in flight finish (bounded by their timeout); what waits stays in the outbox
        for another replica or the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                if not self._wake and not self._stopping:
                    self._cond.wait(self.options.poll_s)
                self._wake = False
                if self._stopping:
                    return
                free = self.options.workers - self._in_flight
            try:
                due = self.outbox.due_deliveries(free, self.options.lease_s)
            except Exception:  # the store is down: its deliveries wait there
                log.exception("webhooks: reading the outbox failed")
                continue
            for delivery in due:
                with self._cond:
                    self._in_flight += 1
                self._pool.submit(self._run, delivery)
            if due and len(due) == free:  # there may be more due: look again as soon as a worker frees
                self.wake()

    def _run(self, delivery: Delivery) -> None:
        try:
            self._attempt(delivery)
        except Exception:  # the store failed recording the outcome: the lease brings the delivery back
            log.exception("webhook %s: recording the attempt failed", delivery.id)
        finally:
            with self._cond:
                self._in_flight -= 1

    def _attempt(self, delivery: Delivery) -> None:
        try:
            address = check_address(delivery.url, allow_private=self.options.allow_private, resolver=self._resolver)
        except InvalidField as exc:  # it resolves elsewhere now (DNS rebinding) or not at all
            log.warning("webhook %s refused: %s", delivery.id, exc.detail)
            self.outbox.drop_delivery(delivery)
            self._on_attempt("refused")
            return
        try:
            status = self._post(delivery, address)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.outbox.drop_delivery(delivery)
            self._on_attempt("delivered")
        elif delivery.attempt >= self.options.max_attempts:
            log.warning("webhook %s failed after %d attempts: %s", delivery.id, delivery.attempt, error)
            self.outbox.drop_delivery(delivery)
            self._on_attempt("failed")
        else:
            self.outbox.retry_delivery(delivery, time.time() + self._backoff(delivery.attempt))
            self._on_attempt("retry")

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with "equal jitter": half the delay fixed, half random, so retries of
        # many receivers that failed together spread out instead of arriving together again.
        delay = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def _post(self, delivery: Delivery, address: str) -> int:
        scheme, host, port = _target(delivery.url)
        parts = urlsplit(delivery.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        timestamp = datetime.now(timezone.utc)
        headers = {
            "content-type": "application/json",
            "user-agent": "ddpm-serve-webhooks",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._signer.sign(delivery.id, timestamp, delivery.body),
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
