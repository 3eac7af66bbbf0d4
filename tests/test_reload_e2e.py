"""End-to-end tests of ``sleipnir --reload``: a real supervisor process serving an app module
that the test rewrites in tmp_path, with both file watcher backends (watchfiles, and stat
polling through SLEIPNIR_RELOAD_POLL=1 or when watchfiles cannot be imported).

Each server runs with cwd=tmp_path, ``--reload-dir tmp_path --app-dir tmp_path``, on 127.0.0.1
port 0. Workers are known from the supervisor's "Worker [W] ready" lines (tests/procs.py).
Nothing sleeps to synchronize: a test polls a response or a log line against a deadline. To
show that a change did *not* restart the worker, it then makes an included edit (a marker) and
checks that exactly one restart followed: a change made before the marker is reported in the
marker's batch or an earlier one, so it would have shown up by then.

The servers run with PYTHONDONTWRITEBYTECODE=1: CPython validates a cached .pyc by the source's
size and its modification time in whole seconds, so ``b"v1"`` rewritten as ``b"v2"`` within the
same second would be imported from the stale cache (a 50 % chance in a test that edits right
after startup) if the supervisor did not remove the changed files' cache entries:
test_same_size_edit_within_the_same_second checks that it does, made certain with os.utime.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import STARTUP_TIMEOUT_S, start_cli, wait_for
from procs import (
    LISTEN_RE,
    LogTail,
    Supervisor,
    alive,
    cpu_seconds,
    inotify_fds,
    stop_supervisor,
    wait_gone,
)

pytestmark = pytest.mark.timeout(60)

BACKENDS = ["watchfiles", "polling"]
RELOAD_BOUND_S = 2.0  # the issue: "editing the app file changes the response within 2 s"
IDLE_WINDOW_S = 3.0
IDLE_CPU_LIMIT = 0.02  # the issue: "the idle supervisor uses under 2 % CPU"
WAIT_S = 15.0  # generous bounds for a loaded CI machine; the acceptance bound is separate

APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {{
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }}
    )
    await send({{"type": "http.response.body", "body": {body!r}}})
"""

CHANGES_RE = re.compile(r"Changes detected in: (.*)")
FAILED_RE = re.compile(r"Worker \[(\d+)\] failed to start \((.*)\); waiting for file changes")


def write_app(directory: Path, body: bytes, name: str = "mod.py") -> float:
    """Write the app module (in place, as most editors do); returns when it was written."""
    (directory / name).write_text(APP.format(body=body))
    return time.monotonic()


