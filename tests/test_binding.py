"""Where the server listens: IPv6, UNIX sockets, inherited file descriptors, the backlog,
--bind and --reuse-port, and sockets handed to ``Server.run`` / ``Server.serve`` (the seam a
supervisor uses). Sockets inherited from systemd: tests/test_systemd.py."""

from __future__ import annotations

import asyncio
import os
import re
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

from conftest import (
    STARTUP_TIMEOUT_S,
    CLIServer,
    cli_server,
    has_ipv6_loopback,
    start_cli,
    start_process,
    wait_for,
)
from sleipnir import Config, Server
from sleipnir.cli import build_config
from sleipnir.transport import listen
from sleipnir.transport.listen import (
    BindError,
    BindSpec,
    bind_all,
    bind_socket,
    bind_specs,
    close_sockets,
    describe,
    from_systemd,
    parse_bind,
)

ECHO = "tests.apps.echo:app"


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


# --------------------------------------------------------------------------- --bind: parsing


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:65535", "localhost", 65535),
        ("app.example.com:80", "app.example.com", 80),
        ("tcp://127.0.0.1:81", "127.0.0.1", 81),
        ("[::1]:8081", "::1", 8081),
        ("[::]:80", "::", 80),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("  127.0.0.1:82 ", "127.0.0.1", 82),  # as SLEIPNIR_BIND items may come
        # A bare IP address (or localhost) means port 8000, as in gunicorn.
        ("0.0.0.0", "0.0.0.0", 8000),
        ("localhost", "localhost", 8000),
        ("[::1]", "::1", 8000),
    ],
)
def test_parse_bind_tcp(text: str, host: str, port: int) -> None:
    assert parse_bind(text, 7) == BindSpec(host, port, None, None, 7)


def test_parse_bind_unix_fd_and_reuse_port() -> None:
    assert parse_bind("unix:/run/app.sock", 5) == BindSpec("", 0, "/run/app.sock", None, 5)
    assert parse_bind("unix:///run/app.sock", 5).uds == "/run/app.sock"
    assert parse_bind("unix:relative.sock", 5).uds == "relative.sock"
    assert parse_bind("fd://3", 5) == BindSpec("", 0, None, 3, 5)
    assert parse_bind("fd://0", 5).fd == 0
    assert parse_bind("127.0.0.1:1", 5, reuse_port=True).reuse_port


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nonsense", "missing the port, as in nonsense:8000"),
        ("example.com", "missing the port"),
        ("", "the host is empty"),
        (":8000", "the host is empty"),
        ("127.0.0.1:", "the port '' is not a number"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:-1", "the port '-1' is not a number"),
        ("127.0.0.1:+80", "the port '+80' is not a number"),
        ("127.0.0.1:65536", "the port 65536 is not in 0..65535"),
        ("::1", "put an IPv6 address in brackets"),
        ("::1:8000", "put an IPv6 address in brackets"),
        ("[::1", "missing ']'"),
        ("[::1]8000", "expected ':PORT' after ']'"),
        ("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address"),
        ("[]:80", "'' is not an IPv6 address"),
        ("bad host:80", "'bad host' is not a host name or IP address"),
        ("/run/app.sock", "a unix socket is spelled unix:PATH"),
        ("unix:", "the unix socket path is empty"),
        ("unix://", "the unix socket path is empty"),
        ("unix:/" + "x" * 107, "longer than 107 bytes"),
        ("fd://", "fd:// takes a file descriptor number"),
        ("fd://-1", "fd:// takes a file descriptor number"),
        ("fd://three", "fd:// takes a file descriptor number"),
    ],
)
def test_parse_bind_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bind address {text!r}: ")) as exc_info:
        parse_bind(text, 1)
    assert reason in str(exc_info.value)
    assert "\n" not in str(exc_info.value)


def test_config_checks_bind_addresses() -> None:
    with pytest.raises(ValueError, match="bind address 'nonsense': missing the port"):
        Config(ECHO, bind=["nonsense"])
    with pytest.raises(ValueError, match=r"bind address '127\.0\.0\.1:99999'"):
        Config(ECHO, bind=["127.0.0.1:1", "127.0.0.1:99999"])
    with pytest.raises(TypeError, match="bind items must be str, not int"):
        Config(ECHO, bind=[8000])
    assert Config(ECHO, bind="127.0.0.1:1").bind == ["127.0.0.1:1"]
    assert Config(ECHO, bind=("unix:/a", "fd://3")).bind == ["unix:/a", "fd://3"]
    assert Config(ECHO, bind=None).bind == []
    assert Config(ECHO).bind == []


