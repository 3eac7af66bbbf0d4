"""One process, one event loop: load the app, lifespan startup, listen, serve, shut down.

``Server.serve(sockets)`` is the seam for a supervisor: it binds nothing when given sockets.

Invariants:
- Startup failures (app import, lifespan, bind, TLS) are logged as one line (a traceback only
  for an exception raised inside the app's own module) and leave ``started`` False; ``run``
  turns that into exit code 3.
- Startup order: logging, app import, TLS context, lifespan startup, listen. When listening
  fails after lifespan startup succeeded, lifespan shutdown still runs (as uvicorn).
- Shutdown order: stop accepting, close idle connections, let in-flight requests finish within
  ``timeout_graceful_shutdown`` (a second signal ends the wait), cancel what is left, close the
  remaining connections, then lifespan shutdown (skipped after a forced exit, as uvicorn).
- Exit status of ``run`` (and the CLI): 0 after a signal or ``limit_max_requests``; 3 when
  startup failed or lifespan shutdown failed (uvicorn only logs the latter; a supervisor
  should see it). A second SIGINT (SIGTERM does not force) ends the wait at once.
- Signal handlers are installed only in the main thread, and the ones found are put back.
- ``--shutdown-delay``: the first SIGTERM starts the delay (requests carry the
  ``sleipnir.draining`` extension); the shutdown starts when it ends, or at the next signal.
- Under a supervisor (``supervised``), the worker reports ``ready`` once listening and its
  request limit instead of exiting; the supervisor announces the sockets and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast

from sleipnir.asgi.http_cycle import AppContext
from sleipnir.asgi.lifespan import Lifespan, LifespanFailure
from sleipnir.systemd import Notifier
from sleipnir.transport.clock import Clock
from sleipnir.transport.h1_protocol import SHUTDOWN_GRACE_S, H1Protocol
from sleipnir.transport.listen import BindError, bind_all, close_sockets, describe, from_systemd
from sleipnir.transport.state import ServerState
from sleipnir.transport.ws_protocol import WSSettings
from sleipnir.wire.h1 import H1Limits
from sleipnir.wire.h2_limits import H2Limits
from sleipnir.wire.ws import WSLimits

if TYPE_CHECKING:
    import ssl

    from sleipnir.config import Config

logger = logging.getLogger("sleipnir.error")

MAIN_LOOP_TICK_S = 0.1  # how often should_exit (a plain attribute) is looked at
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupError(Exception):
    """A one-line reason the server could not start."""


class Supervised(Protocol):
    """A worker's link to its supervisor (``sleipnir.supervisor``)."""

    def ready(self) -> None:
        """Startup is complete: the worker serves its sockets."""

    def request_limit_reached(self) -> None:
        """--limit-max-requests: the supervisor replaces the worker, then stops it."""


