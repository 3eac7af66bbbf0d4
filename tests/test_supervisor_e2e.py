"""End-to-end tests of the multi-process supervisor (``sleipnir --workers N``).

Real processes (``python -m sleipnir --workers 2 --port 0 ...``), real sockets on 127.0.0.1,
real signals, wrk for load. Workers are known from the supervisor's "Worker [W] ready" lines
(tests/procs.py), never from /proc children. Every wait polls a condition against a deadline;
every supervisor is stopped with SIGTERM on the way out, and its workers must then be gone.

The rolling restart acceptance runs wrk for $SLEIPNIR_ROLLING_SECONDS (default 8; the issue's
acceptance figure is 20).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import start_cli, wait_for
from procs import (
    READY_RE,
    WRK,
    LogTail,
    Supervisor,
    alive,
    cpu_seconds,
    min_capacity,
    rolling_restart,
    stop_supervisor,
    supervisor,
    wait_gone,
    wait_serving,
    watch_descendants,
    wrk_running,
)

APP = "tests.apps.workers:app"
ROLLING_SECONDS = float(os.environ.get("SLEIPNIR_ROLLING_SECONDS", "8"))

needs_wrk = pytest.mark.skipif(
    WRK is None, reason="wrk is not installed (scripts/test installs the Debian package wrk)"
)


def get(url: str, timeout: float = 10.0) -> httpx.Response:
    """One request on a fresh connection."""
    return httpx.get(url, timeout=timeout)


# --------------------------------------------------------------------------------------------
# 1. Acceptance: two rolling restarts under wrk load, not one failed request.


@needs_wrk
@pytest.mark.timeout(ROLLING_SECONDS + 60)
@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared-socket", "reuse-port"])
def test_rolling_restarts_under_load(reuse_port: bool) -> None:
    args = [APP, "--no-access-log", *(["--reuse-port"] if reuse_port else [])]
    with supervisor(*args, workers=2) as sup:
        first = sup.workers()
        assert len(first) == 2, sup.log.tail()
        with wrk_running(f"{sup.url}/", seconds=ROLLING_SECONDS, connections=64) as wrk:
            wait_serving(first)
            restarts = [rolling_restart(sup, ROLLING_SECONDS)]
            restarts.append(rolling_restart(sup, ROLLING_SECONDS))
            assert wrk.running, (
                "both rolling restarts must happen while wrk runs; they took longer than "
                f"{ROLLING_SECONDS}s (raise SLEIPNIR_ROLLING_SECONDS)"
            )
            result = wrk.result()
        mode = "reuse-port" if reuse_port else "shared socket"
        took = ", ".join(f"{restart.seconds:.2f}s" for restart in restarts)
        print(f"wrk ({mode}): {result.summary()}; restarts took {took}")
        for restart in restarts:
            assert len(restart.new) == 2 and sorted(restart.stopped) == sorted(restart.old), (
                restart.lines
            )
            # each old worker stops only once its replacement is ready: never fewer than 2
            assert restart.min_capacity() >= 2, restart.lines
        new = {pid for restart in restarts for pid in restart.new}
        assert len(new) >= 4 and not new & set(first), (first, new)
        assert result.requests > 0, result.output
        assert result.socket_errors == 0, result.output
        assert result.non_2xx_3xx == 0, result.output
        assert wait_gone(first + restarts[0].new, 10.0) == []
        assert sorted(sup.workers()) == sorted(restarts[1].new)
        assert get(f"{sup.url}/").status_code == 200


# --------------------------------------------------------------------------------------------
# 2. A worker killed from outside is replaced.


def test_killed_worker_is_replaced() -> None:
    with supervisor(APP, "--no-access-log") as sup, fresh_connections() as http:
        victim, other = sup.workers()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Requests from now on (a request the victim had accepted would die with it): the
        # listening socket lives on in the supervisor and the other worker, so none fails,
        # neither before nor after the replacement is ready.
        with requests_in_background(http, f"{sup.url}/pid") as results:
            sup.log.expect(rf"Worker \[{victim}\] died \(SIGKILL\); starting a new one", 2.0)
            (new,) = sup.wait_new_ready([victim, other], 1, 2.0)
            replaced_in = time.monotonic() - killed_at
            after = len(results)
            wait_for(lambda: len(results) >= after + 20, 10.0, "20 requests after the replacement")
        assert replaced_in < 2.0, sup.log.tail()
        failed = [r for r in results if not isinstance(r, str)]
        assert failed == [], failed[:5]
        assert set(results) <= {str(other), str(new)}, set(results)
        assert not alive(victim)
        assert sorted(sup.workers()) == sorted([other, new])


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection for each request."""
    return httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0))


