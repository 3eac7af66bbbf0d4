"""Helpers for tests that drive whole processes: wrk, nginx, a multi-worker sleipnir, /proc.

Used by tests/test_supervisor_e2e.py and tests/test_nginx.py.

* :func:`start_wrk` runs wrk (no Lua script) in the background; :func:`parse_wrk` reads its
  summary ("Socket errors: ..." and "Non-2xx or 3xx responses: ..." lines; absent lines mean 0).
* :class:`LogTail` reads a process's output line by line as it comes, from a cursor, so that a
  test can wait for "the next line matching X" (a restart's lines, in order).
* :func:`supervisor` starts ``python -m sleipnir --workers N ...`` and yields once it is listening
  and N workers said "Worker [W] ready"; on the way out it stops it with SIGTERM and checks that
  every worker it ever saw is gone (no orphans). Workers are found from the "Worker [W] ready"
  and "Started server process [W]" lines, never from /proc children (multiprocessing may start
  helper processes there).
* :func:`nginx` starts Debian's nginx in the foreground, as the current user, on 127.0.0.1 and a
  free port, with its config and every path it writes inside a test directory.
* :func:`cpu_seconds` and :func:`alive` read /proc/PID/stat.

Every wait is bounded (``conftest.wait_for``); processes are stopped with SIGTERM / SIGQUIT in
``finally`` blocks, SIGKILL only as the last resort for one that did not stop in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import STARTUP_TIMEOUT_S, CLIServer, start_cli, start_process, wait_for

WRK = shutil.which("wrk")
NGINX = "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (callers that bind it retry on a clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the third on (state, ppid, ...); None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces and ")"


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited, not yet reaped process)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0.0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def _is_python_or_sleipnir(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline or b"sleipnir" in cmdline


# --------------------------------------------------------------------------------------------
# Output, line by line


class LogTail:
    """Reads the lines a :class:`conftest.CLIServer` collects, in order, from a cursor."""

    def __init__(self, srv: CLIServer, pos: int = 0) -> None:
        self.srv = srv
        self.pos = pos

    def _ended(self) -> bool:
        return self.srv.proc.poll() is not None and not self.srv.reader.is_alive()

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait for the next line (from the cursor) that matches; the cursor moves past it.
        Fails with the recent output after ``timeout`` or when the process has ended."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | bool | None:
            lines = self.srv.lines
            ended = self._ended()  # before reading: lines collected before the end are all seen
            while self.pos < len(lines):
                match = regex.search(lines[self.pos])
                self.pos += 1
                if match:
                    return match
            return ended

        try:
            found = wait_for(find, timeout, f"a line matching {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output so far:\n{self.tail()}") from None
        if not isinstance(found, re.Match):
            code = self.srv.proc.poll()
            raise AssertionError(
                f"the process exited ({code}) before a line matching {pattern!r}:\n{self.tail()}"
            )
        return found

    def tail(self, count: int = 60) -> str:
        return "".join(self.srv.lines[-count:])


READY_RE = re.compile(r"Worker \[(\d+)\] ready")
STOPPING_RE = re.compile(r"Stopping worker \[(\d+)\]")
STARTED_RE = re.compile(r"Started server process \[(\d+)\]")
LISTEN_RE = re.compile(r"running on (https?)://([^:\s]+):(\d+)")


def pids_in(lines: Iterable[str], regex: re.Pattern[str] = READY_RE) -> list[int]:
    """Distinct pids the lines name (group 1 of ``regex``), in order of first appearance."""
    seen: dict[int, None] = {}
    for line in lines:
        for match in regex.finditer(line):
            seen.setdefault(int(match.group(1)), None)
    return list(seen)


# --------------------------------------------------------------------------------------------
# A multi-process sleipnir


@dataclass
class Supervisor:
    srv: CLIServer
    port: int
    log: LogTail

    @property
    def pid(self) -> int:
        return self.srv.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_pids(self) -> list[int]:
        """Every worker that was ever announced ready, in order."""
        return pids_in(list(self.srv.lines))

    def workers(self) -> list[int]:
        """The announced workers that are still alive."""
        return [pid for pid in self.ready_pids() if alive(pid)]

    def serving(self) -> list[int]:
        """The announced workers that are alive and were not told to stop (a stopping worker
        stays alive a little while after "Stopping worker [W]", finishing its requests)."""
        lines = list(self.srv.lines)
        stopping = set(pids_in(lines, STOPPING_RE))
        return [pid for pid in pids_in(lines) if pid not in stopping and alive(pid)]

    def all_worker_pids(self) -> list[int]:
        """Every worker pid the output names (also ones that died before they were ready)."""
        lines = list(self.srv.lines)
        pids = pids_in(lines, STARTED_RE) + pids_in(lines)
        return [pid for pid in dict.fromkeys(pids) if pid != self.pid]

    def signal(self, sig: int) -> None:
        self.srv.proc.send_signal(sig)

    def wait_new_ready(self, known: Iterable[int], count: int, timeout: float) -> list[int]:
        """Wait until ``count`` workers not in ``known`` were announced ready; returns them."""
        old = set(known)

        def fresh() -> list[int] | None:
            pids = [pid for pid in self.ready_pids() if pid not in old]
            return pids if len(pids) >= count else None

        try:
            return wait_for(fresh, timeout, f"{count} new 'Worker [W] ready' line(s)")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output so far:\n{self.log.tail()}") from None


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait (bounded) until none of ``pids`` is alive; returns the ones still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def reap_orphans(pids: Iterable[int]) -> list[int]:
    """SIGTERM (then, bounded, SIGKILL) processes we started that outlived their supervisor;
    returns them so that the caller can fail the test."""
    left = [pid for pid in pids if alive(pid) and _is_python_or_sleipnir(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not wait_gone(left, 5.0):
            break
    return left


def stop_supervisor(sup: Supervisor, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Stop the supervisor (if it still runs), then check that its workers are gone too."""
    try:
        code = sup.srv.stop(sig, timeout)
    except subprocess.TimeoutExpired:
        sup.srv.proc.kill()
        sup.srv.wait(10)
        orphans = reap_orphans(sup.all_worker_pids())
        raise AssertionError(
            f"the supervisor did not stop within {timeout}s of signal {sig} (workers left: "
            f"{orphans}); output:\n{sup.log.tail()}"
        ) from None
    left = wait_gone(sup.all_worker_pids(), 10.0)
    if left:
        reap_orphans(left)
        raise AssertionError(f"workers {left} outlived their supervisor:\n{sup.log.tail()}")
    return code


