"""gunicorn with sleipnir's worker classes (sleipnir.workers): real arbiters, real sockets.

Each test starts ``python -m gunicorn -k sleipnir.workers.SleipnirWorker`` on 127.0.0.1 port
0 (gunicorn logs the port it got) and waits, by reading the output, until the workers serve.
The apps other than example:app are written to a temporary directory (``--pythonpath``); they
print "app: ..." lines (flushed) so a test knows when a request is in progress.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import STARTUP_TIMEOUT_S, CLIServer, LocalhostCert, start_process, wait_for
from sleipnir import Config, Server
from sleipnir.types import Receive, Scope, Send

gunicorn_config = pytest.importorskip(
    "gunicorn.config", reason="gunicorn is not installed (pip install gunicorn)"
)
from sleipnir.workers import SleipnirWorker  # noqa: E402  (needs gunicorn)

WORKER = "sleipnir.workers.SleipnirWorker"
H11_WORKER = "sleipnir.workers.SleipnirH11Worker"
EXIT_TIMEOUT_S = 15.0
# gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn unless told not to.
NO_CONTROL_SOCKET = (
    ["--no-control-socket"] if "control_socket_disable" in gunicorn_config.KNOWN_SETTINGS else []
)

APP_MODULE = """
import asyncio
import os
import time


def say(text):
    print(f"app: {text} [{os.getpid()}]", flush=True)


