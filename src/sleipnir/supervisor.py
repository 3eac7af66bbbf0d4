"""The supervisor: binds the sockets once, runs worker processes on them, keeps them running.

Used for ``--workers N`` (N >= 2) and ``--reload``. It imports no protocol code: each worker is
a fresh interpreter (multiprocessing's spawn context) that calls ``Server(config,
supervised=link).run(sockets)``. Ideas from gunicorn's arbiter (signals, TTIN/TTOU, rolling
restarts by generation) and uvicorn's multiprocess supervisor (pinging workers over a pipe).

Each worker has a duplex pipe. Worker to supervisor: ``ready`` (listening), ``limit`` (its
--limit-max-requests was reached), ``pong``. Supervisor to worker: ``ping``, ``drain`` (mark
requests with ``sleipnir.draining``), ``stop`` (graceful shutdown), ``reopen`` (log files).
A thread in the worker answers them, so a worker whose event loop is busy still answers the
health check; a worker that does not answer within --timeout-worker-healthcheck is hung, and
is killed and replaced. A worker whose supervisor died sees the pipe close and stops.

Invariants:
- The supervisor's loop sleeps in one ``multiprocessing.connection.wait`` on the pipes, the
  process sentinels and a self-pipe written by signal handlers and the file watcher, so an
  idle supervisor costs nothing but a wake-up per second.
- Replacements (SIGHUP, request limits, a hung worker's restart excepted) go one at a time
  and the new worker is ready before the old one is told to stop: capacity never drops. Each
  SIGHUP starts a new generation; a worker of an older one is stale until replaced.
- A worker that exits before it was ready failed its startup: at the first start (or when no
  other worker serves) the supervisor stops with exit code 3; during a rolling restart the
  old workers keep serving and the restart is abandoned; with --reload it waits for the next
  change. A worker that dies later is restarted, at most ``CRASH_LIMIT`` times per
  ``CRASH_WINDOW_S`` before restarts back off.
- --reuse-port: each worker slot has its own SO_REUSEPORT listening sockets, bound here; the
  replacement of a worker takes over its slot's sockets, so no queued connection is lost.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from sleipnir.main import STARTUP_FAILURE
from sleipnir.systemd import Notifier
from sleipnir.transport.listen import (
    BindError,
    BindSpec,
    bind_all,
    bind_socket,
    close_sockets,
    describe,
    from_systemd,
)

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from sleipnir.config import Config
    from sleipnir.server import Server

logger = logging.getLogger("sleipnir.error")

TICK_S = 1.0  # the longest the supervisor sleeps: health checks are due at most this late
CRASH_LIMIT = 5  # unexpected deaths per window before restarts back off
CRASH_WINDOW_S = 10.0
MAX_BACKOFF_S = 30.0
STOP_MARGIN_S = 5.0  # past the graceful timeout and lifespan shutdown, a stopping worker is killed
_SUPERVISOR_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
)


@dataclass(eq=False)
class Worker:
    """One worker process as the supervisor sees it."""

    process: BaseProcess
    conn: Connection
    slot: int
    generation: int
    replaces: Worker | None = None  # the worker it takes over from, stopped once it is ready
    ready: bool = False
    stale: bool = False  # replace it (request limit reached)
    stopping: float = 0.0  # when it was told to stop (0: it was not)
    ping_sent: float = 0.0  # an unanswered ping (0: none)
    killed: str = ""  # why the supervisor killed it
    next_ping: float = 0.0
    pid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pid = self.process.pid or 0

    def send(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # it is gone: its sentinel tells
            self.conn.send(message)


class Supervisor:
    """Runs ``config.workers`` worker processes on sockets bound once (``run`` returns the
    exit status)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.target = config.workers
        self.workers: list[Worker] = []
        self.generation = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._sockets: list[socket.socket] = []
        self._slot_sockets: dict[int, list[socket.socket]] = {}
        self._signals: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._stop_at = 0.0  # --shutdown-delay: when the workers are told to stop
        self._exit_code = 0
        self._started = False  # every first worker has been ready once
        self._rolling = False  # a SIGHUP's restart is in progress (for the log lines)
        self._crashes: list[float] = []
        self._restart_at: dict[int, float] = {}  # slot -> when a backed-off restart is due
        self._changes: list[str] = []  # --reload: changed files reported by the watcher thread
        self._watch_lock = threading.Lock()
        self._notifier: Notifier | None = None
        self._watchdog_at = 0.0  # when systemd's watchdog is due (WATCHDOG=1)

    # Running ----------------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        logger.info("Started supervisor process [%d]", os.getpid())
        try:
            self._sockets = bind_all(config)
        except BindError as exc:
            logger.error("%s", exc)
            return STARTUP_FAILURE
        if any(from_systemd(sock) for sock in self._sockets):
            logger.info("Using %d socket(s) from systemd socket activation", len(self._sockets))
        scheme = "https" if config.is_ssl else "http"
        for sock in self._sockets:
            logger.info("Sleipnir running on %s (Press CTRL+C to quit)", describe(sock, scheme))
        self._notifier = Notifier.from_env()
        watcher = None
        previous = self._install_signals()
        try:
            if config.reload:
                from sleipnir.reload import make_watcher

                watcher = make_watcher(config)
                watcher.start(self._on_change)
            for slot in range(self.target):
                self._spawn(slot)
            self._loop()
        finally:
            if watcher is not None:
                watcher.stop()
            self._kill_all()
            self._restore_signals(previous)
            self._close_sockets()
            logger.info("Stopped supervisor process [%d]", os.getpid())
        return self._exit_code

    def _loop(self) -> None:
        while self.workers or not self._stopping:
            now = time.monotonic()
            wait_s = self._timers(now)
            objects: list[Any] = [self._wake_r]
            for worker in self.workers:
                objects += (worker.conn, worker.process.sentinel)
            for ready in multiprocessing.connection.wait(objects, wait_s):
                if ready is self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
            self._handle_signals()
            self._handle_changes()
            for worker in list(self.workers):
                self._poll(worker)

    def _poll(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                self._on_message(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass  # the process is gone or going: its sentinel reports it
        if not worker.process.is_alive():
            self._on_exit(worker)

    # Workers ------------------------------------------------------------------------------------

    def _spawn(self, slot: int, replaces: Worker | None = None) -> Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.config, self._sockets_of(slot), child),
            name=f"sleipnir-worker-{slot}",
        )
        process.start()
        child.close()
        worker = Worker(process, parent, slot, self.generation, replaces)
        self.workers.append(worker)
        return worker

    def _sockets_of(self, slot: int) -> list[socket.socket]:
        """The sockets a slot's workers serve: the bound ones, or with --reuse-port, slot 0
        the bound ones and every other slot its own, bound to the same addresses."""
        if not self.config.reuse_port or slot == 0:
            return self._sockets
        own = self._slot_sockets.get(slot)
        if own is None:
            backlog = self.config.backlog
            own = self._slot_sockets[slot] = [_reuse_port_twin(s, backlog) for s in self._sockets]
        return own

    def _on_message(self, worker: Worker, message: str) -> None:
        if message == "pong":
            worker.ping_sent = 0.0
        elif message == "ready" and not worker.stopping:
            worker.ready = True
            worker.next_ping = time.monotonic() + self.config.timeout_worker_healthcheck
            logger.info("Worker [%d] ready", worker.pid)
            old = worker.replaces
            worker.replaces = None
            if old is not None and old in self.workers:
                self._stop(old)
            self._after_ready()
        elif message == "limit" and not worker.stale:
            worker.stale = True
            logger.info("Worker [%d] reached its request limit; replacing it", worker.pid)
            self._next_replacement()

    def _after_ready(self) -> None:
        if self._stopping:
            return
        if not self._started and self._serving() >= self.target:
            self._started = True
            if self._notifier is not None:
                self._notifier.ready()
        self._next_replacement()

    def _on_exit(self, worker: Worker) -> None:
        self.workers.remove(worker)
        worker.process.join()
        worker.conn.close()
        code = worker.process.exitcode
        if worker.stopping or self._stopping:
            logger.debug("Worker [%d] stopped (exit code %s)", worker.pid, code)
            self._release_slot(worker.slot)
            return
        how = f"was killed: it {worker.killed}" if worker.killed else _exit_text(code)
        if not worker.ready:
            self._startup_failed(worker, how)
        elif self.config.reload:
            logger.error("Worker [%d] %s; waiting for file changes to restart it", worker.pid, how)
        else:
            logger.error("Worker [%d] %s; starting a new one", worker.pid, how)
            self._restart(worker.slot)

    def _startup_failed(self, worker: Worker, how: str) -> None:
        old = worker.replaces
        if self.config.reload:
            logger.error(
                "Worker [%d] failed to start (%s); waiting for file changes", worker.pid, how
            )
        elif old is not None and old in self.workers:
            # A rolling restart's new worker (new code?) cannot start: the old ones serve on.
            logger.error(
                "Worker [%d] failed to start (%s); abandoning the restart, worker [%d] serves on",
                worker.pid,
                how,
                old.pid,
            )
            self.generation = old.generation
            old.stale = False
            for other in self.workers:
                other.stale = False
            self._rolling = False
        elif not self._started or not self._serving():
            logger.error("Worker [%d] failed to start (%s); stopping", worker.pid, how)
            self._exit_code = STARTUP_FAILURE
            self._stop_all()
        else:
            logger.error("Worker [%d] failed to start (%s); starting a new one", worker.pid, how)
            self._restart(worker.slot)

    def _restart(self, slot: int) -> None:
        """Replace a dead worker, at once unless workers keep dying (then with a backoff)."""
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
        excess = len(self._crashes) - CRASH_LIMIT
        if excess <= 0:
            self._spawn(slot)
            return
        delay = min(MAX_BACKOFF_S, 2.0 ** (excess - 1))
        logger.warning(
            "%d workers died within %g s; restarting in %g s",
            len(self._crashes),
            CRASH_WINDOW_S,
            delay,
        )
        self._restart_at[slot] = now + delay

    def _release_slot(self, slot: int) -> None:
        """Close a removed slot's own sockets (--reuse-port) once no worker uses them."""
        if slot < self.target or any(w.slot == slot for w in self.workers):
            return
        for sock in self._slot_sockets.pop(slot, ()):
            sock.close()

    def _serving(self) -> int:
        return sum(1 for w in self.workers if w.ready and not w.stopping)

    def _stop(self, worker: Worker) -> None:
        if not worker.stopping:
            logger.info("Stopping worker [%d]", worker.pid)
            worker.stopping = time.monotonic()
            worker.send("stop")

    # Replacements -------------------------------------------------------------------------------

    def _next_replacement(self) -> None:
        """Start replacing the next stale worker, unless a replacement is under way."""
        if self._stopping or any(w.replaces is not None for w in self.workers):
            return
        for worker in self.workers:
            if worker.ready and not worker.stopping and self._is_stale(worker):
                self._spawn(worker.slot, replaces=worker)
                return
        if self._rolling and not any(self._is_stale(w) for w in self.workers if not w.stopping):
            self._rolling = False
            logger.info("Rolling restart complete")
            if self._notifier is not None:
                self._notifier.ready()

    def _is_stale(self, worker: Worker) -> bool:
        return worker.stale or worker.generation < self.generation

    def _rolling_restart(self) -> None:
        live = [w for w in self.workers if not w.stopping]
        logger.info("Rolling restart of %d worker(s)", len(live))
        if self._notifier is not None:
            self._notifier.reloading()
        self.generation += 1
        self._rolling = True
        self._next_replacement()

    # Signals, timers, file changes -------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _SUPERVISOR_SIGNALS}
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        for sig in _SUPERVISOR_SIGNALS:
            signal.signal(sig, self._on_signal)
        previous[-1] = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # handled by the loop (the wakeup fd woke it)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGINT, signal.SIGTERM):
                self._on_stop_signal(sig)
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP:
                self._rolling_restart()
            elif sig == signal.SIGTTIN:
                self.target += 1
                logger.info("Adding a worker (%d now)", self.target)
                self._spawn(self._free_slot())
            elif sig == signal.SIGTTOU and self.target == 1:
                logger.info("Not removing the last worker")
            elif sig == signal.SIGTTOU:
                self.target -= 1
                logger.info("Removing a worker (%d now)", self.target)
                for worker in self.workers:
                    if worker.slot >= self.target:
                        self._stop(worker)
            elif sig == signal.SIGUSR1:
                from sleipnir.logging import reopen_log_files

                reopen_log_files()
                for worker in self.workers:
                    worker.send("reopen")

    def _free_slot(self) -> int:
        used = {w.slot for w in self.workers if not w.stopping}
        return next(slot for slot in range(len(used) + 1) if slot not in used)

    def _on_stop_signal(self, sig: int) -> None:
        delay = self.config.shutdown_delay
        if self._stopping:
            if sig == signal.SIGINT:  # a second Ctrl+C: the workers stop waiting for requests
                for worker in self.workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGINT)
            return
        if sig == signal.SIGTERM and delay and not self._stop_at:
            logger.info("Shutdown delay: serving for %g more second(s)", delay)
            self._stop_at = time.monotonic() + delay
            for worker in self.workers:
                worker.send("drain")
            return
        self._stop_all()

    def _stop_all(self) -> None:
        if self._notifier is not None and not self._stopping:
            self._notifier.stopping()
        self._stopping = True
        self._restart_at.clear()
        logger.info("Stopping %d worker(s)", len(self.workers))
        for worker in self.workers:
            self._stop(worker)

    def _timers(self, now: float) -> float:
        """Do what is due; return how long the loop may sleep."""
        due = now + TICK_S
        if self._stop_at and not self._stopping:
            if now >= self._stop_at:
                self._stop_all()
            else:
                due = min(due, self._stop_at)
        for slot, at in list(self._restart_at.items()):
            if now >= at:
                del self._restart_at[slot]
                self._spawn(slot)
            else:
                due = min(due, at)
        timeout = self.config.timeout_worker_healthcheck
        stop_limit = (self.config.timeout_graceful_shutdown or 0) + self.config.timeout_lifespan
        for worker in self.workers:
            if worker.stopping:
                if self.config.timeout_graceful_shutdown is not None and (
                    now - worker.stopping > stop_limit + STOP_MARGIN_S
                ):
                    _kill(worker, "did not stop in time")
                continue
            if not worker.ready:
                continue
            if worker.ping_sent and now - worker.ping_sent > timeout:
                _kill(worker, f"did not answer the health check within {timeout} s")
                worker.ping_sent = 0.0
            elif not worker.ping_sent and now >= worker.next_ping:
                worker.ping_sent = now
                worker.next_ping = now + timeout
                worker.send("ping")
            due = min(due, (worker.ping_sent + timeout) if worker.ping_sent else worker.next_ping)
        notifier = self._notifier
        if notifier is not None and notifier.watchdog_interval:
            if now >= self._watchdog_at:
                notifier.watchdog()
                self._watchdog_at = now + notifier.watchdog_interval
            due = min(due, self._watchdog_at)
        return max(0.0, due - now)

    def _on_change(self, paths: list[str]) -> None:
        """--reload: called from the watcher's thread."""
        with self._watch_lock:
            self._changes += paths
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _handle_changes(self) -> None:
        with self._watch_lock:
            changed, self._changes = self._changes, []
        if not changed or self._stopping:
            return
        # The new worker must not import a stale __pycache__ entry: CPython trusts one whose
        # recorded source size and mtime (in whole seconds) match, so a same-size edit within
        # the second of the last import would go unseen.
        for path in changed:
            if path.endswith(".py"):
                with contextlib.suppress(OSError, ValueError):
                    os.unlink(importlib.util.cache_from_source(path))
        # As uvicorn: stop first, then start, so that two instances of the app never overlap.
        for worker in self.workers:
            self._stop(worker)
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0) + STOP_MARGIN_S
        for worker in list(self.workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill(worker, "did not stop in time")
                worker.process.join()
            self._on_exit(worker)
        self._restart_at.clear()
        for slot in range(self.target):
            self._spawn(slot)

    # Ending -------------------------------------------------------------------------------------

    def _kill_all(self) -> None:
        """On the way out (normally there is no one left): no worker outlives its supervisor."""
        for worker in self.workers:
            if worker.process.is_alive():
                _kill(worker, "still running as the supervisor exits")
            worker.process.join()

    def _close_sockets(self) -> None:
        close_sockets([*self._sockets, *(s for own in self._slot_sockets.values() for s in own)])
        self._wake_r.close()
        self._wake_w.close()


def _kill(worker: Worker, why: str) -> None:
    logger.error("Worker [%d] %s; killing it", worker.pid, why)
    worker.killed = why
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.pid, signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"died ({signal.Signals(-code).name})"
        except ValueError:
            return f"died (signal {-code})"
    return f"exited with code {code}"


def _reuse_port_twin(sock: socket.socket, backlog: int) -> socket.socket:
    """Another listening socket on ``sock``'s TCP address (both have SO_REUSEPORT); a unix
    or inherited socket is shared as it is."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_REUSEPORT
    ):
        return sock
    host, port = sock.getsockname()[:2]
    return bind_socket(BindSpec(host, port, None, None, backlog, reuse_port=True))


# The worker side ---------------------------------------------------------------------------------


class _Link:
    """A worker's end of the pipe: answers the supervisor from a thread of its own."""

    def __init__(self, conn: Connection, server: Server) -> None:
        self._conn = conn
        self._server = server
        self._lock = threading.Lock()  # the main thread sends too (ready, limit)

    def ready(self) -> None:
        self._send("ready")

    def request_limit_reached(self) -> None:
        self._send("limit")

    def _send(self, message: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._conn.send(message)

    def serve(self) -> None:
        """The thread: until the supervisor says stop or goes away."""
        from sleipnir.logging import reopen_log_files

        server = self._server
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = "stop"  # the supervisor is gone: do not outlive it
            if message == "ping":
                self._send("pong")
            elif message == "reopen":
                reopen_log_files()
            elif message == "drain" and server.state is not None:
                server.state.start_draining()
            elif message == "stop":
                server.should_exit = True
                return


def worker_main(config: Config, sockets: list[socket.socket], conn: Connection) -> None:
    """A worker process (the spawn target): serve ``sockets`` until the supervisor says stop."""
    from sleipnir.server import Server, StartupError

    # Signals meant for the supervisor, sent to the whole process group (a terminal hang-up),
    # must not kill a worker; SIGINT and SIGTERM are the server's own (graceful, then forced).
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    server = Server(config, supervised=None)
    link = _Link(conn, server)
    server.supervised = link
    threading.Thread(target=link.serve, name="sleipnir-supervisor-link", daemon=True).start()
    try:
        server.run(sockets)
    except StartupError as exc:
        logger.error("%s", exc)
        sys.exit(STARTUP_FAILURE)
    if not server.started or server.shutdown_failed:
        sys.exit(STARTUP_FAILURE)


def check_supervisable(config: Config) -> str | None:
    """Why ``config`` cannot run under a supervisor (its workers import it anew), or None."""
    if not isinstance(config.app, str):
        return "--workers and --reload need the application as an import string ('module:app')"
    for name in ("callback_notify", "ssl_context_factory"):
        value: Callable[..., Any] | None = getattr(config, name)
        if value is not None and getattr(value, "__qualname__", "<lambda>").startswith("<"):
            return f"{name} must be a module-level function to use --workers or --reload"
    return None
