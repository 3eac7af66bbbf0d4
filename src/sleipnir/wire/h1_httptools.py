"""HTTP/1.1 request parsing with httptools (llhttp): the fast path.

Invariants:
- Every head goes through ``h1.build_head`` before the handler sees it.
- The bytes of an unfinished head are counted, so a head that never ends (slowloris, a huge
  header) is refused once it passes the configured size, before llhttp buffers more of it.
- After an Upgrade or CONNECT head llhttp stops, before any body. A body the request declared
  is read by a fresh parser primed with the same framing (``_replay``), and only then is the
  request complete. If the connection switches (``stop()``: a WebSocket handshake, which has
  no body, or an h2c Upgrade, which may have one), that parser is fed only the body's bytes
  (``_BodyEnd`` finds its end) and what follows is held for the new protocol. Otherwise the
  request is served as HTTP/1.1 (RFC 9110 §7.8 lets a server ignore Upgrade) and parsing goes
  on after the body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from sleipnir.wire.h1 import KNOWN_METHODS, H1Error, H1Handler, H1Limits, Headers, build_head

if TYPE_CHECKING:
    from sleipnir.wire.h1_h11 import ChunkedFramingCheck


_HTTP11: Final = b" HTTP/1.1\r\n"
_HTTP10: Final = b" HTTP/1.0\r\n"


class HttptoolsParser:
    """``H1Parser`` over ``httptools.HttpRequestParser``."""

    __slots__ = (
        "_at_start",
        "_body_end",
        "_closed",
        "_data",
        "_feed_bytes",
        "_fresh",
        "_handler",
        "_head_bytes",
        "_headers",
        "_held",
        "_idle",
        "_in_head",
        "_in_trailers",
        "_keep_alive",
        "_limits",
        "_max_head_bytes",
        "_parser",
        "_replay",
        "_replaying",
        "_stopped",
        "_url",
    )

    def __init__(self, handler: H1Handler, limits: H1Limits) -> None:
        self._handler = handler
        self._limits = limits
        self._max_head_bytes = limits.request_line_bytes + limits.header_block_bytes
        self._parser = self._new_parser()
        self._url = b""
        self._headers: Headers = []
        self._in_head = False
        self._in_trailers = False
        self._head_bytes = 0
        self._keep_alive = True
        self._closed = False
        self._feed_bytes = 0
        # For _version(): the bytes being fed, whether no message was in progress when they
        # came (_fresh: one that begins first begins at their first byte) and whether the
        # current message began there (_at_start).
        self._data = b""
        self._idle = True
        self._fresh = False
        self._at_start = False
        self._stopped = False
        self._held = b""
        self._replay: bytes | None = None  # the framing line of a body llhttp left unread
        self._replaying = False
        self._body_end: _BodyEnd | None = None  # stopped: where the request's body ends

    def head_in_progress(self) -> bool:
        return self._in_head

    def stop(self, handler: H1Handler | None = None) -> None:
        self._stopped = True
        if handler is not None:
            self._handler = handler

    def take_held(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def feed(self, data: bytes) -> None:
        if self._stopped:
            if self._body_end is None:
                self._held += data
            else:
                self._feed_body(data)
            return
        if self._closed:
            return  # RFC 9112 §9.6: nothing after a request that ends the connection
        self._feed_bytes = len(data)
        self._data = data
        self._fresh = self._idle
        self._at_start = False  # a head begun in an earlier read is not in these bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._parser_error(exc)
        finally:
            self._data = b""
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                raise H1Error(431, "request head too large")

    def _parser_error(self, exc: httptools.HttpParserError) -> None:
        if self._closed:
            # Bytes after the last request: llhttp's "Data after `Connection: close`", or our
            # on_message_begin stopping it. Ignored, as with h11.
            return
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, H1Error):
                raise cause from None
            raise exc
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            raise H1Error(400, "invalid request-target") from exc
        raise H1Error(*_classify(str(exc))) from exc

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # Any 1.x minor version is served as 1.1 (RFC 9110 §2.5), as with h11; build_head
        # still refuses 0.9 (400) and 2+ (505). llhttp otherwise knows only 0.9/1.0/1.1/2.0.
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped after an Upgrade or CONNECT head: parse the request's own body when
        it declared one; then hold the rest for the new protocol if the handler switched
        (``stop()``), else go on parsing it as HTTP/1.1."""
        framing = self._replay
        if framing is None:
            if self._stopped:
                self._held = rest
            else:
                self._restart(rest)
            return
        # A fresh parser is primed with a head of the same framing, whose callbacks are
        # swallowed (_replaying): the body in ``rest`` then reaches the handler as this
        # request's body, with llhttp's chunked parsing and checks.
        self._replay = None
        self._replaying = True
        self._parser = self._new_parser()
        if self._stopped:
            # Only the body may reach llhttp: what follows it is the next protocol's. The
            # request is the parser's last (_closed once it is complete): llhttp starting
            # another one means it saw the body end before _BodyEnd did.
            self._keep_alive = False
            end = _BodyEnd(framing)
            if not end.done:  # else ("content-length: 00") the priming completes it
                self._body_end = end
            else:
                self._held = rest
                rest = b""
        self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        if rest:
            self.feed(rest)

    def _feed_body(self, data: bytes) -> None:
        """The connection switched: parse the request's body, hold what follows it."""
        end = self._body_end
        assert end is not None
        if self._closed:
            raise H1Error(400, "invalid chunked body")  # llhttp ended it, _BodyEnd did not
        size = end.feed(data)  # raises H1Error for invalid chunked framing
        if end.done:
            self._body_end = None
            self._held = data[size:]
            data = data[:size]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._parser_error(exc)
        if end.done and not self._closed:
            raise H1Error(400, "invalid chunked body")  # the two disagree: refuse it

    def _restart(self, rest: bytes) -> None:
        self._parser = self._new_parser()
        if rest:
            self.feed(rest)

    # httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._replaying:
            return
        if self._closed:
            # llhttp may see keep-alive where we do not (HTTP/1.0 with "keep-alive, close").
            raise H1Error(400, "request after the last request of the connection")
        self._url = b""
        self._headers = []
        self._idle = False
        self._at_start = self._fresh
        self._fresh = False
        self._in_head = True
        self._in_trailers = False
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        if self._replaying:
            return
        if self._url:  # the target arrived in pieces (split reads)
            url = self._url + url
        self._url = url
        if len(url) > self._limits.request_line_bytes:
            raise H1Error(414, "request-target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers or self._replaying:
            return  # trailer fields are not passed to ASGI apps (RFC 9112 §7.1.2 allows it)
        # build_head checks the count; the head-bytes limit in feed() bounds the list meanwhile.
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._replaying:  # the primed head: its request is the one already delivered
            self._replaying = False
            return
        parser = self._parser
        method = parser.get_method()
        head = build_head(
            KNOWN_METHODS.get(method) or method.decode("ascii"),
            self._url,
            self._version(method),
            self._headers,
            self._limits,
            self._head_bytes + self._feed_bytes,  # no more than this many bytes of head
        )
        self._in_head = False
        self._in_trailers = True
        self._keep_alive = head.keep_alive
        self._handler.on_request(head)
        if parser.should_upgrade():
            self._replay = _framing_line(head.headers)

    def _version(self, method: bytes) -> str:
        """The request's HTTP version. ``get_http_version()`` formats it for every request
        (about 2.3k instructions, 4 % of a plaintext request, callgrind); when the request
        line is at the start of the bytes being fed, it is read from there instead, where
        llhttp found it: method SP target SP "HTTP/1.x" CRLF (RFC 9112 §3). Any other
        form (spaces llhttp skipped, a line split across reads, another version) asks
        llhttp."""
        if self._at_start:
            # Slices and ==, not startswith(): compiled, a method call costs more than a slice.
            data = self._data
            url = self._url
            at = len(method) + 1
            end = at + len(url)
            tail = data[end : end + 11]
            if tail in (_HTTP11, _HTTP10) and data[: at - 1] == method and data[at:end] == url:
                return "1.1" if tail == _HTTP11 else "1.0"
        return self._parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self._handler.on_body(body)

    def on_message_complete(self) -> None:
        if self._replay is not None:
            return  # llhttp skipped the body: the request completes after it (_upgraded)
        self._idle = True
        self._closed = not self._keep_alive
        self._handler.on_complete()


class _BodyEnd:
    """Where the body of the request that stopped the parser ends, counted ahead of llhttp
    (which says when a message is complete, not where): Content-Length bytes, or the chunked
    framing walked by the same check the h11 parser uses."""

    __slots__ = ("_chunks", "_left")

    def __init__(self, framing: bytes) -> None:
        self._chunks: ChunkedFramingCheck | None = None
        self._left = -1
        if framing.startswith(b"transfer-encoding"):
            from sleipnir.wire.h1_h11 import ChunkedFramingCheck

            self._chunks = ChunkedFramingCheck()
        else:
            self._left = int(framing.partition(b":")[2])

    @property
    def done(self) -> bool:
        chunks = self._chunks
        return self._left == 0 if chunks is None else chunks.done

    def feed(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the body (all of them until it ends)."""
        chunks = self._chunks
        if chunks is not None:
            return chunks.feed(data)
        size = min(self._left, len(data))
        self._left -= size
        return size


def _framing_line(headers: Headers) -> bytes | None:
    """The framing of a request's body as a header line (build_head has validated it), or
    None when it has none."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return b"transfer-encoding: chunked\r\n"  # build_head accepts nothing else
        if name == b"content-length" and value != b"0":
            return b"content-length: " + value + b"\r\n"
    return None


def _classify(message: str) -> tuple[int, str]:
    """Map an llhttp error message to a status and a short reason."""
    lowered = message.lower()
    if "header overflow" in lowered or "header field too long" in lowered:
        return 431, "request head too large"
    if "version" in lowered:
        return 400, "invalid HTTP version"
    if "method" in lowered:
        return 400, "invalid method"
    return 400, message.rstrip(".") or "malformed request"
