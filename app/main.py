"""``ddpm serve``: uvicorn with a graceful drain on SIGTERM.

First SIGTERM (or SIGINT): ``/readyz`` turns 503 so load balancers stop sending, new requests
get 503, and requests already admitted finish, for up to ``drain_timeout_s``; then uvicorn
shuts down. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from types import FrameType

import uvicorn
from pydantic import ValidationError

from .api import create_app
from .logs import configure_logging
from .service import Service
from .settings import Settings, settings_errors

log = logging.getLogger("ddpm.main")


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
        log.info("signal %d: draining for up to %.0fs", sig, timeout)

        def drain() -> None:
            finished = self.service.drain(timeout)
            log.info("drained (%s); shutting down", "all requests finished" if finished else "timed out")
            self.should_exit = True

        # The signal arrives on the event loop's thread; the wait happens on another.
        threading.Thread(target=drain, name="ddpm-drain", daemon=True).start()


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None) -> int:
    """Run the server; 2 (after one line on stderr) when a setting or the model cannot serve."""
    try:
        settings = settings or Settings()
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"ddpm serve: error: {line}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        app = create_app(settings)
    except ValueError as exc:  # CheckpointError, ConfigError, DeviceError: each names the file or setting
        print(f"ddpm serve: error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=None,  # ours, from configure_logging
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,  # longer than nginx's 60 s keepalive_timeout, so nginx closes first
    )
    server = DrainingServer(config, app.state.service)
    app.state.service.on_fatal = server.fail
    asyncio.run(server.serve())
    return server.exit_code