def fetch(port: int, timeout: float = WAIT_S) -> bytes:
    """GET / on a fresh connection; the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        conn.close()


def attempt(port: int) -> bytes | Exception:
    """:func:`fetch`, or the exception it raised."""
    try:
        return fetch(port)
    except Exception as exc:
        return exc


def wait_body(sup: Supervisor, body: bytes, timeout: float = WAIT_S) -> float:
    """Poll GET / until it answers ``body``; returns when it did."""
    try:
        wait_for(lambda: fetch(sup.port) == body, timeout, f"GET / to answer {body!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; output:\n{sup.log.tail()}") from None
    return time.monotonic()


def backend_env(backend: str) -> dict[str, str]:
    return {"SLEIPNIR_RELOAD_POLL": "1" if backend == "polling" else "0"}


@contextlib.contextmanager
def reload_server(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    mtime_s: int | None = None,
) -> Iterator[Supervisor]:
    """``sleipnir --reload`` on tmp_path/mod.py (written here, answering v1), yielded
    once its first worker is ready; stopped with SIGTERM on the way out, which must end it
    with exit code 0 and leave no worker behind. ``mtime_s``: the module's modification
    time, 0.1 s past that second."""
    write_app(tmp_path, b"v1")
    if mtime_s is not None:
        os.utime(tmp_path / "mod.py", ns=(mtime_s * 10**9 + 100_000_000,) * 2)
    argv = [
        "--reload",
        "--reload-dir",
        str(tmp_path),
        "--app-dir",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
        *args,
        "mod:app",
    ]
    srv = start_cli(*argv, cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    sup = Supervisor(srv, 0, LogTail(srv))
    try:
        started = sup.log.expect(r"Started supervisor process \[(\d+)\]", STARTUP_TIMEOUT_S)
        assert int(started.group(1)) == srv.proc.pid, sup.log.tail()
        sup.port = int(sup.log.expect(LISTEN_RE.pattern, STARTUP_TIMEOUT_S).group(3))
        watched = sup.log.expect(r"Will watch for changes in these directories \((\w+)\): (.*)")
        assert watched.group(2) == repr([str(tmp_path.resolve())]), watched.group(0)
        sup.wait_new_ready((), 1, STARTUP_TIMEOUT_S * 2)
    except BaseException:
        with contextlib.suppress(AssertionError):
            stop_supervisor(sup)
        raise
    try:
        yield sup
    finally:
        code = stop_supervisor(sup)
    assert code == 0, f"exit code {code}:\n{sup.log.tail()}"


def restarts(sup: Supervisor) -> int:
    """How many times a new worker was announced ready after the first one."""
    return len(sup.ready_pids()) - 1


def changes_lines(sup: Supervisor) -> list[str]:
    return [m.group(1) for line in list(sup.srv.lines) if (m := CHANGES_RE.search(line))]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def check_backend(sup: Supervisor, backend: str) -> None:
    """The supervisor uses the backend the test asked for: watchfiles holds an inotify
    instance, the polling walk none."""
    count = inotify_fds(sup.pid)
    if backend == "watchfiles":
        assert count >= 1, "the watchfiles backend should hold an inotify instance"
    else:
        assert count == 0, f"the polling backend should not use inotify ({count} instance(s))"


# --------------------------------------------------------------------------------------------
# 1. Acceptance: an edit changes the response within 2 s.


def test_edit_changes_the_response_within_2s(tmp_path: Path, backend: str) -> None:
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        check_backend(sup, backend)
        assert fetch(sup.port) == b"v1"
        first = sup.ready_pids()
        written = write_app(tmp_path, b"v2")
        served = wait_body(sup, b"v2")
        took = served - written
        print(f"\n[{backend}] edit -> new response: {took:.3f}s")
        assert took < RELOAD_BOUND_S, (
            f"[{backend}] the edit took {took:.3f}s to change the response (bound: "
            f"{RELOAD_BOUND_S}s); output:\n{sup.log.tail()}"
        )
        sup.wait_new_ready(first, 1, WAIT_S)  # its line may come after its first response
        assert restarts(sup) == 1 and first[0] not in sup.workers(), sup.log.tail()
        assert changes_lines(sup) == ["mod.py"], sup.log.tail()


def test_fallback_to_polling_without_watchfiles(tmp_path: Path) -> None:
    """watchfiles cannot be imported (a module on PYTHONPATH shadows it and raises
    ImportError): the supervisor polls, and an edit still reloads."""
    shadow = tmp_path / "shadow"
    (shadow / "watchfiles").mkdir(parents=True)
    (shadow / "watchfiles" / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    path = os.pathsep.join([str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])])
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    env = {"PYTHONPATH": path, "SLEIPNIR_RELOAD_POLL": "0"}
    with reload_server(app_dir, env=env) as sup:
        check_backend(sup, "polling")
        assert fetch(sup.port) == b"v1"
        written = write_app(app_dir, b"v2")
        took = wait_body(sup, b"v2") - written
        assert took < RELOAD_BOUND_S, f"the edit took {took:.3f}s:\n{sup.log.tail()}"


def test_same_size_edit_within_the_same_second(tmp_path: Path) -> None:
    """An edit that keeps the file's size, made within the same second as the cached .pyc's
    source (an editor's quick fix, a formatter): the new worker must run the new code. Here the
    modification times are set to make "the same second" certain."""
    second = int(time.time()) - 10
    env = {"PYTHONDONTWRITEBYTECODE": ""}  # empty: bytecode is written
    with reload_server(tmp_path, env=env, mtime_s=second) as sup:
        assert fetch(sup.port) == b"v1"
        wait_for(lambda: list((tmp_path / "__pycache__").glob("mod.*.pyc")), WAIT_S, "a .pyc")
        first = sup.ready_pids()
        write_app(tmp_path, b"v2")
        os.utime(tmp_path / "mod.py", ns=(second * 10**9 + 900_000_000,) * 2)
        sup.wait_new_ready(first, 1, WAIT_S)
        assert fetch(sup.port) == b"v2", "the new worker runs the old code"


# --------------------------------------------------------------------------------------------
# 2. The listening socket stays bound across a restart.


def test_socket_stays_bound_across_restart(tmp_path: Path, backend: str) -> None:
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        assert fetch(sup.port) == b"v1"
        old = sup.ready_pids()
        results: list[bytes | Exception] = []
        done = threading.Event()

        def client() -> None:  # requests one after another, through the whole restart
            while not done.is_set():
                results.append(attempt(sup.port))

        thread = threading.Thread(target=client, name="reload-client", daemon=True)
        thread.start()
        try:
            wait_for(lambda: results, WAIT_S, "the client's first response")
            write_app(tmp_path, b"v2")
            assert not wait_gone(old, WAIT_S), f"the old worker did not stop:\n{sup.log.tail()}"
            # No worker process is running now: the new one is still starting (a fresh
            # interpreter), and it announces itself ready only after this connection.
            in_window = restarts(sup) == 0
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", sup.port), timeout=WAIT_S) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b"".join(iter(lambda: sock.recv(65536), b""))
            delayed = time.monotonic() - started
            print(
                f"\n[{backend}] a request made between the workers was answered in {delayed:.3f}s"
            )
            assert in_window, f"the new worker was ready before the probe:\n{sup.log.tail()}"
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"v2"), reply
            wait_for(lambda: b"v2" in results, WAIT_S, "the client to see v2")
        finally:
            done.set()
            thread.join(WAIT_S)
        refused = [r for r in results if isinstance(r, ConnectionRefusedError)]
        errors = [r for r in results if isinstance(r, Exception)]
        assert not refused, f"{len(refused)} connection(s) refused during the restart"
        assert not errors, f"{len(errors)} failed request(s) during the restart: {errors[:5]!r}"
        ports = {int(m.group(3)) for line in sup.srv.lines if (m := LISTEN_RE.search(line))}
        assert ports == {sup.port}, sup.log.tail()


# --------------------------------------------------------------------------------------------
# 3. An edit that breaks the app, then one that fixes it.


BROKEN = {
    "syntax error": "async def app(scope, receive, send)\n",  # no colon
    "exception at import": 'raise RuntimeError("broken on purpose")\n',
}


def test_broken_edit_then_good_edit(tmp_path: Path, backend: str) -> None:
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        assert fetch(sup.port) == b"v1"
        for count, source in enumerate(BROKEN.values(), 1):
            (tmp_path / "mod.py").write_text(source)
            sup.log.expect(FAILED_RE.pattern, WAIT_S)
            assert sup.srv.proc.poll() is None, f"the supervisor exited:\n{sup.log.tail()}"
            failed = [line for line in sup.srv.lines if FAILED_RE.search(line)]
            assert len(failed) == count, f"one failed start per edit:\n{sup.log.tail()}"
        # While no worker runs, the socket still accepts: this request waits in the backlog
        # and the fixed app's worker answers it.
        with socket.create_connection(("127.0.0.1", sup.port), timeout=WAIT_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            write_app(tmp_path, b"v3")
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"v3"), reply
        assert fetch(sup.port) == b"v3"
        sup.wait_new_ready(sup.ready_pids()[:1], 1, WAIT_S)
        output = sup.srv.output
        assert len(FAILED_RE.findall(output)) == len(BROKEN), f"a busy restart loop?\n{output}"
        assert len(CHANGES_RE.findall(output)) == len(BROKEN) + 1, output
        assert restarts(sup) == 1, output  # v3's worker: the broken ones were never ready
        assert "SyntaxError" in output and "broken on purpose" in output, output


# --------------------------------------------------------------------------------------------
# 4. What counts as a change: default excludes, --reload-include, --reload-exclude.


def test_default_excludes_do_not_restart(tmp_path: Path, backend: str) -> None:
    ignored = [
        tmp_path / ".venv" / "lib" / "x.py",
        tmp_path / "node_modules" / "pkg" / "y.py",
        tmp_path / "__pycache__" / "z.pyc",
        tmp_path / ".git" / "hooks.py",
        tmp_path / "stray.pyc",
        tmp_path / "notes.txt",  # not included: only *.py by default
    ]
    for path in ignored:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# before\n")
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        for path in ignored:
            path.write_text("# changed, and longer than before\n")
        (tmp_path / "node_modules" / "new").mkdir()  # a new excluded directory, with a file
        (tmp_path / "node_modules" / "new" / "w.py").write_text("x = 1\n")
        first = sup.ready_pids()
        write_app(tmp_path, b"v2")  # the marker
        wait_body(sup, b"v2")
        sup.wait_new_ready(first, 1, WAIT_S)
        assert restarts(sup) == 1, f"exactly one restart (the marker's):\n{sup.log.tail()}"
        assert changes_lines(sup) == ["mod.py"], sup.log.tail()


def test_reload_include_and_exclude(tmp_path: Path, backend: str) -> None:
    (tmp_path / "templates").mkdir()
    page = tmp_path / "templates" / "page.html"
    page.write_text("<p>1</p>\n")
    skip = tmp_path / "skip_me.py"
    skip.write_text("x = 1\n")
    args = ("--reload-include", "*.html", "--reload-exclude", "skip_*.py")
    with reload_server(tmp_path, *args, env=backend_env(backend)) as sup:
        page.write_text("<p>2, an included edit</p>\n")
        sup.log.expect(CHANGES_RE.pattern, WAIT_S)
        sup.wait_new_ready(sup.ready_pids(), 1, WAIT_S)
        assert changes_lines(sup) == [os.path.join("templates", "page.html")], sup.log.tail()
        assert fetch(sup.port) == b"v1"
        skip.write_text("x = 2  # an excluded edit\n")
        known = sup.ready_pids()
        write_app(tmp_path, b"v2")  # the marker
        wait_body(sup, b"v2")
        sup.wait_new_ready(known, 1, WAIT_S)
        assert restarts(sup) == 2, f"the .html edit and the marker only:\n{sup.log.tail()}"
        assert changes_lines(sup)[1:] == ["mod.py"], sup.log.tail()


def test_reload_delay(tmp_path: Path, backend: str) -> None:
    """--reload-delay D: a batch is reported once D seconds passed without a new change, so
    never sooner than D after the edit (a lower bound: it cannot be flaky)."""
    delay = 0.6  # the default is 0.25
    with reload_server(tmp_path, "--reload-delay", str(delay), env=backend_env(backend)) as sup:
        written = write_app(tmp_path, b"v2")
        sup.log.expect(CHANGES_RE.pattern, WAIT_S)
        reported = time.monotonic() - written
        print(f"\n[{backend}] --reload-delay {delay}: reported after {reported:.3f}s")
        # 50 ms of slack: the file system saw the write a moment before write_app returned.
        assert reported >= delay - 0.05, f"reported {reported:.3f}s after the edit"
        wait_body(sup, b"v2")


# --------------------------------------------------------------------------------------------
# 5. The idle supervisor uses under 2 % of one CPU.


def test_idle_supervisor_cpu(tmp_path: Path, backend: str) -> None:
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        check_backend(sup, backend)
        assert fetch(sup.port) == b"v1"  # settled: the worker serves
        # A measuring interval, not a synchronization: CPU time used over a fixed window.
        before, started = cpu_seconds(sup.pid), time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        used, elapsed = cpu_seconds(sup.pid) - before, time.monotonic() - started
        share = used / elapsed
        print(f"\n[{backend}] idle supervisor: {used:.3f}s CPU in {elapsed:.2f}s = {share:.2%}")
        assert alive(sup.pid), sup.log.tail()
        assert share < IDLE_CPU_LIMIT, (
            f"[{backend}] the idle supervisor used {used:.3f}s of CPU in {elapsed:.2f}s "
            f"({share:.2%}; bound {IDLE_CPU_LIMIT:.0%})"
        )
        assert restarts(sup) == 0, sup.log.tail()


# --------------------------------------------------------------------------------------------
# 6. SIGTERM: exit 0, no worker left.


def test_sigterm_stops_supervisor_and_worker(tmp_path: Path, backend: str) -> None:
    with reload_server(tmp_path, env=backend_env(backend)) as sup:
        worker = sup.workers()
        assert len(worker) == 1 and fetch(sup.port) == b"v1"
        code = stop_supervisor(sup, signal.SIGTERM)  # checks that every worker is gone
        assert code == 0, f"exit code {code}:\n{sup.log.tail()}"
        assert not alive(worker[0])
        assert "Stopped supervisor process" in sup.srv.output, sup.log.tail()


def test_sigterm_during_a_reload(tmp_path: Path) -> None:
    """SIGTERM as soon as a change is reported (the new worker is starting): exit 0, and no
    worker, old or new, outlives the supervisor."""
    with reload_server(tmp_path, env=backend_env("watchfiles")) as sup:
        write_app(tmp_path, b"v2")
        sup.log.expect(CHANGES_RE.pattern, WAIT_S)
        sup.signal(signal.SIGTERM)
        code = stop_supervisor(sup)
        assert code == 0, f"exit code {code}:\n{sup.log.tail()}"
        started = re.findall(r"Started server process \[(\d+)\]", sup.srv.output)
        assert not [pid for pid in map(int, started) if alive(pid)], sup.log.tail()
