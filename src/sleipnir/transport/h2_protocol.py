"""The HTTP/2 connection: an ``asyncio.Protocol`` joining the codec, the streams' cycles and
the socket.

An HTTP/1.1 connection hands its transport over (``H1Protocol``): after TLS ALPN chose "h2",
when the first bytes are the cleartext client preface (prior knowledge), or on an ``Upgrade:
h2c`` request (``start_upgrade``), which becomes stream 1. Each stream runs
the same ``HTTPCycle`` as an HTTP/1.1 request, through an ``H2Stream``; an extended CONNECT
(RFC 8441) runs a WebSocket session instead (``transport/h2_ws.py``): its stream class takes
the stream's DATA and END_STREAM as the WebSocket's bytes (``body_received``,
``request_complete``).

Invariants:
- Every codec call's bytes are written in call order, gathered in ``_out`` and written once
  per loop iteration (one ``write`` for a read's control frames and the responses of the
  streams it started), or as soon as ``OUT_BATCH_BYTES`` gathered: so a full socket buffer
  pauses writing (``write_paused``) while an app that sends without suspending is still in
  its loop, as over HTTP/1.1, instead of after it queued its whole body.
- A stream's response body goes out as far as the flow-control windows allow; the rest waits
  in ``H2Stream._pending`` and the app's ``send`` awaits ``drain()`` until ``on_window_open``
  takes it. A stream is closed in the codec (``close_stream``) only once its cycle ended and
  nothing is pending, so its concurrency slot is held while the app runs (Rapid Reset).
- Request body bytes go back to the client's windows when the app consumed them
  (``body_consumed``): a slow reader stops its own upload, not the others.
- Response trailers (trailing HEADERS with END_STREAM) wait in ``H2Stream._trailers``
  behind a body that waits for window. A pushed stream (``H2Stream.push``) is served like a
  client's request, through ``on_request``.
- ``deadline`` is when the idle connection gets GOAWAY and is closed (the keep-alive
  timeout); while streams are open, when the oldest response blocked on a zero flow-control
  window has waited that long without progress (0: none is blocked). Such a stream is reset
  with CANCEL (``_reset_stalled``); when all the open streams are, the connection closes.
- After our GOAWAY (shutdown, idle) or the client's, the connection closes when the last open
  stream is done.
- Reading the socket is paused while its write buffer is above the high-water mark
  (``pause_writing``): a client that sends without reading gets no more answers queued (PING
  and SETTINGS ACKs, responses) and its own sends block. ``_read_blocks`` holds every reason
  reading is paused; it resumes when none is left.
- After an h2c Upgrade the HTTP/1.1 parser stays (``upgrade_parser``) until the request is
  complete: it reads the body for stream 1 (not flow-controlled by HTTP/2: reading pauses
  while stream 1's app has more than BODY_HIGH_WATER_BYTES unread, as over HTTP/1.1) and
  holds what follows, which the codec gets only once the body is complete. A body with
  invalid framing ends the connection (GOAWAY PROTOCOL_ERROR): it is no longer HTTP/1.1, and
  HTTP/2 has not started.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import quote

from mypy_extensions import mypyc_attr

from sleipnir.asgi.contract import ASGIError
from sleipnir.asgi.http_cycle import BODY_HIGH_WATER_BYTES, HTTPCycle, http_scope
from sleipnir.transport.eager import EagerRequests, create_task, request_context
from sleipnir.transport.flow import WriteFlow
from sleipnir.wire import h2
from sleipnir.wire.h1 import H1Error, H1Parser, Headers, RequestHead, declared_length
from sleipnir.wire.h1_writer import ResponseHeaderError, error_body
from sleipnir.wire.h2_fields import response_block

if TYPE_CHECKING:
    from sleipnir.middleware.proxy_headers import TrustedProxies
    from sleipnir.transport.h2_ws import H2WebSocket
    from sleipnir.transport.state import ServerState

logger = logging.getLogger("sleipnir.error")

_NO_BODY_STATUS: Final = frozenset((204, 304))
# Why reading the socket is paused (H2Protocol._read_blocks); it resumes when none is left.
_WRITE_FULL: Final = 1  # the transport's write buffer is above its high-water mark
# Stream 1's app has more than BODY_HIGH_WATER_BYTES of the h2c body unread.
_UPGRADE_UNREAD: Final = 2
OUT_BATCH_BYTES: Final = 65536  # asyncio's default write-buffer high-water mark
# A pushed path is the ASGI (decoded) path: what RFC 3986 allows in a path stays as it is.
_PATH_SAFE: Final = "/!$&'()*+,;=:@"


@mypyc_attr(allow_interpreted_subclasses=True)  # transport/h2_ws.H2WebSocket (not compiled)
class H2Stream:
    """One request/response exchange on an HTTP/2 connection (the cycle's ``HTTPStream``)."""

    __slots__ = (
        "_conn",
        "_pending",
        "_pending_end",
        "_trailers",
        "_waiter",
        "answered",
        "body_bytes",
        "cycle",
        "cycle_ended",
        "gone",
        "head_request",
        "no_body",
        "sid",
        "stalled_at",
        "unacked",
    )

    def __init__(self, conn: H2Protocol, sid: int, head_request: bool) -> None:
        self._conn = conn
        self.sid = sid
        self.head_request = head_request
        self.cycle: HTTPCycle | None = None
        self.no_body = False  # the response carries no body (HEAD, 204, 304): END_STREAM sent
        self.answered = False  # the server answered the stream itself (413): the app is ignored
        self.gone = False  # reset by the client, or the connection is lost
        self.cycle_ended = False
        self.unacked = 0  # request body bytes received and not yet given back to the windows
        self.body_bytes = 0
        self.stalled_at = 0.0  # while _pending: since when no body byte could go out
        self._pending: bytes | None = None  # response body waiting for window
        self._pending_end = False
        self._trailers: Headers | None = None  # trailers waiting behind _pending
        self._waiter: asyncio.Future[None] | None = None

    # HTTPStream ------------------------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._pending is not None or self._conn.write_paused

    def start_response(
        self, cycle: HTTPCycle, status: int, headers: Headers, body: bytes, end: bool
    ) -> None:
        if self.gone or self.answered:
            return
        if status < 200:
            raise ASGIError(f"informational status {status} as the final response")
        conn = self._conn
        no_body = self.head_request or status in _NO_BODY_STATUS
        pairs = conn.state.clock.defaults.pairs
        if pairs or end:
            names = {name.lower() for name, _ in headers}
            extra = [pair for pair in pairs if pair[0] not in names]
            if end and status not in _NO_BODY_STATUS and b"content-length" not in names:
                # The whole body is known: say its length, as HTTP/1.1 does.
                extra.append((b"content-length", b"%d" % len(body)))
            if extra:
                headers = [*headers, *extra]
        try:
            out = conn.codec.send_headers(self.sid, status, headers, no_body or (end and not body))
        except ResponseHeaderError as exc:
            raise ASGIError(f"refused response head: {exc}") from None
        conn.write(out)
        if no_body:
            self.no_body = True  # later body messages are dropped
        elif body:
            self._send(body, end)

    def send_body(self, cycle: HTTPCycle, body: bytes, end: bool) -> None:
        if self.gone or self.answered or self.no_body:
            return
        if self._pending is not None:  # a final message sent while blocked: queue behind
            self._pending += body
            self._pending_end = end
            return
        self._send(body, end)

    def _send(self, body: bytes, end: bool) -> None:
        conn = self._conn
        data, taken = conn.codec.send_data(self.sid, body, end)
        conn.write(data)
        if taken < len(body):
            self._pending = body[taken:]
            self._pending_end = end
            conn.stream_stalled(self)

    def flush(self) -> None:
        """A window opened: send what waits; wake the app once all of it went out."""
        pending = self._pending
        if pending is None:
            return
        conn = self._conn
        data, taken = conn.codec.send_data(self.sid, pending, self._pending_end)
        conn.write(data)
        if taken < len(pending):
            self._pending = pending[taken:]
            if taken:  # progress: the stall counts from now
                conn.stream_stalled(self)
            return
        self._pending = None
        trailers = self._trailers
        if trailers is not None:
            self._trailers = None
            conn.write(conn.codec.send_trailers(self.sid, trailers))
        self._wake()
        if self.cycle_ended:
            conn.close_stream(self)

    def send_trailers(self, cycle: HTTPCycle, trailers: Headers) -> None:
        """Trailing HEADERS with END_STREAM; none to send: an empty DATA ends the stream."""
        if self.gone or self.answered or self.no_body:
            return  # no_body: END_STREAM went out with the head (HEAD, 204, 304)
        if not trailers:
            self.send_body(cycle, b"", True)
        elif self._pending is not None:
            self._trailers = trailers  # behind the body that waits for window (flush)
        else:
            conn = self._conn
            conn.write(conn.codec.send_trailers(self.sid, trailers))

    def send_informational(self, cycle: HTTPCycle, status: int, headers: Headers) -> None:
        if self.gone or self.answered:
            return
        conn = self._conn
        conn.write(conn.codec.send_informational(self.sid, status, headers))

    def push(self, cycle: HTTPCycle, path: str, headers: Headers) -> None:
        """PUSH_PROMISE for a GET of ``path``, then the promised stream is served like a
        client's request: its own H2Stream and HTTPCycle (``H2Protocol.on_request``).
        Ignored when the client disabled push (or no more can be promised now), and from a
        pushed stream (RFC 9113 §6.6: only a client's stream can carry a promise)."""
        if self.gone or self.answered or not self.sid % 2:
            return
        conn = self._conn
        authority = next((v for n, v in cycle.scope["headers"] if n == b"host"), None)
        if authority is None:
            return
        raw_path = quote(path, safe=_PATH_SAFE).encode("ascii")
        try:
            # lowercased, no connection-specific fields; :authority is the request's
            fields = [pair for pair in response_block(0, headers) if pair[0] != b"host"]
        except ResponseHeaderError as exc:
            raise ASGIError(f"refused push headers: {exc}") from None
        scheme = conn._scheme.encode("ascii")
        promised = conn.codec.push_promise(self.sid, "GET", raw_path, authority, scheme, fields)
        if promised is None:
            return
        sid, out = promised
        conn.write(out)
        head = RequestHead("GET", raw_path, b"", "2", [(b"host", authority), *fields], True, False)
        conn.on_request(sid, head)
        conn.on_complete(sid)

    def abort(self, cycle: HTTPCycle) -> None:
        self._pending = None
        self._trailers = None
        self._wake()
        if not self.gone:
            conn = self._conn
            conn.write(conn.codec.reset(self.sid, h2.INTERNAL_ERROR))

    async def drain(self) -> None:
        while self._pending is not None and not self.gone:
            waiter = self._waiter = self._conn.loop.create_future()
            await waiter
        if self._conn.write_paused:
            await self._conn.drain()

    def body_wanted(self, cycle: HTTPCycle) -> None:
        if cycle.expect_continue and not cycle.response_started:
            cycle.expect_continue = False
            if not self.gone:
                conn = self._conn
                conn.write(conn.codec.send_informational(self.sid, 100, ()))

    def body_consumed(self, cycle: HTTPCycle) -> None:
        size = self.unacked
        conn = self._conn
        if size and not self.gone:
            self.unacked = 0
            conn.write(conn.codec.acknowledge(self.sid, size))
        if conn.upgrade_parser is not None:  # stream 1's body is still read as HTTP/1.1
            conn.upgrade_flow()

    def cycle_done(self, cycle: HTTPCycle) -> None:
        task = cycle.task
        if task is not None:
            self._conn.state.tasks.discard(task)
        self.cycle_ended = True
        if self._pending is None:
            self._conn.close_stream(self)
        # else: closed once the rest of the body went out (flush) or the connection is lost

    # From the connection ---------------------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """DATA on this stream: request body bytes, counted against --limit-request-body."""
        cycle = self.cycle
        if cycle is None or self.answered:
            return  # given back to the windows by close_stream
        self.unacked += len(data)
        conn = self._conn
        limit = conn.state.limit_request_body
        if limit is not None:
            self.body_bytes += len(data)
            if self.body_bytes > limit:
                if cycle.response_started:
                    self.abort(cycle)
                else:
                    conn._answer(self, 413, "request body larger than the limit")
                cycle.connection_lost()  # the app sees http.disconnect
                return
        cycle.body_received(data)

    def request_complete(self) -> None:
        """The client's END_STREAM."""
        cycle = self.cycle
        if cycle is not None:
            cycle.message_complete()

    def lost(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self.gone = True
        pending, self._pending = self._pending, None
        self._trailers = None
        self._wake()
        if self.cycle is not None:
            self.cycle.connection_lost()
        if pending is not None and self.cycle_ended:  # the app is done; only its body waited
            self._conn.close_stream(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class _UpgradeBody:
    """The ``H1Handler`` of the HTTP/1.1 parser once an h2c Upgrade request with a body was
    switched: the body goes to stream 1 (``H2Codec.upgrade_body``)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: H2Protocol) -> None:
        self._conn = conn

    def on_request(self, head: RequestHead) -> None:  # pragma: no cover - the parser stopped
        raise H1Error(400, "a request after an h2c Upgrade request")

    def on_body(self, data: bytes) -> None:
        self._conn.upgrade_body(data)

    def on_complete(self) -> None:
        self._conn.upgrade_complete()


class H2Protocol(WriteFlow, EagerRequests):
    """One HTTP/2 connection, on a transport taken over from an HTTP/1.1 connection."""

    def __init__(
        self,
        state: ServerState,
        limits: h2.H2Limits,
        transport: asyncio.BaseTransport,
        *,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        scheme: str,
        proxies: TrustedProxies | None,
        client_label: str,
        context: contextvars.Context,
        plain_tasks: bool,
    ) -> None:
        self.state = self._state = state  # (_state: EagerRequests's name)
        self.loop = self._loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, transport)
        self.codec = h2.H2Codec(self, limits)
        self._client = client
        self._server = server
        self._scheme = scheme
        self._proxies = proxies
        self._client_label = client_label
        self._context = context
        self._plain_tasks = plain_tasks
        self._init_eager(plain_tasks)
        self.streams: dict[int, H2Stream] = {}
        self.deadline = 0.0
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] | None = None
        self._out_bytes = 0
        self._held: list[bytes] | None = None  # writes waiting for an h2c Upgrade's body
        self._closing = False
        self._client_goaway = False
        self._read_blocks = 0  # _WRITE_FULL | _UPGRADE_UNREAD: reading is paused while nonzero
        # h2c Upgrade: the HTTP/1.1 parser, until the bytes after the request are taken from
        # it (while ``codec.upgrade_pending``, it reads the request's body for stream 1).
        self.upgrade_parser: H1Parser | None = None

    def start(self, data: bytes) -> None:
        """Take the transport over: our preface, then what the client sent so far."""
        self.write(self.codec.initiate())
        self._idle()
        self._attach(data)

    def start_upgrade(
        self, switching: bytes, settings: bytes, head: RequestHead, parser: H1Parser
    ) -> bool:
        """h2c Upgrade (RFC 7540 §3.2), called from the HTTP/1.1 ``parser``'s ``on_request``:
        ``switching`` (the 101; held until the body's end, if one follows), our preface, and
        the request as stream 1. The parser is stopped: it goes on reading the request's body,
        if any, for stream 1 (half-closed remote once the body is complete), and holds what
        follows, the client's preface, which is fed to the codec once the parser has returned.
        False (nothing written, the transport and the parser untouched) when
        ``HTTP2-Settings`` is invalid."""
        codec = self.codec
        try:
            preface = codec.initiate_upgrade(settings, head)  # starts stream 1
        except ValueError:
            return False
        queued = self._out or []  # a refusal of stream 1 (503) goes after the 101
        self._out = None
        if codec.upgrade_pending:
            # A body follows: the 101 waits for its end (_release_held). curl (7.88) stops
            # sending a request's body once a 101 has come (the rest never arrives, and the
            # request hangs), and RFC 7540 §3.2 has the whole request sent before HTTP/2
            # starts. Meanwhile stream 1's app may answer: its first frames wait here too,
            # and its sends wait as for a full socket buffer (WriteFlow), so no more gather.
            self._held = []
            WriteFlow.pause_writing(self)  # (not ours, which would stop reading the body)
        self.write(switching + preface)
        for chunk in queued:
            self.write(chunk)
        self.upgrade_parser = parser
        parser.stop(_UpgradeBody(self) if codec.upgrade_pending else None)
        self._attach(b"")
        self.loop.call_soon(self._upgrade_read)
        return True

    def _attach(self, data: bytes) -> None:
        transport = self.transport
        transport.set_protocol(cast(asyncio.BaseProtocol, self))  # (transport/flow.py)
        state = self.state
        state.clock.connections.add(self)
        if not transport.is_reading():
            transport.resume_reading()
        if state.shutting_down:
            self.shutdown()
        if data:
            self.data_received(data)

    # asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self.upgrade_parser is not None:  # after an h2c Upgrade: the HTTP/1.1 part first
            data = self._upgrade_data(data)
            if not data:
                return
        self._parsing = True
        try:
            out = self.codec.feed(data)
        except h2.H2ConnectionError as exc:
            self.state.bad_request_log.log(
                "h2-connection-error",
                "%s - HTTP/2 connection error: %s",
                self._client_label,
                exc.reason,
            )
            self.write(exc.goaway)
            self._close()
            out = b""
        finally:
            self._parsing = False
        self.write(out)
        # The streams this read started, now that all of it is parsed (their apps run even if
        # the read turned out to break the connection, as they did with a task each).
        if self._ready is not None:
            self._drive()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost ends the streams

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._stop_runner()
        self._out = self._held = None
        self.upgrade_parser = None
        self.state.clock.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        self._wake_drain()

    def _gone(self) -> bool:
        return self._closing

    def pause_writing(self) -> None:
        """The socket's write buffer is full: stop reading too, as HTTP/1.1 does, so that a
        client that sends (requests, PINGs, SETTINGS) without reading what they produce
        cannot grow the buffer; the frames the codec would answer stay in the socket."""
        super().pause_writing()
        self._block_reading(_WRITE_FULL)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unblock_reading(_WRITE_FULL)

    def _block_reading(self, reason: int) -> None:
        if not self._read_blocks and not self._closing:
            self.transport.pause_reading()
        self._read_blocks |= reason

    def _unblock_reading(self, reason: int) -> None:
        if not self._read_blocks & reason:
            return
        self._read_blocks &= ~reason
        # Not on a closing transport (as H1Protocol._resume_reading): a TLS transport may
        # still be exchanging close_notify, which is not this protocol's to read.
        if not self._read_blocks and not self._closing and not self.transport.is_closing():
            self.transport.resume_reading()

    # h2c Upgrade: the request's body, read as HTTP/1.1 ----------------------------------------

    def _upgrade_data(self, data: bytes) -> bytes:
        """Bytes read while the h2c Upgrade request's body is parsed as HTTP/1.1 (or before
        the bytes after it were taken): what follows the request once it is complete (the
        client preface, HTTP/2 frames), else b""."""
        parser = self.upgrade_parser
        assert parser is not None
        try:
            parser.feed(data)
        except H1Error as exc:
            self.upgrade_failed(exc)
            return b""
        if self.codec.upgrade_pending:
            return b""
        self.upgrade_parser = None
        return parser.take_held()

    def _upgrade_read(self) -> None:
        """After the parser that started the upgrade returned: if the request is complete,
        feed the codec what arrived after it (with no new read, nothing else would)."""
        parser = self.upgrade_parser
        if parser is None or self._closing or self.codec.upgrade_pending:
            return
        self.upgrade_parser = None
        data = parser.take_held()
        if data:
            self.data_received(data)

    def upgrade_body(self, data: bytes) -> None:
        self.codec.upgrade_body(data)  # on_body(1, data): --limit-request-body counts it
        self.upgrade_flow()

    def upgrade_complete(self) -> None:
        if self.codec.upgrade_pending:
            self.codec.upgrade_complete()
        self._release_held()
        self._unblock_reading(_UPGRADE_UNREAD)  # HTTP/2 frames next: the windows bound them

    def _release_held(self) -> None:
        """The h2c Upgrade request's body is complete (or broken): the 101, our preface and
        what stream 1 sent behind them go out, and stream 1's sends resume."""
        held = self._held
        if held is None:
            return
        self._held = None
        WriteFlow.resume_writing(self)  # first: writing the held bytes may pause it again
        for data in held:
            self.write(data)

    def upgrade_flow(self) -> None:
        """Pause reading while stream 1's app has more than BODY_HIGH_WATER_BYTES of the
        upgrade body unread, as HTTP/1.1 does for any body (HTTP/2's windows cannot: those
        bytes are not flow-controlled). Once the app is done with the request (answered,
        413, reset, returned), the rest of the body is read and dropped."""
        stream = self.streams.get(1)
        cycle = stream.cycle if stream is not None else None
        if (
            cycle is not None
            and stream is not None
            and not (stream.answered or stream.gone or stream.cycle_ended)
            and self.codec.upgrade_pending
            and cycle.buffered > BODY_HIGH_WATER_BYTES
        ):
            self._block_reading(_UPGRADE_UNREAD)
        else:
            self._unblock_reading(_UPGRADE_UNREAD)

    def upgrade_failed(self, exc: H1Error) -> None:
        """The h2c Upgrade request's body is not valid HTTP/1.1 framing. The connection is no
        longer HTTP/1.1 (the 101 went out) and HTTP/2 has not started (the client's preface
        comes after the body): GOAWAY PROTOCOL_ERROR, close; stream 1's app gets
        ``http.disconnect``."""
        self.upgrade_parser = None
        self.state.bad_request_log.log(
            "h2c-upgrade-body",
            "%s - invalid body in an h2c Upgrade request: %s",
            self._client_label,
            exc.reason,
        )
        self._release_held()  # the 101 has to go first
        self.write(self.codec.goaway(h2.PROTOCOL_ERROR))
        self._close()

    # H2Handler -------------------------------------------------------------------------------

    def on_request(self, stream_id: int, head: RequestHead) -> None:
        state = self.state
        if not self.streams:
            self.deadline = 0.0  # the idle deadline; a stalled stream's stays
        websocket: H2WebSocket | None = None
        if head.upgrade is None:
            stream = H2Stream(self, stream_id, head.method == "HEAD")
        else:  # RFC 8441 extended CONNECT: a WebSocket (transport/h2_ws.py)
            from sleipnir.transport import h2_ws

            stream = websocket = h2_ws.H2WebSocket(self, stream_id)
        self.streams[stream_id] = stream
        limit = state.limit_concurrency
        if limit is not None and (
            len(state.clock.connections) > limit or len(state.tasks) >= limit
        ):
            self._answer(stream, 503, "server at its concurrency limit")
            return
        limit_body = state.limit_request_body
        if limit_body is not None and declared_length(head.headers) > limit_body:
            self._answer(stream, 413, "declared request body larger than the limit")
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
        scope["extensions"]["http.response.push"] = {}  # HTTP/2 only (H2Stream.push)
        if self._proxies is not None:
            self._proxies.apply_trusted(scope)
        cycle = stream.cycle = HTTPCycle(scope, stream, state.ctx, head.expect_continue)
        if websocket is None and self._can_add_ready():
            # Eager, as HTTP/1.1 requests (transport/eager.py): run once the read is parsed,
            # or once the step that pushed it is over.
            self._add_ready(cycle)
            return
        run = cycle.run() if websocket is None else websocket.start(cycle, head)
        if run is None:
            return  # a refused WebSocket handshake, answered
        # Otherwise each stream's app runs in its own task, with its own copy of the
        # connection's starting context (never another stream's), as HTTP/1.1 requests do.
        context = request_context(state, self._context)
        cycle.task = task = create_task(self.loop, run, context, self._plain_tasks)
        state.tasks.add(task)

    def on_body(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.body_received(data)

    def on_complete(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.request_complete()

    def on_reset(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.lost()  # http.disconnect for this stream's app only

    def on_window_open(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.flush()
            return
        for stream in list(self.streams.values()):
            stream.flush()

    def on_goaway(self, error_code: int, last_stream_id: int) -> None:
        self._client_goaway = True
        if not self.streams:
            self._close()

    def on_refused(self, stream_id: int, status: int, error_code: int, reason: str) -> None:
        state = self.state
        if status:  # answered with a bare 431 or 501
            state.log_bad_request(self._client_label, status, f"HTTP/2 stream refused: {reason}")
            return
        name = h2.error_name(error_code)  # PROTOCOL_ERROR, REFUSED_STREAM: a fixed set
        state.bad_request_log.log(
            f"h2-refused-{name}",
            "%s - HTTP/2 stream refused with RST_STREAM %s: %s",
            self._client_label,
            name,
            reason,
        )

    # Streams ---------------------------------------------------------------------------------

    def _answer(
        self, stream: H2Stream, status: int, reason: str, extra: Headers | None = None
    ) -> None:
        """Answer a stream without (or instead of) the app; it closes at once if no app runs."""
        stream.answered = True
        state = self.state
        state.log_bad_request(self._client_label, status, reason)
        body = error_body(status, reason)
        headers: Headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            *(extra or ()),
            *state.clock.defaults.pairs,
        ]
        codec = self.codec
        self.write(codec.send_headers(stream.sid, status, headers, False))
        data, taken = codec.send_data(stream.sid, body, True)
        self.write(data)
        if taken < len(body):  # no window for a few bytes: give up on the stream
            self.write(codec.reset(stream.sid, h2.CANCEL))
        if stream.cycle is None:
            stream.cycle_ended = True
            self.close_stream(stream)

    def close_stream(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.sid, None) is None:
            return
        state = self.state
        if not self._closing:
            self.write(self.codec.close_stream(stream.sid))
        if self.upgrade_parser is not None:
            self.upgrade_flow()  # stream 1's app is done: the rest of its body is dropped
        state.total_requests += 1
        if state.total_requests == state.request_limit:
            state.on_request_limit()
        if not self.streams:
            if self.codec.draining or self._client_goaway or state.shutting_down:
                self.shutdown()
            else:
                self._idle()

    def _idle(self) -> None:
        self.deadline = self.loop.time() + self.state.timeout_keep_alive_s

    # Deadlines, shutdown, closing ------------------------------------------------------------

    def on_deadline(self) -> None:
        self.deadline = 0.0
        if not self.streams:
            self.shutdown()
        else:
            self._reset_stalled()

    def stream_stalled(self, stream: H2Stream) -> None:
        """``stream``'s response waits for flow-control window from now: it has the
        keep-alive timeout to make progress (checked on the deadline sweep)."""
        now = self.loop.time()
        stream.stalled_at = now
        if not self.deadline:
            self.deadline = now + self.state.timeout_keep_alive_s

    def _reset_stalled(self) -> None:
        """Streams whose response could not send a byte for the keep-alive timeout get
        RST_STREAM CANCEL (the server gives up on them; FLOW_CONTROL_ERROR would say the client
        broke the rules, and a shut window is its right, RFC 9113 §6.9), and their apps
        ``http.disconnect``: the window is the client's, the stream's slot and the app are
        not theirs to hold for ever. When every open stream is stalled, GOAWAY and close."""
        now = self.loop.time()
        timeout = self.state.timeout_keep_alive_s
        expired: list[H2Stream] = []
        open_streams = 0
        due = 0.0
        for stream in self.streams.values():
            if stream.gone:
                continue
            open_streams += 1
            if stream._pending is not None:
                at = stream.stalled_at + timeout
                if at <= now:
                    expired.append(stream)
                elif not due or at < due:
                    due = at
        if not expired:
            self.deadline = due
            return
        codec = self.codec
        for stream in expired:
            self.write(codec.reset(stream.sid, h2.CANCEL))
        self.state.bad_request_log.log(
            "h2-stalled",
            "%s - HTTP/2: %d stream(s) reset after %gs without flow-control window",
            self._client_label,
            len(expired),
            timeout,
        )
        if len(expired) == open_streams:  # nothing can move: the connection is done
            self.write(codec.goaway())
            self._close()  # connection_lost tells the apps
            return
        for stream in expired:
            stream.lost()
        self.deadline = due

    def shutdown(self) -> None:
        """GOAWAY: no new streams; close now if idle, else once the open streams are done."""
        if self._closing:
            return
        self.write(self.codec.goaway())
        if not self.streams:
            self._close()

    def _close(self) -> None:
        self.deadline = 0.0
        self._flush()
        self._closing = True
        self.transport.close()

    # Writing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the end of this loop iteration (one write for many streams)."""
        if not data or self._closing:
            return
        held = self._held
        if held is not None:
            held.append(data)
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._out_bytes = len(data)
            self.state.flushes.defer(self._flush)
        else:
            out.append(data)
            self._out_bytes += len(data)
        if self._out_bytes >= OUT_BATCH_BYTES:
            self._flush()  # the scheduled call finds nothing left

    def _gather_writes(self) -> None:
        """(EagerRequests) Nothing to do: every write is gathered until the end of the loop
        iteration (``write``)."""

    def _flush(self) -> None:
        out = self._out
        self._out = None
        if out and not self._closing:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)
