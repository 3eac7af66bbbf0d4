"""A raw HTTP/2 client for the conformance suite: frames built by hand, frames read back.

Valid frames are built with hyperframe, invalid ones (wrong lengths, bad padding, unknown types,
zero increments) as raw bytes with ``frame``; header blocks with ``hpack.Encoder``. What the
server sends is parsed back into hyperframe frames, and its header blocks decoded in order
(one ``hpack.Decoder`` per connection, as HPACK requires).

Every read is bounded by a socket timeout: waiting for a frame that never comes fails the test
with what was seen instead; nothing here can hang, and nothing sleeps to synchronize.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB

# Settings (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

Fields = list[tuple[bytes, bytes]]
F = TypeVar("F", bound=Frame)
DEFAULT_TIMEOUT_S = 5.0


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """Any frame, valid or not: a 9-octet header (RFC 9113 §4.1) and the payload as given."""
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    """A SETTINGS frame with any identifiers and values (no range checks)."""
    payload = b"".join(
        k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in (values or {}).items()
    )
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(sid: int, increment: int) -> bytes:
    """WINDOW_UPDATE with any increment, 0 included (RFC 9113 §6.9)."""
    return frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big"))


def rst_stream(sid: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, sid, code.to_bytes(4, "big"))


def priority(sid: int, depends_on: int = 0, weight: int = 15, exclusive: bool = False) -> bytes:
    dep = depends_on | (0x80000000 if exclusive else 0)
    return frame(PRIORITY, 0, sid, dep.to_bytes(4, "big") + bytes((weight,)))


def ping(payload: bytes = b"12345678", ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, payload)


def data(sid: int, payload: bytes, end: bool = False, pad: int | None = None) -> bytes:
    """DATA, optionally padded with ``pad`` zero octets (RFC 9113 §6.1)."""
    flags = END_STREAM if end else 0
    if pad is not None:
        return frame(DATA, flags | PADDED, sid, bytes((pad,)) + payload + bytes(pad))
    return frame(DATA, flags, sid, payload)


def request_fields(
    method: bytes = b"GET", path: bytes = b"/", extra: Sequence[tuple[bytes, bytes]] = ()
) -> Fields:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"localhost"),
        (b":path", path),
        *extra,
    ]


class Closed(AssertionError):
    """The server closed the connection while a frame was expected."""


class NoFrame(AssertionError):
    """No whole frame arrived within the read's timeout."""


