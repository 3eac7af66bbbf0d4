"""One ASGI HTTP request/response cycle, independent of the wire protocol.

The cycle is the only code that speaks ASGI ``http``. It never sees bytes: it talks to its
connection through the ``HTTPStream`` interface (implemented by the HTTP/1.1 protocol and
by each HTTP/2 stream), so request/response logic exists once.

Invariants:
- ``send`` enforces the ASGI message order: ``http.response.start``, then
  ``http.response.body`` until ``more_body`` is false, then (only after ``"trailers": True``)
  ``http.response.trailers`` until ``more_trailers`` is false; anything else raises
  ``ASGIError``. The extensions' messages are checked here too, for both protocols:
  ``http.response.early_hint`` until the response head went out, ``http.response.push``
  from the start until the last body message.
- The response head is handed to the stream together with the first body chunk.
- A response that uses none of the extensions pays one test for them (``"trailers" in``
  the start message); every other extension branch comes after the two hot ones.
- Trailers: a response that announced them is never ended by a body message; the stream is
  told ``send_trailers`` once, after the last trailers message, with the fields to send
  (none when the request did not say ``TE: trailers``: RFC 9110 §6.5.1 lets them go).
- ``receive`` returns buffered body first; once the body is complete and delivered it waits
  and returns ``http.disconnect`` when the client goes away or the response is complete.
- After ``run`` ends, the stream has been told exactly once: response complete, 500 sent,
  or aborted (so a truncated body is never taken as complete).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from sleipnir.asgi.contract import ASGIError, ReadOnlyOptions
from sleipnir.wire.h1 import Headers, RequestHead
from sleipnir.wire.h1_writer import ResponseHeaderError, check_fields

if TYPE_CHECKING:
    from sleipnir.logging import AccessLog
    from sleipnir.types import ASGIApp, Message, Scope

logger = logging.getLogger("sleipnir.error")

# Above this many unread body bytes the connection stops reading until the app receives.
BODY_HIGH_WATER_BYTES: Final = 65536
# pathsend reads the file in pieces of this size (one executor round trip each).
PATHSEND_CHUNK_BYTES: Final = 256 * 1024

_START: Final = 0
_BODY: Final = 1
_DONE: Final = 2
_TBODY: Final = 3  # body messages of a response that announced trailers
# The body is complete; http.response.trailers messages until more_trailers is false.
_TRAILERS: Final = 4
_EXPECTED: Final = {
    _START: "http.response.start",
    _BODY: "http.response.body",
    _TBODY: "http.response.body",
    _TRAILERS: "http.response.trailers",
}
_HINT_STATES: Final = (_START, _BODY, _TBODY)  # and the head not yet sent
_PUSH_STATES: Final = (_START, _BODY, _TBODY)

# Trailer fields a sender must not generate (RFC 9110 §6.5.1: framing, routing, request
# modifiers, authentication, response control data, content processing) and the
# connection-specific ones: dropped from http.response.trailers, as a recipient would.
FORBIDDEN_TRAILERS: Final = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"te",
        b"trailer",
        b"expect",
        b"max-forwards",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"set-cookie",
        b"cache-control",
        b"pragma",
        b"age",
        b"expires",
        b"date",
        b"location",
        b"retry-after",
        b"vary",
        b"content-encoding",
        b"content-type",
        b"content-range",
    )
)

_DISCONNECT: Final[dict[str, Any]] = {"type": "http.disconnect"}
_EMPTY_BODY: Final[dict[str, Any]] = {"type": "http.request", "body": b"", "more_body": False}
_ERROR_HEADERS: Final[Headers] = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"connection", b"close"),
]


_NO_OPTIONS: Final = ReadOnlyOptions()
# Advertised to every request, over both protocols (as hypercorn and uvicorn's HTTP/2 do):
# an extension is a message contract, and the cycle keeps it either way; whether trailer
# fields reach the client is the request's (TE: trailers) and the framing's business
# (docs/architecture.md, "ASGI HTTP extensions"). HTTP/2 adds http.response.push.
EXTENSIONS: Final[dict[str, Any]] = {
    "http.response.pathsend": _NO_OPTIONS,
    "http.response.trailers": _NO_OPTIONS,
    "http.response.early_hint": _NO_OPTIONS,
}


# While a server drains (--shutdown-delay): a readiness endpoint checks for this extension and
# answers "not ready", so that load balancers stop routing here before the listener closes.
DRAINING_EXTENSIONS: Final[dict[str, Any]] = {**EXTENSIONS, "sleipnir.draining": _NO_OPTIONS}


def http_scope(
    head: RequestHead,
    root_path: str,
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    scheme: str,
    lifespan_state: dict[str, Any],
    extensions: dict[str, Any] = EXTENSIONS,
) -> Scope:
    """The ASGI ``http`` scope of one request (spec 2.4), for HTTP/1.1 and HTTP/2 alike.

    Everything an app may mutate is fresh per request: the scope, the state copy, the
    extensions, copied from the ``extensions`` template (the empty options dicts in it are
    shared and read-only; ``DRAINING_EXTENSIONS`` while the server drains). ``root_path`` is
    prefixed to ``path`` and ``raw_path`` (as uvicorn does).
    """
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": head.http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": head.method,
        "root_path": root_path,
        "path": root_path + head.path if root_path else head.path,
        "raw_path": root_path.encode() + head.raw_path if root_path else head.raw_path,
        "query_string": head.query_string,
        "headers": head.headers,
        "state": lifespan_state.copy(),
        # A copy of a template: cheaper than building even a one-entry dict (measured).
        "extensions": extensions.copy(),
    }


class HTTPStream(Protocol):
    """What a cycle needs from its connection (one HTTP/1.1 exchange or one HTTP/2 stream)."""

    @property
    def write_paused(self) -> bool:
        """True while ``send`` must await ``drain()`` (a full socket buffer, or no window)."""

    def start_response(
        self, cycle: HTTPCycle, status: int, headers: Headers, body: bytes, end: bool
    ) -> None: ...

    def send_body(self, cycle: HTTPCycle, body: bytes, end: bool) -> None: ...

    def abort(self, cycle: HTTPCycle) -> None: ...

    async def drain(self) -> None: ...

    def body_wanted(self, cycle: HTTPCycle) -> None: ...

    def body_consumed(self, cycle: HTTPCycle) -> None: ...

    def cycle_done(self, cycle: HTTPCycle) -> None: ...

    # The HTTP extensions; the cycle has checked the message order and the fields.

    def send_trailers(self, cycle: HTTPCycle, trailers: Headers) -> None:
        """End a response whose body went out with ``end`` false: ``trailers`` after the body
        if the framing can carry them (empty: the client did not ask for them)."""

    def send_informational(self, cycle: HTTPCycle, status: int, headers: Headers) -> None:
        """A 1xx response before the final one (103 Early Hints), where the protocol allows."""

    def push(self, cycle: HTTPCycle, path: str, headers: Headers) -> None:
        """Promise a GET of ``path`` and serve it like a request; ignored without server push."""


class AppContext:
    """What every cycle of one server shares: the app and the logging switches."""

    __slots__ = ("access_log", "app", "trace")

    def __init__(self, app: ASGIApp, access_log: AccessLog | None, trace: bool) -> None:
        self.app = app
        self.access_log = access_log
        self.trace = trace


class HTTPCycle:
    """Runs the app for one request and turns its messages into stream calls."""

    __slots__ = (
        "_bytes_sent",
        "_chunks",
        "_ctx",
        "_final_delivered",
        "_headers",
        "_peer_closed",
        "_started_at",
        "_state",
        "_status",
        "_trailers",
        "_waiter",
        "buffered",
        "disconnected",
        "expect_continue",
        "request_complete",
        "response_started",
        "scope",
        "stream",
        "task",
    )

    def __init__(
        self, scope: Scope, stream: HTTPStream, ctx: AppContext, expect_continue: bool
    ) -> None:
        self.scope = scope
        self.stream = stream
        self._ctx = ctx
        self.expect_continue = expect_continue
        self._chunks: list[bytes] = []
        self.buffered = 0
        self.request_complete = False
        self._final_delivered = False
        self._peer_closed = False
        self.disconnected = False
        self.response_started = False
        self._waiter: asyncio.Future[None] | None = None
        self._state = _START
        self._status = 0
        self._headers: Headers = []
        self._bytes_sent = 0
        self._started_at = time.perf_counter() if ctx.access_log is not None else 0.0
        self.task: asyncio.Task[None] | None = None

    # Events from the connection ------------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def message_complete(self) -> None:
        self.request_complete = True
        waiter = self._waiter  # _wake(), inlined: this runs for every request
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self) -> None:
        self.disconnected = True
        self._wake()

    def peer_closed(self) -> None:
        """The client closed its side after the request (a close, or a half-close): receive()
        reports http.disconnect once the body is delivered (as uvicorn does), while send()
        still writes, so a half-closing client that waits can still read the response."""
        self._peer_closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The ASGI callables ----------------------------------------------------------------------

    async def receive(self) -> Message:
        while True:
            if self.disconnected and not self.request_complete:
                message: Message = dict(_DISCONNECT)
                break
            if self._chunks:
                return self._take_body()
            if self.request_complete and not self._final_delivered:
                self._final_delivered = True
                message = dict(_EMPTY_BODY)
                break
            if self.disconnected or self._peer_closed or self._state == _DONE:
                message = dict(_DISCONNECT)
                break
            self._waiter = asyncio.get_running_loop().create_future()
            self.stream.body_wanted(self)
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._ctx.trace:
            _trace("receive", self.scope, message)
        return message

    def _take_body(self) -> Message:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self.buffered = 0
        self.stream.body_consumed(self)
        more = not self.request_complete
        self._final_delivered = not more
        message: Message = {"type": "http.request", "body": data, "more_body": more}
        if self._ctx.trace:
            _trace("receive", self.scope, message)
        return message

    async def send(self, message: Message) -> None:
        # A dict, as the spec says (any other mapping is copied into one): in a compiled build
        # (docs/architecture.md) a dict's lookups are direct calls, a mapping's are not.
        msg: dict[str, Any] = message if type(message) is dict else dict(message)
        if self._ctx.trace:
            _trace("send", self.scope, msg)
        mtype = msg["type"]
        if self._state == _BODY and mtype == "http.response.body":
            body = msg.get("body", b"")
            if type(body) is not bytes:
                body = _as_bytes(body)
            more = msg.get("more_body", False)
            if self.disconnected:
                if not more:
                    self._state = _DONE
                return
            if not self.response_started:
                self.stream.start_response(self, self._status, self._headers, body, not more)
                self.response_started = True
            elif body or not more:
                self.stream.send_body(self, body, not more)
            self._bytes_sent += len(body)
            if not more:
                # Only once the stream took the last message: if it refused it (a body longer
                # than Content-Length), fail() must still abort the unfinished response.
                self._state = _DONE
                # _finish() only has work when a receive() waits or the access log is on; the
                # test spares the usual response a call.
                if self._waiter is not None or self._ctx.access_log is not None:
                    self._finish()
            elif self.stream.write_paused:
                await self.stream.drain()
        elif self._state == _START and mtype == "http.response.start":
            status = msg.get("status")
            if type(status) is not int or not 100 <= status <= 999:
                raise ASGIError(f"invalid status {status!r} in 'http.response.start'")
            self._status = status
            headers = msg.get("headers", ())
            if type(headers) is list:
                # The usual case, a list of (bytes, bytes) tuples, is used as is: no copy.
                for item in headers:
                    if type(item) is not tuple or len(item) != 2:
                        break
                    name, value = item
                    if type(name) is not bytes or type(value) is not bytes:
                        break
                else:
                    self._headers = headers
                    self._state = _BODY
                    if "trailers" in msg:  # the one test the extensions cost a response
                        self._announce_trailers(msg["trailers"])
                    return
            self._headers = check_headers(headers)
            self._state = _BODY
            if "trailers" in msg:
                self._announce_trailers(msg["trailers"])
        elif self._state == _TBODY and mtype == "http.response.body":
            await self._send_body_before_trailers(msg)
        elif self._state == _TRAILERS and mtype == "http.response.trailers":
            self._send_trailers(msg)
        elif (
            (self._state == _BODY or self._state == _TBODY)
            and mtype == "http.response.pathsend"
            and not self.response_started
        ):
            await self._send_path(msg.get("path"))
        elif (
            mtype == "http.response.early_hint"
            and self._state in _HINT_STATES
            and not self.response_started
        ):
            self._early_hint(msg.get("links"))
        elif mtype == "http.response.push" and self._state in _PUSH_STATES:
            self._push(msg)
        elif self._state == _DONE:
            raise ASGIError(f"unexpected ASGI message {mtype!r} after the response completed")
        elif mtype == "http.response.trailers" and self._state == _BODY:
            raise ASGIError("'http.response.trailers' without 'trailers': True in the start")
        elif mtype == "http.response.early_hint" and self.response_started:
            raise ASGIError("'http.response.early_hint' after the response head was sent")
        else:
            raise ASGIError(f"expected ASGI message {_EXPECTED[self._state]!r}, got {mtype!r}")

    # The HTTP extensions (asgiref docs/extensions.rst) -------------------------------------

    def _announce_trailers(self, trailers: object) -> None:
        """``"trailers": True`` in ``http.response.start``: the body messages will not end the
        response, trailers messages will."""
        if trailers:
            self._state = _TBODY
            self._trailers: Headers = []

    async def _send_body_before_trailers(self, message: Message) -> None:
        """A body message of a response with trailers: the stream is never told ``end``; the
        last one moves on to the trailers."""
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = _as_bytes(body)
        more = message.get("more_body", False)
        if not self.disconnected:
            if not self.response_started:
                self.stream.start_response(self, self._status, self._headers, body, False)
                self.response_started = True
            elif body:
                self.stream.send_body(self, body, False)
            self._bytes_sent += len(body)
        if not more:
            self._state = _TRAILERS  # as for a last body: no drain, the trailers queue behind
        elif self.stream.write_paused and not self.disconnected:
            await self.stream.drain()

    def _send_trailers(self, message: Message) -> None:
        fields = _checked_fields(message.get("headers", ()), "trailer")
        self._trailers += [pair for pair in fields if pair[0].lower() not in FORBIDDEN_TRAILERS]
        if message.get("more_trailers", False):
            return
        if self.disconnected:
            self._state = _DONE
            return
        # asgiref: trailers go out only when the request said TE: trailers (RFC 9110 §10.1.4);
        # else they are dropped (§6.5.1), the response still ends here.
        trailers = self._trailers if accepts_trailers(self.scope["headers"]) else []
        self.stream.send_trailers(self, trailers)
        self._state = _DONE  # only once the stream took it: else fail() must still abort
        self._finish()

    def _early_hint(self, links: Any) -> None:
        """103 Early Hints (RFC 8297): one ``link`` field per entry (RFC 8288 values)."""
        if isinstance(links, (bytes, str, bytearray, memoryview)):
            raise ASGIError(f"'links' must be an iterable of byte strings, got {links!r}")
        try:
            fields = [(b"link", _bytes_like(link).strip(b" \t")) for link in links]
        except TypeError as exc:
            raise ASGIError(f"'links' must be an iterable of byte strings: {exc}") from exc
        if not all(value for _, value in fields):
            raise ASGIError("empty link in 'http.response.early_hint'")
        fields = _checked_fields(fields, "link")
        if fields and not self.disconnected:
            self.stream.send_informational(self, 103, fields)

    def _push(self, message: Message) -> None:
        path = message.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ASGIError(f"'path' must be a string starting with '/', got {path!r}")
        headers = _checked_fields(message.get("headers", ()), "push")
        if not self.disconnected:
            self.stream.push(self, path, headers)

    async def _send_path(self, path: object) -> None:
        """ASGI pathsend extension: the file at ``path`` is the whole response body.

        Reads happen in the default executor, so a slow disk never blocks the loop; each chunk
        goes through ``send`` like an app's body message (framing, flow control, access log).
        """
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ASGIError(f"'path' must be an absolute path string, got {path!r}")
        loop = asyncio.get_running_loop()
        file = await loop.run_in_executor(None, open, path, "rb")
        try:
            data = await loop.run_in_executor(None, file.read, PATHSEND_CHUNK_BYTES)
            while True:
                following = b""
                if len(data) == PATHSEND_CHUNK_BYTES:
                    following = await loop.run_in_executor(None, file.read, PATHSEND_CHUNK_BYTES)
                await self.send(
                    {"type": "http.response.body", "body": data, "more_body": bool(following)}
                )
                if not following or self.disconnected:
                    return
                data = following
        finally:
            file.close()

    def _finish(self) -> None:
        self._wake()
        log = self._ctx.access_log
        if log is not None:
            scope = self.scope
            log.log(
                scope["client"],
                scope["method"],
                scope["raw_path"],
                scope["query_string"],
                scope["http_version"],
                self._status,
                self._bytes_sent,
                time.perf_counter() - self._started_at,
            )

    def protocol_switched(self, status: int = 101) -> None:
        """The connection switched protocols (a 101 went out, or the 200 of an HTTP/2
        extended CONNECT): this exchange is complete."""
        self._status = status
        self._state = _DONE
        self.response_started = True
        self._finish()

    # Running the application ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._ctx.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._app_failed(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._state != _DONE and not self.disconnected:
                if self._peer_closed:
                    # An app that stops once told the client left is not at fault (uvicorn is
                    # silent too); the half-open connection must still end.
                    self.stream.abort(self)
                    return
                what = "starting" if self._state == _START else "completing"
                logger.error("ASGI application returned without %s the response", what)
                self.fail()
        finally:
            self.stream.cycle_done(self)

    def _app_failed(self, exc: BaseException) -> None:
        log_app_failure(exc, f"request {self.scope['method']} {self.scope['path']}")
        self.fail()

    def fail(self) -> None:
        """Answer 500 if nothing was sent yet, else abort so the truncation shows."""
        if self.disconnected:
            return
        if self.response_started:
            if self._state != _DONE:
                self.stream.abort(self)
            return
        self._status = 500
        self._state = _DONE
        self.response_started = True
        self.stream.start_response(self, 500, _ERROR_HEADERS, b"Internal Server Error\n", True)
        self._bytes_sent = 22
        self._finish()


def log_app_failure(exc: BaseException, what: str) -> None:
    """One log line for an app that raised: a cancellation (shutdown) at debug level, a broken
    ASGI contract named as such, anything else with its traceback."""
    if isinstance(exc, asyncio.CancelledError):
        logger.debug("%s cancelled", what)
    elif isinstance(exc, ASGIError):
        logger.error("ASGI protocol error: %s", exc, exc_info=exc)
    else:
        logger.error("Exception in ASGI application", exc_info=exc)


def _as_bytes(body: object) -> bytes:
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise ASGIError(f"'body' must be bytes, got {type(body).__name__}")


def check_headers(headers: Any) -> Headers:
    # Type checks, not bytes(): bytes(3) is three NULs, bytes([104, 105]) is b"hi", and
    # iterating a dict unpacks its keys' characters.
    try:
        checked = [
            (name, value)
            if type(name) is bytes and type(value) is bytes
            else (_bytes_like(name), _bytes_like(value))
            for name, value in headers
        ]
    except (TypeError, ValueError) as exc:
        raise ASGIError(f"'headers' must be an iterable of [bytes, bytes] pairs: {exc}") from exc
    return checked


def _checked_fields(fields: Any, what: str) -> Headers:
    """``check_headers``, then the wire rules (names are tokens, no CR, LF or NUL in values),
    so an app's mistake fails alike over both protocols and whether or not the fields are
    sent (the fields of a response head are checked where it is encoded, on the hot path)."""
    checked = check_headers(fields)
    try:
        check_fields(checked)
    except ResponseHeaderError as exc:
        raise ASGIError(f"refused {what} fields: {exc}") from None
    return checked


def accepts_trailers(headers: Headers) -> bool:
    """The request's TE lists "trailers" (RFC 9110 §10.1.4)."""
    for name, value in headers:
        if name == b"te":
            for item in value.decode("latin-1").split(","):
                if item.partition(";")[0].strip().lower() == "trailers":
                    return True
    return False


def _bytes_like(item: object) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TypeError(f"got {type(item).__name__}")


def _trace(direction: str, scope: Scope, message: Message) -> None:
    from sleipnir.logging import TRACE_LOG_LEVEL, trace_message

    if logger.isEnabledFor(TRACE_LOG_LEVEL):
        client = scope.get("client")
        prefix = f"{client[0]}:{client[1]} - ASGI [{direction}]" if client else "ASGI"
        trace_message(logger, prefix, message)
