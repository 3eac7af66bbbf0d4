"""WebSocket over HTTP/2 (RFC 8441): one WebSocket on one stream of an HTTP/2 connection.

The handshake is an HTTP/2 request, an extended CONNECT (``:method`` CONNECT, ``:protocol``
websocket), checked by ``wire/ws.check_extended_connect``; the session is the same ``WSCycle``
as an HTTP/1.1 upgrade runs, and the accepted WebSocket is the same ``WSConnection``
(``transport/ws_protocol.py``): pings on the clock sweep, the close timeout, the codec choice,
permessage-deflate and back-pressure exist once.

``H2WebSocket`` is the stream. Until the app answers, it is an ordinary ``H2Stream``: the
``HTTPStream`` a denial (``websocket.close`` before accept, ``websocket.http.response``) or a
500 goes out through, as an HTTP/2 response. An accept sends HEADERS ``:status`` 200 (there
is no 101 in HTTP/2) and hands the stream to a ``WSConnection`` through ``H2StreamTransport``,
which implements the part of ``asyncio.Transport`` a ``WSConnection`` uses (``write``,
``close``, ``abort``, ``pause_reading``, ``resume_reading``, ``is_reading``, ``is_closing``,
``set_protocol``) and calls the protocol as asyncio does (``data_received``,
``eof_received``, ``connection_lost``, ``pause_writing``, ``resume_writing``). So the HTTP/1.1
WebSocket path, which talks to the socket's transport directly, pays nothing for this.

RFC 8441 §5 maps TCP onto the stream:
- Bytes out are DATA frames, sent as far as the stream's and the connection's send windows
  allow. The rest waits, and the ``WSConnection`` is paused for writing (as by a full socket
  buffer) until WINDOW_UPDATE; also while the connection's socket buffer is full.
- Bytes in are DATA frames, given back to the client's windows once delivered. While the
  ``WSConnection`` has paused reading (its queue is full, its writes are blocked, it is failing)
  they are held and not given back, so the client's window closes: the HTTP/2 form of not
  reading the socket.
- An orderly close (the closing handshake is done) is END_STREAM; an abort (no close frame in
  time) is RST_STREAM CANCEL.
- The client's END_STREAM is an EOF; its RST_STREAM, or the loss of the connection, is a lost
  connection (the app sees ``websocket.disconnect`` 1006). Other streams are not affected.

Invariants:
- The stream holds its concurrency slot (``H2Protocol.close_stream``) until both the app's
  task ended and the WebSocket's byte stream is finished, as an HTTP stream does while its app
  runs (Rapid Reset).
- DATA that arrives before the accept (frames sent right behind the handshake) is held, not
  acknowledged, and fed to the ``WSConnection`` on accept; on a denial it is dropped.
- The ``WSConnection`` learns the end exactly once, ``connection_lost``: soon after
  ``close``/``abort`` (from the loop, as asyncio does), at once when the stream is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from sleipnir.asgi.contract import ASGIError
from sleipnir.asgi.http_cycle import HTTPCycle
from sleipnir.asgi.ws_cycle import WSCycle, websocket_scope
from sleipnir.transport.h2_protocol import H2Stream
from sleipnir.transport.ws_protocol import WSConnection
from sleipnir.wire import h2, ws
from sleipnir.wire.h1 import Headers, RequestHead
from sleipnir.wire.h1_writer import ResponseHeaderError

if TYPE_CHECKING:
    from sleipnir.transport.h2_protocol import H2Protocol

# RFC 9110 §9.3.6: a 2xx answer to CONNECT has no content, so no framing headers.
_NOT_IN_ACCEPT = frozenset((b"content-length", b"transfer-encoding"))


class H2WebSocket(H2Stream):
    """An extended CONNECT stream: the handshake's ``HTTPStream``, then a WebSocket's bytes
    (the ``Upgrader`` of its ``WSCycle``)."""

    __slots__ = ("_eof", "_handshake", "_held", "_transport", "websocket")

    def __init__(self, conn: H2Protocol, sid: int) -> None:
        super().__init__(conn, sid, False)
        self.websocket: WSCycle | None = None
        self._handshake: ws.Handshake | None = None
        self._transport: H2StreamTransport | None = None  # set by the accept
        self._held: list[bytes] = []  # DATA before the accept, not acknowledged
        self._eof = False  # END_STREAM before the accept

    def start(self, cycle: HTTPCycle, head: RequestHead) -> Coroutine[Any, Any, None] | None:
        """Check the handshake and return what the stream's task runs (the ``WSCycle``); None
        when it was refused (answered here: 400, or 501 for another ``:protocol``)."""
        conn = self._conn
        state = conn.state
        settings = state.ws
        try:
            if settings is None:  # not advertised, so the codec refused :protocol already
                raise ws.HandshakeError(501, "WebSocket is not served")
            handshake = ws.check_extended_connect(head.method, head.upgrade, head.headers)
        except ws.HandshakeError as exc:
            self.cycle = None  # no app runs: the stream closes once answered
            conn._answer(self, exc.status, exc.reason, exc.headers)
            return None
        self._handshake = handshake
        scope = websocket_scope(cycle.scope, handshake.subprotocols)
        self.websocket = websocket = WSCycle(scope, cycle, self, state.ctx, settings.max_queue)
        return self._run(cycle, websocket)

    async def _run(self, cycle: HTTPCycle, websocket: WSCycle) -> None:
        try:
            await websocket.run()
        finally:
            self.cycle_done(cycle)

    # Upgrader --------------------------------------------------------------------------------

    def accept_websocket(
        self, cycle: WSCycle, subprotocol: str | None, headers: Headers
    ) -> WSConnection:
        """The app accepted: HEADERS 200 (RFC 8441 §5), then the stream is a WebSocket's."""
        conn = self._conn
        state = conn.state
        settings = state.ws
        handshake = self._handshake
        assert settings is not None and handshake is not None and cycle is self.websocket
        transport = H2StreamTransport(self)
        websocket = WSConnection(
            state, settings, transport, cycle, handshake.extension_offers, conn._client_label
        )
        response = [
            (name, value)
            for name, value in ws.accept_headers(
                subprotocol, websocket.codec.extensions_header, headers
            )
            if name.lower() not in _NOT_IN_ACCEPT
        ]
        names = {name.lower() for name, _ in response}
        response += [pair for pair in state.clock.defaults.pairs if pair[0] not in names]
        try:
            out = conn.codec.send_headers(self.sid, 200, response, False)
        except ResponseHeaderError as exc:
            raise ASGIError(f"refused WebSocket accept headers: {exc}") from None
        conn.write(out)
        cycle.http.protocol_switched(200)
        self._transport = transport
        held = b"".join(self._held)
        self._held = []
        websocket.start(b"", held)  # no head to write: it went out as HEADERS
        if held:
            transport.acknowledge(len(held))
        if self._eof:
            transport.eof_received()
        return websocket

    # From the connection (H2Protocol) ---------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """DATA on this stream: WebSocket frames (never a request body) once the handshake
        was taken; before, as any stream's (a refused one was answered)."""
        if self.websocket is None:
            super().body_received(data)
            return
        transport = self._transport
        if transport is not None:
            transport.data_received(data)
        else:
            self._held.append(data)  # bounded by the stream's window: not acknowledged

    def request_complete(self) -> None:
        """The client's END_STREAM: the WebSocket's end of input."""
        if self.websocket is None:
            super().request_complete()
            return
        transport = self._transport
        if transport is not None:
            transport.eof_received()
        else:
            self._eof = True

    def flush(self) -> None:
        transport = self._transport
        if transport is None:
            super().flush()  # a denial's body waiting for window
        else:
            transport.window_opened()

    def lost(self) -> None:
        transport = self._transport
        if transport is None:
            super().lost()  # the handshake's exchange: http.disconnect, a denial dropped
            websocket = self.websocket
            if websocket is not None:
                websocket.connection_lost()
            return
        self.gone = True
        transport.lost()  # websocket.disconnect 1006
        if self.cycle_ended:
            self._release()

    def cycle_done(self, cycle: HTTPCycle) -> None:
        transport = self._transport
        if transport is None:  # never accepted: a denial, a 500, or the client left first
            super().cycle_done(cycle)
            return
        task = cycle.task
        if task is not None:
            self._conn.state.tasks.discard(task)
        self.cycle_ended = True
        if transport.finished:
            self._release()
        # else: released once the WebSocket's bytes are finished (transport_finished)

    def transport_finished(self) -> None:
        """END_STREAM or RST_STREAM went out: the slot goes once the app is done too."""
        if self.cycle_ended:
            self._release()

    def _release(self) -> None:
        self._conn.close_stream(self)


