"""The lifespan protocol end to end: modes, state, failures, timeouts and exit codes.

Exit codes (CLI): any lifespan failure, at startup or at shutdown (``*.failed`` message, an
exception where lifespan is required, a timeout), ends the process with status 3 and one
``ERROR:`` line naming the phase. Shutdown failures are logged like uvicorn does and, unlike
uvicorn (which exits 0), also give status 3 so that a supervisor sees them.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import cli_server, run_server, start_cli
from sleipnir import Config, Server
from sleipnir.types import Receive, Scope, Send

APPS = "tests.apps.lifespans"
STARTUP_FAILURE = 3


class Recorder:
    """An app that records the scope types and lifespan messages it sees."""

    def __init__(self, *, supports_lifespan: bool = True) -> None:
        self.supports_lifespan = supports_lifespan
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["type"])
        if scope["type"] == "lifespan":
            if not self.supports_lifespan:
                raise RuntimeError("lifespan is not supported")
            while True:
                message = await receive()
                self.seen.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR:")]


def srv_pid(output: str) -> int:
    match = re.search(r"Started server process \[(\d+)\]", output)
    assert match, output
    return int(match.group(1))


def run_cli_to_exit(*args: str) -> tuple[int, str]:
    """Run a CLI server that is expected to stop by itself (a startup failure)."""
    srv = start_cli(*args, "--port", "0")
    try:
        code = srv.wait(timeout=15)
    finally:
        srv.stop()
    return code, srv.output


def stop_cli_server(*args: str, before_stop: Any = None) -> tuple[int, str]:
    """Start a CLI server, answer one request, stop it with SIGTERM; its exit code and output."""
    with cli_server(*args, "--port", "0") as srv:
        with httpx.Client(timeout=5) as client:
            assert client.get(srv.url).text == "ok"
        code = srv.stop(signal.SIGTERM)
    return code, srv.output


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("auto", ["lifespan", "lifespan.startup", "http", "lifespan.shutdown"]),
        ("on", ["lifespan", "lifespan.startup", "http", "lifespan.shutdown"]),
        ("off", ["http"]),
    ],
)
def test_lifespan_modes(mode: str, expected: list[str]) -> None:
    app = Recorder()
    with run_server(app, lifespan=mode) as running, httpx.Client(timeout=5) as client:
        assert client.get(running.url).text == "ok"
    assert app.seen == expected


def test_auto_mode_serves_an_app_that_raises_on_lifespan() -> None:
    app = Recorder(supports_lifespan=False)
    with run_server(app, lifespan="auto") as running, httpx.Client(timeout=5) as client:
        assert client.get(running.url).text == "ok"
    assert app.seen == ["lifespan", "http"]  # no second try at shutdown


def test_auto_mode_unsupported_is_one_info_line_on_the_cli() -> None:
    code, out = stop_cli_server(f"{APPS}:startup_raises", "--lifespan", "auto")
    assert code == 0
    assert "INFO:     ASGI 'lifespan' protocol appears unsupported." in out
    assert "Traceback" not in out
    assert error_lines(out) == []


async def returns_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_app_returning_without_answering_startup_is_unsupported_in_auto_mode() -> None:
    with run_server(returns_at_once, lifespan="auto") as running, httpx.Client() as client:
        assert client.get(running.url).text == "ok"


def test_app_returning_without_answering_startup_fails_in_on_mode() -> None:
    server = Server(Config(returns_at_once, lifespan="on", port=0, log_config=None))
    server.run()  # returns at once: the startup failed
    assert not server.started
    assert not server.servers


# --------------------------------------------------------------------------- state


def test_state_from_startup_is_copied_into_each_request() -> None:
    shared: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["db"] = "connected"
            scope["state"]["items"] = ["a"]
            shared.update(scope["state"])
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        body = json.dumps(sorted(state)).encode()
        state["set_by_request"] = scope["path"]  # must not leak into the next request
        state["items"].append(scope["path"])  # a shallow copy, as uvicorn's
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with run_server(app, lifespan="on") as running, httpx.Client(timeout=5) as client:
        assert client.get(running.url + "/one").json() == ["db", "items"]
        assert client.get(running.url + "/two").json() == ["db", "items"]
    assert set(shared) == {"db", "items"}
    assert shared["items"] == ["a", "/one", "/two"]


# --------------------------------------------------------------------------- startup failures


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_message_exits_3_with_one_line(mode: str) -> None:
    code, out = run_cli_to_exit(f"{APPS}:startup_failed", "--lifespan", mode)
    assert code == STARTUP_FAILURE
    assert error_lines(out) == ["ERROR:    Application startup failed: database unreachable"]
    assert "Traceback" not in out
    assert "running on" not in out


def test_startup_exception_in_on_mode_exits_3() -> None:
    code, out = run_cli_to_exit(f"{APPS}:startup_raises", "--lifespan", "on")
    assert code == STARTUP_FAILURE
    # The app's own exception is shown with its traceback, then the one-line reason.
    assert "RuntimeError: this app does not do lifespan" in out
    assert error_lines(out)[-1] == (
        "ERROR:    Application startup failed: RuntimeError('this app does not do lifespan')"
    )
    assert "running on" not in out


def test_startup_timeout_exits_3() -> None:
    args = (f"{APPS}:startup_hangs", "--timeout-lifespan", "0.3")
    code, out = run_cli_to_exit(*args)
    assert code == STARTUP_FAILURE
    assert "app: startup hangs" in out
    assert error_lines(out) == ["ERROR:    Application startup timed out after 0.3s"]
    assert "running on" not in out


def test_startup_failure_leaves_the_port_free() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = start_cli(f"{APPS}:startup_failed", "--port", str(port))
    assert srv.wait(timeout=15) == STARTUP_FAILURE
    with pytest.raises(ConnectionRefusedError):  # lifespan runs before binding
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# --------------------------------------------------------------------------- shutdown


def test_shutdown_failed_message_is_logged_and_exits_3() -> None:
    code, out = stop_cli_server(f"{APPS}:shutdown_failed", "--lifespan", "on")
    assert code == STARTUP_FAILURE
    assert error_lines(out) == ["ERROR:    Application shutdown failed: could not flush the cache"]
    assert "Traceback" not in out


def test_shutdown_exception_is_logged_with_traceback_and_exits_3() -> None:
    code, out = stop_cli_server(f"{APPS}:shutdown_raises")
    assert code == STARTUP_FAILURE
    assert "RuntimeError: shutdown exploded" in out
    assert error_lines(out)[-1] == (
        "ERROR:    Application shutdown failed: RuntimeError('shutdown exploded')"
    )


def test_shutdown_timeout_exits_3() -> None:
    code, out = stop_cli_server(f"{APPS}:shutdown_hangs", "--timeout-lifespan", "0.3")
    assert code == STARTUP_FAILURE
    assert "app: shutdown hangs" in out
    assert error_lines(out) == ["ERROR:    Application shutdown timed out after 0.3s"]


def test_clean_lifespan_exits_0() -> None:
    code, out = stop_cli_server(f"{APPS}:announcing", "--lifespan", "on")
    assert code == 0
    lines = out.splitlines()
    assert lines.index("app: startup ran") < lines.index("INFO:     Application startup complete.")
    assert "app: shutdown ran" in lines
    assert lines[-2:] == [
        "INFO:     Application shutdown complete.",
        f"INFO:     Finished server process [{srv_pid(out)}]",  # the last line, as uvicorn
    ]
    assert error_lines(out) == []


def test_shutdown_runs_on_sigterm_after_in_flight_requests() -> None:
    with cli_server("tests.apps.control:app", "--port", "0") as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as held:
            held.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            srv.wait_output("app: holding")
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_output("Waiting for 1 in-flight request")
            assert "app: shutdown ran" not in srv.output
            srv.proc.send_signal(signal.SIGUSR1)
            assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert srv.wait() == 0
    out = srv.output
    assert out.index("app: released") < out.index("Waiting for application shutdown.")
    assert "app: shutdown ran with 0 held" in out


def test_bind_failure_after_startup_runs_lifespan_shutdown() -> None:
    # As uvicorn: the app started (it may hold resources), so it gets its shutdown.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        srv = start_cli(f"{APPS}:announcing", "--port", port)
        code = srv.wait(timeout=15)
    out = srv.output
    assert code == STARTUP_FAILURE
    assert error_lines(out) == [
        f"ERROR:    could not listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert out.index("app: startup ran") < out.index("ERROR:") < out.index("app: shutdown ran")


def test_tls_error_stops_before_lifespan_startup(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    code, out = run_cli_to_exit(f"{APPS}:announcing", "--ssl-certfile", str(missing))
    assert code == STARTUP_FAILURE
    assert error_lines(out) == [
        f"ERROR:    TLS configuration error: --ssl-certfile: file not found: {missing}"
    ]
    assert "app: startup ran" not in out
    assert "Waiting for application startup." not in out


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_app_returning_after_startup_has_nothing_to_shut_down(mode: str) -> None:
    # A common minimal lifespan handler; uvicorn reports a complete shutdown and exits 0.
    code, out = stop_cli_server(f"{APPS}:returns_after_startup", "--lifespan", mode)
    assert code == 0
    assert out.splitlines()[-2] == "INFO:     Application shutdown complete."
    assert error_lines(out) == []


def test_lifespan_task_crashing_after_startup_is_logged_and_exits_3() -> None:
    with cli_server(f"{APPS}:crashes_after_startup", "--port", "0") as srv:
        # Logged when it happens, with the traceback: the app said it supports lifespan.
        srv.wait_output("RuntimeError: lifespan task crashed")
        assert "Traceback (most recent call last):" in srv.output
        code = srv.stop(signal.SIGTERM)
    assert code == STARTUP_FAILURE
    assert error_lines(srv.output)[-1] == (
        "ERROR:    Application shutdown failed: RuntimeError('lifespan task crashed')"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_hanging_startup_exits_3_at_once(sig: int) -> None:
    # uvicorn waits for ever here; an operator's Ctrl+C or a pod's SIGTERM must work.
    srv = start_cli(f"{APPS}:startup_hangs", "--port", "0", "--timeout-lifespan", "60")
    srv.wait_output("Waiting for application startup")
    code = srv.stop(sig, timeout=10)
    assert code == 3, srv.output
    assert "Startup interrupted by a signal" in srv.output
