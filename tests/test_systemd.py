"""systemd: socket activation (LISTEN_FDS, sd_listen_fds(3)) and notifications (NOTIFY_SOCKET,
sd_notify(3)), against real sockets.

The pytest process never takes over its own descriptors 3 and up: activation is tested in a
child ``python -c`` that puts the sockets it was given at fd 3.. itself, and under
``systemd-socket-activate`` (Debian package systemd; those tests skip without it), which binds
127.0.0.1:PORT and execs the program on the first connection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    STARTUP_TIMEOUT_S,
    CLIServer,
    has_ipv6_loopback,
    start_cli,
    start_process,
    wait_for,
)
from sleipnir.systemd import Notifier, listen_fds

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
ECHO = "tests.apps.echo:app"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for socket files (sun_path is limited to ~107 bytes, tmp_path can be longer)."""
    directory = Path(os.path.realpath("/tmp")) / f"sleipnir-sd-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    try:
        yield directory
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


# --------------------------------------------------------------------------- listen_fds


# Run in a child: move the descriptors named in argv[1] to 3, 4, ... (out of the way first, so
# none is overwritten), announce them as systemd does, then run the test's code.
ACTIVATED_PRELUDE = """
import fcntl, json, os, socket, sys
given = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    os.close(fd)
for index, fd in enumerate(high):
    target = 3 + index
    try:
        os.fstat(target)
    except OSError:
        pass
    else:
        raise SystemExit(f"fd {target} is in use in the child")
    os.dup2(fd, target)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=sys.argv[2], LISTEN_FDNAMES="a:b")
from sleipnir.systemd import listen_fds
from sleipnir.transport.listen import bind_all, describe, from_systemd
def info(sock):
    return {
        "fd": sock.fileno(), "family": sock.family.name, "type": sock.type.name,
        "blocking": sock.getblocking(), "inheritable": sock.get_inheritable(),
        "url": describe(sock, "http"), "systemd": from_systemd(sock),
    }
def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
def report(**result):
    print("RESULT " + json.dumps(result), flush=True)
"""