async def answer(send, body):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                say("lifespan shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    seconds = float(scope["query_string"] or 0)
    if scope["path"] == "/sleep":  # awaits: the event loop (and the heartbeat) keep running
        say("sleeping")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            say("sleep cancelled")
            raise
    elif scope["path"] == "/block":  # blocks the event loop, as CPU-bound code would
        say("blocking")
        time.sleep(seconds)
    await answer(send, str(os.getpid()).encode())


async def startup_fails(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


from sleipnir.workers import SleipnirWorker  # noqa: E402


class NoServerHeaderWorker(SleipnirWorker):
    CONFIG_KWARGS = {**SleipnirWorker.CONFIG_KWARGS, "server_header": False}


class BadConfigWorker(SleipnirWorker):
    CONFIG_KWARGS = {"no_such_setting": 1}
"""

BROKEN_MODULE = "import sleipnir_no_such_module  # noqa: F401\n"

HOOKS = """
import ssl


def ssl_context(config, default_ssl_context_factory):
    print("hook: ssl_context", flush=True)
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def post_worker_init(worker):
    print(f"hook: post_worker_init keep-alive {worker.config.timeout_keep_alive}", flush=True)


def worker_int(worker):
    print(f"hook: worker_int [{worker.pid}]", flush=True)


def worker_abort(worker):
    print(f"hook: worker_abort [{worker.pid}]", flush=True)
"""


@dataclass
class Gunicorn:
    srv: CLIServer
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.srv.output

    def serving_pids(self) -> list[int]:
        """Workers that logged their startup line, in order."""
        return [
            int(pid) for pid in re.findall(r"\[(\d+)\] \[INFO\] Sleipnir running on", self.output)
        ]

    def exited(self, pid: int) -> bool:
        return f"Worker exiting (pid: {pid})" in self.output

    def wait_serving(self, count: int, timeout: float = STARTUP_TIMEOUT_S) -> list[int]:
        """Wait until ``count`` workers (in all) have started serving; their pids."""

        def ready() -> list[int] | bool:
            if self.srv.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.output}")
            pids = self.serving_pids()
            return pids if len(pids) >= count else False

        return wait_for(ready, timeout, f"{count} serving worker(s)")  # type: ignore[no-any-return]


def start_gunicorn(*args: str, worker: str = WORKER, app: str = "example:app") -> CLIServer:
    argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:0"]
    return start_process([*argv, *NO_CONTROL_SOCKET, *args, app])


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "gunicorn_app.py").write_text(APP_MODULE)
    (tmp_path / "gunicorn_broken.py").write_text(BROKEN_MODULE)
    (tmp_path / "gunicorn_hooks.py").write_text(HOOKS)
    return tmp_path


class _Runner:
    """Starts gunicorn instances and makes sure every one is stopped (SIGTERM) at the end."""

    def __init__(self) -> None:
        self.started: list[CLIServer] = []

    def __call__(
        self,
        *args: str,
        workers: int = 1,
        worker: str = WORKER,
        app: str = "example:app",
        scheme: str = "http",
    ) -> Gunicorn:
        srv = start_gunicorn("-w", str(workers), *args, worker=worker, app=app)
        self.started.append(srv)
        match = wait_for(
            lambda: (
                re.search(r"Listening at: https?://127\.0\.0\.1:(\d+)", srv.output)
                or srv.proc.poll() is not None
            ),
            STARTUP_TIMEOUT_S,
            "gunicorn's listening line",
        )
        if match is True:
            raise AssertionError(f"gunicorn exited early:\n{srv.output}")
        running = Gunicorn(srv, int(match.group(1)), scheme)
        running.wait_serving(workers)
        return running

    def stop_all(self) -> None:
        for srv in self.started:
            if srv.proc.poll() is None:
                srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S)


@pytest.fixture
def gunicorn() -> Iterator[_Runner]:
    runner = _Runner()
    try:
        yield runner
    finally:
        runner.stop_all()


def test_serves_with_sleipnir_and_stops_on_sigterm(gunicorn: _Runner) -> None:
    g = gunicorn("--access-logfile", "-", workers=2)
    with httpx.Client(timeout=5) as client:
        for _ in range(4):
            response = client.get(g.url + "/")
            assert response.status_code == 200
            assert response.text == "Hello, world!"
            assert response.headers["server"] == "sleipnir"
            assert "date" in response.headers
    # Access lines go through gunicorn's access log handler; errors through its error log.
    wait_for(lambda: g.output.count('"GET / HTTP/1.1" 200') >= 4, 5, "4 access log lines")
    assert "[INFO] Sleipnir running on http://127.0.0.1:" in g.output
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0, g.output
    for pid in g.serving_pids():
        assert f"Finished server process [{pid}]" in g.output
    assert "Traceback" not in g.output


def test_config_kwargs_and_no_access_log(gunicorn: _Runner, app_dir: Path) -> None:
    # A subclass's CONFIG_KWARGS reach Config; without --access-logfile there is no access log.
    g = gunicorn(
        "--pythonpath", str(app_dir), worker="gunicorn_app.NoServerHeaderWorker",
        app="gunicorn_app:app",
    )  # fmt: skip
    with httpx.Client(timeout=5) as client:
        response = client.get(g.url + "/")
    assert response.status_code == 200
    assert "server" not in response.headers
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0
    assert "GET / HTTP/1.1" not in g.output


def test_sighup_replaces_workers_without_failed_requests(gunicorn: _Runner) -> None:
    g = gunicorn(workers=2)
    old = set(g.serving_pids())
    ok = [0] * 4
    failures: list[str] = []
    stop = threading.Event()

    def hammer(index: int) -> None:
        with httpx.Client(timeout=5) as client:  # one keep-alive connection per thread
            while not stop.is_set():
                try:
                    response = client.get(g.url + "/")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    ok[index] += 1
                else:
                    failures.append(f"status {response.status_code}")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer, i) for i in range(4)]
        try:
            wait_for(lambda: sum(ok) >= 200, 10, "requests before SIGHUP")
            g.srv.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: all(g.exited(pid) for pid in old), 15, "the old workers to exit")
            served = sum(ok)
            wait_for(lambda: sum(ok) >= served + 200, 10, "requests after the reload")
        finally:
            stop.set()
        for future in futures:
            future.result()
    new = set(g.serving_pids()) - old
    assert len(new) == 2, g.output
    assert failures == [], f"{len(failures)} failed of {sum(ok) + len(failures)}: {failures[:5]}"
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


@pytest.mark.parametrize(
    ("app", "worker", "reason"),
    [
        # Without --preload the worker imports the app; gunicorn's own error handling.
        ("gunicorn_broken:app", WORKER, "No module named 'sleipnir_no_such_module'"),
        # The server itself cannot start: sleipnir's worker exits 3 (WORKER_BOOT_ERROR).
        ("gunicorn_app:startup_fails", WORKER, "database unreachable"),
        ("gunicorn_app:app", "gunicorn_app.BadConfigWorker", "no_such_setting"),
    ],
    ids=["import-error", "lifespan-startup-failed", "bad-config-kwargs"],
)
def test_boot_failure_stops_gunicorn(app_dir: Path, app: str, worker: str, reason: str) -> None:
    srv = start_gunicorn("--pythonpath", str(app_dir), worker=worker, app=app)
    try:
        code = srv.wait(EXIT_TIMEOUT_S)
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S)
    assert code == 3, srv.output
    assert reason in srv.output
    assert "Reason: Worker failed to boot." in srv.output
    assert srv.output.count("Booting worker") == 1  # no restart loop


def test_max_requests_recycles_the_worker(gunicorn: _Runner, app_dir: Path) -> None:
    g = gunicorn("--pythonpath", str(app_dir), "--max-requests", "3", app="gunicorn_app:app")
    first = g.serving_pids()[0]
    pids = []
    for _ in range(3):  # a fresh connection each time: the limit closes the worker's ones
        with httpx.Client(timeout=5) as client:
            pids.append(int(client.get(g.url + "/").text))
    assert pids == [first] * 3
    wait_for(lambda: g.exited(first), EXIT_TIMEOUT_S, "the recycled worker to exit")
    assert "Maximum request limit of 3 exceeded" in g.output
    assert f"app: lifespan shutdown [{first}]" in g.output
    second = g.wait_serving(2)[1]
    with httpx.Client(timeout=5) as client:
        assert int(client.get(g.url + "/").text) == second
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


def test_heartbeat_outlives_timeout_while_awaiting(gunicorn: _Runner, app_dir: Path) -> None:
    # --timeout 2: the arbiter aborts a worker silent for 2 s. A request awaiting 3 s leaves
    # the event loop, and so the heartbeat, running; one blocking the loop gets it aborted.
    g = gunicorn("--pythonpath", str(app_dir), "--timeout", "2", app="gunicorn_app:app")
    first = g.serving_pids()[0]
    with httpx.Client(timeout=10) as client:
        assert int(client.get(g.url + "/sleep?3").text) == first
    assert "WORKER TIMEOUT" not in g.output
    with httpx.Client(timeout=10) as client:
        try:
            status = client.get(g.url + "/block?8").status_code
        except httpx.TransportError:
            status = 0
    # gunicorn's SIGABRT handler raises SystemExit inside the app: the server answers 500 (as
    # uvicorn's worker does) or, when the response had started, the connection just closes.
    assert status in (0, 500)
    wait_for(lambda: f"WORKER TIMEOUT (pid:{first})" in g.output, 5, "the WORKER TIMEOUT line")
    wait_for(lambda: g.exited(first), EXIT_TIMEOUT_S, "the aborted worker to exit")
    second = g.wait_serving(2)[1]
    with httpx.Client(timeout=5) as client:
        assert int(client.get(g.url + "/").text) == second
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT], ids=["SIGQUIT", "SIGINT"])
def test_quit_signal_stops_worker_at_once(gunicorn: _Runner, app_dir: Path, sig: int) -> None:
    hooks = str(app_dir / "gunicorn_hooks.py")
    g = gunicorn(
        "--pythonpath", str(app_dir), "-c", hooks, "--graceful-timeout", "30",
        app="gunicorn_app:app",
    )  # fmt: skip
    first = g.serving_pids()[0]
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=20) as client:
        pending = pool.submit(client.get, g.url + "/sleep?20")
        g.srv.wait_output(rf"app: sleeping \[{first}\]")
        started = time.monotonic()
        os.kill(first, sig)
        try:
            status = pending.result(timeout=15).status_code
        except httpx.TransportError:
            status = 0
    assert status in (0, 500)  # the request was cancelled: 500 if it had not answered yet
    assert time.monotonic() - started < 5  # not the 20 s sleep, nor the graceful timeout
    wait_for(lambda: g.exited(first), EXIT_TIMEOUT_S, "the worker to exit")
    assert f"hook: worker_int [{first}]" in g.output
    assert f"app: sleep cancelled [{first}]" in g.output
    assert f"app: lifespan shutdown [{first}]" not in g.output
    assert f"Worker (pid:{first}) exited with code" not in g.output  # exit status 0
    g.wait_serving(2)  # the arbiter replaced it
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


def test_sigterm_to_worker_finishes_in_flight_request(gunicorn: _Runner, app_dir: Path) -> None:
    g = gunicorn("--pythonpath", str(app_dir), app="gunicorn_app:app")
    first = g.serving_pids()[0]
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=10) as client:
        pending = pool.submit(client.get, g.url + "/sleep?1")
        g.srv.wait_output(rf"app: sleeping \[{first}\]")
        os.kill(first, signal.SIGTERM)
        assert int(pending.result(timeout=10).text) == first
    wait_for(lambda: g.exited(first), EXIT_TIMEOUT_S, "the worker to exit")
    assert f"app: lifespan shutdown [{first}]" in g.output
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


def test_sigusr1_reopens_log_files(gunicorn: _Runner, tmp_path: Path) -> None:
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    srv = start_gunicorn("--error-logfile", str(error_log), "--access-logfile", str(access_log))
    gunicorn.started.append(srv)
    match = wait_for(
        lambda: (
            error_log.exists()
            and re.search(
                r"\[(\d+)\] \[INFO\] Sleipnir running on .*:(\d+) ", error_log.read_text()
            )
        ),
        STARTUP_TIMEOUT_S,
        "the worker's startup line in the error log",
    )
    pid, url = int(match.group(1)), f"http://127.0.0.1:{match.group(2)}"
    with httpx.Client(timeout=5) as client:
        assert client.get(url + "/").status_code == 200
    wait_for(lambda: "GET / HTTP/1.1" in access_log.read_text(), 5, "the first access line")
    error_log.rename(tmp_path / "error.log.1")
    access_log.rename(tmp_path / "access.log.1")
    os.kill(pid, signal.SIGUSR1)  # what logrotate's postrotate does (through the arbiter)
    wait_for(lambda: error_log.exists() and access_log.exists(), 5, "reopened log files")
    with httpx.Client(timeout=5) as client:
        assert client.get(url + "/again").status_code == 200
    wait_for(lambda: "GET /again HTTP/1.1" in access_log.read_text(), 5, "the access line")
    assert srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0
    assert f"Finished server process [{pid}]" in error_log.read_text()


def test_tls_with_gunicorn_settings_and_ssl_context_hook(
    gunicorn: _Runner, app_dir: Path, localhost_cert: LocalhostCert
) -> None:
    g = gunicorn(
        "--certfile", str(localhost_cert.cert), "--keyfile", str(localhost_cert.key),
        "-c", str(app_dir / "gunicorn_hooks.py"), worker=H11_WORKER, scheme="https",
    )  # fmt: skip
    assert "Sleipnir running on https://127.0.0.1:" in g.output
    assert "hook: ssl_context" in g.output
    assert "hook: post_worker_init keep-alive 2.0" in g.output  # worker.config exists by then
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    localhost_cert.ca.configure_trust(context)
    with httpx.Client(verify=context, timeout=5) as client:
        response = client.get(g.url + "/")
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3"  # set by the hook
    assert response.status_code == 200
    assert response.headers["server"] == "sleipnir"
    assert g.srv.stop(signal.SIGTERM, EXIT_TIMEOUT_S) == 0


# In-process checks of the settings mapping and of the handlers no end-to-end test reaches.


@pytest.fixture
def make_worker() -> Iterator[Callable[..., SleipnirWorker]]:
    """Build (not run) a worker from gunicorn settings, as the arbiter does before forking."""
    from gunicorn.glogging import Logger

    made: list[SleipnirWorker] = []

    def make(timeout: float = 15.0, **settings: Any) -> SleipnirWorker:
        cfg = gunicorn_config.Config()
        for name, value in settings.items():
            cfg.set(name, value)
        worker = SleipnirWorker(1, os.getppid(), [], None, timeout, cfg, Logger(cfg))
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.tmp.close()


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


def test_gunicorn_settings_map_onto_config(make_worker: Callable[..., SleipnirWorker]) -> None:
    worker = make_worker(
        timeout=7.5,  # the arbiter passes half of --timeout
        keepalive=9,
        graceful_timeout=12,
        max_requests=100,
        max_requests_jitter=10,
        limit_request_line=0,
        limit_request_fields=200,
        limit_request_field_size=100_000,
        forwarded_allow_ips="10.0.0.1,10.0.0.2",
        backlog=64,
    )
    kwargs = worker.config_kwargs()
    config = Config(noop_app, **kwargs)
    assert config.timeout_keep_alive == 9
    assert config.timeout_graceful_shutdown == 12
    assert config.timeout_notify == 7
    assert config.callback_notify == worker.callback_notify
    assert 100 <= config.limit_max_requests <= 110  # type: ignore[operator]
    assert config.limit_max_requests == worker.max_requests
    assert config.limit_max_requests_jitter == 0  # gunicorn drew it already
    assert config.limit_request_line == 8190  # 0: gunicorn's largest
    assert config.limit_request_headers == 200
    assert config.limit_request_header_size == 100_002  # one such field fits
    assert config.forwarded_allow_ips == "10.0.0.1,10.0.0.2"
    assert config.backlog == 64
    assert config.log_config is None
    assert config.access_log is False  # no --access-logfile
    assert not config.is_ssl
    assert (config.loop, config.http) == ("auto", "auto")


def test_defaults_and_tls_settings(
    make_worker: Callable[..., SleipnirWorker], localhost_cert: LocalhostCert
) -> None:
    worker = make_worker(
        timeout=0,  # --timeout 0: no heartbeat needed, but timeout_notify is at least 1
        certfile=str(localhost_cert.cert),
        keyfile=str(localhost_cert.key),
        cert_reqs=int(ssl.CERT_OPTIONAL),
        accesslog="-",
    )
    config = Config(noop_app, **worker.config_kwargs())
    assert config.timeout_notify == 1
    assert config.limit_max_requests is None
    assert config.limit_request_line == 4094
    assert config.limit_request_headers == 100
    assert config.limit_request_header_size == 65536
    assert config.access_log is True
    assert config.ssl_certfile == str(localhost_cert.cert)
    assert config.ssl_keyfile == str(localhost_cert.key)
    assert config.ssl_cert_reqs == ssl.CERT_OPTIONAL
    assert config.ssl_context_factory is not None
    made = ssl.create_default_context()
    context = config.ssl_context_factory(config, lambda: made)
    assert context is made  # gunicorn's default ssl_context hook returns the default context


def test_notify_stops_the_worker_when_its_arbiter_is_gone(
    make_worker: Callable[..., SleipnirWorker],
) -> None:
    worker = make_worker()
    server = Server(Config(noop_app, log_config=None))
    worker._server = server  # type: ignore[assignment]
    states = []
    asyncio.run(worker.callback_notify())
    states.append(server.should_exit)
    worker.ppid = -1  # os.getppid() differs: reparented
    asyncio.run(worker.callback_notify())
    states.append(server.should_exit)
    assert states == [False, True]
    assert not worker.alive


def test_signals_before_serving(make_worker: Callable[..., SleipnirWorker]) -> None:
    calls: list[object] = []
    worker = make_worker(worker_int=calls.append)
    worker.handle_exit(signal.SIGTERM, None)  # while loading the app: no server yet
    assert not worker.alive
    with pytest.raises(SystemExit) as exit_info:
        worker.handle_quit(signal.SIGQUIT, None)
    assert exit_info.value.code == 0
    assert calls == [worker]
