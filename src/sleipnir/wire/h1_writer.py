"""HTTP/1.1 response serialization, shared by both parsers.

``encode_head`` decides the body framing of a response (RFC 9112 §6) and produces its head.
The caller writes the head together with the first body chunk, so a small response costs one
``transport.write``.

Invariants:
- Status lines and the default header block are precomputed; per response we only join.
- A header name must be a token and a value must not contain CR, LF or NUL (response
  splitting); a violation raises ``ResponseHeaderError`` before a byte is written.
- 1xx, 204 and 304 responses and responses to HEAD never carry a body; 1xx and 204 never carry
  Content-Length or Transfer-Encoding (RFC 9110 §8.6, RFC 9112 §6.1).
- HTTP/1.0 clients never see chunked encoding: a streamed body is close-delimited.
- Trailer fields go out only after a chunked body (``trailer_section``); 1xx responses
  (``informational``, ``CONTINUE_100``) only to HTTP/1.1 requests.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from sleipnir.wire.h1 import MAX_CONTENT_LENGTH_DIGITS, Headers

FRAMING_NONE: Final = 0  # no body may follow (HEAD, 1xx, 204, 304)
FRAMING_LENGTH: Final = 1  # Content-Length
FRAMING_CHUNKED: Final = 2  # Transfer-Encoding: chunked
FRAMING_CLOSE: Final = 3  # body ends when the connection closes (HTTP/1.0 streaming)

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KNOWN_NAMES_MAX: Final = 4096  # bound on the cache of validated header names
# Bounds on the cache of validated header values: how many, and how long each may be (the
# count is not Final, which mypyc would inline: a test sets it).
_KNOWN_VALUES_MAX = 1024
_KNOWN_VALUE_BYTES: Final = 40
_KNOWN_LENGTHS_MAX: Final = 256  # bound on the cache of Content-Length values (as long)
_CTL: Final = b"\r\n\0"  # never in a field value (response splitting)


class ResponseHeaderError(ValueError):
    """The application's response head cannot be sent as is."""


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


_STATUS_LINES: Final = {status.value: _status_line(status.value) for status in HTTPStatus}
# Header names already checked (tokens, RFC 9110 §5.1), each with its lowercase form: an app
# sends the same few names again and again, so one dict hit replaces a check and a lower().
_GOOD_NAMES: Final[dict[bytes, bytes]] = {}
# Short header values already checked (no CR, LF or NUL): an app sends the same few again and
# again too (content types, cache policies, "nosniff"), and a set hit for each replaces the
# check of the whole head (a copy of it by translate(), about 1k instructions).
_GOOD_VALUES: Final[set[bytes]] = set()
# Content-Length values an app gave, each with its number and the line we write for it: static
# bodies come back with the same few lengths (parsing and formatting each: about 700
# instructions).
_LENGTHS: Final[dict[bytes, tuple[int, bytes]]] = {}

# What the writer must look at among the application's headers, by lowercase name.
_CONTENT_LENGTH: Final = 1
_TRANSFER_ENCODING: Final = 2
_CONNECTION: Final = 3
_SPECIAL: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
}


class DefaultHeaders:
    """The headers the server adds unless the application set them (server, date, --header)."""

    __slots__ = ("block", "lines", "names", "pairs")

    def __init__(self, lines: list[tuple[bytes, bytes]]) -> None:
        self.pairs = [(name.lower(), value) for name, value in lines]  # HTTP/2's field list
        self.lines = [(name.lower(), b"%s: %s\r\n" % (name, value)) for name, value in lines]
        self.names = frozenset(name for name, _ in self.lines)
        self.block = b"".join(line for _, line in self.lines)

    def without(self, names: set[bytes]) -> bytes:
        return b"".join(line for name, line in self.lines if name not in names)


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ResponseHeaderError(f"invalid status code {status!r}")
        line = _status_line(status)
    return line


