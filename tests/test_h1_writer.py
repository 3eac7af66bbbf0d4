"""Response serialization (``wire/h1_writer.py``): framing, headers, status lines, refusals.

RFC 9112 §6.3 / RFC 9110 §6.4.1, §8.6: 1xx and 204 never carry Content-Length or
Transfer-Encoding; HEAD, 304, 1xx and 204 never carry a body; HTTP/1.0 never sees chunked.
"""

from __future__ import annotations

import itertools

import pytest

from sleipnir.wire import h1_writer as w
from sleipnir.wire.h1 import Headers

DATE = b"Tue, 15 Nov 1994 08:12:31 GMT"
DEFAULTS = w.DefaultHeaders([(b"server", b"sleipnir"), (b"date", DATE)])
NONE, LENGTH, CHUNKED, CLOSE = w.FRAMING_NONE, w.FRAMING_LENGTH, w.FRAMING_CHUNKED, w.FRAMING_CLOSE


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(status line, [(lowercase name, value)]) of a serialized head."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        assert sep and name and b"\r" not in line and b"\n" not in line
        fields.append((name.lower(), value))
    return lines[0], fields


def values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n == name]


def encode(
    status: int = 200,
    headers: Headers | None = None,
    *,
    head_request: bool = False,
    http10: bool = False,
    keep_alive: bool = True,
    body: int = 5,
    defaults: w.DefaultHeaders = DEFAULTS,
) -> tuple[bytes, list[tuple[bytes, bytes]], int, int, bool]:
    """encode_head; ``body`` is the single body's length, or -1 for a streamed response."""
    head, framing, length, alive = w.encode_head(
        status,
        headers or [],
        defaults,
        head_request=head_request,
        http10=http10,
        keep_alive=keep_alive,
        final_body_len=body,
    )
    line, fields = split_head(head)
    return line, fields, framing, length, alive


# Framing ------------------------------------------------------------------------------------

# status, HEAD, HTTP/1.0, app Content-Length, body (-1: streamed)
#   -> framing, content-length header, transfer-encoding: chunked, keep-alive
FRAMING_TABLE = [
    (200, False, False, None, 5, LENGTH, b"5", False, True),
    (200, False, False, None, 0, LENGTH, b"0", False, True),
    (200, False, False, None, -1, CHUNKED, None, True, True),
    (200, False, False, b"7", -1, LENGTH, b"7", False, True),
    (200, False, False, b"5", 5, LENGTH, b"5", False, True),
    (200, False, True, None, 5, LENGTH, b"5", False, True),
    (200, False, True, None, -1, CLOSE, None, False, False),  # never chunked for HTTP/1.0
    (200, False, True, b"7", -1, LENGTH, b"7", False, True),
    (200, True, False, None, 5, NONE, b"5", False, True),  # HEAD: the length a GET would get
    (200, True, False, None, 0, NONE, None, False, True),  # HEAD, empty body: length unknown
    (200, True, False, None, -1, NONE, None, False, True),
    (200, True, False, b"42", 0, NONE, b"42", False, True),
    (200, True, True, None, -1, NONE, None, False, True),
    (404, False, False, None, 9, LENGTH, b"9", False, True),
    (500, False, False, None, -1, CHUNKED, None, True, True),
    (204, False, False, None, 0, NONE, None, False, True),
    (204, False, False, b"0", 0, NONE, None, False, True),  # never Content-Length in 204
    (204, False, False, None, -1, NONE, None, False, True),
    (304, False, False, None, 0, NONE, None, False, True),
    (304, False, False, b"1234", 0, NONE, b"1234", False, True),  # 304 keeps the app's CL
    (304, False, False, None, -1, NONE, None, False, True),
    (304, True, False, b"10", 0, NONE, b"10", False, True),
    (101, False, False, None, 0, NONE, None, False, True),
    (103, False, False, b"5", 0, NONE, None, False, True),
    (205, False, False, None, 0, LENGTH, b"0", False, True),
]


@pytest.mark.parametrize(
    ("status", "head", "http10", "app_length", "body", "framing", "length", "chunked", "alive"),
    FRAMING_TABLE,
)
def test_framing_table(
    status: int,
    head: bool,
    http10: bool,
    app_length: bytes | None,
    body: int,
    framing: int,
    length: bytes | None,
    chunked: bool,
    alive: bool,
) -> None:
    headers = [(b"content-length", app_length)] if app_length is not None else []
    _, fields, got_framing, got_length, got_alive = encode(
        status, headers, head_request=head, http10=http10, body=body
    )
    assert got_framing == framing
    assert values(fields, b"content-length") == ([length] if length is not None else [])
    assert values(fields, b"transfer-encoding") == ([b"chunked"] if chunked else [])
    assert got_alive is alive
    if framing == LENGTH:
        assert length is not None and got_length == int(length)
    else:
        assert got_length == -1 or framing == NONE
    expected_connection = [] if alive and not http10 else [b"keep-alive" if alive else b"close"]
    assert values(fields, b"connection") == expected_connection


