"""The HTTP/1.1 codec interface shared by both parsers, and the strict request checks.

A parser (``h1_httptools`` or ``h1_h11``) turns bytes into three calls on an ``H1Handler``:
``on_request(head)``, ``on_body(data)``, ``on_complete()``. Whatever the parser library lets
through, every request head goes through ``build_head``, which enforces RFC 9112 the same way
for both, so the two parsers cannot disagree on what reaches the application.

Invariants:
- ``build_head`` either returns a ``RequestHead`` whose framing is unambiguous or raises
  ``H1Error`` carrying the status to answer with; after an ``H1Error`` the connection closes.
- Header names in a ``RequestHead`` are lowercase; values have surrounding whitespace removed;
  order and duplicates are kept (ASGI).
- No asyncio here: codecs are tested without an event loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

from mypy_extensions import mypyc_attr

Headers = list[tuple[bytes, bytes]]

# Searching bytes is surprisingly dear on the hot path (callgrind, CPython 3.11): ``sub in data``
# first tries ``sub`` as an integer (``65 in b"A"``) and, for a bytes ``sub``, raises and
# discards a formatted TypeError (about 2.3k instructions); ``find``/``count`` parse their
# arguments the old, slow way (about 1k). Hot code uses ``partition`` (one argument, about 0.6k),
# ``translate``, or a search in an already decoded str instead.


@mypyc_attr(allow_interpreted_subclasses=True)  # wire/ws.HandshakeError (not compiled)
class H1Error(Exception):
    """A request that cannot be served; answered with ``status`` (and ``headers``, such as the
    426's ``sec-websocket-version``), then the connection is closed."""

    def __init__(self, status: int, reason: str, headers: Headers | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers: Headers = headers or []


@dataclass(frozen=True)
class H1Limits:
    """The slice of the settings an HTTP/1.1 codec needs."""

    request_line_bytes: int = 8190
    header_block_bytes: int = 65536
    header_count: int = 100
    h11_max_incomplete_event_bytes: int | None = None


class RequestHead:
    """A parsed, validated request head (everything the ASGI scope is built from)."""

    __slots__ = (
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_path",
        "upgrade",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        headers: Headers,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        path = raw_path.decode("utf-8", "replace")
        # "%" is looked for in the str: the replacement character is never "%", and a str
        # search is cheap where a bytes one is not (see the note at the top of this module).
        self.path = path if "%" not in path else decode_path(raw_path)
        self.query_string = query_string
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        # The Upgrade field value when Connection lists "upgrade" (HTTP/1.1 only, RFC 9110
        # §7.8), else None: the connection decides whether it switches (WebSocket).
        self.upgrade = upgrade


class H1Handler(Protocol):
    """What a parser calls; implemented by the connection (``transport/h1_protocol.py``)."""

    def on_request(self, head: RequestHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...


class H1Parser(Protocol):
    """The codec interface: bytes in, handler calls out."""

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises ``H1Error`` on a request that must be refused."""

    def head_in_progress(self) -> bool:
        """True when bytes of a request head have arrived but the head is not complete."""

    def stop(self, handler: H1Handler | None = None) -> None:
        """Parse nothing after the current request: the connection switches protocols
        (called from ``on_request``). The request's own body, if it declared one, is still
        parsed and passed on (``on_body``, then ``on_complete``), to ``handler`` when one is
        given (an h2c Upgrade: the body belongs to HTTP/2 stream 1). Bytes after the request
        are kept for ``take_held``; they are all there once ``on_complete`` was called."""

    def take_held(self) -> bytes:
        """The bytes received after the request that stopped the parser."""


def decode_path(raw_path: bytes) -> str:
    """ASGI ``path``: percent-decoded, UTF-8 decoded (invalid sequences replaced)."""
    if b"%" in raw_path:
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("utf-8", "replace")


# RFC 3986 §3.2.2 host (reg-name, IPv4, IP-literal) with an optional port (RFC 9110 §7.2).
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?",
)
# Host values already found valid (a server sees few distinct ones); bounded so that a client
# cannot grow it without limit.
_GOOD_HOSTS: Final[set[bytes]] = set()
# Not Final (the compiled build inlines a Final constant): a test lowers it; read on a miss.
_GOOD_HOSTS_MAX = 1024
_CONTENT_LENGTH_RE: Final = re.compile(rb"[0-9]+")
# A header value may hold any visible octet, SP, HTAB and obs-text (RFC 9110 §5.5).
# llhttp refuses the rest itself; the h11 path checks with this (h11 lets some CTLs through).
BAD_VALUE_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ABSOLUTE_RE: Final = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^#]*)")
_MAX_CONTENT_LENGTH: Final = 1 << 62
# len(str(1 << 62)); h11 refuses more than 20 itself. Responses use it too (h1_writer): more
# digits are no body's length, and int() refuses 4300 of them.
MAX_CONTENT_LENGTH_DIGITS: Final = 19
# The usual methods' names by their bytes, so that a request does not decode its own (a dict
# hit is cheaper); both HTTP/1.1 (httptools) and HTTP/2 requests look here first.
KNOWN_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


def valid_host(host: bytes) -> bool:
    """A Host value or HTTP/2 :authority (RFC 9110 §7.2, RFC 3986 §3.2.2); valid ones are
    remembered (a bounded set: a server sees few distinct hosts), so the usual case is one set
    lookup, done by the caller before calling this."""
    if not _HOST_RE.fullmatch(host):
        return False
    if len(_GOOD_HOSTS) < _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.add(host)
    return True


def host_known_good(host: bytes) -> bool:
    return host in _GOOD_HOSTS


def declared_length(headers: Headers) -> int:
    """The Content-Length of a validated request head (one value, digits), -1 without one."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def split_target(method: str, target: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Split a request-target into (raw_path, query_string, authority-or-None).

    RFC 9112 §3.2: origin-form ("/p?q"), absolute-form ("http://h/p?q", whose authority
    replaces Host, §3.2.2), asterisk-form ("*", OPTIONS only, §3.2.4). Authority-form is
    only for CONNECT, which an origin server does not serve.
    """
    authority = None
    if target[:1] != b"/":
        if target == b"*":
            if method != "OPTIONS":
                raise H1Error(400, "asterisk-form target is only allowed with OPTIONS")
            return b"*", b"", None
        match = _ABSOLUTE_RE.fullmatch(target)
        if match is None or match.group(1).lower() not in (b"http", b"https"):
            raise H1Error(400, "invalid request-target")
        authority = match.group(2)
        # No userinfo (RFC 9110 §4.2.4): _HOST_RE has no "@".
        if not authority or not _HOST_RE.fullmatch(authority):
            raise H1Error(400, "invalid authority in absolute-form target")
        target = match.group(3)
        if target[:1] != b"/":
            target = b"/" + target  # "http://h?q": an empty path is "/" (RFC 3986 §6.2.3)
    if b"#" in target:
        raise H1Error(400, "fragment in request-target")
    path, _, query = target.partition(b"?")
    return path, query, authority


def _check_content_length(values: list[bytes]) -> None:
    """RFC 9110 §8.6 / RFC 9112 §6.3(5): exactly one value, digits only.

    §8.6 lets a recipient merge repeated identical values ("5, 5" or two fields); llhttp
    refuses them outright, so both parsers refuse them (400) rather than disagree.
    """
    if len(values) > 1 or b"," in values[0]:
        raise H1Error(400, "more than one Content-Length value")
    value = values[0]
    # The length check keeps int() away from huge digit strings.
    if (
        len(value) > MAX_CONTENT_LENGTH_DIGITS
        or not _CONTENT_LENGTH_RE.fullmatch(value)
        or int(value) > _MAX_CONTENT_LENGTH
    ):
        raise H1Error(400, "invalid Content-Length")


def _check_transfer_encoding(values: list[bytes], http_version: str) -> None:
    """RFC 9112 §6.1 and §6.3(4): chunked must be the final coding, exactly once."""
    if http_version == "1.0":
        # §6.1: a Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
        raise H1Error(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [c.strip(b" \t").lower() for v in values for c in v.split(b",")]
    if codings[-1] != b"chunked":
        if b"chunked" in codings:
            raise H1Error(400, "chunked is not the final transfer coding")
        raise H1Error(501, "unsupported transfer coding")
    if len(codings) > 1:
        raise H1Error(501 if codings.count(b"chunked") == 1 else 400, "unsupported transfer coding")


def _other_version(http_version: str) -> str:
    """RFC 9110 §2.5: a higher 1.x minor version is served as 1.1; 0.9 and 2+ are refused."""
    major, _, minor = http_version.partition(".")
    if major == "1" and minor.isdigit():
        return "1.1"
    if major == "0":
        raise H1Error(400, "HTTP/0.9 requests are not supported")
    raise H1Error(505, "unsupported HTTP version")


# Request header names build_head must look at, by lowercase name.
_HOST: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_CONNECTION: Final = 4
_EXPECT: Final = 5
_UPGRADE: Final = 6
_SPECIAL: Final = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
}


def build_head(
    method: str,
    target: bytes,
    http_version: str,
    raw_headers: Headers,
    limits: H1Limits,
    head_size_bound: int | None = None,
) -> RequestHead:
    """Validate a parsed request head and derive what the server needs (RFC 9112).

    This runs once per request on the hot path: one pass over the headers, a dict lookup per
    name, and the rare cases (absolute-form, odd versions, framing headers) off the main line.
    ``head_size_bound``, when the parser knows one (bytes received since the head began), lets
    the header-block size check be skipped when the head cannot exceed it.
    """
    # The request line: method SP target SP "HTTP/x.y" (RFC 9112 §3).
    if len(method) + len(target) + 10 > limits.request_line_bytes:
        raise H1Error(414, "request line too long")
    if len(raw_headers) > limits.header_count:
        raise H1Error(431, "too many header fields")
    if http_version != "1.1" and http_version != "1.0":
        http_version = _other_version(http_version)
    # partition(), not "in" or find(): see the note on bytes searches at the top of this module.
    if target[:1] == b"/" and not target.partition(b"#")[1]:
        raw_path, _, query = target.partition(b"?")
        authority = None
    else:
        raw_path, query, authority = split_target(method, target)

    headers: Headers = []
    host = None
    hosts = 0
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    connection = b""
    expect = b""
    upgrade = None
    block_limit = limits.header_block_bytes
    if head_size_bound is None or head_size_bound > block_limit:
        size = sum(len(name) + len(value) + 4 for name, value in raw_headers)
    else:
        size = 0  # the head is smaller than the limit: no need to count
    special = _SPECIAL
    for name, value in raw_headers:
        name = name.lower()
        value = value.strip(b" \t")
        kind = special.get(name)
        if kind is not None:
            if kind == _HOST:
                host = value
                hosts += 1
            elif kind == _CONTENT_LENGTH:
                lengths = [*lengths, value] if lengths else [value]
            elif kind == _TRANSFER_ENCODING:
                codings = [*codings, value] if codings else [value]
            elif kind == _CONNECTION:
                connection = connection + b"," + value.lower() if connection else value.lower()
            elif kind == _EXPECT:
                expect = value.lower()
            else:
                upgrade = value
        headers.append((name, value))

    if size > block_limit:
        raise H1Error(431, "request header block too large")
    if hosts != 1:
        if hosts > 1:
            raise H1Error(400, "more than one Host header")
        if http_version == "1.1":
            raise H1Error(400, "missing Host header")
    elif host not in _GOOD_HOSTS and not valid_host(host):  # type: ignore[arg-type]
        raise H1Error(400, "invalid Host header")
    if authority is not None:
        # RFC 9112 §3.2.2: the target's authority wins over any Host field.
        headers = [(n, authority if n == b"host" else v) for n, v in headers]
        if not hosts:
            headers.append((b"host", authority))
    if codings:
        if lengths:
            # RFC 9112 §6.3(3): both present is a smuggling attempt; refuse and close.
            raise H1Error(400, "both Content-Length and Transfer-Encoding")
        _check_transfer_encoding(codings, http_version)
    elif lengths:
        _check_content_length(lengths)

    if connection:
        tokens = {t.strip() for t in connection.split(b",")}
        if http_version == "1.1":
            keep_alive = b"close" not in tokens
            if upgrade is not None and b"upgrade" not in tokens:
                upgrade = None
        else:
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    else:
        keep_alive = http_version == "1.1"
    if upgrade is not None and (not connection or http_version != "1.1"):
        upgrade = None  # RFC 9110 §7.8: only with Connection: upgrade, ignored in HTTP/1.0
    # RFC 9110 §10.1.1: a server MUST ignore 100-continue from an HTTP/1.0 client.
    expect_continue = expect == b"100-continue" and http_version == "1.1"
    return RequestHead(
        method, raw_path, query, http_version, headers, keep_alive, expect_continue, upgrade
    )