def run_activated(code: str, fds: list[int], count: int | None = None) -> dict[str, Any]:
    """Run ``code`` in a child that got ``fds`` as fd 3.. with LISTEN_FDS=``count``."""
    argv = [",".join(map(str, fds)), str(len(fds) if count is None else count)]
    done = subprocess.run(
        [sys.executable, "-c", ACTIVATED_PRELUDE + code, *argv],
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"^RESULT (.*)$", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout + done.stderr
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def listening(family: socket.AddressFamily, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen()
    return sock


def test_listen_fds_takes_the_sockets_at_fd_3_and_up(short_dir: Path) -> None:
    tcp = listening(socket.AF_INET, ("127.0.0.1", 0))
    unix = listening(socket.AF_UNIX, str(short_dir / "a.sock"))
    abstract = listening(socket.AF_UNIX, f"\0sleipnir-test-{os.getpid()}")
    sockets = [tcp, unix, abstract]
    if has_ipv6_loopback():
        sockets.append(listening(socket.AF_INET6, ("::1", 0)))
    client = socket.create_connection(tcp.getsockname(), timeout=5)  # waits in the backlog
    code = """
import select
socks = listen_fds()
ready, _, _ = select.select([socks[0]], [], [], 10)
peer = socks[0].accept()[1] if ready else None
left = [name for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if name in os.environ]
report(socks=[info(s) for s in socks], peer=peer, left=left)
"""
    try:
        result = run_activated(code, [sock.fileno() for sock in sockets])
        port = tcp.getsockname()[1]
        expected_urls = [
            f"http://127.0.0.1:{port}",
            f"http://unix:{short_dir / 'a.sock'}",
            f"http://unix:@sleipnir-test-{os.getpid()}",
        ]
        if len(sockets) == 4:
            expected_urls.append(f"http://[::1]:{sockets[3].getsockname()[1]}")
        assert [s["url"] for s in result["socks"]] == expected_urls
        assert [s["fd"] for s in result["socks"]] == list(range(3, 3 + len(sockets)))
        families = ["AF_INET", "AF_UNIX", "AF_UNIX", "AF_INET6"][: len(sockets)]
        assert [s["family"] for s in result["socks"]] == families
        for sock_info in result["socks"]:
            assert sock_info["type"] == "SOCK_STREAM"
            assert not sock_info["blocking"]
            assert not sock_info["inheritable"], "close-on-exec"
            assert not sock_info["systemd"], "only bind_all marks them"
        assert result["peer"] == list(client.getsockname()), "the very socket we listen on"
        assert result["left"] == [], "LISTEN_* are unset"
    finally:
        client.close()
        for sock in sockets:
            sock.close()


def test_listen_fds_skips_a_descriptor_that_is_not_a_socket() -> None:
    tcp = listening(socket.AF_INET, ("127.0.0.1", 0))
    read_end, write_end = os.pipe()
    code = "report(socks=[info(s) for s in listen_fds()], pipe_open=is_open(3))"
    try:
        result = run_activated(code, [read_end, tcp.fileno()])
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        tcp.close()
    assert [s["fd"] for s in result["socks"]] == [4]
    assert result["pipe_open"], "a descriptor that is not a socket is left alone"


def test_listen_fds_more_than_were_passed_takes_nothing() -> None:
    tcp = listening(socket.AF_INET, ("127.0.0.1", 0))
    code = "report(n=len(listen_fds()), still_open=is_open(3))"
    try:
        result = run_activated(code, [tcp.fileno()], count=5)
    finally:
        tcp.close()
    assert result == {"n": 0, "still_open": True}


def test_bind_all_prefers_the_sockets_from_systemd() -> None:
    tcp = listening(socket.AF_INET, ("127.0.0.1", 0))
    code = """
from sleipnir import Config
# Addresses that could not be bound: with sockets from systemd they are not even tried.
socks = bind_all(Config("example:app", port=1, bind=["127.0.0.1:1", "unix:/nonexistent/x"]))
report(socks=[info(s) for s in socks])
"""
    port = tcp.getsockname()[1]
    try:
        result = run_activated(code, [tcp.fileno()])
    finally:
        tcp.close()
    [only] = result["socks"]
    assert only["url"] == f"http://127.0.0.1:{port}"
    assert only["systemd"], "from_systemd tells the caller to say so"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dgram", "systemd passed fd 3, which is not a stream socket"),
        ("unlistened", "systemd passed fd 3, which is not listening (use Accept=no)"),
    ],
)
def test_bind_all_refuses_sockets_it_cannot_serve_on(kind: str, message: str) -> None:
    kind_type = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind_type)
    sock.bind(("127.0.0.1", 0))
    code = """
from sleipnir import Config
from sleipnir.transport.listen import BindError
try:
    bind_all(Config("example:app"))
except BindError as exc:
    report(error=str(exc), closed=not is_open(3))
"""
    try:
        result = run_activated(code, [sock.fileno()])
    finally:
        sock.close()
    assert result == {"error": message, "closed": True}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "{pid}"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},  # another process's (init's) sockets
        {"LISTEN_PID": "{other}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "one"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": ""},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": " 1"},
        {"LISTEN_PID": "{pid}x", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "", "LISTEN_FDS": "1"},
    ],
)
def test_listen_fds_ignores_wrong_or_garbage_variables(environ: dict[str, str]) -> None:
    # None of these asks for this process's descriptors, so nothing here touches fd 3.
    pid = os.getpid()
    environ = {name: value.format(pid=pid, other=pid + 1) for name, value in environ.items()}
    environ["OTHER"] = "kept"
    assert listen_fds(environ) == []
    assert environ == {"OTHER": "kept"}, "LISTEN_* are unset even when unusable"


def test_listen_fds_can_leave_the_variables_set() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    assert listen_fds(environ, unset=False) == []
    assert environ == {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}


def test_listen_fds_reads_and_unsets_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDS" not in os.environ


# ------------------------------------------------------------------- systemd-socket-activate


