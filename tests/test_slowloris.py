"""Slowloris: ``timeout_request_header`` bounds how long a request head may take to arrive.

The deadline runs from the accept for a connection's first request (from the end of the
previous response for later ones) and is not extended by bytes trickling in. A connection
that sent part of a head gets 408 (RFC 9110 §15.5.9); one that sent nothing is just closed.
The clock checks deadlines once per tick (a quarter of the shortest timeout, at least 50 ms
and at most 1 s), so closing happens between the timeout and the timeout plus one tick.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import resource
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import cli_server, run_server
from rawhttp import read_until_closed, recv_until
from sleipnir.types import Receive, Scope, Send

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: slow"
TIMEOUT_S = 0.5
SETTINGS = {"timeout_request_header": TIMEOUT_S, "timeout_keep_alive": 5, "lifespan": "off"}


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def drip(sock: socket.socket, data: bytes, interval: float) -> bytes:
    """Send ``data`` then filler header bytes one at a time, ``interval`` apart (paced by a
    wait for the server to answer), until the server answers; return what it sent."""
    filler = itertools.cycle(b"x")
    for byte in itertools.chain(data, filler):
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            break
    return read_until_closed(sock)


def assert_408(data: bytes) -> None:
    head = data.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"\r\nconnection: close" in head
    assert data.endswith(b"Request Timeout: request head not received in time\n")


def test_dripped_head_gets_408(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        opened = time.monotonic()
        data = drip(sock, HALF_HEAD, 0.05)
        elapsed = time.monotonic() - opened
    assert_408(data)
    assert TIMEOUT_S - 0.1 <= elapsed < 3  # bytes arriving did not extend the deadline
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 1 and messages[0].endswith("408: request head not received in time")


def test_silent_connection_is_closed(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        opened = time.monotonic()
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - opened
    assert TIMEOUT_S - 0.1 <= elapsed < 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_half_head_then_silence_gets_408(parser: str) -> None:
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        opened = time.monotonic()
        sock.sendall(HALF_HEAD)
        assert_408(read_until_closed(sock))
        assert time.monotonic() - opened < 3


def test_slow_second_head_gets_408(parser: str) -> None:
    """After a response, the next head has the header timeout too (not the keep-alive one)."""
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        recv_until(sock, b"\r\n\r\nhello")
        started = time.monotonic()
        data = drip(sock, HALF_HEAD, 0.05)
        assert_408(data)
        assert time.monotonic() - started < 3


def test_pipelined_partial_head_gets_408(parser: str) -> None:
    """A head left incomplete behind a served request is timed from that response."""
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + HALF_HEAD)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert_408(data[data.index(b"hello") + 5 :])


def test_complete_head_in_time_is_served(parser: str) -> None:
    """A head that trickles in but completes before the deadline is served normally."""
    with run_server(hello, http=parser, **SETTINGS) as srv, srv.connect() as sock:
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n\r\n":
            sock.sendall(bytes([byte]))
        recv_until(sock, b"\r\n\r\nhello")


# Acceptance: a thousand slow connections do not stop a new client from being served --------

CONNECTIONS = 1000
ACCEPTANCE_TIMEOUT_S = 2.0


@contextlib.contextmanager
def raised_nofile_limit(needed: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if wanted < needed:
        reason = f"RLIMIT_NOFILE hard limit {hard} < {needed}: cannot open enough sockets"
        print(reason)
        pytest.skip(reason)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_all_closed(socks: list[socket.socket], deadline: float) -> dict[int, bytes]:
    """Read from every socket until the server closes it; return what each one got."""
    received: dict[int, bytes] = {sock.fileno(): b"" for sock in socks}
    by_fd = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    open_fds = set(by_fd)
    while open_fds:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(open_fds)} of {len(socks)} connections still open"
        for fd, _ in poller.poll(left * 1000):
            try:
                data = by_fd[fd].recv(65536)
            except ConnectionResetError:
                data = b""
            except OSError as exc:  # pragma: no cover - would be a test failure below
                assert exc.errno == errno.EAGAIN
                continue
            if data:
                received[fd] += data
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
    return received


def test_a_thousand_slow_connections_do_not_block_a_new_client() -> None:
    with contextlib.ExitStack() as stack:
        stack.enter_context(raised_nofile_limit(2500))  # inherited by the server process
        srv = stack.enter_context(
            cli_server(
                "tests.apps.asgi3:app",
                "--port",
                "0",
                "--timeout-request-header",
                str(ACCEPTANCE_TIMEOUT_S),
                "--no-access-log",
            )
        )
        socks: list[socket.socket] = []
        for i in range(CONNECTIONS):
            sock = stack.enter_context(socket.create_connection((srv.host, srv.port), timeout=5))
            if i % 2:
                sock.sendall(HALF_HEAD)
            socks.append(sock)
        opened = time.monotonic()

        started = time.monotonic()
        response = httpx.get(srv.url, timeout=1.0)
        assert response.status_code == 200 and response.text == "asgi3"
        assert time.monotonic() - started < 1.0
        # ...while every slow connection is still open (the server closed none yet).
        poller = select.poll()
        for sock in socks:
            poller.register(sock.fileno(), select.POLLIN)
        assert poller.poll(0) == [], "a slow connection was closed before its timeout"

        for sock in socks:
            sock.setblocking(False)
        received = wait_all_closed(socks, opened + ACCEPTANCE_TIMEOUT_S + 2.5)
        silent = [received[s.fileno()] for s in socks[0::2]]
        slow = [received[s.fileno()] for s in socks[1::2]]
        assert all(data == b"" for data in silent)
        for data in slow:
            assert_408(data)
        # The 500 refusals are logged rate-limited, not as 500 lines.
        srv.wait_output("408: request head not received in time", timeout=5)
        assert 1 <= srv.output.count("408: request head not received in time") <= 10
        assert "Traceback" not in srv.output
