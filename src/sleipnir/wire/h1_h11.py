"""HTTP/1.1 request parsing with h11: the pure-Python path.

h11 is a full client/server state machine; we use only its reading half. Our responses are
serialized by ``h1_writer`` (shared with the httptools path), so instead of telling h11 about
each response we start a fresh ``h11.Connection`` for every request and hand it the bytes the
previous one had buffered (``trailing_data``). That keeps h11's parsing and validation while
the response logic stays in one place.

Invariants:
- Every head goes through ``h1.build_head`` before the handler sees it.
- h11's own buffer limit (``max_incomplete_event_size``) bounds an unfinished head.
- Where h11 is more lenient than llhttp (LF-only lines, obs-fold, chunk lines), the extra
  checks here refuse what llhttp refuses, so both parsers answer the same.
"""

from __future__ import annotations

import re

import h11

from sleipnir.wire.h1 import (
    BAD_VALUE_RE,
    H1Error,
    H1Handler,
    H1Limits,
    Headers,
    RequestHead,
    build_head,
)

REASON_MAX_CHARS = 100  # of an error reason sent in a 400 body and logged
CHUNK_LINE_MAX_BYTES = 4096  # a chunk-size line with its extensions, or one trailer line
# RFC 9112 §7.1 and §7.1.1: chunk-size [ chunk-ext ] CRLF, where chunk-ext is
# *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ). h11 accepts ";.*".
# BWS is refused, as llhttp refuses it (h11 itself refuses it before the first ";").
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(rb"[0-9A-Fa-f]+(?:;%s(?:=(?:%s|%s))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED))


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

    def feed(self, data: bytes) -> int:
        """Check ``data``; returns how many of its bytes belong to the body (all of them
        until its end, the last CRLF of the trailer section)."""
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
                return len(data)
            pos = end + 1
            self._end_line(self._line)
            self._line = b""
        return pos

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


class HeadCheck:
    """Follows the bytes of a request head that h11 is also parsing.

    h11 accepts LF-only line endings and obs-fold (RFC 9112 §2.2 and §5.2 allow either); llhttp
    refuses both, so this refuses them too (400) and the two parsers agree. It keeps the head's
    lines until the head is parsed, so that an h11 refusal can be classified by ``build_head``.
    """

    __slots__ = ("_partial", "done", "lines")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._partial = bytearray()
        self.done = False

    @property
    def started(self) -> bool:
        """Bytes of the head have arrived (h11's buffer is not empty)."""
        return bool(self.lines or self._partial)

    def feed(self, data: bytes) -> None:
        pos = 0
        while not self.done:
            end = data.find(b"\n", pos)
            if end < 0:
                self._partial += data[pos:]
                return
            line = bytes(self._partial) + data[pos:end] if self._partial else data[pos:end]
            self._partial.clear()
            pos = end + 1
            if not line.endswith(b"\r"):
                raise H1Error(400, "LF without CR in the request head")
            line = line[:-1]
            if not line:
                self.done = True
            elif self.lines and line[:1] in (b" ", b"\t"):
                raise H1Error(400, "obs-fold line in the request head")
            else:
                self.lines.append(line)


def _fields(lines: list[bytes]) -> Headers:
    """The raw (name, value) fields of a head h11 has validated, as llhttp reports them: h11
    merges repeated Content-Length fields and lowercases Transfer-Encoding, build_head must
    see them as sent."""
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value))
    return fields


def _refusal(lines: list[bytes], limits: H1Limits) -> H1Error | None:
    """What ``build_head`` says about a complete head that h11 refused (None: no objection)."""
    parts = lines[0].split(b" ") if lines else []
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    fields = _fields(lines)
    try:
        build_head(parts[0].decode("latin-1"), parts[1], parts[2][5:].decode(), fields, limits)
    except (H1Error, UnicodeDecodeError) as exc:
        return exc if isinstance(exc, H1Error) else None
    return None