class Server:
    """Serves one config in the current process (uvicorn's ``Server`` API)."""

    def __init__(self, config: Config, supervised: Supervised | None = None) -> None:
        self.config = config
        self.supervised = supervised
        self.should_exit = False
        self.force_exit = False
        self.started = False
        self.servers: list[asyncio.base_events.Server] = []
        self.state: ServerState | None = None
        self._lifespan: Lifespan | None = None
        self._app_started = False  # lifespan startup succeeded: the app expects a shutdown
        self._bound_here: list[socket.socket] = []
        self.shutdown_failed = False
        self._exit_at = 0.0  # time.monotonic() at which --shutdown-delay ends (0: none)
        self._notifier: Notifier | None = None  # systemd's NOTIFY_SOCKET (Type=notify)

    def run(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Run ``serve`` on a new event loop of the configured kind (--loop)."""
        _run_loop(self.serve(sockets), self.config.loop)

    async def serve(self, sockets: Sequence[socket.socket] | None = None) -> None:
        if self.supervised is None:  # a worker: its supervisor talks to systemd
            self._notifier = Notifier.from_env()
        with self._capture_signals():
            try:
                await self._startup(sockets)
            except StartupError as exc:
                logger.error("%s", exc)
                await self._close_after_failed_startup()
                return
            self.started = True
            if self._notifier is not None:
                self._notifier.ready()
            await self._main_loop()
            await self._shutdown()
            logger.info("Finished server process [%d]", os.getpid())

    # Startup ---------------------------------------------------------------------------------

    async def _startup(self, sockets: Sequence[socket.socket] | None) -> None:
        config = self.config
        from sleipnir.importer import AppLoadError, load_app
        from sleipnir.logging import TRACE_LOG_LEVEL, AccessLog, resolve_log_level

        _setup_logging(config)
        logger.info("Started server process [%d]", os.getpid())
        try:
            app = load_app(
                config.app,
                factory=config.factory,
                app_dir=config.app_dir,
                interface=config.interface,
            )
        except AppLoadError as exc:
            if exc.show_traceback:
                logger.error("Error loading the application:", exc_info=exc.__cause__ or exc)
            raise StartupError(str(exc)) from None
        access = AccessLog(config.access_log_format) if config.access_log else None
        trace = (
            config.log_level is not None and resolve_log_level(config.log_level) <= TRACE_LOG_LEVEL
        )
        ctx = AppContext(app, access, trace)
        # Before lifespan startup (as uvicorn): a TLS setting error must not start the app.
        h2_limits = _h2_limits(config)
        ssl_context = _ssl_context(config, h2_limits is not None)
        state = self.state = self._make_state(ctx, h2_limits)
        lifespan = config.lifespan
        if lifespan == "auto" and config.interface == "wsgi":
            lifespan = "off"
        self._lifespan = Lifespan(app, lifespan, state.lifespan_state, config.timeout_lifespan)
        try:
            await self._until_signal(self._lifespan.startup())
        except LifespanFailure as exc:
            raise StartupError(str(exc)) from None
        self._app_started = True
        await self._listen(state, sockets, ssl_context)
        state.clock.start()
        if self.supervised is not None:
            self.supervised.ready()

    async def _until_signal(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a startup step; a SIGINT/SIGTERM meanwhile abandons startup (exit 3)."""
        task = asyncio.ensure_future(step)
        while not task.done():
            await asyncio.wait([task], timeout=MAIN_LOOP_TICK_S)
            if self.should_exit and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise StartupError("Startup interrupted by a signal")
        task.result()

    def _make_state(self, ctx: AppContext, h2: H2Limits | None = None) -> ServerState:
        config = self.config
        loop = asyncio.get_running_loop()
        static: list[tuple[bytes, bytes]] = []
        names = {name.lower() for name, _ in config.headers}
        if config.server_header and "server" not in names:
            static.append((b"server", b"sleipnir"))
        static += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in config.headers]
        ws = _ws_settings(config)
        timeouts = [config.timeout_keep_alive, config.timeout_request_header]
        if ws is not None:
            timeouts += [t for t in (ws.ping_interval_s, ws.ping_timeout_s) if t]
        shortest = min(timeouts)
        clock = Clock(loop, static, config.date_header, shortest)
        proxies = None
        if config.proxy_headers:
            from sleipnir.middleware.proxy_headers import TrustedProxies

            proxies = TrustedProxies(config.forwarded_allow_ips)
        limit = config.limit_max_requests
        if limit is not None and config.limit_max_requests_jitter:
            limit += random.randint(0, config.limit_max_requests_jitter)
        return ServerState(
            ctx=ctx,
            clock=clock,
            limits=H1Limits(
                request_line_bytes=config.limit_request_line,
                header_block_bytes=config.limit_request_header_size,
                header_count=config.limit_request_headers,
                h11_max_incomplete_event_bytes=config.h11_max_incomplete_event_size,
            ),
            parser=_choose_parser(config.http),
            root_path=config.root_path,
            proxies=proxies,
            timeout_keep_alive_s=config.timeout_keep_alive,
            timeout_request_header_s=config.timeout_request_header,
            limit_concurrency=config.limit_concurrency,
            limit_request_body=config.limit_request_body,
            reset_contextvars=config.reset_contextvars,
            request_limit=limit,
            on_request_limit=self._request_limit_reached,
            ws=ws,
            h2=h2,
        )

    def _request_limit_reached(self) -> None:
        if self.supervised is not None:
            self.supervised.request_limit_reached()
        elif not self.should_exit:
            limit = self.state.request_limit if self.state is not None else None
            logger.warning("Maximum request limit of %s exceeded. Terminating process.", limit)
            self.should_exit = True

    async def _listen(
        self,
        state: ServerState,
        sockets: Sequence[socket.socket] | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        config = self.config
        scheme = "https" if ssl_context is not None else "http"
        if sockets is None:
            try:
                sockets = bind_all(config)
            except BindError as exc:
                raise StartupError(str(exc)) from None
            self._bound_here = list(sockets)
            if any(from_systemd(sock) for sock in sockets):
                logger.info(
                    "Using %d socket(s) from systemd socket activation; "
                    "--host/--port/--uds/--fd/--bind are ignored",
                    len(sockets),
                )
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            # (H1Protocol is not an asyncio.Protocol subclass: transport/flow.py says why)
            return cast(asyncio.Protocol, H1Protocol(state))

        for sock in sockets:
            server = await loop.create_server(
                factory, sock=sock, ssl=ssl_context, backlog=config.backlog
            )
            self.servers.append(server)
            if self.supervised is None:  # else the supervisor said it, once for all workers
                logger.info("Sleipnir running on %s (Press CTRL+C to quit)", describe(sock, scheme))

    # Serving and shutdown --------------------------------------------------------------------

    async def _main_loop(self) -> None:
        notify = self.config.callback_notify
        notify_at = time.monotonic() + self.config.timeout_notify
        systemd = self._notifier
        watchdog = systemd.watchdog_interval if systemd is not None else None
        watchdog_at = time.monotonic()
        while not self.should_exit:
            await asyncio.sleep(MAIN_LOOP_TICK_S)
            now = time.monotonic()
            if systemd is not None and watchdog is not None and now >= watchdog_at:
                watchdog_at = now + watchdog
                systemd.watchdog()
            if self._exit_at and now >= self._exit_at:
                logger.info("Shutdown delay over")
                self.should_exit = True
            if notify is not None and now >= notify_at:
                notify_at = now + self.config.timeout_notify
                await notify()

    def _delay_shutdown(self) -> None:
        """--shutdown-delay: serve on, requests carrying ``sleipnir.draining``, then exit."""
        assert self.state is not None
        self.state.start_draining()
        delay = self.config.shutdown_delay
        logger.info("Shutdown delay: serving for %g more second(s)", delay)
        self._exit_at = time.monotonic() + delay

    async def _shutdown(self) -> None:
        state = self.state
        assert state is not None
        logger.info("Shutting down")
        if self._notifier is not None:
            self._notifier.stopping()
        state.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(state.clock.connections):
            conn.shutdown()
        await self._drain(state)
        for conn in list(state.clock.connections):
            conn.transport.close()
        state.clock.stop()
        state.bad_request_log.flush()  # report what the rate limit held back
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), MAIN_LOOP_TICK_S)
        await self._stop_lifespan()
        self._close_bound_sockets()

    async def _drain(self, state: ServerState) -> None:
        """Wait for in-flight requests, bounded by the graceful timeout and a second signal."""
        timeout = self.config.timeout_graceful_shutdown
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if state.tasks:
            logger.info("Waiting for %d in-flight request(s) to finish.", len(state.tasks))
        # Idle connections get SHUTDOWN_GRACE_S for a request already sent (H1Protocol.shutdown).
        idle_end = loop.time() + SHUTDOWN_GRACE_S + MAIN_LOOP_TICK_S / 2
        while (
            state.tasks or (state.clock.connections and loop.time() < idle_end)
        ) and not self.force_exit:
            if deadline is not None and loop.time() >= deadline:
                logger.warning(
                    "Graceful shutdown timed out; cancelling %d request(s).", len(state.tasks)
                )
                break
            await asyncio.sleep(MAIN_LOOP_TICK_S / 2)
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _stop_lifespan(self) -> None:
        lifespan = self._lifespan
        if lifespan is None:
            return
        try:
            if not self.force_exit:
                await lifespan.shutdown()
        except LifespanFailure as exc:
            logger.error("%s", exc)
            self.shutdown_failed = True
        finally:
            await lifespan.close()

    async def _close_after_failed_startup(self) -> None:
        for server in self.servers:
            server.close()
        if self._app_started:
            # Listening failed after the app started: let it clean up, as uvicorn does.
            await self._stop_lifespan()
        elif self._lifespan is not None:
            await self._lifespan.close()
        self._close_bound_sockets()

    def _close_bound_sockets(self) -> None:
        """Close what ``_listen`` bound, removing the unix socket files it created."""
        close_sockets(self._bound_here)
        self._bound_here = []

    # Signals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _capture_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        # remove_signal_handler() resets to the default disposition: put back what an embedding
        # program had installed instead, as uvicorn does.
        original = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)
                if original[sig] is not None:
                    signal.signal(sig, original[sig])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        elif (
            sig == signal.SIGTERM
            and self.config.shutdown_delay
            and self.started
            and not self._exit_at
            and not self.should_exit
        ):
            self._delay_shutdown()
            return
        self.should_exit = True