def test_bind_from_the_command_line_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [ECHO, "--bind", "127.0.0.1:1", "--bind", "unix:/tmp/a.sock", "--reuse-port"]
    config = build_config(argv, environ={})
    assert (config.bind, config.reuse_port) == (["127.0.0.1:1", "unix:/tmp/a.sock"], True)
    config = build_config([ECHO], environ={"SLEIPNIR_BIND": "[::1]:2, fd://3"})
    assert config.bind == ["[::1]:2", "fd://3"]
    with pytest.raises(SystemExit) as exc_info:
        build_config([ECHO, "--bind", "nonsense"], environ={})
    assert exc_info.value.code == 2
    assert "argument --bind: bind address 'nonsense': missing the port" in capsys.readouterr().err


# --------------------------------------------------------------------------- --bind: specs


def test_bind_specs_without_bind_is_host_port_uds_or_fd() -> None:
    assert bind_specs(Config(ECHO)) == [BindSpec("127.0.0.1", 8000, None, None, 2048)]
    config = Config(ECHO, uds="/tmp/x.sock", backlog=9, reuse_port=True)
    assert bind_specs(config) == [BindSpec("127.0.0.1", 8000, "/tmp/x.sock", None, 9, True)]


def test_bind_specs_with_bind_leaves_out_the_default_host_and_port() -> None:
    config = Config(ECHO, bind=["0.0.0.0:80", "unix:/tmp/x.sock", "fd://5"], backlog=9)
    assert bind_specs(config) == [
        BindSpec("0.0.0.0", 80, None, None, 9),
        BindSpec("", 0, "/tmp/x.sock", None, 9),
        BindSpec("", 0, None, 5, 9),
    ]
    reuse = Config(ECHO, bind=["[::1]:80"], reuse_port=True)
    assert bind_specs(reuse) == [BindSpec("::1", 80, None, None, 2048, True)]


@pytest.mark.parametrize(
    ("settings", "first"),
    [
        ({"port": 9000}, BindSpec("127.0.0.1", 9000, None, None, 2048)),
        ({"host": "0.0.0.0"}, BindSpec("0.0.0.0", 8000, None, None, 2048)),
        ({"uds": "/tmp/y.sock"}, BindSpec("127.0.0.1", 8000, "/tmp/y.sock", None, 2048)),
        ({"fd": 7}, BindSpec("127.0.0.1", 8000, None, 7, 2048)),
    ],
)
def test_bind_specs_with_bind_keeps_a_changed_host_port_uds_or_fd(
    settings: dict[str, Any], first: BindSpec
) -> None:
    config = Config(ECHO, bind=["127.0.0.1:81"], **settings)
    assert bind_specs(config) == [first, BindSpec("127.0.0.1", 81, None, None, 2048)]


# --------------------------------------------------------------------------- --reuse-port


needs_reuse_port = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="this platform has no SO_REUSEPORT"
)


@needs_reuse_port
def test_reuse_port_lets_two_sockets_listen_on_one_port() -> None:
    first = bind_socket(BindSpec("127.0.0.1", 0, None, None, 8, reuse_port=True))
    port = first.getsockname()[1]
    second = bind_socket(BindSpec("127.0.0.1", port, None, None, 8, reuse_port=True))
    try:
        assert second.getsockname() == ("127.0.0.1", port)
        for sock in (first, second):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # Without it, the port is taken: the option really is what let the second one in.
        with pytest.raises(BindError, match=rf"127\.0\.0\.1:{port}: Address already in use$"):
            bind_socket(BindSpec("127.0.0.1", port, None, None, 8))
    finally:
        close_sockets([first, second])


def test_no_reuse_port_by_default() -> None:
    sock = bind_socket(BindSpec("127.0.0.1", 0, None, None, 8))
    try:
        if hasattr(socket, "SO_REUSEPORT"):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        sock.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
@needs_reuse_port
def test_reuse_port_ipv6_and_its_error_names_the_bracketed_address() -> None:
    first = bind_socket(BindSpec("::1", 0, None, None, 8, reuse_port=True))
    port = first.getsockname()[1]
    try:
        with pytest.raises(BindError, match=rf"^could not listen on \[::1\]:{port}: "):
            bind_socket(BindSpec("::1", port, None, None, 8))
        second = bind_socket(BindSpec("::1", port, None, None, 8, reuse_port=True))
        assert describe(second, "http") == f"http://[::1]:{port}"
        second.close()
    finally:
        first.close()


# --------------------------------------------------------------------------- bind_all


def test_bind_all_binds_every_address_in_order(uds_path: Path) -> None:
    config = Config(ECHO, bind=["127.0.0.1:0", f"unix:{uds_path}"], backlog=5)
    sockets = bind_all(config)
    try:
        assert [sock.family for sock in sockets] == [socket.AF_INET, socket.AF_UNIX]
        assert describe(sockets[1], "https") == f"https://unix:{uds_path}"
        assert not any(sock.getblocking() or from_systemd(sock) for sock in sockets)
        assert stat.S_ISSOCK(uds_path.stat().st_mode)
        with socket.create_connection(sockets[0].getsockname()[:2], timeout=5):
            pass  # listening
    finally:
        close_sockets(sockets)
    assert all(sock.fileno() == -1 for sock in sockets)
    assert not uds_path.exists(), "close_sockets removes the socket file bound here"