def activate_env() -> list[str]:
    """-E options: systemd-socket-activate passes on only PATH, HOME, TERM and LISTEN_*."""
    names = ("COVERAGE_PROCESS_START", "COVERAGE_FILE", "PYTHONPATH", "VIRTUAL_ENV")
    pairs = {"PYTHONUNBUFFERED": "1"} | {n: os.environ[n] for n in names if n in os.environ}
    return [f"--setenv={name}={value}" for name, value in pairs.items()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_activated(*command: str, extra: tuple[str, ...] = ()) -> tuple[CLIServer, int]:
    """``systemd-socket-activate -l 127.0.0.1:PORT`` around ``command``, listening (it execs
    the command on the first connection). It needs an explicit port, and a free one found
    beforehand may be taken meanwhile: a few tries."""
    assert SOCKET_ACTIVATE is not None
    for _ in range(5):
        port = free_port()
        argv = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", *extra, *activate_env(), *command]
        proc = start_process(argv)

        def listening_or_exited(proc: CLIServer = proc) -> bool:
            return "Listening on 127.0.0.1" in proc.output or proc.proc.poll() is not None

        wait_for(listening_or_exited, STARTUP_TIMEOUT_S, "systemd-socket-activate to listen")
        if proc.proc.poll() is None:
            return proc, port
        proc.wait()
        if "Address already in use" not in proc.output:
            raise AssertionError(f"systemd-socket-activate failed:\n{proc.output}")
    raise AssertionError("no free port for systemd-socket-activate after 5 tries")


def sleipnir_command() -> list[str]:
    """The venv's ``sleipnir`` script, as an admin would run it; else ``python -m sleipnir``."""
    script = Path(sys.executable).with_name("sleipnir")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sleipnir"]


@needs_socket_activate
def test_listen_fds_under_systemd_socket_activate(short_dir: Path) -> None:
    path = short_dir / "activate.sock"
    code = """
import json, os
from sleipnir.systemd import listen_fds
from sleipnir.transport.listen import describe
socks = listen_fds()
print("RESULT " + json.dumps([describe(s, "http") for s in socks] + sorted(
    name for name in os.environ if name.startswith("LISTEN_"))), flush=True)
"""
    proc, port = start_activated(
        sys.executable, "-c", code, extra=("-l", str(path), "--fdname=web:admin")
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            result = proc.wait_output(r"(?m)^RESULT (\[.*\])$", timeout=STARTUP_TIMEOUT_S)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.stop()
    assert json.loads(result.group(1)) == [f"http://127.0.0.1:{port}", f"http://unix:{path}"]


# These need the lead's server.py change (Server._listen calls bind_all):
# test_sleipnir_serves_on_the_socket_systemd_passed.


@needs_socket_activate
def test_sleipnir_serves_on_the_socket_systemd_passed() -> None:
    # --port 1 could not be bound: the socket from systemd must replace it.
    proc, port = start_activated(*sleipnir_command(), "example:app", "--port", "1")
    try:
        # The first connection makes systemd-socket-activate exec sleipnir, which then
        # accepts it on the inherited socket: allow for the startup.
        with httpx.Client(timeout=STARTUP_TIMEOUT_S) as client:
            response = client.get(f"http://127.0.0.1:{port}/")
            assert (response.status_code, response.text) == (200, "Hello, world!")
            assert client.get(f"http://127.0.0.1:{port}/again").status_code == 200
        assert f"running on http://127.0.0.1:{port} " in proc.output
        assert "127.0.0.1:1 " not in proc.output
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.stop()


# --------------------------------------------------------------------------- Notifier


@pytest.fixture
def notify_path(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its NOTIFY_SOCKET."""
    path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


@pytest.fixture
def notify_abstract() -> Iterator[tuple[socket.socket, str]]:
    name = f"sleipnir-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        yield sock, "@" + name


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifier_sends_each_message(kind: str, request: pytest.FixtureRequest) -> None:
    sock, address = request.getfixturevalue(f"notify_{kind}")
    environ = {"NOTIFY_SOCKET": address, "OTHER": "kept"}
    notifier = Notifier.from_env(environ)
    assert notifier is not None
    assert environ == {"OTHER": "kept"}, "children must not notify in our name"
    assert notifier.ready()
    assert received(sock) == "READY=1"
    assert notifier.status("Serving on 2 sockets\nall well")
    assert received(sock) == "STATUS=Serving on 2 sockets all well"
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    reloading, monotonic = received(sock).split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    assert before <= int(monotonic.removeprefix("MONOTONIC_USEC=")) <= after
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"


@pytest.mark.parametrize("value", [None, "", "@", "relative/notify", "vsock:2:1234"])
def test_no_notifier_without_a_usable_notify_socket(value: str | None) -> None:
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    assert Notifier.from_env(environ) is None
    assert environ == {}


def test_notifier_from_os_environ_by_default(
    notify_path: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notifier = Notifier.from_env()
    assert notifier is not None
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_interval == 1.0
    assert notifier.ready()
    assert received(sock) == "READY=1"


def test_notifier_can_leave_the_variables_set(notify_path: tuple[socket.socket, str]) -> None:
    environ = {"NOTIFY_SOCKET": notify_path[1], "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    kept = dict(environ)
    assert Notifier.from_env(kept, unset=False) is not None
    assert kept == environ


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        (None, None, None),
        ("3000000", None, 1.5),
        ("3000000", "{pid}", 1.5),
        ("3000000", "{other}", None),  # the watchdog is another process's
        ("3000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, interval: float | None) -> None:
    environ = {"NOTIFY_SOCKET": "/run/nonexistent/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = pid.format(pid=os.getpid(), other=os.getpid() + 1)
    notifier = Notifier.from_env(environ)
    assert notifier is not None
    assert notifier.watchdog_interval == interval
    assert environ == {}


def test_sending_errors_are_swallowed(short_dir: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
    assert notifier is not None
    assert notifier.ready() is False  # logged at debug level, never raised
    assert notifier.watchdog() is False
    assert repr(notifier) == f"Notifier({str(short_dir / 'nobody-listens')!r}, watchdog_usec=None)"


# These need the lead's server.py change (the server notifies systemd):
# test_sleipnir_notifies_ready_and_stopping.


def test_sleipnir_notifies_ready_and_stopping(notify_path: tuple[socket.socket, str]) -> None:
    sock, path = notify_path
    srv = start_cli(ECHO, "--port", "0", env={"NOTIFY_SOCKET": path})
    try:
        messages = [received(sock)]
        while not any("READY=1" in message.split("\n") for message in messages):
            messages.append(received(sock))  # STATUS= lines may come first
        srv.wait_output(r"running on http://127\.0\.0\.1:\d+ ")  # ready once listening
        srv.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in message.split("\n") for message in messages):
            messages.append(received(sock))
        assert srv.wait(timeout=15) == 0
    finally:
        srv.stop()


def test_supervisor_notifies_ready_watchdog_reloading_and_stopping(
    notify_path: tuple[socket.socket, str],
) -> None:
    # With workers, the supervisor (systemd's main process) notifies: READY=1 once every worker
    # is ready, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP
    # rolling restart, STOPPING=1 on SIGTERM. The workers say nothing (the variables are gone).
    sock, path = notify_path
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    srv = start_cli(ECHO, "--port", "0", "--workers", "2", env=env)
    try:

        def wait_message(what: str) -> None:
            while what not in received(sock).split("\n"):
                pass

        wait_message("READY=1")
        srv.wait_output(r"Worker \[\d+\] ready[\s\S]*Worker \[\d+\] ready")
        wait_message("WATCHDOG=1")
        wait_message("WATCHDOG=1")
        srv.proc.send_signal(signal.SIGHUP)
        wait_message("RELOADING=1")
        wait_message("READY=1")
        srv.wait_output("Rolling restart complete")
        srv.proc.send_signal(signal.SIGTERM)
        wait_message("STOPPING=1")
        assert srv.wait(timeout=30) == 0
    finally:
        srv.stop()