def _choose_parser(http: str) -> str:
    if http == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            return "h11"
        return "httptools"
    return http


def _ws_settings(config: Config) -> WSSettings | None:
    """--ws: auto takes websockets, else wsproto, else none; a named one must be installed."""
    kind = config.ws
    if kind == "none":
        return None
    candidates = ("websockets", "wsproto") if kind == "auto" else (kind,)
    for name in candidates:
        # Found, not imported: the codec is loaded with the first WebSocket (wire/ws.py).
        if importlib.util.find_spec(name) is None:
            continue
        limits = WSLimits(config.ws_max_size, config.ws_per_message_deflate)
        return WSSettings(
            name, limits, config.ws_max_queue, config.ws_ping_interval, config.ws_ping_timeout
        )
    if kind != "auto":
        raise StartupError(f"--ws {kind} needs the {kind} package: pip install {kind}")
    return None


def _h2_limits(config: Config) -> H2Limits | None:
    """--http2: unset means on when h2 is installed; --http2 requires it."""
    if config.http2 is False:
        return None
    # Found, not imported: h2 is loaded with the first HTTP/2 connection (H1Protocol._to_h2).
    if importlib.util.find_spec("h2") is None:
        if config.http2:
            raise StartupError("--http2 needs the h2 package: pip install h2")
        return None
    return H2Limits(
        max_concurrent_streams=config.h2_max_concurrent_streams,
        max_header_list_size=config.limit_request_header_size,
        max_header_count=config.limit_request_headers,
        # RFC 8441 (WebSocket over HTTP/2, transport/h2_ws.py): advertised only when WebSockets
        # are served; otherwise a client keeps opening them over HTTP/1.1.
        enable_connect_protocol=_ws_settings(config) is not None,
    )


