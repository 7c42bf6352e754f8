"""Debian's redis-server as a test fixture: loopback, a free port, no persistence, stopped
(by tests/daemons.py) however the test ends. Skips, naming the package, where it is missing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from . import daemons


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    binary = daemons.tool("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """Yields ``redis://127.0.0.1:PORT/0`` once the server answers PING."""
    binary = redis_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "redis.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
           "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
    with daemons.daemon(cmd, log, tmp) as proc:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_timeout=2)
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server not ready after 15 s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.05)
        client.close()
        yield url