def _request(http: httpx.Client, url: str) -> str | object:
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        return exc
    return response.text if response.status_code == 200 else response


@contextlib.contextmanager
def requests_in_background(http: httpx.Client, url: str) -> Iterator[list[str | object]]:
    """GET ``url`` over and over in a thread while the block runs; the list collects the body
    of each 200 response, or the response / exception when it was anything else."""
    results: list[str | object] = []
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            results.append(_request(http, url))

    thread = threading.Thread(target=run, name="requests", daemon=True)
    thread.start()
    try:
        yield results
    finally:
        done.set()
        thread.join(15.0)


# --------------------------------------------------------------------------------------------
# 3. SIGTTIN / SIGTTOU change the number of workers.


def test_ttin_ttou_change_the_worker_count() -> None:
    with supervisor(APP, "--no-access-log") as sup:
        first = sup.workers()
        sup.signal(signal.SIGTTIN)
        sup.log.expect(r"Adding a worker \(3 now\)", 10.0)
        (third,) = sup.wait_new_ready(first, 1, 15.0)
        assert sorted(sup.workers()) == sorted([*first, third])

        for now in (2, 1):
            before = sup.workers()
            sup.signal(signal.SIGTTOU)
            sup.log.expect(rf"Removing a worker \({now} now\)", 10.0)
            wait_for(_count_is(sup, now), 15.0, f"{now} worker(s) left")
            after = sup.workers()
            assert set(after) < set(before), (before, after)
            assert get(f"{sup.url}/").status_code == 200

        assert len(sup.workers()) == 1
        sup.signal(signal.SIGTTOU)  # never below one worker
        sup.signal(signal.SIGTTIN)
        # Whichever of the two the supervisor handles first, it never goes down to 0.
        sup.log.expect(r"Adding a worker \(2 now\)", 10.0)
        assert not re.search(r"\(0 now\)", sup.srv.output), sup.log.tail()
        assert wait_for(lambda: sup.workers(), 15.0, "a worker")
        assert get(f"{sup.url}/").status_code == 200


def _count_is(sup: Supervisor, count: int) -> Callable[[], bool]:
    return lambda: len(sup.workers()) == count


# --------------------------------------------------------------------------------------------
# 4. A worker busy in a request is not taken for a dead one.


def test_busy_worker_is_not_killed_by_the_health_check() -> None:
    with supervisor(APP, "--no-access-log", "--timeout-worker-healthcheck", "1") as sup:
        workers = sup.workers()
        cpu_before = {pid: cpu_seconds(pid) for pid in workers}
        response = get(f"{sup.url}/burn?s=3", timeout=30.0)
        assert response.status_code == 200, response.text
        word, pid_text = response.text.split()
        pid = int(pid_text)
        assert word == "burned" and pid in workers
        # the event loop really was busy for seconds, three times the health check timeout
        assert cpu_seconds(pid) - cpu_before[pid] >= 2.0
        assert sup.ready_pids() == workers, sup.log.tail()
        assert all(alive(w) for w in workers)
        assert not re.search(r"died|health|kill", sup.srv.output, re.IGNORECASE), sup.log.tail()


