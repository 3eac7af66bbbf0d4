"""Shared fixtures: real servers on 127.0.0.1 port 0, in a thread or as a CLI subprocess.

Every wait is bounded: helpers poll a condition against a deadline and fail with a message,
never sleep a fixed time and hope.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trustme

from sleipnir import Config, Server

PARSERS = ["httptools", "h11"]
STARTUP_TIMEOUT_S = 15.0
REPO = Path(__file__).resolve().parent.parent


# Modules of multi-process tests (supervisor, gunicorn, nginx, systemd, --reload): marked
# "processes". scripts/test runs them once, on the main Python, and skips them in its second
# pass on Python 3.12+ (the process model uses no asyncio feature that changed).
PROCESS_MODULES = frozenset(
    {"test_supervisor_e2e", "test_nginx", "test_gunicorn", "test_systemd", "test_reload_e2e"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in PROCESS_MODULES:
            item.add_marker(pytest.mark.processes)


def has_ipv6_loopback() -> bool:
    """True when this machine can bind ::1 (tests of IPv6 skip otherwise)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


@dataclass
class RunningServer:
    server: Server
    thread: threading.Thread
    host: str
    port: int
    scheme: str = "http"
    errors: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw client socket to this server."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server thread did not stop"


@contextlib.contextmanager
def run_server(app: Any, **settings: Any) -> Iterator[RunningServer]:
    """Serve ``app`` in a background thread; ``settings`` are Config keyword arguments."""
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    settings.setdefault("log_config", None)
    settings.setdefault("access_log", False)
    settings.setdefault("lifespan", "auto")
    server = Server(Config(app, **settings))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced by the fixture
            errors.append(exc)

    thread = threading.Thread(target=target, name="sleipnir-test-server", daemon=True)
    thread.start()
    wait_for(
        lambda: server.started or errors or not thread.is_alive(), STARTUP_TIMEOUT_S, "startup"
    )
    if not server.started:
        thread.join(5)
        raise AssertionError(f"server did not start: {errors!r}")
    sock = server.servers[0].sockets[0]
    name = sock.getsockname()
    host = name[0] if isinstance(name, tuple) else str(name)
    port = name[1] if isinstance(name, tuple) else 0
    scheme = "https" if settings.get("ssl_certfile") else "http"
    running = RunningServer(server, thread, host, port, scheme, errors)
    try:
        yield running
    finally:
        running.stop()


class LocalhostCert(NamedTuple):
    """A test CA and the PEM files of a server certificate it issued for localhost and
    127.0.0.1 (``--ssl-certfile``/``--ssl-keyfile``)."""

    ca: trustme.CA
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> LocalhostCert:
    directory = tmp_path_factory.mktemp("localhost-cert")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return LocalhostCert(ca, cert, key)


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once per HTTP/1.1 parser."""
    return str(request.param)


_LISTEN_RE = re.compile(r"running on (https?)://(\[[^\]]+\]|[^:\s]+):(\d+)")


@dataclass
class CLIServer:
    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread
    host: str = ""
    port: int = 0
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and collect the rest of its output."""
        code = self.proc.wait(timeout)
        self.reader.join(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def wait_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)
        return wait_for(lambda: regex.search(self.output), timeout, f"output {pattern!r}")  # type: ignore[no-any-return]


def start_process(
    argv: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> CLIServer:
    """Start ``argv`` (coverage-aware: inherits os.environ); the caller stops it. Output
    (stdout and stderr merged) is collected in the background."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        argv,
        cwd=cwd or REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        pass_fds=pass_fds,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)  # one line at a time, as the server writes them

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return CLIServer(proc, lines, reader)


def start_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CLIServer:
    """Start ``python -m sleipnir ARGS``; see start_process."""
    return start_process([sys.executable, "-m", "sleipnir", *args], cwd, env)


@contextlib.contextmanager
def cli_server(*args: str, **kwargs: Any) -> Iterator[CLIServer]:
    """A CLI server that is listening (the port is read from its startup line)."""
    srv = start_cli(*args, **kwargs)
    try:
        match = wait_for(
            lambda: _LISTEN_RE.search(srv.output) or srv.proc.poll() is not None,
            STARTUP_TIMEOUT_S,
            "the startup line",
        )
        if match is True:
            raise AssertionError(f"server exited early:\n{srv.output}")
        srv.scheme, srv.host, srv.port = match.group(1), match.group(2), int(match.group(3))
        yield srv
    finally:
        srv.stop()
