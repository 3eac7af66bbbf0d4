"""Write flow control shared by the connection protocols (HTTP/1.1, HTTP/2 and WebSocket).

The transport calls ``pause_writing`` when its buffer passes the high-water mark and
``resume_writing`` when it has drained; an application's ``send`` awaits ``drain()`` while
paused, so a client that does not read holds the application back instead of growing the
buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mypy_extensions import mypyc_attr

logger = logging.getLogger("sleipnir.error")


class DeferredFlushes:
    """The writes every connection gathered during a loop iteration, flushed by one callback.

    Each connection that gathers writes (``H1Protocol._gather_writes``, ``H2Protocol.write``)
    asks for its flush here instead of scheduling a callback of its own: under load one loop
    iteration reads many connections, and a ``call_soon`` each (a handle, a context copy, a
    callback run) cost about 600 instructions a request more (callgrind, plaintext, 8
    connections; more when more are read per iteration). The flushes run in the order they
    were asked for, once the callbacks the loop had ready when the first was asked for have
    run, as their own callbacks would have. A flush asked for while they run (a connection
    that goes on gathering) waits for the next round.
    """

    __slots__ = ("_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Callable[[], None]] = []

    def defer(self, flush: Callable[[], None]) -> None:
        pending = self._pending
        if not pending:
            self._loop.call_soon(self._run)
        pending.append(flush)

    def _run(self) -> None:
        pending = self._pending
        self._pending = []
        for flush in pending:
            try:  # (free on 3.11+) one connection's failure must not keep the others' writes
                flush()
            except Exception:  # noqa: PERF203
                logger.exception("Exception in a connection's write flush")


# A compiled build (docs/architecture.md, "Compiled build") compiles this class, H1Protocol and
# H2Protocol; WSConnection stays an interpreted subclass. It is not an asyncio.Protocol
# subclass (mypyc compiles no subclass of an interpreted class): the loop needs only the methods.
@mypyc_attr(allow_interpreted_subclasses=True)
class WriteFlow:
    """``pause_writing``/``resume_writing`` turned into an awaitable ``drain``."""

    write_paused: bool
    _drain_waiter: asyncio.Future[None] | None
    _loop: asyncio.AbstractEventLoop

    def _gone(self) -> bool:
        """True once nothing more can be written: ``drain`` must not wait then."""
        raise NotImplementedError

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    async def drain(self) -> None:
        if self.write_paused and not self._gone():
            waiter = self._drain_waiter
            if waiter is None:
                waiter = self._drain_waiter = self._loop.create_future()
            # Shared by every sender waiting on this connection (HTTP/2 streams): a sender
            # cancelled while it waits must not cancel the future under the others.
            await asyncio.shield(waiter)

    def when_drained(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from the loop) once writing resumes or nothing more can be
        written; soon if not paused now. ``drain`` for a consumer that is not a coroutine
        (an HTTP/2 WebSocket, ``transport/h2_ws.py``)."""
        if not self.write_paused or self._gone():
            self._loop.call_soon(callback)
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        waiter.add_done_callback(lambda _: callback())

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
