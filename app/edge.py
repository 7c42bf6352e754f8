"""Connection-level protections: uvicorn's h11 protocol with timeouts, a connection cap and strict
request framing, for a server that may face clients with no proxy in front.

uvicorn by itself closes only idle keep-alive connections: a client that connects and never
finishes its headers, or sends its body a byte a second, holds a file descriptor and a slot for
as long as it likes (900 of them took a replica from 9 to 909 open files). Here:

- **header timeout**: a request's headers must be complete ``header_timeout_s`` after the
  connection is accepted, or after the first byte of a later request on a kept-alive one
  (nginx's ``client_header_timeout``); late ones get 408 (if they sent anything) and are closed;
- **keep-alive timeout**: an idle connection between requests is closed after
  ``keep_alive_timeout_s`` (uvicorn's own timer, with our value);
- **body rate floor**: after ``body_grace_s`` a request body must keep arriving at
  ``min_body_bytes_per_s`` (a body that has not arrived ``grace + size / rate`` seconds after its
  headers is late); a slower one gets 408 and is closed;
- **connection cap**: beyond ``max_connections`` open connections a new one gets a 503 with
  ``Connection: close`` and ``Retry-After``, and is closed once the client has read it (or after
  a second), so ordinary clients keep being served by the connections that are open;
- **framing** (RFC 9112 section 6.3): a request with both ``Content-Length`` and
  ``Transfer-Encoding``, or an invalid or conflicting ``Content-Length``, gets 400 and the
  connection is closed, so nothing pipelined behind it is read as a request.

The protocol is always h11 (``uvicorn.Config(http=protocol_class(limits))``), whatever else is
installed, so these rules do not change with the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, NoReturn

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

log = logging.getLogger("ddpm.edge")
REFUSED_RETRY_AFTER_S = 1  # a slot frees as soon as any client finishes
REFUSE_LINGER_S = 1.0  # how long a refused client may take to read its 503 before the close
MAX_HEADER_BYTES = 16 * 1024  # request line and headers: h11's default limit, nginx's is 4 x 8 KiB
MAX_LINGERING = 64  # refused connections waiting to be read; beyond this they are reset at once


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: int = 75
    body_grace_s: float = 5.0
    min_body_bytes_per_s: int = 1024
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, s: Settings) -> EdgeLimits:
        return cls(header_timeout_s=s.header_timeout_s, keep_alive_timeout_s=s.keep_alive_timeout_s,
                   body_grace_s=s.body_grace_s, min_body_bytes_per_s=s.min_body_bytes_per_s,
                   max_connections=s.max_connections)


@dataclass
class _Shared:
    """Per-server counters that outlive any one connection."""

    lingering: int = 0  # refused connections still open
    last_warning: dict[str, float] = field(default_factory=dict)

    def warn(self, kind: str, message: str, *args: object) -> None:
        """Log each kind of refusal at most once a second: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self.last_warning.get(kind, 0.0) >= 1.0:
            self.last_warning[kind] = now
            log.warning(message, *args)


