"""Graceful shutdown of real servers: signals, in-flight requests, idle connections, deadlines.

The held request (``GET /hold`` of tests/apps/control.py) is released by sending SIGUSR1 to
the server process, so each test decides exactly when it finishes; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from typing import Any

import pytest

from conftest import cli_server, run_server, wait_for
from sleipnir import Config
from sleipnir.cli import build_config
from sleipnir.types import Receive, Scope, Send

CONTROL_APP = "tests.apps.control:app"
SOCKET_TIMEOUT_S = 5.0


def send_get(host: str, port: int, path: str = "/") -> socket.socket:
    """Open a connection and send one keep-alive GET, without reading the answer."""
    sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (Content-Length framed, or up to EOF): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    status = int(status_line.split()[1])
    length = 0 if status in (204, 304) else int(headers.get("content-length", "-1"))
    while len(body) < length or length < 0:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def assert_closed_by_server(sock: socket.socket) -> None:
    """The server closes the connection: EOF (or a reset) well before the socket timeout."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_request_then_exits_0(sig: int) -> None:
    with cli_server(CONTROL_APP, "--port", "0") as srv:
        idle = send_get(srv.host, srv.port)
        held = send_get(srv.host, srv.port, "/hold")
        with idle, held:
            status, headers, body = read_response(idle)
            assert (status, body) == (200, b"ok")
            assert headers.get("connection") != "close"  # idle keep-alive from here on
            srv.wait_output("app: holding")

            srv.proc.send_signal(sig)
            srv.wait_output(r"Waiting for 1 in-flight request")
            # The listening socket is closed: nothing new is accepted.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((srv.host, srv.port), timeout=SOCKET_TIMEOUT_S).close()
            # The idle keep-alive connection is closed now (not after the held request, nor by
            # the 5 s keep-alive timeout).
            idle.settimeout(1.0)
            assert_closed_by_server(idle)
            assert srv.proc.poll() is None, "the server must wait for the held request"

            srv.proc.send_signal(signal.SIGUSR1)
            status, headers, body = read_response(held)
            assert (status, body) == (200, b"released")
            assert headers.get("connection") == "close"
            assert srv.wait() == 0
    out = srv.output
    assert "hold cancelled" not in out
    assert out.index("app: released") < out.index("app: shutdown ran with 0 held")
    assert "Traceback" not in out


def test_graceful_timeout_cancels_a_request_that_never_finishes() -> None:
    timeout = 0.5
    args = ("--port", "0", "--timeout-graceful-shutdown", str(timeout))
    with cli_server(CONTROL_APP, *args) as srv, send_get(srv.host, srv.port, "/hold") as held:
        srv.wait_output("app: holding")
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.wait(timeout=10)
        elapsed = time.monotonic() - started
        # As uvicorn: the cancelled request gets a 500 (nothing had been sent yet).
        status, headers, _ = read_response(held)
        assert (status, headers.get("connection")) == (500, "close")
    assert code == 0
    assert timeout <= elapsed < timeout + 3.0, elapsed
    out = srv.output
    assert "Graceful shutdown timed out; cancelling 1 request(s)." in out
    assert "app: hold cancelled" in out
    # Lifespan shutdown still runs once the request is gone.
    assert out.index("app: hold cancelled") < out.index("app: shutdown ran with 0 held")


def test_second_sigint_forces_the_exit() -> None:
    # The default graceful timeout (20 s) would hold the server; the second Ctrl+C does not wait.
    with (
        cli_server(CONTROL_APP, "--port", "0") as srv,
        send_get(srv.host, srv.port, "/hold") as held,
    ):
        srv.wait_output("app: holding")
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        srv.wait_output(r"Waiting for 1 in-flight request")
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGINT)
        code = srv.wait(timeout=10)
        assert time.monotonic() - started < 5.0
        assert read_response(held)[0] == 500
    assert code == 0
    out = srv.output
    assert "app: hold cancelled" in out
    assert "app: shutdown ran" not in out  # a forced exit skips lifespan shutdown, as uvicorn


def test_default_graceful_timeout_is_finite_and_documented() -> None:
    assert Config("tests.apps.control:app").timeout_graceful_shutdown == 20.0
    assert build_config(["tests.apps.control:app"], environ={}).timeout_graceful_shutdown == 20.0
    from conftest import REPO

    docs = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if line.startswith("| `timeout_graceful_"))
    assert "| `20` |" in row


def test_should_exit_stops_an_in_thread_server() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(app, lifespan="on") as running:
        with running.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 204
            running.server.should_exit = True
            running.thread.join(SOCKET_TIMEOUT_S)
            assert not running.thread.is_alive()
            assert_closed_by_server(sock)
        assert running.server.started
        assert not running.errors
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize("jitter", ["0", None])
def test_limit_max_requests_stops_the_server_with_exit_0(jitter: str | None) -> None:
    args: list[Any] = [CONTROL_APP, "--port", "0", "--limit-max-requests", "3"]
    if jitter is not None:
        args += ["--limit-max-requests-jitter", jitter]
    with cli_server(*args) as srv:
        for _ in range(3):
            with send_get(srv.host, srv.port) as sock:
                assert read_response(sock)[0] == 200
        wait_for(lambda: srv.proc.poll() is not None, 10, "the server to stop by itself")
        assert srv.wait() == 0
    out = srv.output
    assert "Maximum request limit of 3 exceeded. Terminating process." in out
    assert "app: shutdown ran with 0 held" in out


def test_a_request_sent_as_the_shutdown_starts_is_answered() -> None:
    # Under load the next request on a keep-alive connection is often already in the socket
    # buffer, unread, when the shutdown starts: it is answered (Connection: close), not reset.
    with cli_server(CONTROL_APP, "--port", "0") as srv:
        with send_get(srv.host, srv.port) as conn:
            assert read_response(conn)[0] == 200
            srv.proc.send_signal(signal.SIGTERM)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            status, _, body = read_response(conn)  # keep-alive or not: which came first
            assert (status, body) == (200, b"ok")
            assert_closed_by_server(conn)
        assert srv.wait() == 0


def test_shutdown_delay_serves_on_marked_draining_then_exits() -> None:
    with cli_server(CONTROL_APP, "--port", "0", "--shutdown-delay", "1.5") as srv:
        with send_get(srv.host, srv.port, "/ready") as conn:
            assert read_response(conn)[2] == b"ok"
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_output("Shutdown delay: serving for 1.5 more second")
        # New connections are still accepted, and a readiness check can fail.
        with send_get(srv.host, srv.port, "/ready") as conn:
            assert read_response(conn)[2] == b"draining"
        assert srv.wait(timeout=15) == 0
        assert "Shutdown delay over" in srv.output


def test_a_second_sigterm_ends_the_shutdown_delay() -> None:
    with cli_server(CONTROL_APP, "--port", "0", "--shutdown-delay", "60") as srv:
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_output("Shutdown delay")
        assert srv.stop(signal.SIGTERM, timeout=15) == 0
        assert "Shutdown delay over" not in srv.output
