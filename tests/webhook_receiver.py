"""A loopback webhook receiver for the tests (http.server on 127.0.0.1, a free port)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes.......").decode()


class Receiver:
    """Records each POST; answers ``fail_first`` of them with 500, and waits for ``gate`` if set."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[float, dict[str, str], bytes, str]] = []
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.gate is not None:
                    receiver.gate.wait(10)
                with receiver.lock:
                    receiver.requests.append((time.monotonic(), dict(self.headers), body, self.path))
                    failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def receiver(fail_first: int = 0, port: int = 0) -> Iterator[Receiver]:
    """On ``port`` (0: a free one)."""
    r = Receiver(fail_first)
    server = ThreadingHTTPServer(("127.0.0.1", port), r.handler())
    r.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ddpm?x=1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        if r.gate is not None:
            r.gate.set()
        server.shutdown()
        server.server_close()