def _check_name(name: bytes) -> bytes:
    """A name not yet in _GOOD_NAMES (the caller looks there first): check, remember, and
    return its lowercase form."""
    if not _TOKEN_RE.fullmatch(name):
        raise ResponseHeaderError(f"invalid header name {name!r}")
    lname = name.lower()
    if len(_GOOD_NAMES) < _KNOWN_NAMES_MAX:
        _GOOD_NAMES[name] = lname
    return lname


def encode_head(
    status: int,
    headers: Headers,
    defaults: DefaultHeaders,
    # Not keyword-only: the per-request caller passes these positionally (a call with keywords
    # is not specialised by CPython 3.11); the others name them.
    head_request: bool,
    http10: bool,
    keep_alive: bool,
    final_body_len: int,
) -> tuple[bytes, int, int, bool]:
    """Serialize a response head; returns (head, framing, content_length, keep_alive).

    ``final_body_len`` is the body length when the first body message is also the last,
    else -1 (a streamed response). ``content_length`` is -1 unless framing is LENGTH.
    """
    parts = [_STATUS_LINES.get(status) or status_line(status)]
    content_length = -1
    length_line = b""
    overridden: set[bytes] | None = None
    default_names = defaults.names
    lines = 0
    unchecked = False  # a value not in _GOOD_VALUES
    for name, value in headers:
        lname = _GOOD_NAMES.get(name) or _check_name(name)
        kind = _SPECIAL.get(lname)
        if kind is not None:
            if kind == _CONTENT_LENGTH:
                content_length, length_line = _LENGTHS.get(value) or _length(value)
            elif kind == _CONNECTION:
                keep_alive = keep_alive and b"close" not in value.lower()
            continue  # framing and connection headers are ours to write
        if lname in default_names:
            overridden = overridden or set()
            overridden.add(lname)
        parts += (name, b": ", value, CRLF)
        lines += 1
        if value not in _GOOD_VALUES:
            unchecked = True
    block = b"".join(parts)
    if unchecked:
        # The block holds exactly one CR and one LF per line (names are tokens); any more, or
        # any NUL, came from a value. Counted with one translate() rather than count() and
        # find(), which are slow in CPython (see the note at the top of wire/h1.py).
        if len(block) - len(block.translate(None, _CTL)) != 2 * (lines + 1):
            raise ResponseHeaderError("CR, LF or NUL in a response header value")
        if len(_GOOD_VALUES) < _KNOWN_VALUES_MAX:
            _remember_values(headers)

    if content_length >= 0 and not head_request and status >= 200 and status not in (204, 304):
        # The common case, inline: the app gave a Content-Length (RFC 9112 §6.3 (6)).
        framing, extra = FRAMING_LENGTH, length_line
    else:
        framing, extra, keep_alive = _framing(
            status, content_length, head_request, http10, keep_alive, final_body_len
        )
    if framing == FRAMING_LENGTH and content_length < 0:
        content_length = final_body_len
    default_block = defaults.block if overridden is None else defaults.without(overridden)
    if not keep_alive:
        extra += b"connection: close\r\n"
    elif http10:
        extra += b"connection: keep-alive\r\n"
    # One join rather than a chain of "+": one allocation, no temporary heads.
    head = b"".join((block, default_block, extra, CRLF))
    return head, framing, content_length, keep_alive


def _length(value: bytes) -> tuple[int, bytes]:
    """A Content-Length value not in _LENGTHS: its number and our line for it, remembered."""
    length = (
        int(value)
        if value.isdigit() and len(value) <= MAX_CONTENT_LENGTH_DIGITS
        else _parse_length(value)
    )
    known = (length, b"content-length: %d\r\n" % length)
    if len(_LENGTHS) < _KNOWN_LENGTHS_MAX and len(value) <= _KNOWN_VALUE_BYTES:
        _LENGTHS[value] = known
    return known


def _remember_values(headers: Headers) -> None:
    """Add the short values of ``headers`` to _GOOD_VALUES, each checked on its own (those of
    framing headers never went through the head's check)."""
    for _, value in headers:
        if (
            len(value) <= _KNOWN_VALUE_BYTES
            and len(_GOOD_VALUES) < _KNOWN_VALUES_MAX
            and len(value.translate(None, _CTL)) == len(value)
        ):
            _GOOD_VALUES.add(value)