class H2StreamTransport(asyncio.Transport):
    """An HTTP/2 stream as the byte stream under a ``WSConnection`` (RFC 8441 §5)."""

    def __init__(self, stream: H2WebSocket) -> None:
        super().__init__()
        self._stream = stream
        self._conn = stream._conn
        self._protocol: WSConnection | None = None
        self._reading = True
        self._held: list[bytes] = []  # received while reading is paused: not acknowledged
        self._eof = False  # the client's END_STREAM, delivered after _held
        self._pending = b""  # written, waiting for window
        self._write_blocked = False  # the protocol was told pause_writing
        self._watching = False  # waiting for the connection's socket buffer to drain
        self._closing = False
        self.finished = False  # END_STREAM or RST_STREAM sent, or the stream is gone

    # asyncio.Transport, as a WSConnection uses it ---------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, WSConnection)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return cast(asyncio.BaseProtocol, self._protocol)  # (transport/flow.py)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._conn.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        if (self._held or self._eof) and not self.finished:
            # As a socket's transport would: from the loop, not inside the caller.
            self._conn.loop.call_soon(self._deliver_held)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self._pending:
            self._pending += data
        else:
            conn = self._conn
            out, taken = conn.codec.send_data(self._stream.sid, data, False)
            conn.write(out)
            if taken < len(data):
                self._pending = data[taken:]
        self._update_writing()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """After the closing handshake: END_STREAM, behind what waits for window."""
        if self._closing:
            return
        self._closing = True
        if self.finished or self._pending:
            return  # the END_STREAM goes with the last pending bytes (window_opened)
        conn = self._conn
        conn.write(conn.codec.send_data(self._stream.sid, b"", True)[0])
        self._finish()

    def abort(self) -> None:
        """No close frame in time: RST_STREAM CANCEL, what RFC 8441 §5 puts for a TCP RST."""
        self._closing = True
        self._pending = b""
        if self.finished:
            return
        conn = self._conn
        conn.write(conn.codec.reset(self._stream.sid, h2.CANCEL))
        self._finish()

    # From the stream --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.finished:
            self.acknowledge(len(data))  # after the close: discarded, the window given back
        elif self._reading and not self._held:
            assert self._protocol is not None
            self._protocol.data_received(data)
            self.acknowledge(len(data))
        else:
            self._held.append(data)

    def eof_received(self) -> None:
        if self.finished:
            return
        if self._held or not self._reading:
            self._eof = True  # after the held bytes, as a socket's EOF comes after its data
        else:
            self._deliver_eof()

    def window_opened(self) -> None:
        pending = self._pending
        if pending and not self.finished:
            conn = self._conn
            out, taken = conn.codec.send_data(self._stream.sid, pending, self._closing)
            conn.write(out)
            self._pending = pending = pending[taken:]
            if not pending and self._closing:
                self._finish()  # END_STREAM went out with the last bytes
                return
        self._update_writing()

    def lost(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self._closing = True
        self._pending = b""
        if self.finished:
            return  # connection_lost is on its way (_finish)
        self.finished = True
        self._held = []
        assert self._protocol is not None
        self._protocol.connection_lost(None)

    def acknowledge(self, size: int) -> None:
        """Give ``size`` received bytes back to the client's windows."""
        stream = self._stream
        if not stream.gone:
            conn = self._conn
            conn.write(conn.codec.acknowledge(stream.sid, size))

    # Internals -------------------------------------------------------------------------------

    def _deliver_held(self) -> None:
        if self.finished or not self._reading:
            return
        if self._held:
            data = b"".join(self._held)
            self._held = []
            assert self._protocol is not None
            self._protocol.data_received(data)
            self.acknowledge(len(data))
        if self._eof and self._reading and not self._held and not self.finished:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._eof = False
        assert self._protocol is not None
        if not self._protocol.eof_received():
            self.close()  # as asyncio closes a transport whose protocol did not keep it open

    def _update_writing(self) -> None:
        """Pause the protocol's writing while bytes wait for window or the connection's socket
        buffer is full; resume it once neither holds."""
        if self.finished:
            return
        conn = self._conn
        if self._pending or conn.write_paused:
            if not self._write_blocked:
                self._write_blocked = True
                assert self._protocol is not None
                self._protocol.pause_writing()
            if conn.write_paused and not self._watching:
                self._watching = True
                conn.when_drained(self._drained)
        elif self._write_blocked:
            self._write_blocked = False
            assert self._protocol is not None
            self._protocol.resume_writing()

    def _drained(self) -> None:
        self._watching = False
        self._update_writing()

    def _finish(self) -> None:
        """Nothing more goes out: the protocol learns it from the loop, as from asyncio, and
        the stream's slot goes once the app is done too."""
        self.finished = True
        self._held = []
        self._conn.loop.call_soon(self._connection_lost)

    def _connection_lost(self) -> None:
        assert self._protocol is not None
        self._protocol.connection_lost(None)
        self._stream.transport_finished()