def _ssl_context(config: Config, http2: bool = False) -> ssl.SSLContext | None:
    if not config.is_ssl:
        return None
    from sleipnir.transport.tls import (
        DEFAULT_ALPN_PROTOCOLS,
        H2_ALPN_PROTOCOLS,
        TLSConfigError,
        create_ssl_context,
    )

    def default_factory() -> ssl.SSLContext:
        if not config.ssl_certfile:
            raise TLSConfigError("TLS needs --ssl-certfile")
        return create_ssl_context(
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
            password=config.ssl_keyfile_password,
            ssl_version=config.ssl_version,
            cert_reqs=config.ssl_cert_reqs,
            ca_certs=config.ssl_ca_certs,
            ciphers=config.ssl_ciphers,
            alpn_protocols=H2_ALPN_PROTOCOLS if http2 else DEFAULT_ALPN_PROTOCOLS,
        )

    try:
        factory = config.ssl_context_factory
        return factory(config, default_factory) if factory is not None else default_factory()
    except (TLSConfigError, OSError, ValueError) as exc:
        raise StartupError(f"TLS configuration error: {exc}") from None


def _setup_logging(config: Config) -> None:
    from sleipnir.logging import LogConfigError, configure_from

    try:
        configure_from(config)
    except LogConfigError as exc:
        raise StartupError(str(exc)) from None


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise StartupError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run_loop(main: Coroutine[Any, Any, None], kind: str) -> None:
    factory = _loop_factory(kind)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:  # pragma: no cover - Python 3.10
        loop = factory()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main)
        finally:
            loop.close()