def test_bind_all_closes_what_it_bound_when_an_address_fails(
    uds_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[socket.socket] = []
    real_bind_socket = listen.bind_socket

    def recording_bind_socket(spec: BindSpec) -> socket.socket:
        opened.append(real_bind_socket(spec))
        return opened[-1]

    monkeypatch.setattr(listen, "bind_socket", recording_bind_socket)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(ECHO, bind=["127.0.0.1:0", f"unix:{uds_path}", f"127.0.0.1:{port}"])
        message = rf"^could not listen on 127\.0\.0\.1:{port}: Address already in use$"
        with pytest.raises(BindError, match=message):
            bind_all(config)
    assert len(opened) == 2
    assert all(sock.fileno() == -1 for sock in opened), "the sockets bound before are closed"
    assert not uds_path.exists(), "and the socket file bound before is removed"


def test_bind_all_reports_an_address_changed_after_config_as_a_bind_error() -> None:
    config = Config(ECHO)
    config.bind = ["nonsense"]
    with pytest.raises(BindError, match=r"^bind address 'nonsense': missing the port"):
        bind_all(config)


def test_close_sockets_never_removes_what_is_no_longer_a_socket(uds_path: Path) -> None:
    sock = bind_socket(BindSpec("", 0, str(uds_path), None, 1))
    sock.close()
    uds_path.unlink()
    uds_path.write_text("someone else's file")
    close_sockets([sock])
    assert uds_path.read_text() == "someone else's file"
    uds_path.unlink()


def test_close_sockets_leaves_the_file_of_an_inherited_unix_socket(uds_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as owner:
        owner.bind(str(uds_path))
        owner.listen()
        inherited = bind_socket(BindSpec("", 0, None, os.dup(owner.fileno()), 1))  # --fd
        assert describe(inherited, "http") == f"http://unix:{uds_path}"
        close_sockets([inherited])
        assert stat.S_ISSOCK(uds_path.stat().st_mode), "the file belongs to whoever bound it"


# --------------------------------------------------------------------------- --bind, CLI
# These need the lead's server.py change (Server._listen calls bind_all, and shutdown calls
# close_sockets): test_cli_bind_tcp_and_unix, test_cli_bind_with_an_explicit_port,
# test_cli_bind_failure_exits_3_and_cleans_up, test_cli_reuse_port_two_servers_share_a_port.


def test_cli_bind_tcp_and_unix(uds_path: Path) -> None:
    srv = start_cli(ECHO, "--bind", "127.0.0.1:0", "--bind", f"unix:{uds_path}")
    try:
        port = int(srv.wait_output(r"running on http://127\.0\.0\.1:(\d+) ").group(1))
        srv.wait_output(r"running on http://unix:" + re.escape(str(uds_path)))
        assert get_json(f"http://127.0.0.1:{port}/tcp")["path"] == "/tcp"
        over_uds = httpx.HTTPTransport(uds=str(uds_path))
        assert get_json("http://localhost/unix", over_uds)["path"] == "/unix"
        assert srv.output.count("running on") == 2, "not the default 127.0.0.1:8000 as well"
        assert srv.stop(signal.SIGTERM) == 0
    finally:
        srv.stop()
    assert not uds_path.exists(), "the socket file is removed on exit"


def test_cli_bind_with_an_explicit_port(uds_path: Path) -> None:
    srv = start_cli(ECHO, "--port", "0", "--bind", f"unix:{uds_path}")
    try:
        port = int(srv.wait_output(r"running on http://127\.0\.0\.1:(\d+) ").group(1))
        srv.wait_output(r"running on http://unix:")
        assert get_json(f"http://127.0.0.1:{port}/")["path"] == "/"
    finally:
        assert srv.stop() == 0


def test_cli_bind_failure_exits_3_and_cleans_up(uds_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = start_cli(
            ECHO, "--bind", f"unix:{uds_path}", "--bind", f"127.0.0.1:{port}", "--lifespan", "off"
        )
        try:
            assert srv.wait(timeout=15) == 3
        finally:
            srv.stop()
    assert f"ERROR:    could not listen on 127.0.0.1:{port}: Address already in use" in srv.output
    assert not uds_path.exists(), "the unix socket bound before the failure is removed"


@needs_reuse_port
def test_cli_reuse_port_two_servers_share_a_port() -> None:
    with cli_server(ECHO, "--port", "0", "--reuse-port") as first:
        port = str(first.port)
        with cli_server(ECHO, "--port", port, "--reuse-port") as second:
            assert second.port == first.port
            assert get_json(f"{second.url}/shared")["path"] == "/shared"