def test_hung_worker_is_killed_and_replaced() -> None:
    """The converse: a worker that cannot answer at all (stopped with SIGSTOP) is replaced."""
    with supervisor(APP, "--no-access-log", "--timeout-worker-healthcheck", "1") as sup:
        hung, other = sup.workers()
        os.kill(hung, signal.SIGSTOP)
        try:
            sup.log.expect(rf"Worker \[{hung}\] did not answer the health check", 10.0)
            (new,) = sup.wait_new_ready([hung, other], 1, 10.0)
            assert wait_gone([hung], 5.0) == []
        finally:
            if alive(hung):
                os.kill(hung, signal.SIGCONT)  # let it handle the SIGTERM of the clean-up
        assert sorted(sup.workers()) == sorted([other, new])
        assert get(f"{sup.url}/").status_code == 200


# --------------------------------------------------------------------------------------------
# 5. SIGTERM: graceful, in-flight requests complete, exit 0.


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_finishes_in_flight_requests(sig: int) -> None:
    with supervisor(APP) as sup:
        workers = sup.workers()
        responses: list[httpx.Response | BaseException] = []

        def slow_request() -> None:
            try:
                responses.append(get(f"{sup.url}/slow?s=1", timeout=20.0))
            except BaseException as exc:
                responses.append(exc)

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        sup.log.expect(r"app: slow started \d+", 10.0)
        sup.signal(sig)
        signalled = time.monotonic()
        code = sup.srv.wait(20.0)
        assert time.monotonic() - signalled < 15.0
        thread.join(20.0)
        assert code == 0, sup.log.tail()
        (response,) = responses
        assert isinstance(response, httpx.Response), response
        assert (response.status_code, response.text) == (200, "slow done")
        assert f"Stopped supervisor process [{sup.pid}]" in sup.srv.output
        assert wait_gone(workers, 10.0) == []


# --------------------------------------------------------------------------------------------
# 6. A worker that cannot start: the supervisor gives up with exit 3 and leaves nothing behind.


@pytest.mark.parametrize(
    "app", ["tests.apps.broken_import:app", "tests.apps.lifespans:startup_failed"]
)
def test_startup_failure_exits_3_without_orphans(app: str) -> None:
    srv = start_cli("--workers", "2", "--host", "127.0.0.1", "--port", "0", app)
    sup = Supervisor(srv, 0, LogTail(srv))
    try:
        with watch_descendants(srv.proc.pid) as seen:
            code = srv.wait(30.0)
        assert code == 3, srv.output
        left = wait_gone(seen, 10.0)
        assert left == [], f"processes {left} outlived the supervisor:\n{srv.output}"
    finally:
        stop_supervisor(sup)


# --------------------------------------------------------------------------------------------
# 7. --limit-max-requests: workers are replaced one at a time, no request fails.


def test_request_limit_replaces_workers_without_failures() -> None:
    limit = ["--limit-max-requests", "50", "--limit-max-requests-jitter", "5"]
    with supervisor(APP, "--no-access-log", *limit) as sup:
        first = sup.workers()
        with contextlib.ExitStack() as stack:
            # four keep-alive clients, each sending its next request as soon as it has a response
            runs = [
                stack.enter_context(
                    requests_in_background(
                        stack.enter_context(httpx.Client(timeout=10.0)), f"{sup.url}/pid"
                    )
                )
                for _ in range(4)
            ]

            def served() -> int:
                return sum(len(results) for results in runs)

            def replaced() -> int:
                return len(re.findall(r"reached its request limit; replacing it", sup.srv.output))

            # ~200 requests, and on until two workers have been replaced (bounded)
            wait_for(
                lambda: served() >= 200 and replaced() >= 2 and len(sup.ready_pids()) >= 4,
                30.0,
                "200 requests and 2 replacements",
            )
        failed = [r for results in runs for r in results if not isinstance(r, str)]
        assert failed == [], failed[:10]
        print(f"{served()} requests, {replaced()} replacements")
        # one at a time, each old worker stopping once its replacement is ready
        lines = list(sup.srv.lines)
        after_startup = [i for i, line in enumerate(lines) if READY_RE.search(line)][1] + 1
        assert min_capacity(lines[after_startup:], len(first)) >= len(first), sup.log.tail()


# --------------------------------------------------------------------------------------------
# 8. SIGUSR1 reopens log files, in the supervisor and in the workers.