@dataclass
class Response:
    status: int = 0
    headers: Fields = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None
    informational: list[Fields] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class H2Client:
    """One prior-knowledge HTTP/2 connection driven frame by frame."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = sock
        self.timeout = timeout
        self.enc = Encoder()
        self.dec = Decoder()
        self.buf = bytearray()
        self.eof = False
        self.seen: list[Frame] = []  # every frame received, in order
        self.server_settings: dict[int, int] = {}
        self.blocks: dict[int, list[Fields]] = {}  # decoded header blocks per stream
        self._block: list[bytes] = []
        self._next_sid = 1

    # Sending --------------------------------------------------------------------------------

    def send(self, *parts: bytes | Frame) -> None:
        self.sock.sendall(b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts))

    def send_quietly(self, *parts: bytes | Frame) -> bool:
        """Send, tolerating a server that already closed (a flood cut short); False then."""
        try:
            self.send(*parts)
        except OSError:
            return False
        return True

    def handshake(self, values: dict[int, int] | None = None) -> None:
        """Client preface and SETTINGS; read the server's SETTINGS, ACK it, and wait for the
        ACK of ours (RFC 9113 §3.4, §6.5.3)."""
        self.send(PREFACE + settings(values))
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            f = self.read_frame()
            if isinstance(f, SettingsFrame):
                if "ACK" in f.flags:
                    got_ack = True
                else:
                    got_settings = True
                    self.server_settings.update(f.settings)
                    self.send(settings(ack=True))

    def next_sid(self) -> int:
        sid = self._next_sid
        self._next_sid += 2
        return sid

    def block(self, fields: Fields) -> bytes:
        return bytes(self.enc.encode(fields))

    def headers(
        self,
        sid: int,
        fields: Fields,
        end_stream: bool = True,
        end_headers: bool = True,
        extra_flags: int = 0,
    ) -> bytes:
        """A HEADERS frame carrying ``fields`` (encoded now: send it, HPACK state moved on)."""
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags | extra_flags, sid, self.block(fields))

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        body: bytes | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
        sid: int | None = None,
    ) -> int:
        """Open a stream with a request (one HEADERS frame, DATA frames for ``body``)."""
        sid = self.next_sid() if sid is None else sid
        fields = request_fields(method, path, extra)
        parts = [self.headers(sid, fields, end_stream=body is None)]
        if body is not None:
            if not body:
                parts.append(data(sid, b"", end=True))
            for at in range(0, len(body), 16384):
                piece = body[at : at + 16384]
                parts.append(data(sid, piece, end=at + 16384 >= len(body)))
        self.send(*parts)
        return sid

    # Receiving ------------------------------------------------------------------------------

    def _recv(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame from the server; None once it closed the connection. Fails after
        ``timeout`` seconds without a whole frame."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    break
            if self.eof:
                if self.buf:
                    raise AssertionError(f"connection closed inside a frame: {bytes(self.buf)!r}")
                return None
            if not self._recv(deadline) and not self.eof:
                raise NoFrame(
                    f"no frame from the server within {timeout or self.timeout}s; "
                    f"seen so far: {self.seen[-8:]}"
                )
        head, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
        head.parse_body(memoryview(bytes(self.buf[9 : 9 + length])))
        del self.buf[: 9 + length]
        self.seen.append(head)
        self._decode(head)
        return head

    def _decode(self, f: Frame) -> None:
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            self._block.append(bytes(f.data))
            if "END_HEADERS" in f.flags:
                fields = self.dec.decode(b"".join(self._block), raw=True)
                self._block = []
                self.blocks.setdefault(f.stream_id, []).append(
                    [(bytes(n), bytes(v)) for n, v in fields]
                )

    def read_for(self, seconds: float) -> list[Frame]:
        """Every frame that arrives within ``seconds`` (a bounded wait that expects little or
        nothing: it paces a slow reader, or shows that the server stays quiet)."""
        got: list[Frame] = []
        deadline = time.monotonic() + seconds
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                f = self.read_frame(left)
            except NoFrame:
                break
            if f is not None:
                got.append(f)
        return got

    def expect(self, kind: type[F], sid: int | None = None, timeout: float | None = None) -> F:
        """Read until a frame of ``kind`` (on stream ``sid``) arrives; others are skipped. An
        unexpected GOAWAY or close fails."""
        while True:
            f = self.read_frame(timeout)
            if f is None:
                raise Closed(f"connection closed while waiting for {kind.__name__}")
            if isinstance(f, kind) and (sid is None or f.stream_id == sid):
                return f
            if isinstance(f, GoAwayFrame):
                raise AssertionError(
                    f"GOAWAY {f.error_code} ({bytes(f.additional_data)!r}) "
                    f"while waiting for {kind.__name__}"
                )

    def expect_goaway(self, code: int, timeout: float | None = None) -> GoAwayFrame:
        """A connection error (RFC 9113 §5.4.1): GOAWAY with ``code``, then the server closes
        the connection."""
        while True:
            f = self.read_frame(timeout)
            if f is None:
                raise Closed(f"closed without GOAWAY {code}; seen: {self.seen[-8:]}")
            if isinstance(f, GoAwayFrame):
                break  # (frames before it, RST_STREAMs say, are skipped)
        assert f.error_code == code, f"GOAWAY {f.error_code}, expected {code}"
        self.expect_closed()
        return f

    def expect_closed(self, timeout: float | None = None) -> None:
        """The server closes the connection (frames before that are skipped)."""
        while self.read_frame(timeout) is not None:
            pass

    def expect_reset(self, sid: int, code: int, timeout: float | None = None) -> None:
        """A stream error (RFC 9113 §5.4.2): RST_STREAM on ``sid`` with ``code``."""
        f = self.expect(RstStreamFrame, sid, timeout)
        assert f.error_code == code, f"RST_STREAM {f.error_code} on {sid}, expected {code}"

    def expect_error(self, sid: int, code: int) -> str:
        """A stream error or a connection error, both with ``code`` (where RFC 9113 allows
        either); returns which."""
        while True:
            f = self.read_frame()
            if f is None:
                raise Closed(f"closed without an error {code}; seen: {self.seen[-8:]}")
            if isinstance(f, RstStreamFrame) and f.stream_id == sid:
                assert f.error_code == code, f"RST_STREAM {f.error_code}, expected {code}"
                return "stream"
            if isinstance(f, GoAwayFrame):
                assert f.error_code == code, f"GOAWAY {f.error_code}, expected {code}"
                self.expect_closed()
                return "connection"

    def assert_alive(self) -> None:
        """The connection still works: a PING is answered with its payload (RFC 9113 §6.7),
        and nothing before it was a GOAWAY."""
        payload = os.urandom(8)
        self.send(ping(payload))
        while True:
            f = self.expect(PingFrame)
            if "ACK" in f.flags and f.opaque_data == payload:
                return

    def response(self, sid: int, window: bool = True, timeout: float | None = None) -> Response:
        """Read the response on ``sid`` until END_STREAM or RST_STREAM. With ``window``, the
        received DATA is given back at once (WINDOW_UPDATE on the stream and connection)."""
        resp = Response()
        while not (resp.ended or resp.reset is not None):
            f = self.read_frame(timeout)
            if f is None:
                raise Closed(f"closed before the response on stream {sid} ended: {resp}")
            if isinstance(f, GoAwayFrame) and f.error_code != NO_ERROR:
                raise AssertionError(f"GOAWAY {f.error_code} before stream {sid} ended")
            if f.stream_id != sid:
                continue
            if isinstance(f, (HeadersFrame, ContinuationFrame)) and "END_HEADERS" in f.flags:
                fields = self.blocks[sid][-1]
                status = dict(fields).get(b":status")
                if status is not None and status.startswith(b"1"):
                    resp.informational.append(fields)
                elif status is not None:
                    resp.status = int(status)
                    resp.headers = fields
            elif isinstance(f, DataFrame):
                resp.body += f.data
                if window and f.flow_controlled_length:
                    self.send(
                        window_update(sid, f.flow_controlled_length),
                        window_update(0, f.flow_controlled_length),
                    )
            elif isinstance(f, RstStreamFrame):
                resp.reset = f.error_code
            if "END_STREAM" in f.flags:
                resp.ended = True
        return resp

    def get(self, path: bytes = b"/", extra: Sequence[tuple[bytes, bytes]] = ()) -> Response:
        return self.response(self.request(path, extra=extra))


def split(block: bytes, pieces: int) -> Iterable[bytes]:
    """``block`` in ``pieces`` nearly equal parts (some may be empty)."""
    step = -(-len(block) // pieces)
    return [block[i * step : (i + 1) * step] for i in range(pieces)]
