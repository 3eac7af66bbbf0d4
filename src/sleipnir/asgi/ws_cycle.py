"""One ASGI WebSocket session, independent of the wire protocol.

The cycle is the only code that speaks ASGI ``websocket``. It never sees bytes: before the
application accepts, it talks to the HTTP exchange the handshake arrived on (an ``Upgrader``:
the HTTP/1.1 connection, or an HTTP/2 stream carrying RFC 8441's extended CONNECT); after, to
a ``WSStream`` that owns the codec (``transport/ws_protocol.WSConnection``, over either). A
denial (``websocket.close`` before accept, or the ``websocket.http.response`` extension) is an
ordinary HTTP response sent through the handshake's ``HTTPCycle``, so response framing,
checks and the access log exist once, for both HTTP versions.

Invariants:
- ``receive`` returns ``websocket.connect`` first, then messages in arrival order, then
  ``websocket.disconnect`` (with ``code`` and ``reason``) once the connection is closed.
- ``send`` enforces the order: accept, close or a denial response first; then ``websocket.send``
  and ``websocket.close``. ``websocket.send`` on a closed connection raises ``WebSocketClosed``
  (an ``OSError``, ASGI spec 2.4), a second ``websocket.close`` is ignored.
- At most ``max_queue`` received messages wait for the app (plus what one read delivered):
  beyond that the stream stops reading until the app catches up.
- When ``run`` ends the connection is answered or closed: 500 before the handshake completed,
  close 1011 when the app failed after it, close 1000 when the app just returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from sleipnir.asgi.contract import ASGIError
from sleipnir.asgi.http_cycle import HTTPCycle, check_headers, log_app_failure
from sleipnir.wire.h1 import Headers
from sleipnir.wire.ws import CLOSE_ABNORMAL, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL

if TYPE_CHECKING:
    from sleipnir.asgi.http_cycle import AppContext
    from sleipnir.types import Message, Scope

logger = logging.getLogger("sleipnir.error")

_CONNECTING = 0  # websocket.connect delivered (or about to be); no answer yet
_OPEN = 1  # accepted
_CLOSING = 2  # the app sent websocket.close; waiting for the connection to end
_CLOSED = 3  # the connection is closed; websocket.disconnect is what receive returns
_DENYING = 4  # the app is sending an HTTP response instead of accepting

_CONNECT: dict[str, Any] = {"type": "websocket.connect"}
_DENIAL_TYPES = {
    "websocket.http.response.start": "http.response.start",
    "websocket.http.response.body": "http.response.body",
}
_FORBIDDEN: list[Message] = [
    {"type": "http.response.start", "status": 403, "headers": []},
    {"type": "http.response.body", "body": b""},
]


def websocket_scope(http: Scope, subprotocols: list[str]) -> Scope:
    """The ``websocket`` scope of a handshake, built from the ``http`` scope of the request it
    arrived as (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT), so that ``http_version``,
    proxy headers and ``root_path`` come out the same way as for HTTP."""
    return {
        "type": "websocket",
        "asgi": http["asgi"],
        "http_version": http["http_version"],
        "scheme": "wss" if http["scheme"] == "https" else "ws",
        "server": http["server"],
        "client": http["client"],
        "root_path": http["root_path"],
        "path": http["path"],
        "raw_path": http["raw_path"],
        "query_string": http["query_string"],
        "headers": http["headers"],
        "subprotocols": subprotocols,
        "state": http["state"],
        "extensions": {"websocket.http.response": {}},
    }


class WebSocketClosed(OSError):
    """``websocket.send`` on a connection that is already closed (ASGI spec 2.4)."""


class WSStream(Protocol):
    """What an accepted session needs from its connection (owner of the codec)."""

    write_paused: bool
    failing: bool  # a protocol error is held until the app has taken the earlier messages

    def fail_now(self) -> None: ...

    def send_message(self, data: str | bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    async def drain(self) -> None: ...

    def resume_reading(self) -> None: ...


class Upgrader(Protocol):
    """The HTTP exchange a handshake arrived on: it completes the switch on accept."""

    def accept_websocket(
        self, cycle: WSCycle, subprotocol: str | None, headers: Headers
    ) -> WSStream:
        """Send the handshake response (a 101 over HTTP/1.1, a 200 over HTTP/2) and hand the
        bytes that follow over to a ``WSStream``."""


class WSCycle:
    """Runs the app for one WebSocket and turns its messages into stream calls."""

    __slots__ = (
        "_connect_delivered",
        "_ctx",
        "_max_queue",
        "_queue",
        "_reading_paused",
        "_state",
        "_stream",
        "_upgrader",
        "_waiter",
        "close_code",
        "close_reason",
        "http",
        "scope",
        "task",
    )

    def __init__(
        self,
        scope: Scope,
        http: HTTPCycle,
        upgrader: Upgrader,
        ctx: AppContext,
        max_queue: int,
    ) -> None:
        self.scope = scope
        self.http = http  # the handshake's exchange: denial responses go out through it
        self._upgrader = upgrader
        self._ctx = ctx
        self._max_queue = max_queue
        self._queue: deque[str | bytes] = deque()
        self._reading_paused = False
        self._state = _CONNECTING
        self._connect_delivered = False
        self._stream: WSStream | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.close_code = CLOSE_ABNORMAL
        self.close_reason = ""
        self.task: asyncio.Task[None] | None = None

    # Events from the connection --------------------------------------------------------------

    def message_received(self, data: str | bytes) -> bool:
        """Queue a message; False when the queue is full and reading should pause."""
        self._queue.append(data)
        self._wake()
        if len(self._queue) >= self._max_queue:
            self._reading_paused = True
            return False
        return True

    def closed(self, code: int, reason: str) -> None:
        """The connection is closed: ``code`` from the close frame, 1006 if it just dropped."""
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.close_code = code
            self.close_reason = reason
            self._wake()

    def connection_lost(self) -> None:
        self.closed(CLOSE_ABNORMAL, "")

    def pending(self) -> bool:
        """True while received messages wait for the app."""
        return bool(self._queue)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The ASGI callables ----------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return dict(_CONNECT)
        while True:
            queue = self._queue
            if queue and self._state != _CONNECTING:
                data = queue.popleft()
                if self._reading_paused and len(queue) < self._max_queue:
                    self._reading_paused = False
                    assert self._stream is not None
                    self._stream.resume_reading()
                if type(data) is str:
                    return {"type": "websocket.receive", "text": data}
                return {"type": "websocket.receive", "bytes": data}
            stream = self._stream
            if stream is not None and stream.failing:
                stream.fail_now()  # the app has answered what came before the error
            if self._state == _CLOSED or self.http.disconnected:
                return {
                    "type": "websocket.disconnect",
                    "code": self.close_code,
                    "reason": self.close_reason,
                }
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        state = self._state
        if state == _OPEN and mtype == "websocket.send":
            stream = self._stream
            assert stream is not None
            stream.send_message(_payload(message))
            if stream.write_paused:
                await stream.drain()
        elif state == _OPEN and mtype == "websocket.close":
            self._state = _CLOSING
            assert self._stream is not None
            self._stream.close(_close_code(message), _close_reason(message))
        elif state == _CONNECTING:
            await self._answer_handshake(message)
        elif state == _DENYING and mtype == "websocket.http.response.body":
            await self.http.send({**message, "type": "http.response.body"})
        elif mtype == "websocket.send" and state in (_CLOSING, _CLOSED):
            raise WebSocketClosed(f"WebSocket is closed (code {self.close_code})")
        elif mtype == "websocket.close" and state in (_CLOSING, _CLOSED):
            return  # already closing: nothing to add (a second close is harmless)
        else:
            raise ASGIError(f"unexpected ASGI message {mtype!r} in this WebSocket state")

    async def _answer_handshake(self, message: Message) -> None:
        mtype = message["type"]
        if self.http.disconnected:
            # The client left before the answer: nothing can be sent any more.
            self.closed(CLOSE_ABNORMAL, "")
            if mtype == "websocket.send":
                raise WebSocketClosed("WebSocket client disconnected during the handshake")
            return
        if mtype == "websocket.accept":
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and type(subprotocol) is not str:
                raise ASGIError(f"'subprotocol' must be a string, got {subprotocol!r}")
            headers = check_headers(message.get("headers", ()))
            self._stream = self._upgrader.accept_websocket(self, subprotocol, headers)
            if self._state == _CONNECTING:  # a close frame sent with the handshake closed it
                self._state = _OPEN
            self._wake()  # messages that arrived with the handshake can now be received
        elif mtype == "websocket.close":
            # ASGI: a close before accept is an HTTP 403.
            self._state = _CLOSED
            self.close_code = _close_code(message)
            for reply in _FORBIDDEN:
                await self.http.send(reply)
        elif mtype == "websocket.http.response.start":
            self._state = _DENYING
            await self.http.send({**message, "type": "http.response.start"})
        else:
            raise ASGIError(
                f"expected 'websocket.accept', 'websocket.close' or "
                f"'websocket.http.response.start', got {mtype!r}"
            )

    # Running the application ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._ctx.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._app_failed(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._state == _CONNECTING:
                logger.error("ASGI application returned without answering the WebSocket handshake")
                self.http.fail()
            elif self._state == _DENYING:
                logger.error("ASGI application returned without completing the denial response")
                self.http.fail()
            elif self._state == _OPEN:
                self._close(CLOSE_NORMAL)

    def _app_failed(self, exc: BaseException) -> None:
        log_app_failure(exc, f"WebSocket {self.scope['path']}")
        if self._state in (_CONNECTING, _DENYING):
            self.http.fail()
        elif self._state == _OPEN:
            self._close(CLOSE_INTERNAL_ERROR)

    def _close(self, code: int) -> None:
        self._state = _CLOSING
        assert self._stream is not None
        self._stream.close(code, "")


def _payload(message: Message) -> str | bytes:
    data = message.get("bytes")
    if data is not None:
        if type(data) is bytes:
            return data
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        raise ASGIError(f"'bytes' must be bytes, got {type(data).__name__}")
    text = message.get("text")
    if type(text) is str:
        return text
    raise ASGIError("'websocket.send' needs 'bytes' or 'text'")


def _close_code(message: Message) -> int:
    code = message.get("code", CLOSE_NORMAL)
    if code is None:
        return CLOSE_NORMAL
    # RFC 6455 §7.4: 1000-2999 are defined or registered, 3000-4999 for libraries and apps;
    # 1004-1006 and 1015 must never be sent.
    if type(code) is not int or not (1000 <= code <= 4999) or code in (1004, 1005, 1006, 1015):
        raise ASGIError(f"invalid WebSocket close code {code!r}")
    return code


def _close_reason(message: Message) -> str:
    reason = message.get("reason") or ""
    if type(reason) is not str:
        raise ASGIError(f"'reason' must be a string, got {type(reason).__name__}")
    # RFC 6455 §5.5: a control frame payload is at most 125 bytes, 2 of them the code.
    if len(reason.encode("utf-8")) > 123:
        raise ASGIError("WebSocket close reason longer than 123 bytes")
    return reason
