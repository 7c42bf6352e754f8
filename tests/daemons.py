"""Debian's nginx and Prometheus as test fixtures: foreground processes on loopback, every file
they write under the test's own directory, stopped (with their workers) however the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


def tool(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


@contextmanager
def daemon(cmd: list[str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in a process group of its own; on exit stop the group: SIGTERM, then SIGKILL.

    The group takes nginx's worker processes along with its master.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes],
               log: Path) -> None:
    """Poll ``check`` until it is true; fail with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with suppress(httpx.TransportError):
            if check():
                return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def nginx_command(binary: str, conf: Path, tmp: Path, *extra: str) -> list[str]:
    """nginx in the foreground with its prefix, pid file and startup error log under ``tmp``."""
    return [binary, "-p", str(tmp), "-e", "stderr", "-c", str(conf),
            "-g", f"daemon off; pid {tmp / 'nginx.pid'};", *extra]


@contextmanager
def nginx(binary: str, conf: Path, tmp: Path, port: int) -> Iterator[str]:
    """Yields nginx's base URL once it accepts connections."""
    log = tmp / "nginx.log"
    with daemon(nginx_command(binary, conf, tmp), log, tmp) as proc:
        url = f"http://127.0.0.1:{port}"

        def listening() -> bool:
            httpx.get(f"{url}/__nginx_probe__", timeout=2)  # any answer at all: nginx is up
            return True

        wait_until(listening, 15, "nginx", proc, log)
        yield url


@contextmanager
def prometheus(binary: str, config: Path, tmp: Path, port: int) -> Iterator[str]:
    """Yields Prometheus's base URL once /-/ready says so; its TSDB lives in ``tmp``/data."""
    log = tmp / "prometheus.log"
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with daemon(cmd, log, tmp) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30, "prometheus", proc, log)
        yield url
