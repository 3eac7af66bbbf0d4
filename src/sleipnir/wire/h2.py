"""The HTTP/2 codec (RFC 9113) over h2's sans-I/O ``H2Connection``, server side.

Bytes in, ``H2Handler`` calls out; calls in, bytes out. Like the HTTP/1.1 parsers, events are
method calls. h2 does framing, HPACK, stream states and flow-control arithmetic; this module
adds what a server needs on top of it:

- A frame-header scan ahead of h2 (``feed``): only whole frames reach h2, frame sizes are
  checked before anything is buffered, and the abuse bounds of ``H2Limits`` are counted
  (Rapid Reset, SETTINGS/PING/empty-DATA floods, CONTINUATION floods). A client GOAWAY is
  taken here, so that in-flight responses can still be sent (h2 would stop all sending).
- Request validation in ``h2_fields.build_request``: a malformed request is a *stream* error
  (RST_STREAM PROTOCOL_ERROR); h2's validator would make it a connection error. So is a body
  that does not match its content-length, or trailers that are invalid or lack END_STREAM
  (RFC 9113 §8.1, §8.1.1; counted and checked here, h2's own check is switched off), a
  PRIORITY frame of the wrong size and a WINDOW_UPDATE of 0 on a stream (§6.3, §6.9).
- Concurrency counted the way Rapid Reset (CVE-2023-44487) requires: a stream counts from
  ``on_request`` until the connection calls ``close_stream`` (its application cycle ended),
  not until the client resets it, so resets cannot free slots while the apps still run
  (the mitigation Go and nginx chose). Streams over the limit get REFUSED_STREAM.
- Our own graceful GOAWAY (``goaway``): h2's would forbid sending on in-flight streams.

Invariants:
- Every method returns the bytes to write now; write them in call order.
- A connection error raises ``H2ConnectionError`` carrying the pending bytes ending with the
  GOAWAY; write them and close. The codec is then dead.
- Request body bytes are handed back to the client's windows only by ``acknowledge`` (the
  app consumed them) or ``close_stream`` (the rest): a slow reader stops the client.
- Request trailers are checked, then dropped, as over HTTP/1.1 (ASGI has none).
- No asyncio here: codecs are tested without an event loop.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, NoSuchStreamError, ProtocolError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, StreamState
from hpack.exceptions import HPACKError
from hyperframe.frame import GoAwayFrame, SettingsFrame

from sleipnir.wire.h1 import Headers, RequestHead, declared_length
from sleipnir.wire.h1_writer import ResponseHeaderError
from sleipnir.wire.h2_fields import (
    STATUS_VALUES,
    Malformed,
    Refused,
    build_request,
    check_trailers,
    response_block,
    upgraded_request,
)
from sleipnir.wire.h2_hpack import MemoDecoder, MemoEncoder
from sleipnir.wire.h2_limits import H2Limits as H2Limits  # (re-exported: the codec API)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

NO_ERROR: Final = int(ErrorCodes.NO_ERROR)
PROTOCOL_ERROR: Final = int(ErrorCodes.PROTOCOL_ERROR)
INTERNAL_ERROR: Final = int(ErrorCodes.INTERNAL_ERROR)
FRAME_SIZE_ERROR: Final = int(ErrorCodes.FRAME_SIZE_ERROR)
REFUSED_STREAM: Final = int(ErrorCodes.REFUSED_STREAM)
CANCEL: Final = int(ErrorCodes.CANCEL)
COMPRESSION_ERROR: Final = int(ErrorCodes.COMPRESSION_ERROR)
ENHANCE_YOUR_CALM: Final = int(ErrorCodes.ENHANCE_YOUR_CALM)

# Frame types and flags (RFC 9113 §6).
_DATA: Final = 0
_HEADERS: Final = 1
_PRIORITY: Final = 2
_RST: Final = 3
_SETTINGS: Final = 4
_PING: Final = 6
_GOAWAY: Final = 7
_CONTINUATION: Final = 9
_WINDOW_UPDATE: Final = 8
_END_STREAM: Final = 0x1
_ACK: Final = 0x1
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
_PRIO: Final = 0x20
_MAX_STREAMS_H2: Final = 2**31 - 1  # what h2 itself enforces: the real limit is counted here


class H2ConnectionError(Exception):
    """A connection error (RFC 9113 §5.4.1): write ``goaway`` (pending bytes ending with the
    GOAWAY frame carrying ``code``), then close the connection."""

    def __init__(self, code: int, reason: str, goaway: bytes) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.goaway = goaway


class H2Handler(Protocol):
    """What the codec calls; implemented by the HTTP/2 connection (``transport/``)."""

    def on_request(self, stream_id: int, head: RequestHead) -> None:
        """A new stream's request head (``http_version`` "2"; extended CONNECT: method
        "CONNECT", ``head.upgrade`` = the ``:protocol`` value)."""

    def on_body(self, stream_id: int, data: bytes) -> None:
        """Request body bytes (never empty); give them back with ``acknowledge``."""

    def on_complete(self, stream_id: int) -> None:
        """The request is complete (END_STREAM; request trailers are dropped)."""

    def on_reset(self, stream_id: int, error_code: int) -> None:
        """The client reset the stream, or the codec did for a stream error (a malformed
        body or trailers, a bad PRIORITY or WINDOW_UPDATE frame): ``http.disconnect`` for that
        stream alone."""

    def on_window_open(self, stream_id: int) -> None:
        """The send window of ``stream_id`` (0: the connection's, so every stream) grew."""

    def on_goaway(self, error_code: int, last_stream_id: int) -> None:
        """The client sent GOAWAY: it opens no more streams; finish the open ones, close."""

    def on_refused(self, stream_id: int, status: int, error_code: int, reason: str) -> None:
        """A request the codec refused itself (malformed, too large, over the stream limit);
        the handler never saw it. For logging: ``status`` is the 4xx/5xx it was answered with
        (431, 501), or 0 when it was reset with RST_STREAM ``error_code`` (PROTOCOL_ERROR,
        REFUSED_STREAM)."""


def _settings_frame(values: dict[int, int]) -> bytes:
    return SettingsFrame(0, settings=values).serialize()


class H2Codec:
    """One HTTP/2 server connection: ``initiate`` (or ``initiate_upgrade``), then ``feed``."""

    __slots__ = (
        "_block_bytes",
        "_block_frames",
        "_block_stream",
        "_clock",
        "_conn",
        "_counts",
        "_dispatch",
        "_expect",
        "_expect_settings",
        "_goaway_last",
        "_handler",
        "_held",
        "_limits",
        "_live",
        "_max_frame",
        "_need",
        "_opened",
        "_poisoned",
        "_preface_left",
        "_pushes",
        "_upgrade_body",
        "_window_end",
    )

    def __init__(
        self,
        handler: H2Handler,
        limits: H2Limits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._clock = clock
        # Validation and normalization are ours (h2_fields): faster, and a
        # malformed request is a stream error there, a connection error in h2.
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        conn = self._conn = H2Connection(config)
        conn.encoder = MemoEncoder()  # hpack's, skipping blocks it already coded (h2_hpack)
        conn.decoder = MemoDecoder()
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS_H2,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: int(limits.enable_connect_protocol),
            },
        )
        conn.max_inbound_frame_size = limits.max_frame_size
        conn.decoder.max_header_list_size = limits.max_header_list_size * limits.decode_bound_factor
        self._max_frame = limits.max_frame_size
        self._live: dict[int, int] = {}  # streams the handler knows -> body bytes not yet acked
        self._pushes = 0
        self._poisoned: set[int] = set()
        self._goaway_last: int | None = None
        self._held = bytearray()
        self._need = 0
        self._preface_left = len(PREFACE)
        self._expect_settings = True
        self._block_stream = self._block_frames = self._block_bytes = 0
        self._window_end = 0.0
        self._counts = [0, 0, 0, 0]  # indexed by _RESETS, _SETTINGS_N, _PINGS, _EMPTY
        self._upgrade_body = False
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            RequestReceived: self._on_request,
            DataReceived: self._on_data,
            StreamEnded: self._on_end,
            StreamReset: self._on_reset,
            WindowUpdated: self._on_window,
            RemoteSettingsChanged: self._on_settings,
            TrailersReceived: self._on_trailers,
        }
        # The request body is counted against its content-length here (``_expect``): h2
        # makes a mismatch, or an invalid value, a connection error where RFC 9113 §8.1.1
        # calls it a malformed request (a stream error), so its own check is switched off on
        # every stream it creates.
        self._expect: dict[int, int] = {}  # declared body bytes still to come; or _BROKEN...
        self._opened = 0  # highest stream opened by a HEADERS frame without END_STREAM
        conn._begin_new_stream = self._begin_stream  # type: ignore[method-assign]

    # Starting -------------------------------------------------------------------------------

    def initiate(self) -> bytes:
        """The server preface: our SETTINGS, and the connection window's first update."""
        self._conn.initiate_connection()
        return self._preface()

    def initiate_upgrade(self, settings_header: bytes, head: RequestHead) -> bytes:
        """Switch an HTTP/1.1 request with ``Upgrade: h2c`` to HTTP/2 (RFC 7540 §3.2).

        Raises ``ValueError`` for an invalid ``HTTP2-Settings`` value: then do not upgrade
        (the HTTP/1.1 connection answers 400). Else write ``101 Switching Protocols`` and then the
        returned bytes. The request becomes stream 1 (``on_request(1, ...)`` is called here;
        it is half-closed: the response goes out on stream 1). Without a body, ``on_complete``
        follows at once; with one (``upgrade_pending``), keep parsing it as HTTP/1.1 and pass
        it on with ``upgrade_body`` and ``upgrade_complete`` before feeding the bytes after it
        (the client preface). Those bytes are not flow-controlled: ``acknowledge`` ignores them.
        """
        value = settings_header.strip()
        value += b"=" * (-len(value) % 4)  # token68 comes without padding
        try:
            raw = base64.b64decode(value, altchars=b"-_", validate=True)
        except binascii.Error as exc:
            raise ValueError("HTTP2-Settings is not base64url") from exc
        if len(raw) % 6:
            raise ValueError("HTTP2-Settings is not a SETTINGS payload")
        try:
            self._conn.initiate_upgrade_connection(value)
        except ProtocolError as error:  # an invalid setting value (a name of its own: mypyc)
            raise ValueError(f"HTTP2-Settings: {error}") from error
        out = self._preface()
        self._live[1] = 0
        self._upgrade_body = any(
            n == b"transfer-encoding" or (n == b"content-length" and v != b"0")
            for n, v in head.headers
        )
        self._handler.on_request(1, upgraded_request(head))
        if not self._upgrade_body:
            self._handler.on_complete(1)
        return out

    @property
    def upgrade_pending(self) -> bool:
        """True while the body of an h2c Upgrade request is still being read as HTTP/1.1."""
        return self._upgrade_body

    def upgrade_body(self, data: bytes) -> None:
        if data and 1 in self._live:
            self._handler.on_body(1, data)

    def upgrade_complete(self) -> None:
        self._upgrade_body = False
        if 1 in self._live:
            self._handler.on_complete(1)

    def _preface(self) -> bytes:
        conn = self._conn
        conn.clear_outbound_data_buffer()  # h2's SETTINGS would advertise h2's limits
        limits = self._limits
        values: dict[int, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
        }
        if limits.initial_window_size != 65535:
            values[SettingCodes.INITIAL_WINDOW_SIZE] = limits.initial_window_size
        if limits.max_frame_size != 16384:
            values[SettingCodes.MAX_FRAME_SIZE] = limits.max_frame_size
        if limits.enable_connect_protocol:
            values[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        if limits.connection_window_size > 65535:
            conn.increment_flow_control_window(limits.connection_window_size - 65535)
        return _settings_frame(values) + conn.data_to_send()

    def _begin_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        stream = H2Connection._begin_new_stream(self._conn, stream_id, allowed_ids)
        stream._initialize_content_length = _no_length  # type: ignore[method-assign]
        return stream

    # Receiving ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the client, call the handler; return what must be sent (SETTINGS
        and PING ACKs, WINDOW_UPDATEs, RST_STREAMs). Raises ``H2ConnectionError``."""
        if self._held:
            self._held += data
            if len(self._held) < self._need:
                return b""
            data = bytes(self._held)
            self._held = bytearray()
        size = len(data)
        pos = 0
        if self._preface_left:
            pos = min(size, self._preface_left)
            done = len(PREFACE) - self._preface_left
            if data[:pos] != PREFACE[done : done + pos]:
                raise self._fail(PROTOCOL_ERROR, "invalid connection preface")
            self._preface_left -= pos
        if self._expect_settings and size - pos >= 9:
            # RFC 9113 §3.4: the client preface ends with a SETTINGS frame.
            if data[pos + 3] != _SETTINGS or data[pos + 4] & _ACK:
                raise self._fail(PROTOCOL_ERROR, "client preface without SETTINGS")
            self._expect_settings = False
        start = 0
        max_frame = self._max_frame
        while size - pos >= 9:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > max_frame:
                raise self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > size:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            if ftype == _HEADERS and flags & (_END_HEADERS | _PRIO | _END_STREAM) == (
                _END_HEADERS | _END_STREAM
            ):
                pass  # the common request: one HEADERS frame, no priority, no body
            elif ftype != _DATA or length == 0 or self._block_stream:
                action = self._inspect(data, pos, length, ftype, flags)
                if action:
                    if pos > start:
                        self._receive(data[start:pos])
                    start = end
                    self._act(action, data, pos, length)
            pos = end
        if size - pos:
            self._held += data[pos:]
            self._need = 9 if size - pos < 9 else 9 + int.from_bytes(data[pos : pos + 3], "big")
        if pos > start:
            self._receive(data if start == 0 and pos == size else data[start:pos])
        return self._conn.data_to_send()

    def _inspect(self, data: bytes, pos: int, length: int, ftype: int, flags: int) -> int:
        """Count and check one frame before h2 sees it; nonzero: ``_act`` handles it instead."""
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        if self._block_stream:
            if ftype != _CONTINUATION or sid != self._block_stream:
                return 0  # h2 makes it the connection error it is (RFC 9113 §6.10)
            self._block_frames += 1
            self._block_bytes += length
            self._check_block()
            if flags & _END_HEADERS:
                self._block_stream = 0
            return 0
        limits = self._limits
        if ftype == _HEADERS:
            if not flags & _END_HEADERS:
                self._block_stream, self._block_frames, self._block_bytes = sid, 1, length
                self._check_block()
            pad = 1 if flags & _PADDED else 0
            if flags & _PRIO and length >= pad + 5 and _dependency(data, pos + 9 + pad) == sid:
                return _ACT_SELF_HEADERS
            if not flags & _END_STREAM:
                if sid <= self._opened:  # not a new stream: trailers (or h2's error to find)
                    return _ACT_OPEN_TRAILERS
                self._opened = sid
        elif ftype == _DATA:
            if not flags & _END_STREAM and self._count(_EMPTY, limits.max_empty_data):
                raise self._fail(ENHANCE_YOUR_CALM, "empty DATA frame flood")
        elif ftype == _RST:
            if self._count(_RESETS, limits.max_resets):
                raise self._fail(ENHANCE_YOUR_CALM, "stream reset flood (Rapid Reset)")
        elif ftype == _SETTINGS:
            if flags & _ACK:
                if length:  # RFC 9113 §6.5 (h2 would say PROTOCOL_ERROR)
                    raise self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            elif self._count(_SETTINGS_N, limits.max_settings):
                raise self._fail(ENHANCE_YOUR_CALM, "SETTINGS flood")
        elif ftype == _PING:
            if not flags & _ACK and self._count(_PINGS, limits.max_pings):
                raise self._fail(ENHANCE_YOUR_CALM, "PING flood")
        elif ftype == _PRIORITY:
            if length != 5:
                return _ACT_PRIORITY_SIZE if sid else 0
            if sid and _dependency(data, pos + 9) == sid:
                return _ACT_SELF_PRIORITY
        elif ftype == _WINDOW_UPDATE:
            if sid and length == 4 and not _dependency(data, pos + 9):
                return _ACT_ZERO_WINDOW  # the increment is 0
        elif ftype == _GOAWAY and sid == 0 and length >= 8:
            return _ACT_GOAWAY
        return 0

    def _act(self, action: int, data: bytes, pos: int, length: int) -> None:
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        if action == _ACT_SELF_HEADERS:
            # RFC 9113 §5.3.1: a stream error, but the block must still be decoded (HPACK
            # state): h2 gets the frame with the dependency cleared, the stream is reset later.
            frame = bytearray(data[pos : pos + 9 + length])
            at = 9 + (1 if frame[4] & _PADDED else 0)
            frame[at : at + 4] = bytes(4)
            self._poisoned.add(sid)
            self._receive(bytes(frame))
        elif action in _STREAM_ERRORS:
            # Stream errors h2 would make connection errors: a stream depending on itself
            # (§5.3.1; priorities are otherwise ignored, §5.3.2), a PRIORITY frame not 5
            # octets long (§6.3), a WINDOW_UPDATE of 0 on a stream (§6.9). On a stream not
            # open, RST_STREAM is not allowed (§5.1, §6.4): h2's connection error stands.
            if self._stream_open(sid):  # open streams are the handler's (or refused: closed)
                self._stream_error(sid, _STREAM_ERRORS[action])
            else:
                self._receive(data[pos : pos + 9 + length])
        elif action == _ACT_OPEN_TRAILERS:
            trailers = data[pos : pos + 9 + length]
            stream = self._conn.streams.get(sid)
            if (
                sid in self._live
                and stream is not None
                and stream.state_machine.state == StreamState.OPEN
            ):
                # RFC 9113 §8.1: trailers without END_STREAM make the request malformed, a
                # stream error (h2: a connection error). The block must still be decoded
                # (HPACK state): h2 gets it as trailers that end the stream; _on_end resets.
                self._expect[sid] = _UNENDED
                trailers = trailers[:4] + bytes((trailers[4] | _END_STREAM,)) + trailers[5:]
            self._receive(trailers)
        else:
            goaway = GoAwayFrame(0)
            goaway.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
            self._handler.on_goaway(goaway.error_code, goaway.last_stream_id)

    def _check_block(self) -> None:
        limits = self._limits
        if (
            self._block_frames > limits.max_continuation_frames
            or self._block_bytes > limits.max_header_list_size
        ):
            raise self._fail(ENHANCE_YOUR_CALM, "header block too long (CONTINUATION flood)")

    def _count(self, kind: int, bound: int) -> bool:
        """Count one event of a bounded kind in the current window; True when over."""
        now = self._clock()
        counts = self._counts
        if now >= self._window_end:
            self._window_end = now + self._limits.abuse_window_s
            counts[:] = [0, 0, 0, 0]
        counts[kind] += 1
        return counts[kind] > bound

    def _note_reset(self) -> None:
        if self._count(_RESETS, self._limits.max_resets):
            raise self._fail(ENHANCE_YOUR_CALM, "too many refused or reset streams")

    def _receive(self, data: bytes) -> None:
        conn = self._conn
        try:
            events = conn.receive_data(data)
        except ProtocolError as exc:
            out = conn.data_to_send()
            code = int(exc.error_code)
            if isinstance(exc.__cause__, HPACKError) and not isinstance(exc, DenialOfServiceError):
                # RFC 9113 §4.3: COMPRESSION_ERROR; h2 says PROTOCOL_ERROR in the GOAWAY it
                # just queued (always last, 17 bytes: no debug data), so it is replaced.
                code = COMPRESSION_ERROR
                last = conn.highest_inbound_stream_id
                out = out[:-17] + _goaway(last, code)
            raise H2ConnectionError(code, str(exc), out) from None
        dispatch = self._dispatch
        for event in events:
            method = dispatch.get(event.__class__)
            if method is not None:
                method(event)

    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        stream = self._conn.streams.get(sid)
        if stream is None or stream.closed:
            return  # reset by the client in the same read: never started (Rapid Reset)
        if sid in self._poisoned:
            self._poisoned.discard(sid)
            self._refuse(sid, PROTOCOL_ERROR, "stream depends on itself")
            return
        if self._goaway_last is not None and sid > self._goaway_last:
            self._conn.reset_stream(sid, REFUSED_STREAM)  # after our GOAWAY: retry elsewhere
            return
        limits = self._limits
        if len(self._live) - self._pushes >= limits.max_concurrent_streams:
            self._refuse(sid, REFUSED_STREAM, "over SETTINGS_MAX_CONCURRENT_STREAMS")
            return
        try:
            head = build_request(
                event.headers,
                limits.enable_connect_protocol,
                limits.max_header_list_size,
                limits.max_header_count,
            )
        except Malformed as exc:
            self._refuse(sid, PROTOCOL_ERROR, str(exc))
            return
        except Refused as refused:  # (not "exc" again: one name has one type in mypyc)
            self._refuse(sid, 0, str(refused), refused.status)
            return
        self._live[sid] = 0
        if event.stream_ended is None:
            declared = declared_length(head.headers)
            if declared >= 0:
                self._expect[sid] = declared
        self._handler.on_request(sid, head)

    def _on_data(self, event: DataReceived) -> None:
        sid = event.stream_id
        data = event.data
        pending = self._live.get(sid)
        flow = event.flow_controlled_length
        if pending is None:  # a stream refused in this same read
            self._conn.acknowledge_received_data(flow, sid)
            return
        expect = self._expect
        if expect:
            left = expect.get(sid)
            if left is not None:
                if left < len(data):
                    self._conn.acknowledge_received_data(flow, sid)
                    if left >= 0:  # more than the content-length (§8.1.1)
                        expect[sid] = _BROKEN
                        self._stream_error(sid, PROTOCOL_ERROR)
                    return  # (or the stream was reset already)
                expect[sid] = left - len(data)
        if flow > len(data):  # padding is ours to give back at once
            self._conn.acknowledge_received_data(flow - len(data), sid)
        if data:
            self._live[sid] = pending + len(data)
            self._handler.on_body(sid, data)

    def _on_end(self, event: StreamEnded) -> None:
        sid = event.stream_id
        if sid in self._live:
            if self._expect:
                left = self._expect.pop(sid, 0)
                if left:  # less than the content-length, or trailers without END_STREAM
                    if left != _BROKEN:
                        self._stream_error(sid, PROTOCOL_ERROR)
                    return
            self._handler.on_complete(sid)

    def _on_trailers(self, event: TrailersReceived) -> None:
        sid = event.stream_id
        if sid in self._live and self._expect.get(sid, 0) >= 0:
            try:
                check_trailers(event.headers)
            except Malformed:
                self._expect[sid] = _BROKEN  # the StreamEnded that follows is no completion
                self._stream_error(sid, PROTOCOL_ERROR)

    def _on_reset(self, event: StreamReset) -> None:
        if event.stream_id in self._live:
            self._handler.on_reset(event.stream_id, int(event.error_code))

    def _on_window(self, event: WindowUpdated) -> None:
        self._handler.on_window_open(event.stream_id)

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if changed is not None and changed.new_value > (changed.original_value or 0):
            self._handler.on_window_open(0)

    def _refuse(self, sid: int, code: int, reason: str, status: int = 0) -> None:
        """Refuse a stream the handler never saw: RST_STREAM ``code``, or a bare ``status``
        response (then RST_STREAM NO_ERROR if the request is still coming, RFC 9113 §8.1)."""
        conn = self._conn
        if status:
            headers = [(b":status", STATUS_VALUES[status]), (b"content-length", b"0")]
            conn.send_headers(sid, headers, end_stream=True)
            if not conn.streams[sid].closed:
                conn.reset_stream(sid, NO_ERROR)
        else:
            conn.reset_stream(sid, code)
        self._handler.on_refused(sid, status, 0 if status else code, reason)
        self._note_reset()

    def _stream_error(self, sid: int, code: int) -> None:
        """A stream error the codec found (RFC 9113 §5.4.2): RST_STREAM ``code``, and the
        handler's app gets ``http.disconnect``. Counted like the client's resets."""
        self._conn.reset_stream(sid, code)
        if sid in self._live:
            self._handler.on_reset(sid, code)
        self._note_reset()

    def _stream_open(self, sid: int) -> bool:
        stream = self._conn.streams.get(sid)
        return stream is not None and not stream.closed

    def _fail(self, code: int, reason: str) -> H2ConnectionError:
        self._conn.close_connection(code)
        return H2ConnectionError(code, reason, self._conn.data_to_send())

    # Sending --------------------------------------------------------------------------------

    def send_headers(
        self, stream_id: int, status: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool
    ) -> bytes:
        """The response head. Names are lowercased, connection-specific fields dropped (RFC
        9113 §8.2.2); an invalid name or a CR, LF or NUL raises ``ResponseHeaderError``
        before anything is sent. b"" if the stream was reset."""
        if not 100 <= status <= 999:
            raise ResponseHeaderError(f"invalid status code {status!r}")
        block = response_block(status, headers)
        return self._send_block(stream_id, block, end_stream)

    def send_informational(
        self, stream_id: int, status: int, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        """A 1xx response (103 Early Hints, 100 Continue); HTTP/2 has no 101 (§8.6)."""
        if not 100 <= status <= 199 or status == 101:
            raise ResponseHeaderError(f"invalid informational status {status!r}")
        return self._send_block(stream_id, response_block(status, headers), False)

    def send_trailers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """Trailing HEADERS that end the stream (gRPC's ``grpc-status``)."""
        return self._send_block(stream_id, response_block(0, headers), True)

    def _send_block(self, sid: int, block: list[tuple[bytes, bytes]], end: bool) -> bytes:
        conn = self._conn
        try:
            conn.send_headers(sid, block, end)
        except NoSuchStreamError:  # includes StreamClosedError: reset by the client
            return b""
        return conn.data_to_send()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> tuple[bytes, int]:
        """Send what the stream and connection windows and the frame size allow; returns the
        bytes and how much of ``data`` they carry. END_STREAM goes out only with the last
        byte. When less than all was taken, wait for ``on_window_open`` and send the rest. A
        reset stream takes everything and sends nothing."""
        conn = self._conn
        try:
            window = conn.local_flow_control_window(stream_id)
            size = len(data)
            frame = conn.max_outbound_frame_size
            if size <= frame and (size <= window or not size):
                conn.send_data(stream_id, data, end_stream)  # the usual case: one frame
                return conn.data_to_send(), size
            taken = max(0, min(size, window))
            end_stream = end_stream and taken == size
            view = memoryview(data)
            for at in range(0, taken, frame):
                piece = view[at : min(at + frame, taken)]
                conn.send_data(stream_id, piece, end_stream and at + frame >= taken)
        except NoSuchStreamError:
            return b"", len(data)
        return conn.data_to_send(), taken

    def window(self, stream_id: int) -> int:
        """How many body bytes ``stream_id`` may send now (0 once it is closed)."""
        conn = self._conn
        stream = conn.streams.get(stream_id)
        if stream is None or stream.closed:
            return 0
        return min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)

    def acknowledge(self, stream_id: int, size: int) -> bytes:
        """The application consumed ``size`` body bytes of ``stream_id``: reopen the client's
        windows (h2 sends WINDOW_UPDATE once half a window is consumed)."""
        pending = self._live.get(stream_id)
        if not pending:
            return b""
        size = min(size, pending)
        self._live[stream_id] = pending - size
        self._conn.acknowledge_received_data(size, stream_id)
        return self._conn.data_to_send()

    def reset(self, stream_id: int, code: int = INTERNAL_ERROR) -> bytes:
        """RST_STREAM (an aborted response); the stream stays counted until ``close_stream``."""
        try:
            self._conn.reset_stream(stream_id, code)
        except NoSuchStreamError:
            return b""
        return self._conn.data_to_send()

    def close_stream(self, stream_id: int) -> bytes:
        """The stream's cycle is done: stop counting it, give back its unread body bytes, and
        end it if it is not: RST_STREAM NO_ERROR if only the request is unfinished (§8.1),
        CANCEL if the response is too."""
        pending = self._live.pop(stream_id, None)
        if pending is None:
            return b""
        if self._expect:
            self._expect.pop(stream_id, None)
        if not stream_id % 2:
            self._pushes -= 1
        conn = self._conn
        stream = conn.streams.get(stream_id)
        if stream is not None and not stream.closed:
            done = stream.state_machine.state == StreamState.HALF_CLOSED_LOCAL
            conn.reset_stream(stream_id, NO_ERROR if done else CANCEL)
        if pending:
            conn.acknowledge_received_data(pending, stream_id)
        return conn.data_to_send()

    @property
    def open_streams(self) -> int:
        """Streams between ``on_request`` (or a push) and ``close_stream``."""
        return len(self._live)

    @property
    def draining(self) -> bool:
        """True after ``goaway``: close the connection once ``open_streams`` is 0."""
        return self._goaway_last is not None

    def goaway(self, code: int = NO_ERROR) -> bytes:
        """GOAWAY with the highest stream id received: those streams are answered, later ones
        refused (REFUSED_STREAM: the client retries them elsewhere). Sending on open streams
        goes on; close when ``open_streams`` is 0. Built here: h2's would stop all sending."""
        if self._goaway_last is not None:
            return b""
        last = self._goaway_last = self._conn.highest_inbound_stream_id
        return self._conn.data_to_send() + _goaway(last, code)

    def push_promise(
        self,
        stream_id: int,
        method: str,
        path: bytes,
        authority: bytes,
        scheme: bytes,
        headers: Headers,
    ) -> tuple[int, bytes] | None:
        """PUSH_PROMISE on ``stream_id`` for a GET or HEAD (RFC 9113 §8.4); returns the
        promised stream id (counted like a request until ``close_stream``; answer it with
        ``send_headers``) and the bytes. None if the client disabled push, the stream is
        gone, we are draining, or the client's stream limit is reached."""
        if method not in ("GET", "HEAD"):
            raise ValueError("only GET and HEAD can be pushed")
        conn = self._conn
        stream = conn.streams.get(stream_id)
        if (
            not conn.remote_settings.enable_push
            or self._goaway_last is not None
            or stream is None
            or stream.state_machine.state not in _PUSHABLE
            or self._pushes >= conn.remote_settings.max_concurrent_streams
        ):
            return None
        promised = conn.get_next_available_stream_id()
        block = [
            (b":method", method.encode()),
            (b":scheme", scheme),
            (b":authority", authority),
            (b":path", path),
            *response_block(0, headers),
        ]
        conn.push_stream(stream_id, promised, block)
        self._live[promised] = 0
        self._pushes += 1
        return promised, conn.data_to_send()


_ACT_SELF_HEADERS, _ACT_SELF_PRIORITY, _ACT_GOAWAY = 1, 2, 3
_ACT_PRIORITY_SIZE, _ACT_ZERO_WINDOW, _ACT_OPEN_TRAILERS = 4, 5, 6
_STREAM_ERRORS: Final = {
    _ACT_SELF_PRIORITY: PROTOCOL_ERROR,
    _ACT_PRIORITY_SIZE: FRAME_SIZE_ERROR,
    _ACT_ZERO_WINDOW: PROTOCOL_ERROR,
}
# _expect values below 0: the codec already reset the stream (_BROKEN), or it got trailers
# without END_STREAM and is reset when they end it (_UNENDED).
_BROKEN, _UNENDED = -1, -2
_RESETS, _SETTINGS_N, _PINGS, _EMPTY = 0, 1, 2, 3
_PUSHABLE: Final = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def error_name(code: int) -> str:
    """An HTTP/2 error code's name (RFC 9113 §7), for log lines."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def _goaway(last_stream_id: int, code: int) -> bytes:
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()


def _no_length(headers: object) -> None:
    """h2's content-length check, switched off (``H2Codec._prepare``)."""


def _dependency(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big") & 0x7FFFFFFF