def _framing(
    status: int,
    content_length: int,
    head_request: bool,
    http10: bool,
    keep_alive: bool,
    final_body_len: int,
) -> tuple[int, bytes, bool]:
    """RFC 9112 §6.3: choose how the body is delimited; returns (framing, headers, keep_alive)."""
    if status < 200 or status == 204:
        return FRAMING_NONE, b"", keep_alive
    if content_length >= 0:
        header = b"content-length: %d\r\n" % content_length
        no_body = head_request or status == 304
        return (FRAMING_NONE if no_body else FRAMING_LENGTH), header, keep_alive
    if status == 304:
        return FRAMING_NONE, b"", keep_alive
    if final_body_len >= 0:
        if head_request and final_body_len == 0:
            return FRAMING_NONE, b"", keep_alive
        header = b"content-length: %d\r\n" % final_body_len
        return (FRAMING_NONE if head_request else FRAMING_LENGTH), header, keep_alive
    if head_request:
        return FRAMING_NONE, b"", keep_alive
    if http10:
        return FRAMING_CLOSE, b"", False
    return FRAMING_CHUNKED, b"transfer-encoding: chunked\r\n", keep_alive


def _parse_length(value: bytes) -> int:
    value = value.strip()
    digits = value.lstrip(b"0")  # (int() counts leading zeros against its 4300 digits)
    if not value.isdigit() or len(digits) > MAX_CONTENT_LENGTH_DIGITS:
        raise ResponseHeaderError(f"invalid content-length {value[:40]!r}")
    return int(digits) if digits else 0


def check_fields(fields: Headers) -> None:
    """The rules of ``encode_head`` for fields sent outside a response head (trailer fields,
    early hints, pushed requests' headers): a name is a token, a value holds no CR, LF or NUL
    (RFC 9110 §5.1, §5.5); raises ``ResponseHeaderError``."""
    for name, value in fields:
        if name not in _GOOD_NAMES:
            _check_name(name)
        if len(value.translate(None, _CTL)) != len(value):
            raise ResponseHeaderError(f"CR, LF or NUL in the value of {name.decode('latin-1')}")


def trailer_section(fields: Headers) -> bytes:
    """The last chunk and a trailer section (RFC 9112 §7.1.2) of fields ``check_fields``
    passed; the end of a chunked body in place of ``LAST_CHUNK``."""
    return b"".join([b"0\r\n", *[b"%s: %s\r\n" % field for field in fields], CRLF])


def informational(status: int, fields: Headers) -> bytes:
    """A 1xx response (103 Early Hints, RFC 8297) with fields ``check_fields`` passed. Never
    for an HTTP/1.0 request (RFC 9110 §15.2)."""
    return b"".join([status_line(status), *[b"%s: %s\r\n" % field for field in fields], CRLF])


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); empty data must not be chunked."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_body(status: int, reason: str) -> bytes:
    """The text of a response the server makes itself (an error, 503, 413...): the status's
    phrase and the reason, the same over HTTP/1.1 and HTTP/2."""
    return f"{HTTPStatus(status).phrase}: {reason}\n".encode("latin-1", "replace")


def simple_response(
    status: int, reason: str, defaults: DefaultHeaders, headers: Headers | None = None
) -> bytes:
    """A complete short text response that closes the connection (errors, 408, 503)."""
    body = error_body(status, reason)
    extra = b"".join(b"%s: %s\r\n" % pair for pair in headers) if headers else b""
    return b"%scontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n%s%s%s\r\n%s" % (
        status_line(status),
        len(body),
        extra,
        defaults.block,
        b"connection: close\r\n",
        body,
    )


def switching_protocols(headers: Headers, defaults: DefaultHeaders) -> bytes:
    """A 101 response head (RFC 9110 §15.2.2) with ``headers`` (checked like any response's)
    and ``Connection: upgrade``, which ``encode_head`` would not let through."""
    head = encode_head(
        101, headers, defaults, head_request=False, http10=False, keep_alive=True, final_body_len=0
    )[0]
    return head[:-2] + b"connection: upgrade\r\n\r\n"