def start_supervisor(*args: str, workers: int = 2, env: dict[str, str] | None = None) -> Supervisor:
    """``python -m sleipnir --workers N --port 0 ARGS``, returned once it listens and N workers
    are ready; the caller stops it (:func:`stop_supervisor`). If it does not get there, it is
    stopped here and the error raised."""
    argv = ["--workers", str(workers), "--host", "127.0.0.1", "--port", "0", *args]
    srv = start_cli(*argv, env=env)
    log = LogTail(srv)
    sup = Supervisor(srv, 0, log)
    try:
        sup.port = int(log.expect(LISTEN_RE.pattern, STARTUP_TIMEOUT_S).group(3))
        sup.wait_new_ready((), workers, STARTUP_TIMEOUT_S * 2)
    except BaseException:
        with contextlib.suppress(AssertionError):
            stop_supervisor(sup)
        raise
    return sup


@contextlib.contextmanager
def supervisor(
    *args: str, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Supervisor]:
    """A listening supervisor with ``workers`` ready workers; stopped (SIGTERM) on the way out,
    failing the test if it does not stop or leaves a worker behind."""
    sup = start_supervisor(*args, workers=workers, env=env)
    try:
        yield sup
    finally:
        stop_supervisor(sup)  # also when the test stopped it: the orphan check still runs


@dataclass
class RollingRestart:
    old: list[int]  # the workers that were serving when SIGHUP was sent
    new: list[int]  # the workers announced ready during the restart, in order
    stopped: list[int]  # "Stopping worker [W]", in order
    lines: list[str]  # the supervisor's lines from "Rolling restart of" to "... complete"
    seconds: float  # from SIGHUP to "Rolling restart complete"

    def min_capacity(self) -> int:
        """The fewest ready workers at any point of the restart (see :func:`min_capacity`)."""
        return min_capacity(self.lines, len(self.old))


def min_capacity(lines: Iterable[str], ready: int) -> int:
    """The fewest ready workers at any point of ``lines``, starting from ``ready``: each
    "Worker [W] ready" adds one, each "Stopping worker [W]" takes one away."""
    lowest = ready
    for line in lines:
        if READY_RE.search(line):
            ready += 1
        elif STOPPING_RE.search(line):
            ready -= 1
            lowest = min(lowest, ready)
    return lowest


