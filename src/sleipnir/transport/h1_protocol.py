"""The HTTP/1.1 connection: an ``asyncio.Protocol`` joining a parser, cycles and the socket.

Invariants:
- At most one cycle is active (``self.cycle``); requests parsed while it runs wait in
  ``_pipeline`` in arrival order and reading is paused until they are served (RFC 9112 §9.3.2).
  The queue is bounded by what one read delivered.
- Responses of pipelined requests are gathered and written together.
- A request's app runs without a task of its own when it can (docs/architecture.md, "Eager
  requests"): its first step once the read that started it is parsed, with the connection's
  runner as the current task, which goes on with it if it suspends; the runner runs one
  request coroutine at a time, a request started while it is busy gets a task.
- ``deadline`` is 0 while a request is being served; otherwise it is when the connection must
  go: the keep-alive timeout while idle, the request-header timeout while a head is arriving
  (slowloris), a short linger while closing after an unread body.
- Reading is paused while the active request has more than BODY_HIGH_WATER_BYTES unread.
- After a framing error or ``Connection: close`` no further request is parsed.
- A WebSocket handshake is the connection's last HTTP request: the parser stops after it, the
  app's answer is either an HTTP response (then the connection closes) or an accept, which
  hands the transport and the bytes read since to a ``WSConnection``.
- An ``Upgrade: h2c`` request that is taken (``_h2c_candidate``) is the connection's last
  HTTP/1.1 request: the 101 goes out from ``on_request`` and an ``H2Protocol`` owns the
  transport from there, the parser reading the request's body for its stream 1. A framing
  error in that body is the HTTP/2 connection's (``H2Protocol.upgrade_failed``), not a 400.
- ASGI extensions: trailer fields go out only after a chunked body (the cycle passes none
  without ``TE: trailers``), 103 Early Hints only to HTTP/1.1 requests, push never.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast

from sleipnir.asgi.contract import ASGIError
from sleipnir.asgi.http_cycle import BODY_HIGH_WATER_BYTES, HTTPCycle, http_scope
from sleipnir.asgi.ws_cycle import WSCycle, websocket_scope
from sleipnir.transport.eager import EagerRequests, create_task, request_context
from sleipnir.transport.flow import WriteFlow
from sleipnir.transport.state import ServerState
from sleipnir.transport.ws_protocol import WSConnection
from sleipnir.wire import h1_writer as w
from sleipnir.wire import ws
from sleipnir.wire.h1 import H1Error, H1Parser, Headers, RequestHead, declared_length

if TYPE_CHECKING:
    from sleipnir.transport.h2_protocol import H2Protocol

# Graceful shutdown: how long an idle keep-alive connection stays open for a request already
# on its way (H1Protocol.shutdown); the server's drain waits this long for idle connections.
SHUTDOWN_GRACE_S: Final = 0.25
# How long to keep reading after an unread body before closing (RFC 9112 §9.6).
LINGER_S: Final = 2.0
FLUSH_BYTES: Final = 65536  # gathered pipelined responses are written once they exceed this
# A body up to this size is copied behind its head (one small write); a larger one is handed
# to the transport beside it (one writev on uvloop), so a big body is never copied.
COPY_MAX_BYTES: Final = 16384
# RFC 9113 §3.4; wire/h2.PREFACE, not imported from there: that would import h2 (optional).
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def make_parser(kind: str, handler: Any, state: ServerState) -> H1Parser:
    if kind == "httptools":
        from sleipnir.wire.h1_httptools import HttptoolsParser

        return HttptoolsParser(handler, state.limits)
    from sleipnir.wire.h1_h11 import H11Parser

    return H11Parser(handler, state.limits)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


class H1Protocol(WriteFlow, EagerRequests):
    """One HTTP/1.1 connection."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._loop = asyncio.get_running_loop()
        self.deadline = 0.0
        self.cycle: HTTPCycle | None = None
        self.write_paused = False
        self._head: RequestHead | None = None
        self._pipeline: deque[tuple[HTTPCycle, RequestHead]] = deque()
        self._body_target: HTTPCycle | None = None
        self._read_paused = False
        self._closing = False
        self._lingering = False
        self._eof = False
        self._pending_error: H1Error | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] | None = None
        self._framing = w.FRAMING_NONE
        self._remaining = 0
        self._keep_alive = True
        self._request_body_bytes = 0
        self._head_timed = False  # the request-header deadline is running
        self._head_base: float | None = None  # when the next head's clock started
        self._last_request = False  # Connection: close or a refused request was seen
        self._pipeline_progress = False
        self._ws: WSCycle | None = None  # a WebSocket handshake being answered
        self._handshake: ws.Handshake | None = None
        # HTTP/2 prior knowledge: the first bytes are compared with the client preface until
        # they differ (then never again: the HTTP/1.1 path pays one attribute test per read).
        self._h2_probe = False
        self._probe = b""
        self._h2c: H2Protocol | None = None  # took over after an h2c Upgrade request
        self._init_eager(False)  # (connection_made decides)

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        state = self._state
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.parser = make_parser(state.parser, self, state)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._client = _address(peer)
        self._server = _address(sock) or ((sock, None) if isinstance(sock, str) else None)
        self._scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        # A unix-socket peer has no address: the socket path is what --forwarded-allow-ips names.
        host = self._client[0] if self._client else (sock if isinstance(sock, str) else None)
        proxies = state.proxies
        self._proxies = proxies if proxies is not None and proxies.is_trusted(host) else None
        self._client_label = f"{self._client[0]}:{self._client[1]}" if self._client else "-"
        # Nothing has arrived yet: the first request head must come within both timeouts.
        timeout = min(state.timeout_keep_alive_s, state.timeout_request_header_s)
        self._head_base = self._loop.time()
        self.deadline = self._head_base + timeout
        state.clock.connections.add(self)
        self._plain_tasks = self._loop.get_task_factory() is None
        self._init_eager(self._plain_tasks)
        self._context = contextvars.copy_context()  # the server's, not any request's
        if state.shutting_down:
            self.shutdown()  # accepted just before the listener closed: answer what it sends
        elif state.h2 is not None:
            self._h2_probe = True
            if self._scheme == "https":
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                    self._to_h2(b"")  # TLS ALPN chose HTTP/2 (RFC 9113 §3.2)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._stop_runner()
        self._state.clock.connections.discard(self)
        if self.cycle is not None:
            self.cycle.connection_lost()
        for cycle, _ in self._pipeline:
            cycle.connection_lost()
        self._pipeline.clear()
        if self._ws is not None:
            self._ws.connection_lost()
        self._wake_drain()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._lingering:
            return None
        target = self._body_target
        if target is not None and not target.request_complete:
            self._fail_request(H1Error(400, "connection closed in the middle of the request body"))
            return None
        if self.cycle is None or self._ws is not None:
            if self.parser.head_in_progress():
                self._send_error(
                    H1Error(400, "connection closed in the middle of the request head")
                )
            self._flush()  # gathered pipelined responses go out before asyncio closes
            return None  # idle: let the transport close
        self.cycle.peer_closed()  # an app waiting for the client to go away learns it did
        return True  # a request is being served: answer it, then close

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._h2_probe:
            data = self._probe_h2(data)
            if not data:
                return
        if not self._head_timed and self.cycle is None and not self._lingering:
            # A head starts arriving: it has the request-header timeout to complete, counted
            # from the accept for a connection's first request (RFC 9112 §9.5 lets us close).
            self._head_timed = True
            base = self._head_base if self._head_base is not None else self._loop.time()
            self.deadline = base + self._state.timeout_request_header_s
        self._parsing = True
        try:
            self.parser.feed(data)
        except H1Error as exc:
            if self._h2c is not None:  # in the body of an h2c Upgrade request (it took over)
                self._h2c.upgrade_failed(exc)
                return
            self._fail_request(exc)
        finally:
            self._parsing = False
        if self._ready is not None:
            self._drive()  # the request this read started, now that all of it is parsed

    def _probe_h2(self, data: bytes) -> bytes:
        """Look for the HTTP/2 client preface (RFC 9113 §3.3) in the connection's first bytes,
        which may come split; return the bytes that are HTTP/1.1 (b"" while undecided)."""
        if self._probe:
            data = self._probe + data
            self._probe = b""
        if len(data) >= len(_H2_PREFACE):
            if data.startswith(_H2_PREFACE):
                self._to_h2(data)
                return b""
        elif _H2_PREFACE.startswith(data):
            self._probe = data  # a prefix of the preface, or of "POST ...": wait for more
            return b""
        self._h2_probe = False
        return data

    def _to_h2(self, data: bytes) -> None:
        """Hand the transport (and ``data``, the client's first bytes) to an HTTP/2 connection."""
        conn = self._h2_connection()
        self._detach()
        conn.start(data)

    def _h2c_candidate(self, head: RequestHead) -> bool:
        """An ``Upgrade: h2c`` request (RFC 7540 §3.2) this connection takes: cleartext, nothing
        in flight, one ``HTTP2-Settings``; with or without a body, but not one whose declared
        length is over ``--limit-request-body`` (HTTP/1.1 refuses that before reading it) nor
        one that waits for 100 Continue (docs/architecture.md, "HTTP/2"). The switch happens
        here, in the parser's callback: the 101 and our preface go out, stream 1 starts, and
        the parser goes on reading the body for it (``H2Protocol.start_upgrade``). An invalid
        ``HTTP2-Settings`` is a 400."""
        if head.upgrade is None or head.upgrade.lower() != b"h2c":
            return False
        if self._scheme != "http" or self.cycle is not None or self._pipeline:
            return False
        settings = [v for n, v in head.headers if n == b"http2-settings"]
        if len(settings) != 1:
            return False
        if any(
            n == b"transfer-encoding" or (n == b"content-length" and v != b"0")
            for n, v in head.headers
        ):  # a body (the rule H2Codec.initiate_upgrade applies)
            limit = self._state.limit_request_body
            if head.expect_continue or (
                limit is not None and declared_length(head.headers) > limit
            ):
                return False  # served over HTTP/1.1: the server may ignore Upgrade
        conn = self._h2_connection()
        switching = w.switching_protocols([(b"upgrade", b"h2c")], self._state.clock.defaults)
        if not conn.start_upgrade(switching, settings[0], head, self.parser):
            raise H1Error(400, "invalid HTTP2-Settings")
        self._h2c = conn
        self._detach()
        return True

    def _detach(self) -> None:
        """This object is done: the transport is an H2Protocol's from here."""
        self._h2_probe = False
        self._closing = True
        self.deadline = 0.0
        self._state.clock.connections.discard(self)
        self._stop_runner()

    def _h2_connection(self) -> H2Protocol:
        from sleipnir.transport.h2_protocol import H2Protocol

        state = self._state
        assert state.h2 is not None
        return H2Protocol(
            state,
            state.h2,
            self.transport,
            client=self._client,
            server=self._server,
            scheme=self._scheme,
            proxies=self._proxies,
            client_label=self._client_label,
            context=self._context,
            plain_tasks=self._plain_tasks,
        )

    # H1Handler: parser events ----------------------------------------------------------------

    def on_request(self, head: RequestHead) -> None:
        if self._closing or self._last_request:
            return
        state = self._state
        if head.upgrade is not None and state.h2 is not None and self._h2c_candidate(head):
            return
        scope = http_scope(
            head,
            state.root_path,
            self._server,
            self._client,
            self._scheme,
            state.lifespan_state,
            state.extensions,
        )
        if self._proxies is not None:
            self._proxies.apply_trusted(scope)
        cycle = HTTPCycle(scope, self, state.ctx, head.expect_continue)
        if head.upgrade is not None and state.ws is not None and ws.is_upgrade(head.headers):
            self._websocket_handshake(cycle, head)
        self._body_target = cycle
        self._request_body_bytes = 0
        self.deadline = 0.0
        self._head_timed = False
        self._head_base = None
        if self.cycle is None:
            self._start(cycle, head)
        else:
            self._pipeline.append((cycle, head))
            self._pause_reading()
        if not head.keep_alive:
            self._last_request = True  # RFC 9112 §9.6: no request after Connection: close

    def _websocket_handshake(self, cycle: HTTPCycle, head: RequestHead) -> None:
        """An upgrade to WebSocket (RFC 6455 §4.2): the app answers it through a ``WSCycle``;
        an invalid handshake raises ``HandshakeError`` (400 or 426)."""
        settings = self._state.ws
        assert settings is not None
        handshake = ws.check_handshake(head.method, head.http_version, head.headers)
        scope = websocket_scope(cycle.scope, handshake.subprotocols)
        self._ws = WSCycle(scope, cycle, self, self._state.ctx, settings.max_queue)
        self._handshake = handshake
        self.parser.stop()  # what follows the handshake is WebSocket frames, not HTTP

    def accept_websocket(
        self, cycle: WSCycle, subprotocol: str | None, headers: Headers
    ) -> WSConnection:
        """The app accepted: send the 101 and hand the transport to a ``WSConnection``."""
        state = self._state
        settings = state.ws
        handshake = self._handshake
        assert settings is not None and handshake is not None and cycle is self._ws
        conn = WSConnection(
            state, settings, self.transport, cycle, handshake.extension_offers, self._client_label
        )
        response: Headers = [
            (b"upgrade", b"websocket"),
            (b"sec-websocket-accept", ws.accept_key(handshake.key)),
            *ws.accept_headers(subprotocol, conn.codec.extensions_header, headers),
        ]
        try:
            head = w.switching_protocols(response, state.clock.defaults)
        except w.ResponseHeaderError as exc:
            raise ASGIError(f"refused WebSocket accept headers: {exc}") from None
        cycle.http.protocol_switched()
        # This connection is done with HTTP: the WebSocket owns the transport from here.
        self._flush()  # responses to requests pipelined before the handshake go first
        self._closing = True
        self.cycle = None
        self._ws = None
        state.clock.connections.discard(self)
        self._stop_runner()
        conn.start(head, self.parser.take_held())
        return conn

    def on_body(self, data: bytes) -> None:
        target = self._body_target
        if target is None:
            return
        limit = self._state.limit_request_body
        if limit is not None:
            self._request_body_bytes += len(data)
            if self._request_body_bytes > limit:
                raise H1Error(413, "request body larger than the limit")
        target.body_received(data)
        if target.buffered > BODY_HIGH_WATER_BYTES:
            self._pause_reading()

    def on_complete(self) -> None:
        target = self._body_target
        if target is not None:
            target.message_complete()
            self._body_target = None

    # Scheduling cycles -----------------------------------------------------------------------

    def _start(self, cycle: HTTPCycle, head: RequestHead) -> None:
        state = self._state
        self.cycle = cycle
        self._head = head
        self._keep_alive = head.keep_alive
        limit = state.limit_concurrency
        if limit is not None and (
            len(state.clock.connections) > limit or len(state.tasks) >= limit
        ):
            self._service_unavailable(cycle)
            return
        limit_body = state.limit_request_body
        if limit_body is not None and declared_length(head.headers) > limit_body:
            # Refuse before reading the body (RFC 9110 §15.5.14), then close.
            self._fail_request(H1Error(413, "declared request body larger than the limit"))
            return
        websocket = self._ws
        if websocket is not None and websocket.http is cycle:
            self._keep_alive = False  # a denial response ends the connection
            context = request_context(state, self._context)
            task = create_task(self._loop, websocket.run(), context, self._plain_tasks)
            websocket.task = task
            task.add_done_callback(state.tasks.discard)
            state.tasks.add(task)
        elif self._can_add_ready():
            self._add_ready(cycle)  # run by _drive or the runner once the parse or step is over
        else:  # a custom task factory, or the runner is busy with an earlier request's app
            context = request_context(state, self._context)
            cycle.task = task = create_task(self._loop, cycle.run(), context, self._plain_tasks)
            state.tasks.add(task)

    def _service_unavailable(self, cycle: HTTPCycle) -> None:
        self.cycle = None
        cycle.connection_lost()
        self._write(
            w.simple_response(503, "server at its concurrency limit", self._state.clock.defaults)
        )
        self._close()

    def _response_done(self) -> None:
        """The active response is complete: close, linger, or go on to the next request."""
        state = self._state
        state.total_requests += 1
        if state.total_requests == state.request_limit:
            state.on_request_limit()
        cycle = self.cycle
        assert cycle is not None
        self.cycle = None
        # After the client's EOF, requests it sent before it are still answered (RFC 9112 §9.6).
        if not self._keep_alive or state.shutting_down or (self._eof and not self._pipeline):
            self._close()
            return
        if not cycle.request_complete:
            self._linger()
            return
        if self._pipeline:
            next_cycle, head = self._pipeline.popleft()
            self._pipeline_progress = True
            self._gather_writes()
            self._start(next_cycle, head)
            return
        if self._pending_error is not None:
            self._send_error(self._pending_error)
            return
        now = self._loop.time()
        if self.parser.head_in_progress():
            self._head_timed = True
            self.deadline = now + state.timeout_request_header_s
        else:
            self.deadline = now + state.timeout_keep_alive_s
        if self._read_paused:
            self._resume_reading()

    # HTTPStream: what the cycle calls --------------------------------------------------------

    def start_response(
        self, cycle: HTTPCycle, status: int, headers: Headers, body: bytes, end: bool
    ) -> None:
        head = self._head
        assert head is not None and cycle is self.cycle
        try:
            # Positional arguments: a call with keywords is not specialised by CPython 3.11.
            data, framing, length, keep_alive = w.encode_head(
                status,
                headers,
                self._state.clock.defaults,
                head.method == "HEAD",  # head_request
                head.http_version == "1.0",  # http10
                self._keep_alive  # keep_alive
                and not self._state.shutting_down
                and not (self._eof and not self._pipeline),
                len(body) if end else -1,  # final_body_len
            )
        except w.ResponseHeaderError as exc:  # logged as what it is: a bad ASGI message
            raise ASGIError(f"refused response head: {exc}") from None
        if framing == w.FRAMING_LENGTH and len(body) > length:
            raise ASGIError("response body longer than its Content-Length")
        self._framing = framing
        self._remaining = length - len(body)
        self._keep_alive = keep_alive
        if framing == w.FRAMING_NONE or not body:
            self._write(data + w.LAST_CHUNK if end and framing == w.FRAMING_CHUNKED else data)
        elif len(body) <= COPY_MAX_BYTES:
            if framing == w.FRAMING_CHUNKED:
                body = w.chunk(body) + w.LAST_CHUNK if end else w.chunk(body)
            if self._out is None:  # _write(), inlined for the usual small response
                self.transport.write(data + body)
            else:
                self._write(data + body)
        elif framing == w.FRAMING_CHUNKED:
            self._write_parts([data, *_chunk_parts(body, end)])
        else:
            self._write_parts([data, body])
        if end:
            if framing == w.FRAMING_LENGTH and self._remaining > 0:
                self._short_body(cycle)
            else:
                self._response_done()

    def send_body(self, cycle: HTTPCycle, body: bytes, end: bool) -> None:
        framing = self._framing
        if self._out is None and not end:
            # A streamed body: the pieces an app sends before it next suspends go out in one
            # write at the end of this loop iteration, not one system call each (100 chunks of
            # 64 bytes: 1 write, not 100). Nothing waits longer: the loop runs the flush before
            # it blocks, and _write flushes past 64 pieces or FLUSH_BYTES.
            self._gather_writes()
        if framing == w.FRAMING_CHUNKED:
            if len(body) > COPY_MAX_BYTES:
                self._write_parts(_chunk_parts(body, end))
            elif body:
                self._write(w.chunk(body) + w.LAST_CHUNK if end else w.chunk(body))
            elif end:
                self._write(w.LAST_CHUNK)
        elif framing == w.FRAMING_LENGTH:
            if len(body) > self._remaining:
                raise ASGIError("response body longer than its Content-Length")
            self._remaining -= len(body)
            self._write(body)
        elif framing == w.FRAMING_CLOSE:
            self._write(body)
        if end:
            if framing == w.FRAMING_LENGTH and self._remaining > 0:
                self._short_body(cycle)
            else:
                self._response_done()

    def send_trailers(self, cycle: HTTPCycle, trailers: Headers) -> None:
        # Only a chunked body can carry trailer fields (RFC 9112 §7.1.2); with HTTP/1.0, a
        # Content-Length, or no body (HEAD, 204, 304) they are dropped (RFC 9110 §6.5.1).
        if trailers and self._framing == w.FRAMING_CHUNKED:
            self._write(w.trailer_section(trailers))
            self._response_done()
        else:
            self.send_body(cycle, b"", True)

    def send_informational(self, cycle: HTTPCycle, status: int, headers: Headers) -> None:
        head = self._head
        # Not to an HTTP/1.0 client (RFC 9110 §15.2, RFC 8297 §2).
        if cycle is self.cycle and head is not None and head.http_version != "1.0":
            self._write(w.informational(status, headers))

    def push(self, cycle: HTTPCycle, path: str, headers: Headers) -> None:
        """HTTP/1.1 has no server push: ignored (the extension is not advertised here)."""

    def _short_body(self, cycle: HTTPCycle) -> None:
        from sleipnir.asgi.http_cycle import logger

        logger.error("response body shorter than its Content-Length; closing the connection")
        self.abort(cycle)

    def abort(self, cycle: HTTPCycle) -> None:
        if cycle is self.cycle:
            self.cycle = None
            self._close()

    def _gone(self) -> bool:
        return self._closing

    def body_wanted(self, cycle: HTTPCycle) -> None:
        if cycle is not self.cycle:
            return
        if cycle.expect_continue and not cycle.response_started:
            cycle.expect_continue = False
            self._write(w.CONTINUE_100)
        self._resume_reading()

    def body_consumed(self, cycle: HTTPCycle) -> None:
        if cycle is self.cycle:
            self._resume_reading()

    def cycle_done(self, cycle: HTTPCycle) -> None:
        task = cycle.task
        if task is not None:
            self._state.tasks.discard(task)

    # Deadlines, closing, errors --------------------------------------------------------------

    def on_deadline(self) -> None:
        self.deadline = 0.0
        if self._lingering or self.cycle is not None:
            self._abort_transport()
        elif self.parser.head_in_progress():
            self._send_error(H1Error(408, "request head not received in time"))
        else:
            self._close()

    def shutdown(self) -> None:
        """Graceful shutdown: close after the response in progress; an idle connection gets
        ``SHUTDOWN_GRACE_S`` first, for a request already on its way (under load, the next
        request is usually in the socket buffer, unread: closing would reset it, RFC 9112
        §9.6). A request that arrives meanwhile is answered with ``Connection: close``."""
        if self.cycle is None and not self._pipeline and not self._closing:
            self._loop.call_later(SHUTDOWN_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        # (unless the connection has been handed to the HTTP/2 or WebSocket protocol)
        ours = self.transport.get_protocol() is cast(object, self)
        if ours and self.cycle is None and not self._pipeline:
            self._close()

    def _fail_request(self, exc: H1Error) -> None:
        """A request could not be parsed or must be refused; answer if possible, then close."""
        target = self._body_target
        self._body_target = None
        if target is not None and not target.request_complete:
            target.connection_lost()  # the app sees http.disconnect
        cycle = self.cycle
        if cycle is None or (cycle is target and not cycle.response_started):
            if cycle is not None:
                self.cycle = None
            self._send_error(exc)
        elif cycle is target:
            self._close()
        else:
            if target is not None and self._pipeline and self._pipeline[-1][0] is target:
                # A pipelined request refused before it started: the error answers it.
                self._pipeline.pop()
            self._pending_error = exc
            self._last_request = True

    def _send_error(self, exc: H1Error) -> None:
        self._state.log_bad_request(self._client_label, exc.status, exc.reason)
        defaults = self._state.clock.defaults
        self._write(w.simple_response(exc.status, exc.reason, defaults, exc.headers))
        if exc.status == 413 and not self._eof:
            # The client is likely still sending the body: closing now, with its bytes unread,
            # would reset the connection and lose the 413 (RFC 9112 §9.6). Read and discard.
            self._linger()
        else:
            self._close()

    def _linger(self) -> None:
        """Stop serving but keep reading (and discarding) for a while, so that closing with
        unread data does not reset the connection before the client reads the response."""
        self._flush()
        self._lingering = True
        self._closing = True
        self._resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = self._loop.time() + LINGER_S

    def _close(self) -> None:
        self._closing = True
        self._flush()
        self.deadline = 0.0
        self.transport.close()

    def _abort_transport(self) -> None:
        self._closing = True
        self.transport.abort()

    # Writing and flow control ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        out = self._out
        if out is None:
            self.transport.write(data)
        else:
            out.append(data)
            if len(out) > 64 or len(data) > FLUSH_BYTES:
                self._flush()
                self._out = []

    def _write_parts(self, parts: list[bytes]) -> None:
        out = self._out
        if out is None:
            self.transport.writelines(parts)
        else:
            out.extend(parts)
            self._flush()
            self._out = []

    def _gather_writes(self) -> None:
        """From now until the end of this loop iteration (or longer, while pipelined requests
        go on being answered: _deferred_flush), writes are gathered in ``_out``."""
        if self._out is None:
            self._out = []
            self._state.flushes.defer(self._deferred_flush)

    def _deferred_flush(self) -> None:
        """Write gathered pipelined responses once a loop iteration completes none (and the
        pieces of a streamed body, the iteration after they were sent)."""
        if self._pipeline_progress and self.cycle is not None and self._out is not None:
            self._pipeline_progress = False
            self._state.flushes.defer(self._deferred_flush)
            return
        self._flush()

    def _flush(self) -> None:
        out = self._out
        self._out = None
        if out:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)  # one writev on uvloop, no join

    def _pause_reading(self) -> None:
        if not self._read_paused and not self._closing:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._read_paused or self._pipeline:
            return
        cycle = self.cycle
        if cycle is not None and cycle.buffered > BODY_HIGH_WATER_BYTES:
            return
        self._read_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()


def _chunk_parts(body: bytes, end: bool) -> list[bytes]:
    """A large chunk as separate pieces, so its data is not copied (RFC 9112 §7.1)."""
    parts = [b"%x\r\n" % len(body), body, w.CRLF]
    if end:
        parts.append(w.LAST_CHUNK)
    return parts
