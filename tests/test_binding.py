"""Where the server listens: IPv6, UNIX sockets, inherited file descriptors, the backlog, and
sockets handed to ``Server.run`` / ``Server.serve`` (the seam a supervisor uses)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import STARTUP_TIMEOUT_S, CLIServer, cli_server, start_cli, start_process, wait_for
from sleipnir import Config, Server

ECHO = "tests.apps.echo:app"


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def get_json(url: str, transport: httpx.HTTPTransport | None = None) -> Any:
    with httpx.Client(timeout=5, transport=transport) as client:
        response = client.get(url)
        assert response.status_code == 200, response.text
        return response.json()


def listen_backlog(port: int) -> int | None:
    """The backlog of the TCP socket listening on ``port``, as ``ss`` reports it (Send-Q)."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    out = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    return int(out[2]) if out else None


# --------------------------------------------------------------------------- --host ::1


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_host() -> None:
    with cli_server(ECHO, "--host", "::1", "--port", "0") as srv:
        assert srv.host == "[::1]"
        assert f"running on http://[::1]:{srv.port} " in srv.output
        seen = get_json(srv.url)
    assert seen["server"] == ["::1", srv.port]
    assert seen["client"][0] == "::1"
    assert seen["scheme"] == "http"


# --------------------------------------------------------------------------- --uds


@pytest.fixture
def uds_path() -> Iterator[Path]:
    """A short socket path (sun_path is limited to ~107 bytes, tmp_path can be longer)."""
    directory = Path(os.path.realpath("/tmp")) / f"sleipnir-test-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    path = directory / "server.sock"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        directory.rmdir()


def test_uds(uds_path: Path) -> None:
    srv = start_cli(ECHO, "--uds", str(uds_path))
    try:
        srv.wait_output(r"running on http://unix:" + str(uds_path))
        assert stat.S_ISSOCK(uds_path.stat().st_mode)
        assert stat.S_IMODE(uds_path.stat().st_mode) == 0o666  # as uvicorn
        seen = get_json("http://localhost/over/uds", httpx.HTTPTransport(uds=str(uds_path)))
        assert seen["path"] == "/over/uds"
        # ASGI: [path, None] for a unix socket; the peer of a unix socket has no address.
        assert seen["server"] == [str(uds_path), None]
        assert seen["client"] is None
        assert srv.stop(signal.SIGTERM) == 0
    finally:
        srv.stop()
    assert not uds_path.exists(), "the socket file is removed on exit"


def test_uds_replaces_a_stale_socket_file(uds_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(uds_path))  # left behind, as by a crashed server
    srv = start_cli(ECHO, "--uds", str(uds_path))
    try:
        srv.wait_output(r"running on http://unix:")
        assert get_json("http://localhost/", httpx.HTTPTransport(uds=str(uds_path)))["path"] == "/"
    finally:
        assert srv.stop() == 0


def test_uds_path_that_is_a_regular_file_exits_3(uds_path: Path) -> None:
    uds_path.write_text("not a socket")
    srv = start_cli(ECHO, "--uds", str(uds_path))
    try:
        assert srv.wait(timeout=15) == 3
    finally:
        srv.stop()
    assert f"ERROR:    could not listen on {uds_path}: Address already in use" in srv.output
    assert uds_path.read_text() == "not a socket"  # never deleted


def test_uds_path_in_forwarded_allow_ips_is_trusted(uds_path: Path) -> None:
    srv = start_cli(ECHO, "--uds", str(uds_path), "--forwarded-allow-ips", str(uds_path))
    try:
        srv.wait_output(r"running on http://unix:")
        transport = httpx.HTTPTransport(uds=str(uds_path))
        with httpx.Client(transport=transport, timeout=5) as client:
            headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
            seen = client.get("http://localhost/", headers=headers).json()
    finally:
        srv.stop()
    assert (seen["client"], seen["scheme"]) == (["203.0.113.9", 0], "https")


# --------------------------------------------------------------------------- --fd


def start_cli_passing_fd(fd: int, *args: str) -> CLIServer:
    """Like conftest.start_cli, with ``fd`` inherited by the server process."""
    return start_process([sys.executable, "-m", "sleipnir", *args], pass_fds=(fd,))


def test_fd() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        srv = start_cli_passing_fd(sock.fileno(), ECHO, "--fd", str(sock.fileno()))
        try:
            srv.wait_output(f"running on http://127.0.0.1:{port} ")
            assert get_json(f"http://127.0.0.1:{port}/fd")["server"] == ["127.0.0.1", port]
        finally:
            assert srv.stop() == 0


def test_fd_that_is_not_open_exits_3() -> None:
    srv = start_cli(ECHO, "--fd", "999")
    try:
        assert srv.wait(timeout=15) == 3
    finally:
        srv.stop()
    assert "ERROR:    could not listen on fd 999: Bad file descriptor" in srv.output


# --------------------------------------------------------------------------- --backlog


def test_backlog() -> None:
    with cli_server(ECHO, "--port", "0", "--backlog", "37") as srv:
        backlog = listen_backlog(srv.port)
        if backlog is None:
            pytest.skip("`ss` is not available to read the listen backlog")
        assert backlog == 37


# --------------------------------------------------------------------------- sockets handed in


def bound_socket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


def serve_in_thread(server: Server, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), STARTUP_TIMEOUT_S, "startup")
    assert server.started
    return thread


def stop(server: Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def make_server(**settings: Any) -> Server:
    # port 1 would fail to bind: the server must not bind anything of its own.
    return Server(Config(ECHO, port=1, log_config=None, access_log=False, **settings))


def test_server_run_with_sockets() -> None:
    families = [socket.AF_INET] + ([socket.AF_INET6] if has_ipv6_loopback() else [])
    sockets = [bound_socket(family) for family in families]
    server = make_server(backlog=41)
    thread = serve_in_thread(server, lambda: server.run(sockets=sockets))
    try:
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
            assert get_json(url)["server"] == [host, port]
        assert len(server.servers) == len(sockets)
        backlog = listen_backlog(sockets[0].getsockname()[1])
        assert backlog in (None, 41)
    finally:
        stop(server, thread)
    for sock in sockets:
        sock.close()


def test_await_server_serve_with_sockets() -> None:
    sock = bound_socket()
    server = make_server()
    thread = serve_in_thread(server, lambda: asyncio.run(server.serve(sockets=[sock])))
    try:
        port = sock.getsockname()[1]
        assert get_json(f"http://127.0.0.1:{port}/serve")["path"] == "/serve"
    finally:
        stop(server, thread)
    sock.close()
