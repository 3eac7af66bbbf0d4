"""The HTTP/1.1 request codec without an event loop: bytes in, ``H1Handler`` calls out.

Every test runs once per parser (the ``parser`` fixture: httptools, h11). Both go through
``h1.build_head``, so they must agree on what reaches the application and on the status of a
refusal; the few places where llhttp itself forces a different answer are marked per parser
in ``REFUSALS``, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from sleipnir.wire.h1 import H1Error, H1Limits, H1Parser, RequestHead
from sleipnir.wire.h1_h11 import H11Parser
from sleipnir.wire.h1_httptools import HttptoolsParser

HOST = b"Host: example.com\r\n"


@dataclass
class Seen:
    """One request as the handler saw it."""

    head: RequestHead
    body: bytes = b""
    complete: bool = False
    body_calls: int = 0


@dataclass
class Recorder:
    """An ``H1Handler`` that records every call, checking their order."""

    requests: list[Seen] = field(default_factory=list)

    def on_request(self, head: RequestHead) -> None:
        assert not self.requests or self.requests[-1].complete, "request before previous ended"
        self.requests.append(Seen(head))

    def on_body(self, data: bytes) -> None:
        seen = self.requests[-1]
        assert not seen.complete and data, "body after completion, or an empty body call"
        seen.body += data
        seen.body_calls += 1

    def on_complete(self) -> None:
        assert not self.requests[-1].complete
        self.requests[-1].complete = True


def make(kind: str, handler: Recorder, limits: H1Limits | None = None) -> H1Parser:
    cls = HttptoolsParser if kind == "httptools" else H11Parser
    return cls(handler, limits or H1Limits())


def pieces(data: bytes, size: int) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def parse(kind: str, data: bytes, size: int = 0, limits: H1Limits | None = None) -> list[Seen]:
    """Feed ``data`` whole (size 0) or in pieces of ``size`` bytes; return what was seen."""
    rec = Recorder()
    codec = make(kind, rec, limits)
    for piece in pieces(data, size or len(data) or 1):
        codec.feed(piece)
    return rec.requests


def refusal(kind: str, data: bytes, size: int = 0, limits: H1Limits | None = None) -> H1Error:
    rec = Recorder()
    codec = make(kind, rec, limits)
    with pytest.raises(H1Error) as info:
        for piece in pieces(data, size or len(data)):
            codec.feed(piece)
    assert not any(seen.complete for seen in rec.requests), "refused request was completed"
    assert info.value.reason
    return info.value


def summary(requests: list[Seen]) -> list[tuple[str, bytes, bytes, bytes, bool]]:
    return [
        (s.head.method, s.head.raw_path, s.head.query_string, s.body, s.complete) for s in requests
    ]


# Request heads -----------------------------------------------------------------------------


def test_simple_get(parser: str) -> None:
    [seen] = parse(parser, b"GET /index.html?a=1&b=2 HTTP/1.1\r\n" + HOST + b"\r\n")
    head = seen.head
    assert (head.method, head.raw_path, head.path) == ("GET", b"/index.html", "/index.html")
    assert head.query_string == b"a=1&b=2"
    assert head.http_version == "1.1"
    assert head.headers == [(b"host", b"example.com")]
    assert head.keep_alive and not head.expect_continue
    assert seen.complete and seen.body_calls == 0


def test_headers_lowercased_order_and_duplicates_kept_ows_stripped(parser: str) -> None:
    data = (
        b"GET / HTTP/1.1\r\nX-Multi:  one \t\r\n" + HOST + b"Accept:*/*\r\n"
        b"x-MULTI: two\r\nX-Inner: a  b\tc\r\nX-Empty:\r\nX-Text: caf\xe9\r\n\r\n"
    )
    [seen] = parse(parser, data)
    assert seen.head.headers == [
        (b"x-multi", b"one"),
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"x-multi", b"two"),
        (b"x-inner", b"a  b\tc"),
        (b"x-empty", b""),
        (b"x-text", b"caf\xe9"),  # obs-text is allowed in a value (RFC 9110 §5.5)
    ]


PIPELINE = (
    b"GET /one HTTP/1.1\r\n" + HOST + b"\r\n"
    b"POST /two?x=y HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\n\r\nhello world"
    b"POST /three HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"5\r\nchunk\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"HEAD /four HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n"
)
PIPELINE_SEEN = [
    ("GET", b"/one", b"", b"", True),
    ("POST", b"/two", b"x=y", b"hello world", True),
    ("POST", b"/three", b"", b"chunkabc", True),
    ("HEAD", b"/four", b"", b"", True),
]


def test_pipelined_requests_in_one_feed(parser: str) -> None:
    assert summary(parse(parser, PIPELINE)) == PIPELINE_SEEN


def test_pipelined_requests_fed_byte_by_byte(parser: str) -> None:
    assert summary(parse(parser, PIPELINE, size=1)) == PIPELINE_SEEN


def test_pipelined_requests_split_at_every_boundary(parser: str) -> None:
    for cut in range(1, len(PIPELINE)):
        rec = Recorder()
        codec = make(parser, rec)
        codec.feed(PIPELINE[:cut])
        codec.feed(PIPELINE[cut:])
        assert summary(rec.requests) == PIPELINE_SEEN, f"split at {cut}"


@pytest.mark.parametrize("size", [0, 1, 7])
def test_content_length_body(parser: str, size: int) -> None:
    body = bytes(range(256)) * 4
    data = b"PUT /up HTTP/1.1\r\n" + HOST + b"Content-Length: 1024\r\n\r\n" + body
    [seen] = parse(parser, data, size)
    assert seen.body == body and seen.complete
    assert (b"content-length", b"1024") in seen.head.headers


def test_content_length_zero_and_leading_zeros(parser: str) -> None:
    data = b"POST /a HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n"
    data += b"POST /b HTTP/1.1\r\n" + HOST + b"Content-Length: 005\r\n\r\nhello"
    assert [(s.body, s.complete) for s in parse(parser, data)] == [(b"", True), (b"hello", True)]


def test_incomplete_body_is_not_complete(parser: str) -> None:
    data = b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhello"
    [seen] = parse(parser, data)
    assert seen.body == b"hello" and not seen.complete


CHUNKED = (
    b"POST /c HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: Chunked\r\n\r\n"
    b"5;name=value;flag\r\nhello\r\n"
    b'6;q="quoted;\\"value\\""\r\n world\r\n'
    b"A\r\n0123456789\r\n"
    b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)


@pytest.mark.parametrize("size", [0, 1, 3, 16])
def test_chunked_body_with_extensions_and_trailers(parser: str, size: int) -> None:
    [seen] = parse(parser, CHUNKED, size)
    assert seen.body == b"hello world0123456789" and seen.complete
    # Trailer fields are not passed to the application as headers (RFC 9112 §7.1.2).
    assert [name for name, _ in seen.head.headers] == [b"host", b"transfer-encoding"]


def test_chunked_body_then_pipelined_request(parser: str) -> None:
    data = CHUNKED + b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n"
    got = parse(parser, data)
    assert [(s.head.raw_path, s.complete) for s in got] == [(b"/c", True), (b"/next", True)]
    assert got[1].head.headers == [(b"host", b"example.com")]


# Connection management ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", [], True),
        ("1.1", [b"close"], False),
        ("1.1", [b"Keep-Alive, CLOSE"], False),
        ("1.1", [b"keep-alive", b"close"], False),
        ("1.1", [b"upgrade"], True),
        ("1.1", [b"closed"], True),  # a token, not a substring
        ("1.0", [], False),
        ("1.0", [b"keep-alive"], True),
        ("1.0", [b"Keep-Alive"], True),
        ("1.0", [b"x, keep-alive"], True),
        ("1.0", [b"keep-alive, close"], False),
        ("1.0", [b"keep-alive", b"close"], False),
    ],
)
def test_keep_alive_derivation(
    parser: str, version: str, connection: list[bytes], keep_alive: bool
) -> None:
    fields = b"".join(b"Connection: %s\r\n" % value for value in connection)
    [seen] = parse(parser, f"GET / HTTP/{version}\r\n".encode() + HOST + fields + b"\r\n")
    assert seen.head.http_version == version
    assert seen.head.keep_alive is keep_alive


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",  # llhttp: keep-alive
    ],
    ids=["close", "http10", "http10-both-tokens"],
)
@pytest.mark.parametrize("size", [0, 1])
def test_nothing_parsed_after_the_last_request(parser: str, first: bytes, size: int) -> None:
    # RFC 9112 §9.6: no request after one that closes the connection is processed.
    rec = Recorder()
    codec = make(parser, rec)
    for piece in pieces(first + b"GET /after HTTP/1.1\r\n" + HOST + b"\r\nGARBAGE", size or 999):
        codec.feed(piece)
    codec.feed(b"GET /later HTTP/1.1\r\n")
    assert [s.head.raw_path for s in rec.requests] == [b"/"]
    assert not codec.head_in_progress()


def test_http10_keep_alive_pipelined(parser: str) -> None:
    data = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n"
    got = parse(parser, data)
    assert [(s.head.raw_path, s.head.keep_alive) for s in got] == [(b"/a", True), (b"/b", False)]


@pytest.mark.parametrize(
    ("line", "expect", "wanted"),
    [
        (b"POST / HTTP/1.1", b"100-continue", True),
        (b"POST / HTTP/1.1", b"100-Continue", True),
        (b"POST / HTTP/1.0", b"100-continue", False),  # RFC 9110 §10.1.1: MUST ignore
        (b"POST / HTTP/1.1", b"something-else", False),
    ],
)
def test_expect_100_continue(parser: str, line: bytes, expect: bytes, wanted: bool) -> None:
    data = line + b"\r\n" + HOST + b"Expect: " + expect + b"\r\nContent-Length: 2\r\n\r\nok"
    [seen] = parse(parser, data)
    assert seen.head.expect_continue is wanted
    assert seen.body == b"ok"


def test_head_in_progress(parser: str) -> None:
    rec = Recorder()
    codec = make(parser, rec)
    assert not codec.head_in_progress()
    codec.feed(b"\r\n")
    assert not codec.head_in_progress()  # an empty line before a request is not a head
    codec.feed(b"GET / HTTP/1.1\r\n")
    assert codec.head_in_progress()
    codec.feed(HOST + b"Content-Length: 3\r\n\r\nab")
    assert not codec.head_in_progress()  # reading a body
    codec.feed(b"cGE")
    assert codec.head_in_progress() and rec.requests[0].complete


# Request targets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "raw_path", "query", "host"),
    [
        (b"http://other.example:8080/p%20a?x=1", b"/p%20a", b"x=1", b"other.example:8080"),
        (b"HTTPS://Other.Example/", b"/", b"", b"Other.Example"),
        (b"http://h", b"/", b"", b"h"),
        (b"http://h?q", b"/", b"q", b"h"),  # an empty path is "/" (RFC 3986 §6.2.3)
        (b"http://[::1]:8000/v6", b"/v6", b"", b"[::1]:8000"),
    ],
)
def test_absolute_form_target(
    parser: str, target: bytes, raw_path: bytes, query: bytes, host: bytes
) -> None:
    # RFC 9112 §3.2.2: the path comes from the target and its authority replaces Host.
    data = b"GET " + target + b" HTTP/1.1\r\nX-A: 1\r\nHost: localhost\r\nX-B: 2\r\n\r\n"
    [seen] = parse(parser, data)
    assert (seen.head.raw_path, seen.head.query_string) == (raw_path, query)
    assert seen.head.headers == [(b"x-a", b"1"), (b"host", host), (b"x-b", b"2")]


def test_absolute_form_target_adds_host_for_http10(parser: str) -> None:
    [seen] = parse(parser, b"GET http://h.example/x HTTP/1.0\r\nX-A: 1\r\n\r\n")
    assert seen.head.headers == [(b"x-a", b"1"), (b"host", b"h.example")]


def test_options_asterisk(parser: str) -> None:
    [seen] = parse(parser, b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (seen.head.method, seen.head.raw_path, seen.head.path) == ("OPTIONS", b"*", "*")
    assert seen.head.query_string == b""


def test_path_percent_decoded_raw_path_kept(parser: str) -> None:
    target = b"/a%20b/%E2%82%AC/x%2Fy/%zz/%FF?q=%20&r=%2F"
    [seen] = parse(parser, b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert seen.head.raw_path == b"/a%20b/%E2%82%AC/x%2Fy/%zz/%FF"
    assert seen.head.path == "/a b/\u20ac/x/y/%zz/\ufffd"
    assert seen.head.query_string == b"q=%20&r=%2F"  # never decoded


@pytest.mark.parametrize("size", [0, 1])
def test_leading_empty_lines_ignored(parser: str, size: int) -> None:
    # RFC 9112 §2.2: a server SHOULD ignore empty lines received before a request-line.
    data = b"\r\n\r\nGET /a HTTP/1.1\r\n" + HOST + b"\r\n\r\nGET /b HTTP/1.1\r\n" + HOST + b"\r\n"
    assert [s.head.raw_path for s in parse(parser, data, size)] == [b"/a", b"/b"]


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
def test_higher_minor_version_served_as_http11(parser: str, version: bytes) -> None:
    # RFC 9110 §2.5. llhttp knows only 0.9/1.0/1.1/2.0 on its own: the httptools parser
    # turns on llhttp's lenient_version, build_head refuses 0.x and 2+ (see REFUSALS).
    data = b"GET /a HTTP/" + version + b"\r\n" + HOST + b"\r\n"
    got = parse(parser, data + data.replace(b"/a", b"/b"))
    assert [(s.head.raw_path, s.head.http_version, s.head.keep_alive) for s in got] == [
        (b"/a", "1.1", True),
        (b"/b", "1.1", True),
    ]


@pytest.mark.parametrize("size", [0, 1, 7, 23])
def test_http_version_of_each_request(parser: str, size: int) -> None:
    # The httptools parser reads the version from the bytes of a request line that starts a
    # read (not asking llhttp each time): every form and position must give llhttp's answer.
    keep = b"Connection: keep-alive\r\n"  # (HTTP/1.0 without it would end the connection)
    data = b"".join(
        [
            b"GET /a HTTP/1.0\r\n" + keep + b"\r\n",
            b"GET /b HTTP/1.1\r\n" + HOST + b"\r\n",
            b"\r\nGET /c HTTP/1.0\r\n" + keep + b"\r\n",  # after an empty line
            b"POST /e HTTP/1.1\r\n" + HOST + b"Content-Length: 16\r\n\r\n",
            b"GET / HTTP/1.1\r\n",  # a body that looks like a request line
            b"GET /f HTTP/1.0\r\n" + keep + b"\r\n",
            b"GET /g HTTP/1.2\r\n" + HOST + b"\r\n",
        ]
    )
    got = parse(parser, data, size)
    assert [(s.head.raw_path, s.head.http_version) for s in got] == [
        (b"/a", "1.0"),
        (b"/b", "1.1"),
        (b"/c", "1.0"),
        (b"/e", "1.1"),
        (b"/f", "1.0"),
        (b"/g", "1.1"),
    ]


def test_http_version_after_a_read_that_looks_like_a_request_line(parser: str) -> None:
    # The second read starts with what looks like a request line of another version: it is
    # a header value of the request begun in the first read, which stays HTTP/1.0.
    rec = Recorder()
    codec = make(parser, rec)
    codec.feed(b"GET /a HTTP/1.0\r\nX-A: ")
    codec.feed(b"GET /a HTTP/1.1\r\n\r\n")
    [seen] = rec.requests
    assert seen.head.http_version == "1.0"
    assert seen.head.headers == [(b"x-a", b"GET /a HTTP/1.1")]
    # A read that starts with the rest of a body, looking like the next request's line.
    rec = Recorder()
    codec = make(parser, rec)
    codec.feed(b"POST /a HTTP/1.1\r\n" + HOST + b"Content-Length: 17\r\n\r\n")
    codec.feed(b"GET /b HTTP/1.1\r\nGET /b HTTP/1.0\r\n\r\n")
    assert [(s.body, s.head.http_version) for s in rec.requests] == [
        (b"GET /b HTTP/1.1\r\n", "1.1"),
        (b"", "1.0"),
    ]


def test_limits_are_configurable(parser: str) -> None:
    limits = H1Limits(request_line_bytes=64, header_block_bytes=256, header_count=4)
    # Well inside / well past the limit: whether it counts the target or the whole request
    # line is tests/test_limits.py's business.
    ok = b"GET /" + b"a" * 30 + b" HTTP/1.1\r\n" + HOST + b"X-1: 1\r\nX-2: 2\r\nX-3: 3\r\n\r\n"
    assert len(parse(parser, ok, limits=limits)) == 1
    long_target = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n" + HOST + b"\r\n"
    assert refusal(parser, long_target, limits=limits).status == 414
    many = ok.replace(b"\r\n\r\n", b"\r\nX-4: 4\r\n\r\n")
    assert refusal(parser, many, limits=limits).status == 431
    big = b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"b" * 300 + b"\r\n\r\n"
    assert refusal(parser, big, limits=limits).status == 431


# Refusals ----------------------------------------------------------------------------------


def req(line: bytes, *fields: bytes, body: bytes = b"", host: bool = True) -> bytes:
    lines = [line, *([HOST.rstrip()] if host else []), *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


TE = b"Transfer-Encoding: chunked"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
BIG = b"a" * 65536
CL5 = b"Content-Length: 5"
H11_ONLY_400: dict[str, int | None] = {"httptools": None, "h11": 400}


def chunked(body: bytes) -> bytes:
    return req(b"POST / HTTP/1.1", TE, body=body) + SMUGGLED


# (id, request bytes, status) where status may differ per parser: {"httptools": s, "h11": s},
# None meaning "accepted". Ids follow /work/shared/conformance/http1_probe.py where it has them.
REFUSALS: list[tuple[str, bytes, int | dict[str, int | None]]] = [
    # request line
    ("rl-http09", b"GET /\r\n\r\n", 400),
    ("rl-garbage", b"FOO\r\n" + HOST + b"\r\n", 400),
    ("rl-bad-method-char", req(b"G@T / HTTP/1.1"), 400),
    ("rl-tab-sep", req(b"GET\t/ HTTP/1.1"), 400),
    ("rl-space-in-target", req(b"GET /a b HTTP/1.1"), 400),
    ("rl-ctl-in-target", req(b"GET /\x01 HTTP/1.1"), 400),
    ("rl-nul-in-target", req(b"GET /\x00 HTTP/1.1"), 400),
    ("rl-version-2.0", req(b"GET / HTTP/2.0"), 505),
    ("rl-version-3.0", req(b"GET / HTTP/3.0"), 505),
    ("rl-version-lower", req(b"GET / http/1.1"), 400),
    ("rl-version-garbage", req(b"GET / HTTP/1.1x"), 400),
    ("rl-version-digits", req(b"GET / HTTP/11"), 400),
    ("rl-asterisk-get", req(b"GET * HTTP/1.1"), 400),
    ("rl-authority-get", req(b"GET localhost:80 HTTP/1.1"), 400),
    ("rl-connect", req(b"CONNECT example.com:443 HTTP/1.1"), 400),
    ("rl-fragment", req(b"GET /echo#frag HTTP/1.1"), 400),
    ("rl-absolute-userinfo", req(b"GET http://user@h/ HTTP/1.1"), 400),
    ("rl-absolute-no-host", req(b"GET http:///p HTTP/1.1"), 400),
    ("rl-absolute-ftp", req(b"GET ftp://h/p HTTP/1.1"), 400),
    ("rl-long-target", req(b"GET /" + BIG + b" HTTP/1.1"), 414),
    ("rl-endless-target", b"GET /" + BIG + BIG, 414),
    # llhttp only knows registered methods, h11 any token (RFC 9110 §9.1: 501 SHOULD).
    ("rl-unknown-method", req(b"FOOBAR / HTTP/1.1"), {"httptools": 400, "h11": None}),
    ("rl-lower-method", req(b"get / HTTP/1.1"), {"httptools": 400, "h11": None}),
    # llhttp skips repeated spaces in the request line (RFC 9112 §3 MAY), h11 does not.
    ("rl-double-space", req(b"GET  / HTTP/1.1"), {"httptools": None, "h11": 400}),
    # Host (RFC 9112 §3.2)
    ("hdr-missing-host", req(b"GET / HTTP/1.1", host=False), 400),
    ("hdr-dup-host", req(b"GET / HTTP/1.1", b"Host: other.example"), 400),
    ("hdr-dup-host-same", req(b"GET / HTTP/1.1", HOST.rstrip()), 400),
    ("hdr-bad-host", req(b"GET / HTTP/1.1", b"Host: a b", host=False), 400),
    ("hdr-bad-host-slash", req(b"GET / HTTP/1.1", b"Host: a/b", host=False), 400),
    ("hdr-bad-host-port", req(b"GET / HTTP/1.1", b"Host: a:b", host=False), 400),
    # field syntax
    ("hdr-space-before-colon", req(b"GET / HTTP/1.1", b"X-Foo : bar"), 400),
    ("hdr-obs-fold", req(b"GET / HTTP/1.1", b"X-Foo: a", b" b"), 400),
    ("hdr-obs-fold-tab", req(b"GET / HTTP/1.1", b"X-Foo: a", b"\tb"), 400),
    ("hdr-ws-first-line", b"GET / HTTP/1.1\r\n X-Foo: bar\r\n" + HOST + b"\r\n", 400),
    ("hdr-no-colon", req(b"GET / HTTP/1.1", b"X-Foo"), 400),
    ("hdr-empty-name", req(b"GET / HTTP/1.1", b": bar"), 400),
    ("hdr-space-in-name", req(b"GET / HTTP/1.1", b"X Foo: bar"), 400),
    ("hdr-ctl-in-name", req(b"GET / HTTP/1.1", b"X\x01Foo: bar"), 400),
    ("hdr-nul-in-value", req(b"GET / HTTP/1.1", b"X-Foo: a\x00b"), 400),
    ("hdr-cr-in-value", req(b"GET / HTTP/1.1", b"X-Foo: a\rb"), 400),
    ("hdr-ctl-in-value", req(b"GET / HTTP/1.1", b"X-Foo: a\x07b"), 400),
    ("hdr-vt-in-value", req(b"GET / HTTP/1.1", b"X-Foo: a\x0bb"), 400),
    ("hdr-del-in-value", req(b"GET / HTTP/1.1", b"X-Foo: a\x7fb"), 400),
    ("hdr-bare-cr", b"GET / HTTP/1.1\rHost: localhost\r\n\r\n", 400),
    # RFC 9112 §2.2 MAY accept a bare LF; llhttp refuses it, so h11 does too.
    ("hdr-bare-lf", b"GET / HTTP/1.1\nHost: localhost\n\n", 400),
    ("hdr-bare-lf-one-line", b"GET / HTTP/1.1\r\nHost: localhost\n\r\n", 400),
    ("hdr-huge-value", req(b"GET / HTTP/1.1", b"X-Big: " + BIG), 431),
    ("hdr-many", req(b"GET / HTTP/1.1", *[b"X-H%d: v" % i for i in range(5000)]), 431),
    ("hdr-101", req(b"GET / HTTP/1.1", *[b"X-H%d: v" % i for i in range(100)]), 431),
    ("hdr-endless", b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + BIG + BIG, 431),
    # Content-Length (RFC 9110 §8.6, RFC 9112 §6.3)
    ("cl-dup-differ", req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6"), 400),
    # §8.6 MAY merge identical values; llhttp refuses them, so h11 does too.
    ("cl-dup-same", req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 5"), 400),
    ("cl-list-same", req(b"POST / HTTP/1.1", b"Content-Length: 5, 5"), 400),
    ("cl-list-differ", req(b"POST / HTTP/1.1", b"Content-Length: 5, 6"), 400),
    ("cl-plus", req(b"POST / HTTP/1.1", b"Content-Length: +5"), 400),
    ("cl-negative", req(b"POST / HTTP/1.1", b"Content-Length: -1"), 400),
    ("cl-hex", req(b"POST / HTTP/1.1", b"Content-Length: 0x5"), 400),
    ("cl-alpha", req(b"POST / HTTP/1.1", b"Content-Length: abc"), 400),
    ("cl-empty", req(b"POST / HTTP/1.1", b"Content-Length: "), 400),
    ("cl-inner-space", req(b"POST / HTTP/1.1", b"Content-Length: 1 0"), 400),
    ("cl-overflow", req(b"POST / HTTP/1.1", b"Content-Length: 1180591620717411303424"), 400),
    ("cl-too-many-digits", req(b"POST / HTTP/1.1", b"Content-Length: " + b"0" * 30 + b"5"), 400),
    # Transfer-Encoding (RFC 9112 §6.1, §6.3)
    ("te-cl-both", req(b"POST / HTTP/1.1", b"Content-Length: 5", TE, body=b"0\r\n\r\n"), 400),
    ("te-cl-te-first", req(b"POST / HTTP/1.1", TE, b"Content-Length: 5", body=b"0\r\n\r\n"), 400),
    ("te-xchunked-cl", req(b"POST / HTTP/1.1", b"Transfer-Encoding: xchunked", CL5), 400),
    ("te-http10", b"POST / HTTP/1.0\r\n" + TE + b"\r\n\r\n0\r\n\r\n", 400),
    ("te-http10-gzip", b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("te-chunked-not-last", req(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, gzip"), 400),
    ("te-chunked-twice", req(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, chunked"), 400),
    ("te-two-fields", req(b"POST / HTTP/1.1", TE, b"Transfer-Encoding: gzip"), 400),
    ("te-two-chunked-fields", req(b"POST / HTTP/1.1", TE, TE), 400),
    ("te-unknown", req(b"POST / HTTP/1.1", b"Transfer-Encoding: foo"), 501),
    ("te-gzip-chunked", req(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip, chunked"), 501),
    ("te-space-before-colon", req(b"POST / HTTP/1.1", b"Transfer-Encoding : chunked"), 400),
    ("te-vtab", req(b"POST / HTTP/1.1", b"Transfer-Encoding:\x0bchunked"), 400),
    # chunked framing (RFC 9112 §7.1)
    ("chunk-size-invalid", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", chunked(b"1000000000000000000000000\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-leading-sp", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-trailing-sp", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-overrun", chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"), 400),
    ("chunk-missing-crlf", chunked(b"5\r\nhello0\r\n\r\n"), 400),
    ("chunk-bare-lf", chunked(b"5\nhello\n0\n\n"), 400),
    ("chunk-ext-bare-cr", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bad-token", chunked(b"5;a b\r\nhello\r\n0\r\n\r\n"), 400),
    # BWS around ";" and "=" (RFC 9112 §7.1.1): refused by llhttp, so by the h11 path too.
    ("chunk-ext-bws-before", chunked(b"5 ;a\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bws-after", chunked(b"5; a\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bws-equals", chunked(b"5;a = b\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-unterminated", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), 400),
    ("chunk-trailer-no-colon", chunked(b"0\r\nX-T 1\r\n\r\n"), 400),
    # llhttp streams chunk extensions without a length limit and httptools exposes neither
    # the extension nor byte offsets, so only the h11 path can bound a chunk-size line.
    ("chunk-ext-huge", chunked(b"5;a=" + BIG + b"\r\nhello\r\n0\r\n\r\n"), H11_ONLY_400),
    # ... and llhttp accepts an empty extension name, which the h11 path's check refuses.
    ("chunk-ext-empty-name", chunked(b"5;=b\r\nhello\r\n0\r\n\r\n"), H11_ONLY_400),
]  # fmt: skip


@pytest.mark.parametrize("size", [0, 1], ids=["whole", "split"])
@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, s, id=i) for i, d, s in REFUSALS])
def test_refusals(
    parser: str, data: bytes, expected: int | dict[str, int | None], size: int
) -> None:
    status = expected[parser] if isinstance(expected, dict) else expected
    # Byte by byte for small requests; in 997-byte pieces for the big ones (time bound).
    size = size if size == 0 or len(data) < 4096 else 997
    if status is None:
        got = parse(parser, data, size)
        assert got and got[0].complete, "accepted (llhttp/h11 difference, see the row)"
    else:
        assert refusal(parser, data, size).status == status


# Upgrade requests the server does not switch on (RFC 9110 §7.8: it may ignore Upgrade) -----

_UPGRADE_FOO = b"Upgrade: foo\r\nConnection: upgrade\r\n"


@pytest.mark.parametrize("size", [0, 1, 7])
@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Content-Length: 5\r\n", b"hello"),
        (b"Transfer-Encoding: chunked\r\n", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
    ],
    ids=["content-length", "chunked"],
)
def test_ignored_upgrade_keeps_the_body(
    parser: str, size: int, framing: bytes, body: bytes
) -> None:
    """llhttp stops right after the head of an Upgrade request and never parses its body; a
    request that is served as HTTP/1.1 must still get its body, and the next request must
    parse (h2c with a body, or any unknown protocol, takes this path)."""
    data = (
        b"POST /up HTTP/1.1\r\n" + HOST + _UPGRADE_FOO + framing + b"\r\n" + body
        + b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n"
    )  # fmt: skip
    requests = parse(parser, data, size)
    assert summary(requests) == [
        ("POST", b"/up", b"", b"hello", True),
        ("GET", b"/next", b"", b"", True),
    ]
    assert requests[0].head.upgrade == b"foo"


def test_ignored_upgrade_without_body(parser: str) -> None:
    data = b"GET /up HTTP/1.1\r\n" + HOST + _UPGRADE_FOO + b"\r\nGET /next HTTP/1.1\r\n" + HOST
    requests = parse(parser, data + b"\r\n")
    assert summary(requests) == [("GET", b"/up", b"", b"", True), ("GET", b"/next", b"", b"", True)]


# Upgrade requests the connection switches on, with a body (h2c: RFC 7540 §3.2) ---------------


@dataclass
class Switcher(Recorder):
    """Stops the parser at the first request, handing the rest of it to ``after``."""

    after: Recorder = field(default_factory=Recorder)
    codec: H1Parser | None = None

    def on_request(self, head: RequestHead) -> None:
        super().on_request(head)
        assert self.codec is not None
        self.after.requests.append(Seen(head))
        self.codec.stop(self.after)


_SWITCHED_BODIES = [
    (b"Content-Length: 5\r\n", b"hello"),
    (b"Content-Length: 00\r\n", b""),
    (b"Transfer-Encoding: chunked\r\n", b"2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\nx-t: 1\r\n\r\n"),
]


@pytest.mark.parametrize("size", [0, 1, 7])
@pytest.mark.parametrize(("framing", "body"), _SWITCHED_BODIES, ids=["cl", "cl-zero", "chunked"])
def test_stopped_parser_reads_the_body_then_holds(
    parser: str, size: int, framing: bytes, body: bytes
) -> None:
    """``stop(handler)`` in ``on_request``: the request's body still goes to ``handler``
    (llhttp skipped it; h11 parses it), then its completion; the bytes after it, never
    parsed, are held, all of them by then."""
    rec = Switcher()
    codec = rec.codec = make(parser, rec)
    upgrade = b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AA\r\n"
    after = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04"
    data = b"POST /up HTTP/1.1\r\n" + HOST + upgrade + framing + b"\r\n" + body + after
    held = b""
    for piece in pieces(data, size or len(data)):
        codec.feed(piece)
        if rec.after.requests[-1:] and rec.after.requests[-1].complete:
            held += codec.take_held()
    [seen] = rec.after.requests
    expected = b"hello" if body else b""
    assert (seen.body, seen.complete, held) == (expected, True, after)
    assert [(s.body, s.complete) for s in rec.requests] == [(b"", False)]


def test_stopped_parser_refuses_invalid_chunked_framing(parser: str) -> None:
    rec = Switcher()
    codec = rec.codec = make(parser, rec)
    head = b"POST /up HTTP/1.1\r\n" + HOST + b"Upgrade: h2c\r\nConnection: upgrade\r\n"
    codec.feed(head + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n")
    with pytest.raises(H1Error) as info:
        codec.feed(b"zz\r\nllo\r\n0\r\n\r\n")
    assert info.value.status == 400
    assert rec.after.requests[0].body == b"he" and not rec.after.requests[0].complete
