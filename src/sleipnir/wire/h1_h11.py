"""HTTP/1.1 request parsing with h11: the pure-Python path.

h11 is a full client/server state machine; we use only its reading half. Our responses are
serialized by ``h1_writer`` (shared with the httptools path), so instead of telling h11 about
each response we start a fresh ``h11.Connection`` for every request and hand it the bytes the
previous one had buffered (``trailing_data``). That keeps h11's parsing and validation while
the response logic stays in one place.

Invariants:
- Every head goes through ``h1.build_head`` before the handler sees it.
- h11's own buffer limit (``max_incomplete_event_size``) bounds an unfinished head.
"""

from __future__ import annotations

import re

import h11

from sleipnir.wire.h1 import H1Error, H1Handler, H1Limits, RequestHead, build_head

CHUNK_LINE_MAX_BYTES = 4096  # a chunk-size line with its extensions, or one trailer line
# RFC 9112 §7.1 and §7.1.1: chunk-size [ chunk-ext ] CRLF, where chunk-ext is
# *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ). h11 accepts ";.*".
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"[0-9A-Fa-f]+(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED)
)


class ChunkedFramingCheck:
    """Validates the chunk-size lines of a chunked body that h11 is also parsing.

    h11 is lenient about chunk extensions (a bare CR passes); this walks the same bytes and
    refuses what RFC 9112 §7.1 does not allow, before h11 sees them.
    """

    __slots__ = ("_line", "_need", "_state")

    _SIZE_LINE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)

    def __init__(self) -> None:
        self._state = self._SIZE_LINE
        self._line = b""
        self._need = 0

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and self._state != self._DONE:
            if self._state == self._DATA or self._state == self._DATA_CRLF:
                step = min(self._need, len(data) - pos)
                pos += step
                self._need -= step
                if self._need == 0:
                    self._state = self._DATA_CRLF if self._state == self._DATA else self._SIZE_LINE
                    self._need = 2 if self._state == self._DATA_CRLF else 0
                continue
            end = data.find(b"\n", pos)
            self._line += data[pos : len(data) if end < 0 else end + 1]
            if len(self._line) > CHUNK_LINE_MAX_BYTES:
                raise H1Error(400, "chunk-size line or trailer too long")
            if end < 0:
                return
            pos = end + 1
            self._end_line(self._line)
            self._line = b""

    def _end_line(self, line: bytes) -> None:
        if self._state == self._TRAILER:
            if line == b"\r\n":
                self._state = self._DONE
            elif not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise H1Error(400, "invalid line in chunked trailer section")
            return
        if not _CHUNK_LINE_RE.fullmatch(line):
            raise H1Error(400, "invalid chunk-size line")
        size = int(line.split(b";", 1)[0].strip(b" \t\r\n"), 16)
        if size == 0:
            self._state = self._TRAILER
        else:
            self._state, self._need = self._DATA, size


class H11Parser:
    """``H1Parser`` over ``h11.Connection`` (server side, reading only)."""

    __slots__ = ("_chunked", "_conn", "_handler", "_limits", "_max_event_bytes")

    def __init__(self, handler: H1Handler, limits: H1Limits) -> None:
        self._handler = handler
        self._limits = limits
        self._max_event_bytes = limits.h11_max_incomplete_event_bytes or (
            limits.request_line_bytes + limits.header_block_bytes
        )
        self._conn = self._new_connection()
        self._chunked: ChunkedFramingCheck | None = None

    def _new_connection(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_event_bytes)

    def head_in_progress(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.IDLE and bool(conn.trailing_data[0].strip(b"\r\n"))

    def feed(self, data: bytes) -> None:
        conn = self._conn
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            # RFC 9112 §2.2: ignore empty lines received before a request-line.
            data = data.lstrip(b"\r\n")
            if not data:
                return
        if self._chunked is not None:
            self._chunked.feed(data)
        conn.receive_data(data)
        self._drain_events()

    def _drain_events(self) -> None:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._error(exc) from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Data):
                self._handler.on_body(bytes(event.data))
            elif isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.EndOfMessage):
                rest = self._conn.trailing_data[0].lstrip(b"\r\n")
                self._conn = self._new_connection()
                self._chunked = None
                self._handler.on_complete()
                if rest:
                    self._conn.receive_data(rest)
            else:  # h11.ConnectionClosed: the transport reports the EOF itself
                return

    def _on_request(self, event: h11.Request) -> None:
        head = build_head(
            event.method.decode("ascii"),
            bytes(event.target),
            event.http_version.decode("ascii"),
            [(bytes(n), bytes(v)) for n, v in event.headers.raw_items()],
            self._limits,
        )
        if _is_chunked(head):
            self._chunked = ChunkedFramingCheck()
            self._chunked.feed(self._conn.trailing_data[0])
        self._handler.on_request(head)

    def _error(self, exc: h11.RemoteProtocolError) -> H1Error:
        reason = str(exc)
        if "buffer" in reason.lower() and "too long" in reason.lower():
            buffered = self._conn.trailing_data[0].lstrip(b"\r\n")
            if b"\n" not in buffered[: self._limits.request_line_bytes + 16]:
                return H1Error(414, "request-target too long")
            return H1Error(431, "request head too large")
        status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
        return H1Error(status, reason.rstrip(".") or "malformed request")


def _is_chunked(head: RequestHead) -> bool:
    return any(name == b"transfer-encoding" for name, _ in head.headers)