STATUSES = [100, 101, 103, 200, 201, 204, 205, 206, 301, 304, 400, 404, 500, 599]


@pytest.mark.parametrize(
    ("status", "head", "http10", "app_length", "body"),
    list(itertools.product(STATUSES, [False, True], [False, True], [None, b"3"], [3, -1])),
)
def test_framing_invariants(
    status: int, head: bool, http10: bool, app_length: bytes | None, body: int
) -> None:
    headers = [(b"content-length", app_length)] if app_length is not None else []
    _, fields, framing, length, alive = encode(
        status, headers, head_request=head, http10=http10, body=body
    )
    lengths = values(fields, b"content-length")
    codings = values(fields, b"transfer-encoding")
    assert len(lengths) <= 1 and not (lengths and codings)
    if status < 200 or status == 204:
        assert not lengths and not codings  # RFC 9110 §8.6, RFC 9112 §6.1
    if head or status < 200 or status in (204, 304):
        assert framing == NONE and not codings
    if http10:
        assert framing != CHUNKED and not codings
    if framing == LENGTH:
        assert lengths == [str(length).encode()]
    if framing == CHUNKED:
        assert codings == [b"chunked"] and alive
    if framing == CLOSE:
        assert not alive and values(fields, b"connection") == [b"close"]


def test_app_framing_headers_are_replaced_by_the_servers() -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"keep-alive, Upgrade")]
    _, fields, framing, _, alive = encode(200, headers, body=-1)
    assert framing == CHUNKED and alive
    assert values(fields, b"transfer-encoding") == [b"chunked"]
    assert values(fields, b"connection") == []
    _, fields, framing, _, _ = encode(200, [(b"transfer-encoding", b"gzip")], body=4)
    assert framing == LENGTH and values(fields, b"transfer-encoding") == []


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close", b"CLOSE"])
@pytest.mark.parametrize("http10", [False, True])
def test_app_connection_close_is_honoured(value: bytes, http10: bool) -> None:
    _, fields, framing, _, alive = encode(200, [(b"connection", value)], http10=http10, body=-1)
    assert not alive
    assert values(fields, b"connection") == [b"close"]
    assert framing == (CLOSE if http10 else CHUNKED)


def test_connection_header_follows_keep_alive() -> None:
    assert values(encode(keep_alive=False)[1], b"connection") == [b"close"]
    assert values(encode(http10=True)[1], b"connection") == [b"keep-alive"]
    assert values(encode(http10=True, keep_alive=False)[1], b"connection") == [b"close"]
    assert encode(http10=True, keep_alive=False)[4] is False
    assert values(encode()[1], b"connection") == []  # HTTP/1.1 persistence is the default


# Headers -------------------------------------------------------------------------------------


def test_header_order_case_and_duplicates_kept() -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Empty", b""),
    ]
    head, _, _, _ = w.encode_head(
        200, headers, DEFAULTS, head_request=False, http10=False, keep_alive=True, final_body_len=2
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"X-Empty: \r\nserver: sleipnir\r\ndate: " + DATE + b"\r\ncontent-length: 2\r\n\r\n"
    )


def test_default_headers_overridden_by_the_app() -> None:
    defaults = w.DefaultHeaders([(b"server", b"sleipnir"), (b"date", DATE), (b"X-Env", b"prod")])
    assert defaults.names == {b"server", b"date", b"x-env"}
    _, fields, *_ = encode(200, [(b"Server", b"mine")], defaults=defaults)
    assert values(fields, b"server") == [b"mine"]
    assert values(fields, b"date") == [DATE] and values(fields, b"x-env") == [b"prod"]
    _, fields, *_ = encode(200, [(b"DATE", b"yesterday"), (b"x-env", b"dev")], defaults=defaults)
    assert values(fields, b"date") == [b"yesterday"] and values(fields, b"x-env") == [b"dev"]
    assert values(fields, b"server") == [b"sleipnir"]
    _, fields, *_ = encode(200, [], defaults=w.DefaultHeaders([]))
    assert [name for name, _ in fields] == [b"content-length"]


@pytest.mark.parametrize(
    "value", [b"a\r\nInjected: 1", b"a\nInjected: 1", b"a\rb", b"a\x00b", b"\r\n", b"x\n"]
)
def test_response_splitting_in_values_refused(value: bytes) -> None:
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(b"x-ok", b"fine"), (b"x-value", value)])
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(b"server", value)])  # a default-overriding header is checked too


def test_cached_values_still_checked_in_the_company_of_bad_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Values seen before skip the head's check; a new one in the same head brings it back.
    # (Room in the cache whatever the servers of earlier tests in this process put there.)
    monkeypatch.setattr(w, "_KNOWN_VALUES_MAX", 1 << 30)
    good = [(b"x-ok", b"fine"), (b"content-type", b"text/plain")]
    for _ in range(2):
        assert values(encode(200, good)[1], b"x-ok") == [b"fine"]
    assert b"fine" in w._GOOD_VALUES
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [*good, (b"x-bad", b"a\r\nInjected: 1")])
    # A framing header's value is never written, so never checked as part of the head; a
    # dirty one (tolerated as a length) must not become a value cached as clean either.
    encode(200, [(b"content-length", b"2\r\n")])
    assert b"2\r\n" not in w._GOOD_VALUES
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(b"x-value", b"2\r\n")])


