"""Connection-level protections (app/edge.py), against a real ``ddpm serve`` process: slow and idle
clients are closed while others are served, the connection cap refuses only the excess, and
ambiguous request framing is refused with the connection closed (RFC 9112 section 6.3)."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .test_process import serve_process

# Short limits, so that each test takes seconds; the defaults are documented in docs/deployment.md.
LIMITS = {"header_timeout_s": "1", "keep_alive_timeout_s": "2", "body_grace_s": "1",
          "min_body_bytes_per_s": "200"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    log = tmp_path_factory.mktemp("edge") / "serve.log"
    with serve_process(tiny_checkpoint, log, **LIMITS) as (url, proc):
        yield url, proc.pid, log


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int) -> int:
    """The server's open files once the readiness probes' connections are gone."""
    samples = []
    for _ in range(6):
        samples.append(open_fds(pid))
        time.sleep(0.1)
    return min(samples)


def wait_for(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data, True
    except ConnectionResetError:
        return data, True
    except TimeoutError:
        return data, False


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (headers and body may come in separate packets)."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < content_length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Served:
    """An ordinary client in a thread: health checks and small generations, every status kept."""

    def __init__(self, url: str) -> None:
        self.url, self.statuses, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                self.statuses.append(c.get("/readyz").status_code)
                self.statuses.append(c.post("/generate", json={"steps": 2, "seed": 1}).status_code)
                time.sleep(0.1)

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.mark.slow
def test_idle_slow_header_and_slow_body_clients_are_closed_while_others_are_served(
        server: tuple[str, int, Path]) -> None:
    url, pid, log = server
    baseline = settled_fds(pid)
    kinds = ["idle", "header", "body"]
    clients: dict[socket.socket, str] = {}
    with Served(url) as served:
        for i in range(50):
            sock = connect(url)
            kind = kinds[i % 3]
            if kind == "header":  # headers that never end
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
            elif kind == "body":  # complete headers, then a body at 4 bytes/s (the floor is 200)
                sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 4000\r\n\r\n")
            sock.setblocking(False)
            clients[sock] = kind
        start = time.monotonic()
        assert wait_for(lambda: open_fds(pid) >= baseline + 45, 5), "the server did not accept the clients"
        received: dict[socket.socket, bytes] = dict.fromkeys(clients, b"")
        closed: dict[socket.socket, float] = {}
        selector = selectors.DefaultSelector()
        for sock in clients:
            selector.register(sock, selectors.EVENT_READ)
        next_byte = start
        while len(closed) < len(clients) and time.monotonic() - start < 20:
            if time.monotonic() >= next_byte:  # the slow ones trickle on: a byte every 0.25 s
                next_byte += 0.25
                for sock, kind in clients.items():
                    if kind != "idle" and sock not in closed:
                        with contextlib.suppress(OSError):  # closed by the server: the read below says so
                            sock.send(b"X" if kind == "header" else b" ")
            for key, _ in selector.select(0.05):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    closed[sock] = time.monotonic() - start
                    selector.unregister(sock)
        selector.close()
        for sock in clients:
            sock.close()
    assert len(closed) == len(clients), f"{len(clients) - len(closed)} slow clients still open after 20 s"
    for sock, kind in clients.items():
        # Each was closed by its own limit, not at once: idle and header ones after 1 s, the body
        # ones once 1 s of grace plus their bytes at 200 bytes/s had passed.
        assert 0.8 < closed[sock] < 10, (kind, closed[sock])
        if kind == "idle":
            assert received[sock] == b"", received[sock]  # nothing was asked: nothing to answer
        else:
            assert received[sock].startswith(b"HTTP/1.1 408 "), (kind, received[sock])
            assert (b"header_timeout_s" if kind == "header" else b"min_body_bytes_per_s") in received[sock]
    assert served.statuses and set(served.statuses) == {200}, served.statuses
    assert wait_for(lambda: open_fds(pid) <= baseline + 2, 5), (baseline, open_fds(pid))
    assert "Traceback" not in log.read_text()


def test_an_idle_keep_alive_connection_is_closed_and_a_late_second_request_gets_408(
        server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    request = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(url) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        data, closed = read_until_closed(sock, 10)
        assert closed and data == b"" and 1.5 < time.monotonic() - start < 6  # keep_alive_timeout_s=2
    with connect(url) as sock:  # a body that ends after its response was sent
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"abcd")
        start = time.monotonic()
        data, closed = read_until_closed(sock, 10)
        assert closed and data == b"" and 1.5 < time.monotonic() - start < 6
    with connect(url) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /readyz HTTP/1.1\r\n")  # the next request's headers never end
        start = time.monotonic()
        data, closed = read_until_closed(sock, 10)
        assert closed and data.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s=1" in data, data
        assert 0.8 < time.monotonic() - start < 5


PIPELINED = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("headers, reason", [
    (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"both Content-Length and Transfer-Encoding"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"both Content-Length and Transfer-Encoding"),
    (b"Content-Length: 4\r\nContent-Length: 5\r\n", b"conflicting Content-Length"),
    (b"Content-Length: 4, 5\r\n", b"conflicting Content-Length"),
    (b"Content-Length: abc\r\n", b"bad Content-Length"),
    (b"Content-Length: -4\r\n", b"bad Content-Length"),
])
def test_ambiguous_framing_gets_400_and_nothing_pipelined_behind_it_is_answered(
        server: tuple[str, int, Path], headers: bytes, reason: bytes) -> None:
    url, _, _ = server
    request = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers +
               b"\r\n4\r\n{}  \r\n0\r\n\r\n" + PIPELINED)
    with connect(url) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 5)
    assert closed, data
    assert data.startswith(b"HTTP/1.1 400 ") and reason in data, data
    assert data.count(b"HTTP/1.1 ") == 1, data  # the pipelined GET was never read as a request


def test_well_framed_pipelined_requests_are_all_answered(server: tuple[str, int, Path]) -> None:
    """The control for the test above: pipelining itself works, so a missing answer means refusal."""
    url, _, _ = server
    body = b'{"steps": 2}'
    with connect(url) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body) + PIPELINED + PIPELINED)
        data, _ = read_until_closed(sock, 3)
    assert data.count(b"HTTP/1.1 200 ") == 3, data


@pytest.mark.slow
def test_the_connection_cap_refuses_only_the_excess(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cap = 20
    with serve_process(tiny_checkpoint, tmp_path / "serve.log", max_connections=str(cap),
                       header_timeout_s="60") as (url, proc):
        baseline = settled_fds(proc.pid)
        with httpx.Client(base_url=url, timeout=10) as keeper:
            assert keeper.get("/readyz").status_code == 200  # an ordinary client, connected first
            idle = [connect(url) for _ in range(cap - 1)]  # with the keeper: the cap
            assert wait_for(lambda: open_fds(proc.pid) >= baseline + cap, 5), (baseline, open_fds(proc.pid))
            for i in range(30):  # the excess: each refused at once, cleanly
                with httpx.Client(base_url=url, timeout=10) as fresh:
                    r = fresh.get("/readyz")
                assert r.status_code == 503 and r.headers["connection"] == "close", r.text
                assert r.headers["retry-after"] == "1" and f"max_connections={cap}" in r.json()["detail"]
                if i % 10 == 0:
                    assert keeper.get("/readyz").status_code == 200  # the open connection keeps working
            silent = [connect(url) for _ in range(20)]  # excess clients that never send a thing
            for sock in silent:
                data, closed = read_until_closed(sock, 5)
                assert closed and data.startswith(b"HTTP/1.1 503 "), data
                sock.close()
            # A refused client that has read its 503 and gone leaves nothing behind.
            assert wait_for(lambda: open_fds(proc.pid) <= baseline + cap, 5), (baseline, open_fds(proc.pid))
            for sock in idle[:5]:
                sock.close()
            assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 5)
            assert keeper.get("/readyz").status_code == 200
            for sock in idle[5:]:
                sock.close()
        assert wait_for(lambda: open_fds(proc.pid) <= baseline + 1, 5), (baseline, open_fds(proc.pid))


@pytest.mark.parametrize("hard, expected", [(300, 300 - 128), (5000, 1000)])
def test_the_cap_fits_the_open_file_limit(hard: int, expected: int) -> None:
    """Past the open-file limit accept() fails and asyncio stops accepting everyone for a second:
    the soft limit is raised to hold the cap where the hard limit allows, else the cap is lowered."""
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))\n"
            "from app.edge import fit_to_fd_limit\n"
            "print(fit_to_fd_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    cap, soft = map(int, result.stdout.split())
    assert cap == expected and soft == min(hard, 1000 + 128), result.stderr


def test_oversized_headers_get_431_naming_the_problem(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    with connect(url) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n" + PIPELINED)
        data, closed = read_until_closed(sock, 5)
    assert closed and data.startswith(b"HTTP/1.1 431 ") and data.count(b"HTTP/1.1 ") == 1, data[:300]
    assert b"application/json" in data and b"invalid HTTP request" in data


def test_an_oversized_body_sent_after_its_headers_is_read_and_refused_without_a_reset(
        server: tuple[str, int, Path]) -> None:
    """A proxy streaming a body (ingress-nginx with request buffering off) sends the headers, then
    the body. If the 413 went out and the socket closed before the body arrived, the body's bytes
    met a closed socket, the kernel answered with a reset, and the proxy's next write failed: its
    client got a 502 instead of the 413 (as it did in CI). The refused body is read first."""
    url, _, _ = server
    body = b'{"pad": "' + b"x" * 19_990 + b'"}'
    with connect(url) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.3)  # the old server had answered and closed by now
        for start in range(0, len(body), 5000):
            sock.sendall(body[start:start + 5000])  # a reset makes one of these raise
            time.sleep(0.05)
        refused = read_response(sock)
        sock.sendall(PIPELINED)  # the body was read whole, so the connection is still usable
        after = read_response(sock)
    assert refused.startswith(b"HTTP/1.1 413 ") and b"max_body_bytes=16384" in refused, refused[:300]
    assert after.startswith(b"HTTP/1.1 200 "), after[:300]


def test_a_body_too_large_to_drain_is_refused_at_once_and_the_connection_closed(
        server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    with connect(url) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n" + b"x" * 1000)
        data, closed = read_until_closed(sock, 5)
    assert closed and data.startswith(b"HTTP/1.1 413 ") and b"max_body_bytes=16384" in data, data[:300]
    assert b"connection: close" in data.lower()


def test_a_refused_body_that_stalls_while_it_is_drained_is_cut_by_the_body_rate_floor(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Reading a refused body is bounded by the edge's own floor, so a client cannot hold the
    connection by sending a few bytes of a too-large body and stopping."""
    limits = {**LIMITS, "min_body_bytes_per_s": "20000"}  # 17 KB is late 1 + 0.85 s after the headers
    with serve_process(tiny_checkpoint, tmp_path / "serve.log", **limits) as (url, _), connect(url) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 17000\r\n\r\n" + b" " * 100)
        start = time.monotonic()
        data, closed = read_until_closed(sock, 10)
        took = time.monotonic() - start
    assert closed and 1.0 < took < 6, took
    assert data.startswith(b"HTTP/1.1 408 ") and b"min_body_bytes_per_s" in data, data[:300]


def test_connections_accepted_on_the_served_socket_have_nagle_off() -> None:
    """The listening socket is bound before the model loads (app.main.bind); asyncio turns Nagle's
    algorithm off on the connections it accepts only if that socket says it is TCP. When it did
    not, a response on a kept-alive connection sat ~40 ms waiting for the client's delayed ACK."""
    import asyncio

    from app.main import bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=bind("127.0.0.1", 0))
        async with server:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(seen, 10)
            finally:
                writer.close()

    assert asyncio.run(accepted_nodelay()) != 0
