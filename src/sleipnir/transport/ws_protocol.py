"""An accepted WebSocket: the ``asyncio.Protocol`` a connection switches to after the 101.

It joins the codec (``wire/ws*.py``), the session (``asgi/ws_cycle.py``) and a byte stream, and
owns what only a transport can do: keep-alive pings, the closing handshake's timeout, flow
control both ways and the graceful-shutdown close (1012).

The byte stream is an ``asyncio.Transport``, and only this part of it is used: ``write``,
``close`` (orderly, after what was written), ``abort``, ``pause_reading``, ``resume_reading``,
``is_reading``, ``is_closing`` and ``set_protocol``; it calls back ``data_received``,
``eof_received``, ``connection_lost``, ``pause_writing`` and ``resume_writing``. Over HTTP/1.1
that is the socket's transport itself (the hot path has no layer in between); over HTTP/2 it
is one stream (RFC 8441), ``transport/h2_ws.H2StreamTransport``.

Invariants:
- The server closes its byte stream once the closing handshake is done (RFC 6455 §7.1.1: the
  TCP connection, or END_STREAM over HTTP/2); if the peer does not answer our close frame
  within ``CLOSE_TIMEOUT_S``, it is dropped (a TCP reset, or RST_STREAM).
- Reading pauses while the session's queue is full or while the socket's write buffer is
  above its high-water mark (a client that sends pings but never reads cannot grow it).
- ``deadline`` is the next ping, the pong timeout, or the close timeout (one clock sweep for all
  connections, ``transport/clock.py``).
- The session learns the end exactly once: ``closed(code, reason)``, 1006 for a dropped
  connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sleipnir.asgi.ws_cycle import WebSocketClosed, WSCycle
from sleipnir.transport.flow import WriteFlow
from sleipnir.wire.ws import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_SERVICE_RESTART,
    WSLimits,
    WSProtocolError,
    make_codec,
)

if TYPE_CHECKING:
    from sleipnir.transport.state import ServerState

logger = logging.getLogger("sleipnir.error")

# How long to wait for the peer's close frame after sending ours (websockets waits 10 s too).
CLOSE_TIMEOUT_S = 10.0
# After a protocol error, how long the app may take to receive the valid messages that came
# before it (their answers go out before our close frame) before the connection is failed.
FAIL_GRACE_S = 1.0


@dataclass(frozen=True)
class WSSettings:
    """The WebSocket slice of the settings (``--ws*``)."""

    kind: str  # "websockets" or "wsproto"
    limits: WSLimits
    max_queue: int
    ping_interval_s: float | None  # None or 0: no keep-alive pings
    ping_timeout_s: float | None  # None or 0: a ping is never awaited


class WSConnection(WriteFlow):
    """One accepted WebSocket, on an HTTP/1.1 connection's transport or an HTTP/2 stream."""

    def __init__(
        self,
        state: ServerState,
        settings: WSSettings,
        transport: asyncio.BaseTransport,
        cycle: WSCycle,
        offers: list[bytes],
        client_label: str,
    ) -> None:
        self._state = state
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, transport)
        self.cycle = cycle
        self.codec = make_codec(settings.kind, self, settings.limits, offers)
        self._client_label = client_label
        self.deadline = 0.0
        self.write_paused = False
        self._read_paused = False  # by us, for any of the reasons below
        self._queue_full = False
        self._close_sent = False
        self._peer_closed = False
        self._lost = False
        self._awaiting_pong = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._failure: WSProtocolError | None = None
        self.failing = False  # a protocol error waits for the app to take earlier messages

    def start(self, response_head: bytes, rest: bytes) -> None:
        """Send the 101 (b"" over HTTP/2: the 200 went out as HEADERS), take the transport
        over, and parse what arrived with the handshake."""
        transport = self.transport
        transport.set_protocol(cast(asyncio.BaseProtocol, self))  # (transport/flow.py)
        transport.write(response_head)
        self._state.clock.connections.add(self)
        self._schedule_ping()
        if not transport.is_reading():
            self._read_paused = True  # the HTTP connection had paused it
            self._resume()
        if rest:
            self._feed(rest)

    # asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool | None:
        return None  # no close frame: the transport closes, connection_lost reports 1006

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._state.clock.connections.discard(self)
        self.cycle.connection_lost()  # no-op when the closing handshake already told it
        self._wake_drain()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._pause()  # replies to a client that does not read must not pile up

    def resume_writing(self) -> None:
        super().resume_writing()
        self._resume()

    # WSHandler: codec events -----------------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        if not self.cycle.message_received(data):
            self._queue_full = True
            self._pause()

    def on_pong(self, payload: bytes) -> None:
        if self._awaiting_pong:
            self._awaiting_pong = False
            self._schedule_ping()

    def on_close(self, code: int, reason: str) -> None:
        self._peer_closed = True
        self.cycle.closed(code, reason)

    # WSStream: what the session calls --------------------------------------------------------

    def send_message(self, data: str | bytes) -> None:
        if self._close_sent or self._lost:
            raise WebSocketClosed(f"WebSocket is closed (code {self.cycle.close_code})")
        self.transport.write(self.codec.send_message(data))

    def close(self, code: int, reason: str) -> None:
        if self._close_sent or self._lost:
            return
        self._close_sent = True
        self.transport.write(self.codec.send_close(code, reason))
        if self._peer_closed:
            self.transport.close()
        else:
            self._awaiting_pong = False
            self.deadline = self._loop.time() + CLOSE_TIMEOUT_S
            self._resume()  # the peer's close frame must be read even if the app is behind

    def _gone(self) -> bool:
        return self._lost

    def resume_reading(self) -> None:
        self._queue_full = False
        self._resume()

    # Deadlines and shutdown ------------------------------------------------------------------

    def on_deadline(self) -> None:
        self.deadline = 0.0
        if self._failure is not None:
            self.fail_now()
        elif self._close_sent:
            self.transport.abort()  # no close frame in time (RFC 6455 §7.1.1)
        elif self._awaiting_pong:
            self._fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        else:
            self.transport.write(self.codec.send_ping(os.urandom(4)))
            timeout = self._settings.ping_timeout_s
            if timeout:
                self._awaiting_pong = True
                self.deadline = self._loop.time() + timeout
            else:
                self._schedule_ping()

    def shutdown(self) -> None:
        """Graceful shutdown: start the closing handshake with 1012 (service restart)."""
        self.close(CLOSE_SERVICE_RESTART, "server shutting down")

    def _schedule_ping(self) -> None:
        interval = self._settings.ping_interval_s
        self.deadline = self._loop.time() + interval if interval else 0.0

    # Internals -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._peer_closed or self._lost:
            return  # RFC 6455 §5.5.1: nothing is read after the close frame
        try:
            # on_close, called inside feed, sets _peer_closed.
            reply = self.codec.feed(data)
        except WSProtocolError as exc:
            self._log_failure(exc.code, exc.reason)
            self._failure = exc
            if self.cycle.pending():
                # Valid messages of this read came before the error: the app answers them
                # before our close frame goes out (bounded by FAIL_GRACE_S); nothing more is
                # read meanwhile.
                self.failing = True
                self._pause()
                self.deadline = self._loop.time() + FAIL_GRACE_S
            else:
                self.fail_now()
            return
        if reply:
            self.transport.write(reply)
        if self._peer_closed:  # set by on_close, inside feed (mypy cannot know)
            # The peer's close frame was answered inside feed (or had answered ours): the
            # server closes the TCP connection first (RFC 6455 §7.1.1).
            self._close_sent = True  # type: ignore[unreachable]
            self.transport.close()

    def fail_now(self) -> None:
        """Fail the connection for the protocol error seen (RFC 6455 §7.1.7): our close frame
        with its code, then the TCP close."""
        failure = self._failure
        assert failure is not None
        self._failure = None
        self.failing = False
        if not self._close_sent and not self._lost:
            self._close_sent = True
            self.transport.write(failure.close_frame)
        self.cycle.closed(failure.code, failure.reason)
        self.transport.close()

    def _log_failure(self, code: int, reason: str) -> None:
        self._state.bad_request_log.log(
            f"ws-{code}", "%s - WebSocket closed %d: %s", self._client_label, code, reason
        )

    def _fail(self, code: int, reason: str) -> None:
        self._log_failure(code, reason)
        self.close(code, reason)
        self.cycle.closed(code, reason)
        self.transport.close()

    def _pause(self) -> None:
        if not self._read_paused and not self._lost:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if not self._read_paused or self._lost or self._failure is not None:
            return
        if (self._queue_full or self.write_paused) and not self._close_sent:
            return
        self._read_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
