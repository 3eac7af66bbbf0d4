"""HTTP/2 field blocks: request fields to a ``RequestHead``, response headers to a block.

RFC 9113 §8.2 and §8.3.

h2's own inbound validation is switched off (``wire/h2.py``): it raises connection errors for
what RFC 9113 §8.1.1 calls a *malformed request*, which is a stream error, and its generator
pipeline is slow. ``build_request`` checks the same rules in one pass and says how the stream
must be refused: ``Malformed`` (RST_STREAM PROTOCOL_ERROR) or ``Refused`` (a status answered
on the stream, such as 431).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sleipnir.wire.h1 import KNOWN_METHODS, Headers, RequestHead, host_known_good, valid_host
from sleipnir.wire.h1_writer import ResponseHeaderError

# RFC 9113 §8.2.1: a field name is a lowercase token; §8.2.2: no connection-specific fields.
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_METHOD_TOKEN: Final = _TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_WS: Final = (0x20, 0x09)

_METHOD, _SCHEME, _AUTHORITY, _PATH, _PROTOCOL = range(5)
_PSEUDO: Final = {
    b":method": _METHOD,
    b":scheme": _SCHEME,
    b":authority": _AUTHORITY,
    b":path": _PATH,
    b":protocol": _PROTOCOL,  # RFC 8441 §4, extended CONNECT only
}
_BAD, _TE, _HOST, _COOKIE, _EXPECT, _LENGTH = range(6)
_SPECIAL: Final = {
    b"": _BAD,  # an empty name (HPACK can encode one)
    b"connection": _BAD,
    b"keep-alive": _BAD,
    b"proxy-connection": _BAD,
    b"transfer-encoding": _BAD,
    b"upgrade": _BAD,
    b"te": _TE,
    b"host": _HOST,
    b"cookie": _COOKIE,
    b"expect": _EXPECT,
    b"content-length": _LENGTH,
}
# Fields an h2c Upgrade request carried for HTTP/1.1 only (RFC 7540 §3.2, RFC 9113 §8.2.2).
HOP_BY_HOP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_UPGRADE_ONLY: Final = HOP_BY_HOP | {b"http2-settings"}


class Malformed(Exception):
    """A malformed request (RFC 9113 §8.1.1): RST_STREAM with PROTOCOL_ERROR."""


class Refused(Exception):
    """A well-formed request the server will not serve: answered with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def build_request(
    fields: list[tuple[bytes, bytes]], connect_protocol: bool, max_list: int, max_count: int
) -> RequestHead:
    """Validate a decoded request field block; return its head (``http_version`` "2").

    The Host field comes from ``:authority`` when there is none (and goes first); a Host that
    differs from ``:authority`` is malformed (§8.3.1). Split Cookie fields are joined with
    "; " (§8.2.3), as an HTTP/1.1 application expects one. For RFC 8441's extended CONNECT,
    ``head.method`` is "CONNECT" and ``head.upgrade`` holds ``:protocol`` (b"websocket");
    it is None for every other request.
    """
    if len(fields) > max_count:
        raise Refused(431, "too many header fields")
    method = scheme = authority = path = protocol = None
    headers: Headers = []
    regular = False
    size = 0
    cookies: list[bytes] | None = None
    host = None
    length: bytes | None = None
    expect = False
    special = _SPECIAL
    for name, value in fields:
        size += len(name) + len(value) + 32  # RFC 9113 §6.5.2 counts 32 per field
        if name[:1] == b":":
            kind = _PSEUDO.get(name)
            if kind is None or regular:
                raise Malformed(f"unknown or misplaced pseudo-header {name!r}")
            if kind == _METHOD and method is None:
                method = value
            elif kind == _PATH and path is None:
                path = value
            elif kind == _AUTHORITY and authority is None:
                authority = value
                headers.append((b"host", value))
            elif kind == _SCHEME and scheme is None:
                scheme = value
            elif kind == _PROTOCOL and protocol is None:
                protocol = value
            else:
                raise Malformed(f"duplicate pseudo-header {name!r}")
            continue
        regular = True
        what = special.get(name)
        if what is not None:
            if what == _BAD:
                raise Malformed(f"connection-specific or empty header field {name!r}")
            if what == _TE:
                if value.lower() != b"trailers":
                    raise Malformed("TE other than 'trailers'")
            elif what == _HOST:
                if host is not None:
                    raise Malformed("more than one Host field")
                host = value
                if authority is not None:
                    if value != authority:
                        raise Malformed("Host differs from :authority")
                    continue  # already first in headers
            elif what == _COOKIE:
                cookies = [*cookies, value] if cookies else [value]
            elif what == _LENGTH:
                # RFC 9110 §8.6: digits; the codec counts the DATA against it (§8.1.1).
                if not value.isdigit() or (length is not None and value != length):
                    raise Malformed("invalid or conflicting content-length")
                if length is not None:
                    continue  # the same value again: one field says it
                length = value
            else:
                expect = value.lower() == b"100-continue"
        headers.append((name, value))

    if size > max_list:
        raise Refused(431, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
    names = b"".join([n for n, _ in headers])
    values = b"".join([v for _, v in headers])
    if names.translate(None, _TOKEN) or (
        values.find(b"\r") >= 0 or values.find(b"\n") >= 0 or values.find(b"\0") >= 0
    ):
        raise Malformed("invalid character in a header field (uppercase, CR, LF or NUL)")
    for _, v in headers:
        if v and (v[0] in _WS or v[-1] in _WS):
            raise Malformed("header field value with leading or trailing whitespace")
    if method is None:
        raise Malformed("missing :method")
    method_str = KNOWN_METHODS.get(method)
    if method_str is None:
        if not method or method.translate(None, _METHOD_TOKEN):
            raise Malformed("invalid :method")
        method_str = method.decode("ascii")
    if protocol is not None and (
        not connect_protocol or method_str != "CONNECT" or authority is None
    ):
        # RFC 8441 §4: only in a CONNECT, once advertised; :authority as for any request.
        raise Malformed(":protocol without extended CONNECT, or without :authority")
    if method_str == "CONNECT" and protocol is None:
        # RFC 9113 §8.5: a tunnel; an origin server does not provide one.
        if scheme is not None or path is not None or authority is None:
            raise Malformed("CONNECT with :scheme or :path, or without :authority")
        raise Refused(501, "CONNECT (tunnel) is not supported")
    if scheme is None or path is None:
        raise Malformed("missing :scheme or :path")
    target = authority if authority is not None else host
    if target is not None and not host_known_good(target) and not valid_host(target):
        raise Malformed("invalid :authority or Host")
    if path[:1] == b"/":
        raw_path, _, query = path.partition(b"?")
    elif path == b"*" and method_str == "OPTIONS":
        raw_path, query = path, b""
    else:
        raise Malformed("invalid :path")
    if cookies is not None and len(cookies) > 1:
        headers = [(n, v) for n, v in headers if n != b"cookie"]
        headers.append((b"cookie", b"; ".join(cookies)))
    return RequestHead(method_str, raw_path, query, "2", headers, True, expect, protocol)


def check_trailers(fields: list[tuple[bytes, bytes]]) -> None:
    """Check a request's trailer section; raise ``Malformed`` (RFC 9113 §8.1: no
    pseudo-header fields; §8.2.1, §8.2.2: lowercase token names, no connection-specific
    fields, no CR, LF or NUL in values)."""
    for name, value in fields:
        if name[:1] == b":":
            raise Malformed(f"pseudo-header field {name!r} in trailers")
        if _SPECIAL.get(name) == _BAD or not name or name.translate(None, _TOKEN):
            raise Malformed(f"invalid trailer field name {name!r}")
        if value.find(b"\r") >= 0 or value.find(b"\n") >= 0 or value.find(b"\0") >= 0:
            raise Malformed("CR, LF or NUL in a trailer field value")


def upgraded_request(head: RequestHead) -> RequestHead:
    """The HTTP/1.1 request of an h2c Upgrade as stream 1 sees it (RFC 7540 §3.2): HTTP/2,
    without the fields that only meant something to the HTTP/1.1 connection."""
    headers = [
        (n, v)
        for n, v in head.headers
        if n not in _UPGRADE_ONLY and (n != b"te" or v.lower() == b"trailers")
    ]
    return RequestHead(
        head.method, head.raw_path, head.query_string, "2", headers, True, False, None
    )


# A response's :status value (RFC 9113 §8.3.2), for every status an app can send.
STATUS_VALUES: Final = {s: b"%d" % s for s in range(100, 600)}
# Response header names seen before -> the name to send (lowercased), b"" for one to drop.
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 4096


def _response_name(name: bytes) -> bytes:
    lname = name.lower()
    if lname in HOP_BY_HOP:
        lname = b""
    elif not lname or lname.translate(None, _TOKEN):
        raise ResponseHeaderError(f"invalid response header name {name!r}")
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = lname
    return lname


def response_block(
    status: int, headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs for h2's encoder: ``:status`` first (unless 0: trailers, pushed
    requests), names lowercased, connection-specific fields dropped (RFC 9113 §8.2.2).
    Raises ``ResponseHeaderError`` for a name that is not a token or a CR, LF or NUL in a
    value (which HPACK would carry, and the client reject)."""
    block = [(b":status", STATUS_VALUES.get(status) or b"%d" % status)] if status else []
    names = _NAMES
    for name, value in headers:
        lname = names.get(name)
        if lname is None:
            lname = _response_name(name)
        if lname:
            block.append((lname, value))
    values = b"".join([v for _, v in block])
    if values.find(b"\r") >= 0 or values.find(b"\n") >= 0 or values.find(b"\0") >= 0:
        raise ResponseHeaderError("CR, LF or NUL in a response header value")
    return block