def test_sigusr1_reopens_log_files(tmp_path: Path) -> None:
    log_file = tmp_path / "x.log"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(process)d %(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            },
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "plain",
            },
        },
        "loggers": {
            "sleipnir": {"handlers": ["file", "stderr"], "level": "INFO", "propagate": False},
            "sleipnir.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
        },
    }
    config_path = tmp_path / "logging.json"
    config_path.write_text(json.dumps(config))
    access = re.compile(r"^(\d+) sleipnir\.access ", re.MULTILINE)

    def access_pids() -> set[int]:
        text = log_file.read_text() if log_file.exists() else ""
        return {int(pid) for pid in access.findall(text)}

    with supervisor(APP, "--log-config", str(config_path)) as sup:
        workers = sup.workers()
        assert re.search(
            rf"^{sup.pid} sleipnir\S* Worker \[{workers[0]}\] ready", log_file.read_text(), re.M
        )
        assert get(f"{sup.url}/").status_code == 200
        wait_for(access_pids, 10.0, "an access line in x.log")

        moved = tmp_path / "x.log.1"
        log_file.rename(moved)
        sup.signal(signal.SIGUSR1)

        def both_workers_logged() -> bool:
            get(f"{sup.url}/")  # fresh connections: the kernel hands them to either worker
            return access_pids() >= set(workers)

        wait_for(both_workers_logged, 15.0, "access lines of both workers in the new x.log")
        sup.signal(signal.SIGTTIN)  # a supervisor line, which must land in the new file too
        wait_for(
            lambda: re.search(
                rf"^{sup.pid} sleipnir\S* Adding a worker \(3 now\)", log_file.read_text(), re.M
            ),
            10.0,
            "the supervisor's line in the new x.log",
        )
        assert "Adding a worker" not in moved.read_text()


def test_workers_dying_in_a_loop_are_restarted_with_a_backoff() -> None:
    with supervisor(APP, "--no-access-log") as sup:
        known: list[int] = list(sup.workers())
        for _ in range(6):  # CRASH_LIMIT (5) deaths within CRASH_WINDOW_S, then one more
            victim = sup.workers()[0]
            os.kill(victim, signal.SIGKILL)
            sup.log.expect(rf"Worker \[{victim}\] died \(SIGKILL\)", 5.0)
            if len(known) < 2 + 5:
                known += sup.wait_new_ready(known, 1, 5.0)
        sup.log.expect(r"6 workers died within 10 s; restarting in 1 s", 5.0)
        sup.wait_new_ready(known, 1, 5.0)  # and it does come back


def test_shutdown_delay_with_workers() -> None:
    with supervisor(APP, "--no-access-log", "--shutdown-delay", "2") as sup:
        assert httpx.get(f"{sup.url}/ready", timeout=10.0).text == "ready"
        sup.signal(signal.SIGTERM)
        sup.log.expect(r"Shutdown delay: serving for 2 more second", 5.0)
        # The workers still serve, and mark requests for a readiness check to fail.
        wait_for(
            lambda: httpx.get(f"{sup.url}/ready", timeout=10.0).text == "draining",
            5.0,
            "requests marked sleipnir.draining",
        )
        sup.log.expect(r"Stopping 2 worker\(s\)", 10.0)  # the delay ends by itself
        assert stop_supervisor(sup, timeout=30.0) == 0


def test_the_supervisor_imports_no_protocol_code() -> None:
    # The supervisor process loads the CLI, the settings, binding, systemd and the watcher: not
    # the server, the protocols, the ASGI layer, asyncio or the protocol libraries.
    code = (
        "import sys, sleipnir.cli, sleipnir.main, sleipnir.supervisor, sleipnir.reload\n"
        "prefixes = ('sleipnir.server', 'sleipnir.asgi', 'sleipnir.wire', 'asyncio', 'h2',\n"
        "    'sleipnir.transport.h1', 'sleipnir.transport.h2', 'sleipnir.transport.ws',\n"
        "    'websockets', 'wsproto', 'httptools', 'uvloop', 'h11')\n"
        "print(sorted(m for m in sys.modules if m.startswith(prefixes)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