def rolling_restart(sup: Supervisor, timeout: float) -> RollingRestart:
    """SIGHUP, then wait for "Rolling restart of N worker(s)" and "Rolling restart complete"."""
    old = sup.serving()
    started = time.monotonic()
    sup.signal(signal.SIGHUP)
    sup.log.expect(r"Rolling restart of \d+ worker\(s\)", timeout)
    start = sup.log.pos
    sup.log.expect(r"Rolling restart complete", timeout)
    lines = sup.srv.lines[start : sup.log.pos - 1]
    seconds = time.monotonic() - started
    return RollingRestart(old, pids_in(lines), pids_in(lines, STOPPING_RE), lines, seconds)


def wait_serving(pids: Iterable[int], cpu: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until ``pids`` together used ``cpu`` more seconds of CPU than now: load (wrk's)
    reaches them. A condition to poll, not a guess of how long wrk takes to start."""
    pids = list(pids)
    base = sum(cpu_seconds(pid) for pid in pids)
    wait_for(
        lambda: sum(cpu_seconds(pid) for pid in pids) >= base + cpu,
        timeout,
        f"workers {pids} to use {cpu}s of CPU (serving the load)",
    )


def _ppids() -> dict[int, int]:
    ppids: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                ppids[int(entry.name)] = int(fields[1])
    return ppids


def descendants(pid: int) -> set[int]:
    """Children of ``pid``, their children, and so on, as /proc shows them now."""
    ppids = _ppids()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in ppids.items() if parent in frontier} - found
        found |= frontier
    return found


@contextlib.contextmanager
def watch_descendants(pid: int, interval: float = 0.01) -> Iterator[set[int]]:
    """Collect every descendant of ``pid`` seen while the block runs (polling /proc), for an
    orphan check: each of them must be gone once ``pid`` has exited. Not a way to find workers
    (multiprocessing helpers show up here too)."""
    seen: set[int] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.update(descendants(pid))
            done.wait(interval)

    thread = threading.Thread(target=poll, name="watch-descendants", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(10)


# --------------------------------------------------------------------------------------------
# wrk

_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_REQUESTS_RE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
_SOCKET_ERRORS_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx_3xx: int  # wrk counts responses with a status >= 400 under this name
    output: str

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.2f}s ({self.requests_per_second:.0f}/s); "
            f"socket errors: connect {self.connect}, read {self.read}, write {self.write}, "
            f"timeout {self.timeout}; status >= 400: {self.non_2xx_3xx}"
        )


def parse_wrk(text: str) -> WrkResult:
    """wrk's summary. Its "Socket errors" and "Non-2xx or 3xx responses" lines appear only
    when there were some: absent lines mean 0. No "N requests in" line is an error."""
    requests = _REQUESTS_RE.search(text)
    if requests is None:
        raise ValueError(f"no 'N requests in T' line in wrk's output:\n{text}")
    errors = _SOCKET_ERRORS_RE.search(text)
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    non_2xx = _NON_2XX_RE.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=float(requests.group(2)) * _DURATION_UNITS[requests.group(3)],
        connect=connect,
        read=read,
        write=write,
        timeout=timeout,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        output=text,
    )


class Wrk:
    """A wrk run in the background (no Lua script)."""

    def __init__(self, proc: subprocess.Popen[str], seconds: float) -> None:
        self.proc = proc
        self.seconds = seconds

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, grace: float = 30.0) -> WrkResult:
        """Wait for wrk to finish (its duration + ``grace`` at most) and parse its summary."""
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + grace)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"wrk did not finish within {self.seconds + grace}s") from None
        if self.proc.returncode != 0:
            raise AssertionError(f"wrk exited with {self.proc.returncode}:\n{out}")
        return parse_wrk(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=10)


def start_wrk(
    url: str,
    *,
    seconds: float,
    threads: int = 2,
    connections: int = 64,
    timeout: str = "2s",
) -> Wrk:
    """``wrk -tT -cC -dDs --timeout X URL`` in the background; see :meth:`Wrk.result`."""
    if WRK is None:
        raise RuntimeError("wrk is not installed")
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", timeout, url]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    return Wrk(proc, seconds)


@contextlib.contextmanager
def wrk_running(
    url: str, *, seconds: float, threads: int = 2, connections: int = 64, timeout: str = "2s"
) -> Iterator[Wrk]:
    """:func:`start_wrk`, stopped on the way out if the test left it running."""
    run = start_wrk(url, seconds=seconds, threads=threads, connections=connections, timeout=timeout)
    try:
        yield run
    finally:
        run.stop()


# --------------------------------------------------------------------------------------------
# nginx


@dataclass
class Nginx:
    srv: CLIServer
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.srv.output


def nginx_config(listen_port: int, upstream_port: int, user: str = "") -> str:
    """A reverse proxy on 127.0.0.1:``listen_port`` to sleipnir on ``upstream_port``, with
    upstream keep-alive; every path nginx writes is relative to its prefix (``-p``)."""
    return textwrap.dedent(
        f"""\
        {user}
        worker_processes 1;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            client_body_temp_path tmp/client_body;
            proxy_temp_path tmp/proxy;
            fastcgi_temp_path tmp/fastcgi;
            uwsgi_temp_path tmp/uwsgi;
            scgi_temp_path tmp/scgi;
            upstream sleipnir {{
                server 127.0.0.1:{upstream_port};
                keepalive 16;
            }}
            server {{
                listen 127.0.0.1:{listen_port};
                location / {{
                    proxy_pass http://sleipnir;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }}
            }}
        }}
        """
    )


def _user_directive() -> str:
    """Run as root, nginx's workers would switch to "nobody", who cannot write our tmp_path:
    keep them as the current user. (Not root: nginx ignores ``user``, so we leave it out.)"""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def start_nginx(directory: Path, upstream_port: int, attempts: int = 5) -> Nginx:
    """nginx in the foreground (``daemon off``), logging to stderr, listening on 127.0.0.1 and
    a free port (another one on a bind clash, ``attempts`` times at most). The caller stops it
    (:func:`stop_nginx`)."""
    prefix = directory / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(attempts):
        port = free_port()
        (prefix / "nginx.conf").write_text(nginx_config(port, upstream_port, _user_directive()))
        argv = [
            NGINX,
            "-p",
            f"{prefix}/",
            "-c",
            "nginx.conf",
            "-e",
            "stderr",
            "-g",
            f"daemon off; pid {prefix}/nginx.pid; error_log stderr;",
        ]
        srv = start_process(argv, cwd=prefix)
        proxy = Nginx(srv, port, prefix)

        def listening(port: int = port, srv: CLIServer = srv) -> bool:
            if srv.proc.poll() is not None:
                return True
            with socket.socket() as sock:
                sock.settimeout(1.0)
                return sock.connect_ex(("127.0.0.1", port)) == 0

        try:
            wait_for(listening, STARTUP_TIMEOUT_S, f"nginx listening on 127.0.0.1:{port}")
        except AssertionError:
            stop_nginx(proxy)
            raise
        if srv.proc.poll() is None:
            return proxy
        srv.wait(10)
        last = srv.output
        if "Address already in use" not in last:
            break
    raise AssertionError(f"nginx did not start:\n{last}")


def stop_nginx(proxy: Nginx, timeout: float = 15.0) -> None:
    """SIGQUIT: nginx's graceful shutdown; SIGKILL if it does not stop in time."""
    proc = proxy.srv.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proxy.srv.wait(timeout)


@contextlib.contextmanager
def nginx(directory: Path, upstream_port: int) -> Iterator[Nginx]:
    proxy = start_nginx(directory, upstream_port)
    try:
        yield proxy
    finally:
        stop_nginx(proxy)


__all__ = [
    "NGINX",
    "WRK",
    "LogTail",
    "Nginx",
    "Supervisor",
    "Wrk",
    "WrkResult",
    "alive",
    "cpu_seconds",
    "descendants",
    "free_port",
    "inotify_fds",
    "min_capacity",
    "nginx",
    "parse_wrk",
    "pids_in",
    "rolling_restart",
    "start_supervisor",
    "start_wrk",
    "stop_supervisor",
    "supervisor",
    "wait_gone",
    "wait_serving",
    "watch_descendants",
    "wrk_running",
]


# --------------------------------------------------------------------------------------------
# File descriptors


def inotify_fds(pid: int) -> int:
    """How many inotify instances ``pid`` holds open (0 once it is gone), from /proc/PID/fd."""
    count = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                count += os.readlink(fd) == "anon_inode:inotify"
    return count