def test_full_value_cache_still_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(w, "_KNOWN_VALUES_MAX", 0)
    assert values(encode(200, [(b"x-new", b"never-cached")])[1], b"x-new") == [b"never-cached"]
    assert b"never-cached" not in w._GOOD_VALUES
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(b"x-new", b"never-cached\r\nInjected: 1")])


@pytest.mark.parametrize(
    "name", [b"", b"bad name", b"x:y", b"x\r\ny", b"x\n", b"caf\xe9", b"(x)", b"x\x00", b"x@y"]
)
def test_invalid_header_names_refused(name: bytes) -> None:
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(name, b"v")])


def test_valid_token_names_accepted_and_cached_names_still_checked() -> None:
    name = b"X-Weird!#$%&'*+-.^_`|~09"
    for _ in range(2):  # the second time from the cache of validated names
        assert values(encode(200, [(name, b"v")])[1], name.lower()) == [b"v"]
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(name, b"v"), (name + b" ", b"v")])


@pytest.mark.parametrize(
    "value", [b"abc", b"-1", b"", b"1.5", b"5, 5", b"5\r\nX: y", b"0x5", b"1" * 20, b"9" * 5000]
)
def test_invalid_app_content_length_refused(value: bytes) -> None:
    with pytest.raises(w.ResponseHeaderError):
        encode(200, [(b"content-length", value)])


def test_app_content_length_whitespace_tolerated() -> None:
    for _ in range(2):  # the second time from the cache of lengths
        _, fields, framing, length, _ = encode(200, [(b"Content-Length", b" 12 ")], body=-1)
        assert (framing, length, values(fields, b"content-length")) == (LENGTH, 12, [b"12"])
    for zeros, expected in ((30, 12), (5000, 12), (5000, 0)):
        value = b"0" * zeros + (b"12" if expected else b"")
        _, fields, _, length, _ = encode(200, [(b"Content-Length", value)], body=-1)
        assert (length, values(fields, b"content-length")) == (expected, [b"%d" % expected])


# Status lines, chunks, canned responses ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (101, b"HTTP/1.1 101 Switching Protocols\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (418, b"HTTP/1.1 418 I'm a Teapot\r\n"),
        (299, b"HTTP/1.1 299 \r\n"),  # unknown: empty reason, the SP stays (RFC 9112 §4)
        (599, b"HTTP/1.1 599 \r\n"),
        (999, b"HTTP/1.1 999 \r\n"),
        (100, b"HTTP/1.1 100 Continue\r\n"),
    ],
)
def test_status_lines(status: int, line: bytes) -> None:
    assert w.status_line(status) == line
    head, *_ = w.encode_head(
        status, [], DEFAULTS, head_request=False, http10=False, keep_alive=True, final_body_len=0
    )
    assert head.startswith(line)


@pytest.mark.parametrize("status", [0, 99, 1000, -200])
def test_invalid_status_codes_refused(status: int) -> None:
    with pytest.raises(w.ResponseHeaderError):
        w.status_line(status)


def test_http10_response_is_still_an_http11_status_line() -> None:
    # RFC 9110 §2.5: a server sends its own highest version, whatever the request's.
    assert encode(200, http10=True)[0] == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),  # data is opaque, even a fake last chunk
    ],
)
def test_chunk(data: bytes, encoded: bytes) -> None:
    assert w.chunk(data) == encoded


def test_constants() -> None:
    assert w.LAST_CHUNK == b"0\r\n\r\n"
    assert w.CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert w.CRLF == b"\r\n"


@pytest.mark.parametrize(
    ("status", "reason", "body"),
    [
        (400, "missing Host header", b"Bad Request: missing Host header\n"),
        (431, "too many fields", b"Request Header Fields Too Large: too many fields\n"),
        (503, "at its limit", b"Service Unavailable: at its limit\n"),
        (400, "caf\u00e9 \u20ac", b"Bad Request: caf\xe9 ?\n"),
    ],
)  # fmt: skip
def test_simple_response(status: int, reason: str, body: bytes) -> None:
    data = w.simple_response(status, reason, DEFAULTS)
    head, sep, got_body = data.partition(b"\r\n\r\n")
    line, fields = split_head(head + sep)
    assert line == w.status_line(status).rstrip(b"\r\n")
    assert got_body == body
    assert values(fields, b"content-length") == [str(len(body)).encode()]
    assert values(fields, b"content-type") == [b"text/plain; charset=utf-8"]
    assert values(fields, b"connection") == [b"close"]
    assert values(fields, b"server") == [b"sleipnir"] and values(fields, b"date") == [DATE]
