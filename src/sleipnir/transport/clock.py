"""One periodic tick per server: the cached Date header and the connection deadline sweep.

Rather than arming and cancelling a timer per request (uvicorn's keep-alive timer), each
connection keeps a ``deadline`` (loop time, 0 for none) and the tick checks them all. A sweep
over a thousand connections costs far less than a thousand timer heap operations per second.

Invariants:
- ``defaults.block`` always holds the current ``date`` line (refreshed at least once a second).
- A connection past its deadline gets ``on_deadline()`` called once per tick until it resets
  its deadline or leaves ``connections``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol

from sleipnir.wire.h1_writer import DefaultHeaders

MAX_TICK_S: Final = 1.0
MIN_TICK_S: Final = 0.05


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float) -> bytes:
    """``now`` as an IMF-fixdate (RFC 9110 §5.6.7), e.g. b"Sun, 06 Nov 1994 08:49:37 GMT".
    (email.utils.formatdate says the same, at 8 ms of start-up for its import.)"""
    t = time.gmtime(now)
    return b"%s, %02d %s %d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday].encode(),
        t.tm_mday,
        _MONTHS[t.tm_mon - 1].encode(),
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


class Timed(Protocol):
    """A connection as the clock and the server's shutdown see it (HTTP/1.1 or WebSocket)."""

    deadline: float

    @property
    def transport(self) -> asyncio.BaseTransport: ...

    def on_deadline(self) -> None: ...

    def shutdown(self) -> None:
        """Graceful shutdown: close when idle, else once the work in progress allows."""


class Clock:
    """Refreshes the default headers and enforces connection deadlines."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        static_headers: list[tuple[bytes, bytes]],
        date_header: bool,
        shortest_timeout_s: float,
    ) -> None:
        self._loop = loop
        self._static = static_headers
        self._date_header = date_header
        self.interval_s = min(MAX_TICK_S, max(MIN_TICK_S, shortest_timeout_s / 4))
        self.connections: set[Timed] = set()
        self.defaults = self._build_defaults()
        self._handle: asyncio.TimerHandle | None = None

    def _build_defaults(self) -> DefaultHeaders:
        lines = list(self._static)
        if self._date_header:
            lines.append((b"date", http_date(time.time())))
        return DefaultHeaders(lines)

    def start(self) -> None:
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.defaults = self._build_defaults()
        now = self._loop.time()
        for conn in [c for c in self.connections if 0 < c.deadline <= now]:
            conn.on_deadline()
        self._handle = self._loop.call_later(self.interval_s, self._tick)