def raw_response(status: int, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete JSON error response that closes the connection, written below the application."""
    body = json.dumps({"detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close", f"X-Request-ID: {uuid.uuid4().hex}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class StrictConnection(h11.Connection):
    """h11, plus the framing rules it leaves to the server, and the reason for any 4xx kept for the reply."""

    problem: tuple[int, str] | None = None

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        super().__init__(h11.SERVER, max_header_bytes)
        self.max_header_bytes = max_header_bytes

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.problem = (exc.error_status_hint, str(exc))
            raise
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                # h11 would let Transfer-Encoding win; a proxy in front may have used Content-Length.
                self._refuse(400, "both Content-Length and Transfer-Encoding (RFC 9112 section 6.3)")
            # h11 applies its size limit only to headers still incomplete, so headers that arrive
            # in one packet could be of any size: the same limit, whatever the packets.
            size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
            if size > self.max_header_bytes:
                self._refuse(431, f"request line and headers of {size} bytes exceed {self.max_header_bytes}")
        return event

    def _refuse(self, status: int, reason: str) -> NoReturn:
        self.problem = (status, reason)
        raise h11.RemoteProtocolError(reason, error_status_hint=status)


class EdgeProtocol(H11Protocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()
    shared: ClassVar[_Shared] = _Shared()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = StrictConnection() if size is None else StrictConnection(size)
        self.timeout_keep_alive = self.limits.keep_alive_timeout_s
        self._refused = False
        self._lingering = False  # a refused connection waiting for its client to read the 503
        self._timer: asyncio.TimerHandle | None = None  # the header deadline or the next body-rate check
        self._in_body = False
        self._body_start = 0.0
        self._body_bytes = 0
        self._served = 0

    # ---- accept: the connection cap ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._refused = True
        self.transport = transport
        self.shared.warn("cap", "refusing connections: %d open, max_connections=%d",
                         len(self.connections), self.limits.max_connections)
        if self.shared.lingering >= MAX_LINGERING:
            transport.abort()
            return
        self.shared.lingering += 1
        self._lingering = True
        transport.write(raw_response(
            503, f"too many open connections: this server's limit is max_connections={self.limits.max_connections}",
            {"Retry-After": str(REFUSED_RETRY_AFTER_S)}))
        # Close our side once the 503 is out, but keep reading: closing with the client's request
        # unread would send a reset that can destroy the 503 before the client reads it.
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(REFUSE_LINGER_S, transport.close)

    # ---- reading ----

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return  # a refused client's request, or bytes after we decided to close: discarded
        state = self.conn.their_state
        if state is h11.IDLE and self._timer is None:  # the first byte of a request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, self._headers_late)
        elif state is h11.SEND_BODY:
            self._body_bytes += len(data)
        super().data_received(data)
        if state is h11.IDLE and self.conn.their_state is h11.SEND_BODY:
            end = data.find(b"\r\n\r\n")  # the body bytes that came with the end of the headers
            self._body_bytes = len(data) - end - 4 if end >= 0 else 0
        self._follow()

    def on_response_complete(self) -> None:
        self._served += 1
        super().on_response_complete()  # may parse a pipelined request
        if not self.transport.is_closing():
            self._follow()

    def _follow(self) -> None:
        """Set the timer for the state h11 is in now: headers, body, or none (being served, or idle)."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._in_body = False
            if self.conn.trailing_data[0] or self._served == 0:
                if self._timer is None:
                    self._arm(self.limits.header_timeout_s, self._headers_late)
            else:  # idle between requests: the keep-alive timer applies
                self._disarm()
                if self.timeout_keep_alive_task is None:
                    # uvicorn arms it when a response completes and drops it on any data, so a
                    # body that ends after its response was sent would leave the connection untimed.
                    self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                        self.timeout_keep_alive_handler)
        elif state is h11.SEND_BODY:
            if not self._in_body:
                self._in_body = True
                self._body_start = self.loop.time()
                self._arm(self._check_interval(), self._check_body_rate)
        else:
            self._in_body = False
            self._disarm()

    # ---- timers ----

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_interval(self) -> float:
        return min(1.0, max(self.limits.body_grace_s, 0.1))

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.shared.warn("headers", "closing a connection that sent no complete headers in %gs (header_timeout_s)",
                         self.limits.header_timeout_s)
        if self.conn.trailing_data[0]:  # it began a request: say why
            self._close_with(408, f"request headers not complete within header_timeout_s="
                                  f"{self.limits.header_timeout_s:g}")
        else:
            self.transport.close()

    def _check_body_rate(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        interval = self._check_interval()
        if self.flow.read_paused:  # we stopped reading, not the client: its clock stops too
            self._body_start += interval
        late = self.loop.time() - self._body_start - self.limits.body_grace_s
        if late > 0 and self._body_bytes < self.limits.min_body_bytes_per_s * late:
            self.shared.warn("body", "closing a connection whose request body arrives slower than %d bytes/s",
                             self.limits.min_body_bytes_per_s)
            self._close_with(408, f"request body slower than min_body_bytes_per_s="
                                  f"{self.limits.min_body_bytes_per_s} after body_grace_s="
                                  f"{self.limits.body_grace_s:g}")
            return
        self._arm(interval, self._check_body_rate)

    # ---- closing ----

    def _close_with(self, status: int, detail: str) -> None:
        """Answer ``status`` to the request in progress, unless its response has begun, and close.

        An application still waiting for that body sees the client gone, and its own answer goes nowhere.
        """
        cycle = self.cycle
        if self.conn.their_state is h11.IDLE:  # a request's headers, unparsed: no cycle of its own yet
            self.transport.write(raw_response(status, detail))
        elif cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if not started:
                self.transport.write(raw_response(status, detail))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 says only "Invalid HTTP request received."; this one names what was wrong."""
        problem = self.conn.problem if isinstance(self.conn, StrictConnection) else None
        status, reason = problem or (400, msg)
        self.transport.write(raw_response(max(status, 400), f"invalid HTTP request: {reason}"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            if self._lingering:
                self.shared.lingering -= 1
            return
        super().connection_lost(exc)


def protocol_class(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The class to pass as ``uvicorn.Config(http=...)``: EdgeProtocol with these limits and
    counters of its own (one per server)."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits, "shared": _Shared()})


FD_RESERVE = MAX_LINGERING + 64  # descriptors besides client connections: listener, files, pipes, refusals


def fit_to_fd_limit(max_connections: int) -> int:
    """``max_connections``, raising the soft open-file limit to hold it if the hard limit allows,
    else lowered to what the limit holds: past it ``accept`` fails with EMFILE and asyncio stops
    accepting for a second at a time, which refuses everyone instead of the excess."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    fitted = max(1, soft - FD_RESERVE)
    log.warning("max_connections=%d needs %d open files but the limit is %d: serving at most %d connections",
                max_connections, need, soft, fitted)
    return fitted
