"""What all connections of one server share, built once by the server from its settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleipnir.asgi.http_cycle import DRAINING_EXTENSIONS, EXTENSIONS, AppContext
from sleipnir.logging import RateLimitedLog
from sleipnir.transport.flow import DeferredFlushes
from sleipnir.wire.h1 import H1Limits

if TYPE_CHECKING:
    from sleipnir.middleware.proxy_headers import TrustedProxies
    from sleipnir.transport.clock import Clock
    from sleipnir.transport.ws_protocol import WSSettings
    from sleipnir.wire.h2_limits import H2Limits

logger = logging.getLogger("sleipnir.error")


class ServerState:
    """Shared, mutable server-wide state handed to every connection protocol."""

    def __init__(
        self,
        *,
        ctx: AppContext,
        clock: Clock,
        limits: H1Limits,
        parser: str,
        root_path: str,
        proxies: TrustedProxies | None,
        timeout_keep_alive_s: float,
        timeout_request_header_s: float,
        limit_concurrency: int | None,
        limit_request_body: int | None,
        reset_contextvars: bool,
        request_limit: int | None,
        on_request_limit: Callable[[], None],
        ws: WSSettings | None = None,
        h2: H2Limits | None = None,
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.limits = limits
        self.parser = parser
        self.root_path = root_path
        self.proxies = proxies
        self.timeout_keep_alive_s = timeout_keep_alive_s
        self.timeout_request_header_s = timeout_request_header_s
        self.limit_concurrency = limit_concurrency
        self.limit_request_body = limit_request_body
        self.reset_contextvars = reset_contextvars
        self.request_limit = request_limit  # total_requests at which on_request_limit runs
        self.on_request_limit = on_request_limit
        self.ws = ws  # None: upgrade requests are served as plain HTTP (--ws none)
        self.h2 = h2  # None: HTTP/1.1 only (--no-http2, or h2 not installed)
        self.lifespan_state: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.total_requests = 0
        self.shutting_down = False
        # The template of every request's scope["extensions"] (EXTENSIONS, or
        # DRAINING_EXTENSIONS once ``start_draining`` ran).
        self.extensions: dict[str, Any] = EXTENSIONS
        self.bad_request_log = RateLimitedLog(logger)
        # Built in the server's running loop, which all its connections share.
        self.flushes = DeferredFlushes(asyncio.get_running_loop())

    def start_draining(self) -> None:
        """From now on requests carry the ``sleipnir.draining`` extension (--shutdown-delay)."""
        self.extensions = DRAINING_EXTENSIONS

    def log_bad_request(self, client: str, status: int, reason: str) -> None:
        """One line per malformed request, rate-limited per status."""
        self.bad_request_log.log(f"bad-request-{status}", "%s - %d: %s", client, status, reason)
