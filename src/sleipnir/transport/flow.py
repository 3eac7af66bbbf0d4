"""Write flow control shared by the connection protocols (HTTP/1.1 and WebSocket).

The transport calls ``pause_writing`` when its buffer passes the high-water mark and
``resume_writing`` when it has drained; an application's ``send`` awaits ``drain()`` while
paused, so a client that does not read holds the application back instead of growing the
buffer without bound.
"""

from __future__ import annotations

import asyncio


class WriteFlow(asyncio.Protocol):
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
            await waiter

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
