"""gunicorn worker classes: gunicorn supervises the processes, sleipnir serves in each of them.

    gunicorn -k sleipnir.workers.SleipnirWorker -w 4 -b 0.0.0.0:8000 app:app

The idea comes from uvicorn's ``uvicorn/workers.py`` (read, not copied): build a ``Config``
from gunicorn's settings, run a ``Server`` on the sockets the arbiter bound, and beat gunicorn's
heartbeat from the event loop.

Invariants:
- The app is the object gunicorn loaded (``self.wsgi``); sleipnir imports nothing itself.
- gunicorn's settings map onto ``Config`` (see ``config_kwargs``); ``CONFIG_KWARGS`` of the
  class is applied last, so a subclass can set any ``Config`` setting.
- Logging goes through gunicorn's handlers: ``sleipnir.error`` takes gunicorn's error log
  handlers and level, ``sleipnir.access`` its access log handlers, and only when gunicorn has an
  access log (``--access-logfile``); ``log_config`` is None so sleipnir configures nothing else.
- Heartbeat: ``callback_notify`` calls gunicorn's ``notify()`` from the event loop, every
  ``timeout_notify`` seconds (half of gunicorn's ``--timeout``, at least 1). A request that
  awaits keeps the worker alive; one that blocks the loop longer than ``--timeout`` gets the
  worker aborted by the arbiter, which is gunicorn's contract.
- Signals, as gunicorn's arbiter uses them: SIGTERM stops gracefully (after ``shutdown_delay``
  if set: stop accepting, finish in-flight requests within ``--graceful-timeout``); SIGINT and
  SIGQUIT stop at once (in-flight requests are cancelled, no lifespan shutdown) after calling
  the ``worker_int`` hook; SIGUSR1 reopens gunicorn's log files; SIGABRT (the arbiter's
  timeout) calls ``worker_abort`` and exits 1 from a plain Python handler, because the event
  loop is stuck when it arrives; SIGWINCH is ignored. While serving, SIGINT/SIGTERM (the
  server's), SIGQUIT and SIGUSR1 are event loop handlers, so hooks and log reopening run
  between callbacks, never inside one.
- Exit status: 3 (gunicorn's WORKER_BOOT_ERROR, which stops the arbiter) when the server could
  not start, unless a stop signal interrupted the startup; 1 when lifespan shutdown failed (the
  arbiter logs it and starts a new worker); 0 otherwise. The worker also stops gracefully when
  its arbiter is gone (its parent pid changed), as gunicorn's own workers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from sleipnir.config import Config
from sleipnir.server import Server, StartupError

if TYPE_CHECKING:
    import socket
    import ssl

__all__ = ["SleipnirH11Worker", "SleipnirWorker"]

logger = logging.getLogger("sleipnir.error")

# gunicorn clamps these itself (gunicorn/http/message.py); sleipnir has no "unlimited" value.
_GUNICORN_MAX_REQUEST_LINE = 8190
_GUNICORN_MAX_HEADERS = 32768
_DEFAULT_HEADER_BLOCK = 65536  # sleipnir's limit_request_header_size default
_LIFESPAN_SHUTDOWN_FAILED = 1


class SleipnirWorker(Worker):  # type: ignore[misc]  # gunicorn ships no type information
    """A gunicorn worker that serves the loaded ASGI (or WSGI, see interface) app with sleipnir.

    ``CONFIG_KWARGS`` holds ``Config`` settings applied over the ones derived from gunicorn's,
    e.g. a subclass with ``CONFIG_KWARGS = {**SleipnirWorker.CONFIG_KWARGS, "http2": False}``.
    """

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto"}
    alive: bool  # gunicorn's flag: False once the worker was asked to stop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None  # built once the app is loaded (load_wsgi)
        self._server: _WorkerServer | None = None
        self._quitting = False

    # Settings --------------------------------------------------------------------------------

    def config_kwargs(self) -> dict[str, Any]:
        """``Config`` keyword arguments derived from gunicorn's settings, then CONFIG_KWARGS."""
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "log_config": None,  # gunicorn owns logging: see _setup_logging
            "access_log": cfg.accesslog is not None,
            "workers": 1,  # explicit, so that Config does not read $WEB_CONCURRENCY
            "backlog": cfg.backlog,
            "timeout_keep_alive": cfg.keepalive,
            "timeout_graceful_shutdown": cfg.graceful_timeout,
            # The arbiter passes half of --timeout as self.timeout (as it does to every worker).
            "timeout_notify": max(1, int(self.timeout)),
            "callback_notify": self.callback_notify,
            # gunicorn's Worker already added --max-requests-jitter to self.max_requests.
            "limit_max_requests": self.max_requests if cfg.max_requests > 0 else None,
            "limit_max_requests_jitter": 0,
            "limit_request_line": _clamp(cfg.limit_request_line, _GUNICORN_MAX_REQUEST_LINE),
            "limit_request_headers": _clamp(cfg.limit_request_fields, _GUNICORN_MAX_HEADERS),
            "forwarded_allow_ips": list(cfg.forwarded_allow_ips),
        }
        # sleipnir limits the whole header block, not each field: make sure one field of
        # --limit-request-field_size fits, without lowering sleipnir's default.
        if cfg.limit_request_field_size > 0:
            block = max(_DEFAULT_HEADER_BLOCK, cfg.limit_request_field_size + 2)
            kwargs["limit_request_header_size"] = block
        if cfg.is_ssl:
            # gunicorn ignores its deprecated --ssl-version, and so does this worker.
            kwargs.update(
                ssl_certfile=cfg.certfile,
                ssl_keyfile=cfg.keyfile,
                ssl_ca_certs=cfg.ca_certs,
                ssl_cert_reqs=int(cfg.cert_reqs),
                ssl_ciphers=cfg.ciphers,
                ssl_context_factory=self._ssl_context,  # gunicorn's ssl_context hook
            )
        kwargs.update(self.CONFIG_KWARGS)
        return kwargs

    def _ssl_context(
        self, config: Config, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context: ssl.SSLContext = self.cfg.ssl_context(self.cfg, default_factory)
        return context

    def _setup_logging(self) -> None:
        error = logging.getLogger("sleipnir.error")
        error.handlers = list(self.log.error_log.handlers)
        error.setLevel(self.log.error_log.level)
        error.propagate = False
        access = logging.getLogger("sleipnir.access")
        if self.cfg.accesslog is not None:
            access.handlers = list(self.log.access_log.handlers)
            access.setLevel(self.log.access_log.level)
            access.propagate = False
        # else: Config(access_log=False) disables the access logger at startup.

    # Running ---------------------------------------------------------------------------------

    def init_signals(self) -> None:
        """Python-level handlers for the time before and after serving (see the module doc)."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGWINCH, self.handle_winch)
        # Do not let these interrupt system calls in progress (gunicorn does the same).
        signal.siginterrupt(signal.SIGTERM, False)
        signal.siginterrupt(signal.SIGUSR1, False)
        # No signal.set_wakeup_fd(self.PIPE[1]) as gunicorn's base class does: nothing would read
        # it before the event loop runs, and the event loop sets its own.

    def load_wsgi(self) -> None:
        """Load the app (gunicorn), then build ``self.config``: a post_worker_init hook sees it."""
        super().load_wsgi()
        self._setup_logging()
        try:
            config = Config(self.wsgi, **self.config_kwargs())
        except Exception as exc:  # a bad CONFIG_KWARGS value, an unreadable env_file, ...
            logger.error("Invalid sleipnir configuration: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        self.config = config

    def run(self) -> None:
        config = self.config
        assert config is not None, "load_wsgi() builds the config"
        server = self._server = _WorkerServer(config, self)
        if not self.alive:  # SIGTERM while the app was loading
            return
        sockets = [listener.sock for listener in self.sockets]
        try:
            server.run(sockets)
        except StartupError as exc:  # the event loop itself could not be created
            logger.error("%s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if not server.started and not server.should_exit:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if server.shutdown_failed:
            sys.exit(_LIFESPAN_SHUTDOWN_FAILED)

    async def callback_notify(self) -> None:
        """The heartbeat, awaited by the server's main loop every timeout_notify seconds."""
        self.notify()
        if self.ppid != os.getppid() and self._server is not None and self.alive:
            logger.info("Parent changed, shutting down: %s", self)
            self.alive = False
            self._server.should_exit = True

    # Signals ---------------------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM before or after serving (the server's handler takes it while serving)."""
        self.alive = False
        if self._server is not None:
            self._server.handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT, SIGQUIT before or after serving: stop at once."""
        if self._server is not None:
            self._server.handle_exit(sig, frame)
            return
        self.alive = False
        self.worker_int()
        sys.exit(0)  # still loading the app: nothing to shut down (gunicorn's behaviour)

    def worker_int(self) -> None:
        """gunicorn's worker_int hook, called once."""
        if not self._quitting:
            self._quitting = True
            self.cfg.worker_int(self)

    def _wake_up(self) -> None:
        """gunicorn writes to self.PIPE after setting alive False (its --reload does)."""
        with contextlib.suppress(OSError):
            os.read(self.PIPE[0], 512)
        if not self.alive and self._server is not None:
            self._server.should_exit = True


class SleipnirH11Worker(SleipnirWorker):
    """The pure-Python variant (h11 parser, asyncio loop), like uvicorn's UvicornH11Worker."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "asyncio", "http": "h11"}


class _WorkerServer(Server):
    """A Server whose signals follow gunicorn's meaning (see the module doc)."""

    def __init__(self, config: Config, worker: SleipnirWorker) -> None:
        super().__init__(config)
        self.worker = worker

    async def serve(self, sockets: Sequence[socket.socket] | None = None) -> None:
        with self._worker_signals():
            await super().serve(sockets)

    @contextlib.contextmanager
    def _worker_signals(self) -> Iterator[None]:
        worker = self.worker
        loop = asyncio.get_running_loop()
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGQUIT: lambda: self.handle_exit(signal.SIGQUIT, None),
            signal.SIGUSR1: worker.log.reopen_files,
        }
        original = {sig: signal.getsignal(sig) for sig in handlers}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        pipe = worker.PIPE[0] if worker.PIPE else None
        if pipe is not None:
            loop.add_reader(pipe, worker._wake_up)
        try:
            yield
        finally:
            if pipe is not None:
                loop.remove_reader(pipe)
            for sig in handlers:
                loop.remove_signal_handler(sig)
                if original[sig] is not None:
                    signal.signal(sig, original[sig])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.worker.alive = False
        if sig in (signal.SIGINT, signal.SIGQUIT):
            self.worker.worker_int()
            self.should_exit = True
            self.force_exit = True
        else:  # SIGTERM: graceful, after --shutdown-delay if one is set
            super().handle_exit(sig, frame)


def _clamp(value: int, maximum: int) -> int:
    """gunicorn's reading of a limit: 0 (or less) and anything above its maximum mean maximum."""
    return maximum if value <= 0 or value > maximum else value
