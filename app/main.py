"""``ddpm serve``: uvicorn with a graceful drain on SIGTERM and the protections of app/edge.py.

First SIGTERM (or SIGINT): ``/readyz`` turns 503 so load balancers stop sending, new requests
get 503, and requests already admitted finish, for up to ``drain_timeout_s``. If some are still
open then, the engine is stopped: it fails each of them as unavailable, so every plain request
gets a JSON 503 (with ``X-Request-ID`` and ``Retry-After``) and every stream an ``error`` event
and a clean end, from the handlers themselves; after a moment for those answers to go out,
uvicorn shuts down. uvicorn's own graceful-shutdown timeout, which cancels handlers (a 500 with
a traceback each), is only a last resort for a handler that did not end. A second signal exits
at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import threading
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import create_app
from .edge import EdgeLimits, fit_to_fd_limit, protocol_class
from .logs import configure_logging
from .service import Service
from .settings import Settings, settings_errors

log = logging.getLogger("ddpm.main")
FLUSH_S = 1.0  # after the drain deadline: time for the 503s and error events to be written
LAST_RESORT_S = 0.5  # then uvicorn cancels whatever handler is left (one stuck in a network call)
SHUTDOWN_RETRY_AFTER_S = 5  # as the draining 503: by then a load balancer sends elsewhere


def fail_open_requests(service: Service) -> None:
    """End every request the engine still holds with its "unavailable" error (503): stopping the
    engine fails each job that way, and each handler answers its client. (The lead may move this
    into Service as ``Service.abort_in_flight()``; main.py calls only this function.)"""
    service.close()


class RetryAfterOn503:
    """Every 503 says when to retry (RFC 9110 section 10.2.3): a response that gives no
    Retry-After (the engine's shutdown error, a failed readiness check) gets the draining value."""

    def __init__(self, app: ASGIApp, seconds: int = SHUTDOWN_RETRY_AFTER_S) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = MutableHeaders(scope=message)
                if "retry-after" not in headers:
                    headers["Retry-After"] = str(self.seconds)
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._draining = False
        self.exit_code = 0

    def fail(self, reason: str) -> None:
        """The model cannot serve after all (warm-up failed): exit 2 rather than linger unready."""
        self.exit_code = 2
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop now
            self.force_exit = True
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._captured_signals.append(sig)
        timeout = self.service.settings.drain_timeout_s
        log.info("signal %d: draining for up to %gs", sig, timeout)
        # The signal arrives on the event loop's thread; the waiting happens on another.
        threading.Thread(target=self._drain, args=(timeout,), name="ddpm-drain", daemon=True).start()

    def _drain(self, timeout: float) -> None:
        if self.service.drain(timeout):
            log.info("drained (all requests finished); shutting down")
        else:
            log.warning("drain deadline of %gs passed with %d requests open: ending them with 503",
                        timeout, len(self.server_state.tasks))
            # On its own thread: stopping waits for the network call in progress to return.
            threading.Thread(target=fail_open_requests, args=(self.service,), name="ddpm-stop", daemon=True).start()
            deadline = time.monotonic() + FLUSH_S
            while self.server_state.tasks and time.monotonic() < deadline:
                time.sleep(0.02)
            log.info("drained (timed out, %d requests left); shutting down", len(self.server_state.tasks))
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so that a busy port is one clear
    error instead of a start-up that loads the model and then aborts.

    The protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off only on
    sockets whose ``proto`` says TCP, and accepted sockets inherit it. With proto 0, every
    response on a kept-alive connection waited ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_error(host: str, port: int, exc: OSError | OverflowError) -> str:
    """One line: the address, what is wrong, and how to choose another."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        what = "the address is already in use (another server is listening there)"
    elif code == errno.EACCES:
        what = "permission denied (ports below 1024 need privileges)"
    else:
        what = getattr(exc, "strerror", None) or str(exc)
    return (f"ddpm serve: error: cannot listen on {where}: {what}; choose another port with "
            f"--port N or DDPM_PORT=N (or another address with --host / DDPM_HOST)")


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None) -> int:
    """Run the server; 2 (after one line on stderr) when a setting or the model cannot serve."""
    try:
        settings = settings or Settings()
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"ddpm serve: error: {line}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    host = host or settings.host
    port = settings.port if port is None else port
    try:
        sock = bind(host, port)
    except (OSError, OverflowError) as exc:  # OverflowError: a --port outside 0-65535
        print(bind_error(host, port, exc), file=sys.stderr)
        return 2
    limits = EdgeLimits.from_settings(settings)
    limits = EdgeLimits(**{**limits.__dict__, "max_connections": fit_to_fd_limit(limits.max_connections)})
    try:
        app = create_app(settings)
    except ValueError as exc:  # CheckpointError, ConfigError, DeviceError: each names the file or setting
        sock.close()
        print(f"ddpm serve: error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        RetryAfterOn503(app),
        http=protocol_class(limits),
        log_config=None,  # ours, from configure_logging
        timeout_graceful_shutdown=LAST_RESORT_S,  # type: ignore[arg-type]  # a float works; typed int
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )
    server = DrainingServer(config, app.state.service)
    app.state.service.on_fatal = server.fail
    log.info("listening on http://%s:%d", *sock.getsockname()[:2])
    asyncio.run(server.serve(sockets=[sock]))
    return server.exit_code