class H11Parser:
    """``H1Parser`` over ``h11.Connection`` (server side, reading only)."""

    __slots__ = (
        "_chunked",
        "_closed",
        "_conn",
        "_handler",
        "_head_check",
        "_held",
        "_keep_alive",
        "_limits",
        "_max_event_bytes",
        "_stopped",
    )

    def __init__(self, handler: H1Handler, limits: H1Limits) -> None:
        self._handler = handler
        self._limits = limits
        self._max_event_bytes = limits.h11_max_incomplete_event_bytes or (
            limits.request_line_bytes + limits.header_block_bytes
        )
        self._head_check: HeadCheck  # a fresh one per request, made by _new_connection
        self._conn = self._new_connection()
        self._chunked: ChunkedFramingCheck | None = None
        self._keep_alive = True
        # After a request that ends the connection (Connection: close, HTTP/1.0 without
        # keep-alive) nothing more is parsed (RFC 9112 §9.6); llhttp refuses such data itself.
        self._closed = False
        self._stopped = False
        self._held = b""

    def _new_connection(self) -> h11.Connection:
        self._head_check = HeadCheck()
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_event_bytes)

    def head_in_progress(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.IDLE and bool(conn.trailing_data[0].strip(b"\r\n"))

    def stop(self, handler: H1Handler | None = None) -> None:
        # Called from on_request: h11 goes on parsing the request's body (feed), and only
        # what follows its EndOfMessage is held.
        self._stopped = True
        if handler is not None:
            self._handler = handler

    def take_held(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def feed(self, data: bytes) -> None:
        if self._stopped:
            if self._conn.their_state is h11.IDLE:  # the stopping request is complete
                self._held += data
                return
        elif self._closed:
            return
        conn = self._conn
        if conn.their_state is h11.IDLE:
            if not self._head_check.started:
                # RFC 9112 §2.2: ignore empty lines received before a request-line.
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            self._head_check.feed(data)
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
                if self._stopped:  # the connection switches: the rest is not HTTP
                    self._held = bytes(self._conn.trailing_data[0])
                    self._conn = self._new_connection()
                    self._handler.on_complete()
                    return
                rest = self._conn.trailing_data[0].lstrip(b"\r\n")
                self._conn = self._new_connection()
                self._chunked = None
                self._closed = not self._keep_alive
                self._handler.on_complete()
                if rest and not self._closed:
                    self._head_check.feed(rest)
                    self._conn.receive_data(rest)
            else:  # h11.ConnectionClosed: the transport reports the EOF itself
                return

    def _on_request(self, event: h11.Request) -> None:
        head = build_head(
            event.method.decode("ascii"),
            bytes(event.target),
            event.http_version.decode("ascii"),
            _fields(self._head_check.lines),
            self._limits,
        )
        for _, value in head.headers:
            if BAD_VALUE_RE.search(value):  # llhttp refuses these itself; h11 lets some by
                raise H1Error(400, "invalid character in a header value")
        if _is_chunked(head):
            self._chunked = ChunkedFramingCheck()
            self._chunked.feed(self._conn.trailing_data[0])
        self._keep_alive = head.keep_alive
        self._handler.on_request(head)

    def _error(self, exc: h11.RemoteProtocolError) -> H1Error:
        reason = str(exc)
        if "buffer" in reason.lower() and "too long" in reason.lower():
            buffered = self._conn.trailing_data[0].lstrip(b"\r\n")
            if b"\n" not in buffered[: self._limits.request_line_bytes + 16]:
                return H1Error(414, "request-target too long")
            return H1Error(431, "request head too large")
        if exc.error_status_hint == 501 and self._head_check.done:
            # h11 answers 501 to every transfer coding but a lone "chunked"; RFC 9112 §6.1 and
            # §6.3 want 400 for some ("chunked, gzip", CL + TE, HTTP/1.0): build_head decides.
            refusal = _refusal(self._head_check.lines, self._limits)
            if refusal is not None:
                return refusal
        status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
        return H1Error(status, _short_reason(reason))


def _short_reason(reason: str) -> str:
    """h11's message without the request bytes it quotes ("illegal header line: b'...'"):
    those would be echoed into the 400 body and the log line, at any size."""
    reason = reason.split(":", 1)[0].strip().rstrip(".")
    return reason[:REASON_MAX_CHARS] or "malformed request"


def _is_chunked(head: RequestHead) -> bool:
    return any(name == b"transfer-encoding" for name, _ in head.headers)
