"""The ASGI HTTP extensions (asgiref docs/extensions.rst) end to end, over both protocols:
``http.response.trailers``, ``http.response.early_hint`` and ``http.response.push``.

HTTP/1.1 with raw sockets (both parsers), HTTP/2 with the h2 library over a socket (prior
knowledge) and curl. The message order and the field checks live in the cycle, so the error
cases run over both protocols: before the head went out an app's mistake is a 500, after it
the response is cut (HTTP/1.1: the connection closes without the last chunk; HTTP/2:
RST_STREAM)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes, Settings

from conftest import RunningServer, run_server
from rawhttp import RawConnection, read_until_closed, request
from sleipnir.asgi import http_cycle
from sleipnir.asgi.contract import ASGIError
from sleipnir.asgi.http_cycle import AppContext, HTTPCycle, http_scope
from sleipnir.cli import compiled_build
from sleipnir.types import Message, Receive, Scope, Send
from sleipnir.wire.h1 import Headers, RequestHead

LINKS = [b"</style.css>; rel=preload; as=style", b"</app.js>; rel=preload; as=script"]
BIG = 200_000  # more than the client's 64 KiB stream window: the trailers wait behind it

errors: dict[str, str] = {}  # case -> the ASGIError message the app got from send()
pushed_scopes: list[Scope] = []


def _start(trailers: bool = True, headers: Headers | None = None) -> Message:
    message: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": headers if headers is not None else [(b"trailer", b"x-checksum")],
    }
    if trailers:
        message["trailers"] = True
    return message


def _body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _trailers(headers: Headers, more: bool = False) -> Message:
    return {"type": "http.response.trailers", "headers": headers, "more_trailers": more}


def _hint(*links: Any) -> Message:
    return {"type": "http.response.early_hint", "links": list(links)}


# What each error case sends; the last message is the one that must fail.
BAD: dict[str, list[Message]] = {
    # before the head went out: 500
    "trailers-unannounced": [_start(trailers=False), _trailers([(b"x", b"1")])],
    "trailers-before-any-body": [_start(), _trailers([(b"x", b"1")])],
    "bad-link": [_hint(b"</a>\r\nx-injected: 1")],
    "empty-link": [_hint(b"")],
    "link-not-bytes": [_hint("</a>; rel=preload")],
    "links-not-a-list": [{"type": "http.response.early_hint", "links": b"</a>"}],
    "push-relative-path": [{"type": "http.response.push", "path": "style.css", "headers": []}],
    # after the head went out: the response is cut
    "trailers-unannounced-streamed": [
        _start(trailers=False),
        _body(b"part", more=True),
        _trailers([(b"x", b"1")]),
    ],
    "trailers-before-body-end": [_start(), _body(b"part", more=True), _trailers([(b"x", b"1")])],
    "body-after-body-end": [_start(), _body(b"all"), _body(b"more")],
    "hint-after-head": [_start(trailers=False), _body(b"part", more=True), _hint(LINKS[0])],
    "bad-trailer-name": [_start(), _body(b"all"), _trailers([(b"bad name", b"v")])],
    "bad-trailer-value": [_start(), _body(b"all"), _trailers([(b"x-sum", b"a\r\nx-injected: 1")])],
    "pseudo-trailer": [_start(), _body(b"all"), _trailers([(b":status", b"200")])],
}
BEFORE_HEAD = [
    "trailers-unannounced",
    "trailers-before-any-body",
    "bad-link",
    "empty-link",
    "link-not-bytes",
    "links-not-a-list",
    "push-relative-path",
]
AFTER_HEAD = [case for case in BAD if case not in BEFORE_HEAD]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path.startswith("/bad/"):
        case = path[len("/bad/") :]
        *good, last = BAD[case]
        for message in good:
            await send(message)
        try:
            await send(last)
        except ASGIError as exc:
            errors[case] = str(exc)
            raise
        raise AssertionError(f"{case}: accepted")  # pragma: no cover
    if path == "/trailers":  # two body messages, two trailers messages
        await send(_start())
        await send(_body(b"hello ", more=True))
        await send(_body(b"world"))
        await send(_trailers([(b"x-checksum", b"abc"), (b"content-length", b"99")], more=True))
        await send(_trailers([(b"X-More", b"1"), (b"transfer-encoding", b"chunked")]))
    elif path == "/trailers-one-body":
        await send(_start())
        await send(_body(b"hello world"))
        await send(_trailers([(b"x-checksum", b"abc")]))
    elif path == "/trailers-length":  # Content-Length: no chunked body to carry them
        await send(_start(headers=[(b"content-length", b"11")]))
        await send(_body(b"hello world"))
        await send(_trailers([(b"x-checksum", b"abc")]))
    elif path == "/trailers-none":  # announced, but none to send
        await send(_start())
        await send(_body(b"hello world"))
        await send(_trailers([]))
    elif path == "/trailers-no-content":
        await send({**_start(), "status": 204})
        await send(_body(b""))
        await send(_trailers([(b"x-checksum", b"abc")]))
    elif path == "/trailers-big":  # the whole body in the last message, then trailers
        await send(_start())
        await send(_body(b"b" * BIG))
        await send(_trailers([(b"x-checksum", b"big")]))
    elif path == "/pathsend-trailers":
        await send(_start())
        await send({"type": "http.response.pathsend", "path": __file__})
        await send(_trailers([(b"x-checksum", b"file")]))
    elif path == "/trailers-missing":  # announced, never sent: the response is incomplete
        await send(_start())
        await send(_body(b"hello world"))
    elif path == "/hint":
        await send(_hint(*LINKS))
        await send(_hint(b"  </font.woff2>; rel=preload; as=font  "))
        await send(_start(trailers=False, headers=[(b"content-type", b"text/plain")]))
        # after the start but before the head went out: still ahead of the 200 on the wire
        await send(_hint(b"</late.css>; rel=preload"))
        await send(_body(b"hinted"))
    elif path == "/push":
        await send(_start(trailers=False, headers=[(b"content-type", b"text/html")]))
        await send(
            {
                "type": "http.response.push",
                "path": "/style.css",
                "headers": [(b"accept", b"text/css"), (b"X-Pushed", b"yes")],
            }
        )
        await send({"type": "http.response.push", "path": "/caf\u00e9 menu.css", "headers": []})
        await send(_body(b"<html>"))
    elif path in ("/style.css", "/caf\u00e9 menu.css"):
        pushed_scopes.append(scope)
        await send(_start(trailers=False, headers=[(b"content-type", b"text/css")]))
        await send(_body(b"css for " + scope["raw_path"]))
    else:  # "/scope"
        info = {"extensions": sorted(scope["extensions"]), "version": scope["http_version"]}
        await send(_start(trailers=False, headers=[(b"content-type", b"application/json")]))
        await send(_body(json.dumps(info).encode()))


@pytest.fixture
def h1(parser: str) -> Iterator[RunningServer]:
    with run_server(app, http=parser, lifespan="off") as srv:
        yield srv


@pytest.fixture(scope="module")
def h2srv() -> Iterator[RunningServer]:
    with run_server(app, lifespan="off") as srv:
        yield srv


def _conn(srv: RunningServer) -> RawConnection:
    sock = srv.connect()
    _sockets.append(sock)
    return RawConnection(sock)


_sockets: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _sockets:
        _sockets.pop().close()


# HTTP/1.1: trailers ------------------------------------------------------------------------


def test_trailers_after_a_chunked_body_when_te_trailers(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/trailers", "TE: trailers"))
    response = conn.read_response()
    assert response.status == 200
    assert (response.framing, response.body) == ("chunked", b"hello world")
    assert response.header("trailer") == "x-checksum"
    # content-length and transfer-encoding are never sent as trailers (RFC 9110 §6.5.1)
    assert response.trailers == [(b"x-checksum", b"abc"), (b"x-more", b"1")]
    conn.send(request("GET", "/scope"))  # the response ended cleanly: keep-alive goes on
    assert conn.read_response().status == 200


def test_te_is_a_list_of_tokens(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/trailers-one-body", "TE: deflate;q=0.5, Trailers", "Connection: TE"))
    response = conn.read_response()
    # A single final body still goes chunked: the response goes on with its trailers.
    assert (response.framing, response.body) == ("chunked", b"hello world")
    assert response.trailers == [(b"x-checksum", b"abc")]


def test_pathsend_then_trailers(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/pathsend-trailers", "TE: trailers"))
    response = conn.read_response()
    with open(__file__, "rb") as file:
        assert response.body == file.read()
    assert response.trailers == [(b"x-checksum", b"file")]


def test_pipelined_responses_with_trailers_and_hints(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(
        request("GET", "/trailers", "TE: trailers")
        + request("GET", "/hint")
        + request("GET", "/trailers-one-body", "TE: trailers")
    )
    first, *hints, second, third = conn.read_responses(3)
    assert first.trailers == [(b"x-checksum", b"abc"), (b"x-more", b"1")]
    assert [r.status for r in hints] == [103, 103, 103]
    assert (second.status, second.body) == (200, b"hinted")
    assert (third.body, third.trailers) == (b"hello world", [(b"x-checksum", b"abc")])


@pytest.mark.parametrize("te", [None, "TE: gzip", "TE: trailersx"])
def test_trailers_dropped_without_te_trailers(h1: RunningServer, te: str | None) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/trailers", *([te] if te else [])))
    response = conn.read_response()
    assert (response.status, response.framing, response.body) == (200, "chunked", b"hello world")
    assert response.trailers == []
    conn.send(request("GET", "/scope"))
    assert conn.read_response().status == 200


def test_trailers_dropped_when_the_framing_cannot_carry_them(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/trailers-length", "TE: trailers"))
    response = conn.read_response()
    assert (response.framing, response.body, response.trailers) == ("length", b"hello world", [])
    conn.send(request("HEAD", "/trailers", "TE: trailers"))
    response = conn.read_response("HEAD")
    assert (response.status, response.body) == (200, b"")
    conn.send(request("GET", "/trailers-no-content", "TE: trailers"))
    assert conn.read_response().status == 204
    conn.send(request("GET", "/trailers-none", "TE: trailers"))
    response = conn.read_response()
    assert (response.framing, response.body, response.trailers) == ("chunked", b"hello world", [])
    conn.send(request("GET", "/scope"))
    assert conn.read_response().status == 200
    # HTTP/1.0 has no chunked encoding: the body is close-delimited, the trailers dropped.
    with h1.connect() as sock:
        sock.sendall(request("GET", "/trailers", "TE: trailers", version="1.0"))
        raw = read_until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head and body == b"hello world"


def test_trailers_never_sent_cut_the_response(h1: RunningServer) -> None:
    with h1.connect() as sock:
        sock.sendall(request("GET", "/trailers-missing", "TE: trailers"))
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 ") and b"hello world" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees the truncation


# HTTP/1.1: early hints ---------------------------------------------------------------------


def test_early_hints(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/hint"))
    first, second, third, final = conn.read_responses(1)
    assert (first.status, first.reason) == (103, b"Early Hints")
    assert first.values("link") == [link.decode() for link in LINKS]
    assert second.status == 103
    assert second.values("link") == ["</font.woff2>; rel=preload; as=font"]
    assert (third.status, third.values("link")) == (103, ["</late.css>; rel=preload"])
    assert (final.status, final.body) == (200, b"hinted")
    assert final.values("link") == []


def test_no_early_hints_to_http10(h1: RunningServer) -> None:
    with h1.connect() as sock:
        sock.sendall(request("GET", "/hint", version="1.0"))
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"hinted")
    assert b"103" not in raw and b"link" not in raw


def test_scope_extensions_http11(h1: RunningServer) -> None:
    conn = _conn(h1)
    conn.send(request("GET", "/scope"))
    info = json.loads(conn.read_response().body)
    assert info["extensions"] == [
        "http.response.early_hint",
        "http.response.pathsend",
        "http.response.trailers",
    ]


# HTTP/1.1: message order and field checks --------------------------------------------------


@pytest.mark.parametrize("case", BEFORE_HEAD)
def test_error_before_the_head_is_a_500(h1: RunningServer, case: str) -> None:
    errors.pop(case, None)
    with h1.connect() as sock:
        sock.sendall(request("GET", f"/bad/{case}", "TE: trailers"))
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 500 "), raw
    assert b"103" not in raw and b"x-injected" not in raw
    assert case in errors


@pytest.mark.parametrize("case", AFTER_HEAD)
def test_error_after_the_head_cuts_the_response(h1: RunningServer, case: str) -> None:
    errors.pop(case, None)
    with h1.connect() as sock:
        sock.sendall(request("GET", f"/bad/{case}", "TE: trailers"))
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    assert b"transfer-encoding: chunked" in raw
    assert not raw.endswith(b"\r\n\r\n")  # no last chunk, no trailer section
    assert b"x-injected" not in raw and b"103" not in raw
    assert case in errors


def test_error_messages_name_the_mistake(h1: RunningServer) -> None:
    for case in ("trailers-unannounced", "hint-after-head", "body-after-body-end"):
        with h1.connect() as sock:
            sock.sendall(request("GET", f"/bad/{case}"))
            read_until_closed(sock)
    assert "without 'trailers': True" in errors["trailers-unannounced"]
    assert "after the response head was sent" in errors["hint-after-head"]
    assert "'http.response.trailers'" in errors["body-after-body-end"]


def test_invalid_trailers_fail_without_te_too(h1: RunningServer) -> None:
    # The checks do not depend on whether the client takes the trailers.
    errors.pop("bad-trailer-value", None)
    with h1.connect() as sock:
        sock.sendall(request("GET", "/bad/bad-trailer-value"))
        raw = read_until_closed(sock)
    assert not raw.endswith(b"0\r\n\r\n")
    assert "bad-trailer-value" in errors


def test_trailers_after_a_complete_response(h1: RunningServer) -> None:
    # "trailers-unannounced" after a complete body: the client got the whole response.
    async def late(scope: Scope, receive: Receive, send: Send) -> None:
        await send(_start(trailers=False, headers=[(b"content-length", b"2")]))
        await send(_body(b"ok"))
        try:
            await send(_trailers([(b"x", b"1")]))
        except ASGIError as exc:
            errors["late"] = str(exc)

    with run_server(late, lifespan="off") as srv:
        conn = _conn(srv)
        conn.send(request("GET", "/"))
        assert conn.read_response().body == b"ok"
        conn.send(request("GET", "/"))
        assert conn.read_response().body == b"ok"
    assert "after the response completed" in errors["late"]


# HTTP/1.1: the hot path pays nothing for the extensions -------------------------------------


class _Stream:
    write_paused = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start_response(self, *args: Any) -> None:
        self.calls.append("start_response")

    def cycle_done(self, cycle: HTTPCycle) -> None:
        self.calls.append("cycle_done")


@pytest.mark.skipif(compiled_build(), reason="a compiled cycle makes no Python calls to profile")
def test_plain_response_makes_no_extension_call() -> None:
    """A response without extensions runs the same Python code as before them: ``send``
    calls nothing but the stream, ``http_scope`` nothing in Python (one test, ``"trailers"
    in`` the start message, is all the extensions add; architecture.md has the measured
    instruction counts)."""
    head = RequestHead("GET", b"/", b"", "1.1", [(b"host", b"x")], True, False)
    scope = http_scope(head, "", ("127.0.0.1", 80), ("127.0.0.1", 5000), "http", {})
    stream = _Stream()
    cycle = HTTPCycle(scope, stream, AppContext(_noop_app, None, False), False)  # type: ignore[arg-type]
    start = _start(trailers=False, headers=[(b"content-length", b"2")])
    body = _body(b"ok")
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)
        elif event == "c_call":
            calls.append(f"C:{arg.__name__}")

    async def respond() -> None:
        sys.setprofile(profile)
        try:
            await cycle.send(start)
            await cycle.send(body)
            http_scope(head, "", ("127.0.0.1", 80), ("127.0.0.1", 5000), "http", {})
        finally:
            sys.setprofile(None)

    coro = respond()
    with pytest.raises(StopIteration):
        coro.send(None)
    assert stream.calls == ["start_response"]
    python_calls = [name for name in calls if not name.startswith("C:")]
    assert python_calls == ["send", "send", "start_response", "http_scope"]
    assert calls.count("C:copy") == 2  # http_scope: the state and the extensions template
    with pytest.raises(TypeError):  # the shared options are read-only
        scope["extensions"]["http.response.trailers"]["x"] = 1


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Never run."""


def test_accepts_trailers() -> None:
    accepts = http_cycle.accepts_trailers
    assert accepts([(b"te", b"trailers")])
    assert accepts([(b"te", b"gzip;q=0.5"), (b"te", b" TRAILERS ")])
    assert not accepts([(b"te", b"gzip"), (b"trailer", b"trailers")])
    assert not accepts([])


# HTTP/2 ------------------------------------------------------------------------------------


@dataclass
class H2Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended_with_trailers: bool = False
    ended: bool = False
    reset: int | None = None
    promised: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    """The h2 library as a client over a blocking socket, recording what extensions show."""

    def __init__(self, sock: socket.socket, enable_push: bool = True) -> None:
        self.sock = sock
        sock.settimeout(10)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = Settings(
            client=True, initial_values={SettingCodes.ENABLE_PUSH: int(enable_push)}
        )
        self.conn.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, *extra: tuple[bytes, bytes]) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"example.com"),
            (b":path", path.encode()),
            *extra,
        ]
        self.conn.send_headers(sid, headers, end_stream=True)
        self.responses[sid] = H2Response()
        self.flush()
        return sid

    def wait(self, *sids: int, timeout: float = 10.0) -> list[H2Response]:
        deadline = time.monotonic() + timeout
        while not all(self.responses[s].ended or self.responses[s].reset for s in sids):
            assert time.monotonic() < deadline, "timed out waiting for responses"
            data = self.sock.recv(1 << 16)
            assert data, "connection closed"
            self._handle(data)
        return [self.responses[s] for s in sids]

    def _handle(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, PushedStreamReceived):
                parent, pushed = event.parent_stream_id, event.pushed_stream_id
                assert parent is not None and pushed is not None and event.headers is not None
                self.responses[parent].promised[pushed] = list(event.headers)
                self.responses[pushed] = H2Response()
                continue
            response = self.responses.get(getattr(event, "stream_id", 0))
            if response is None:
                continue
            if isinstance(event, InformationalResponseReceived):
                response.informational.append(list(event.headers))
            elif isinstance(event, ResponseReceived):
                response.headers = list(event.headers)
                response.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived):
                response.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, TrailersReceived):
                response.trailers = list(event.headers)
                response.ended_with_trailers = event.stream_ended is not None
            elif isinstance(event, StreamEnded):
                response.ended = True
            elif isinstance(event, StreamReset):
                response.reset = int(event.error_code)
        self.flush()


def h2client(srv: RunningServer, enable_push: bool = True) -> H2Client:
    sock = srv.connect()
    _sockets.append(sock)
    return H2Client(sock, enable_push)


TE = (b"te", b"trailers")


def test_h2_trailers_end_the_stream(h2srv: RunningServer) -> None:
    client = h2client(h2srv)
    [response] = client.wait(client.get("/trailers", TE))
    assert (response.status, bytes(response.body)) == (200, b"hello world")
    assert response.header(b"content-length") is None
    assert response.trailers == [(b"x-checksum", b"abc"), (b"x-more", b"1")]
    assert response.ended_with_trailers  # the last DATA did not carry END_STREAM


def test_h2_trailers_wait_behind_a_blocked_body(h2srv: RunningServer) -> None:
    client = h2client(h2srv)
    [response] = client.wait(client.get("/trailers-big", TE))
    assert bytes(response.body) == b"b" * BIG
    assert response.trailers == [(b"x-checksum", b"big")]
    assert response.ended_with_trailers


@pytest.mark.parametrize("path", ["/trailers", "/trailers-none"])
def test_h2_trailers_dropped_without_te(h2srv: RunningServer, path: str) -> None:
    client = h2client(h2srv)
    extra = (TE,) if path == "/trailers-none" else ()
    [response] = client.wait(client.get(path, *extra))
    assert (response.status, bytes(response.body)) == (200, b"hello world")
    assert response.trailers is None and response.ended


def test_h2_trailers_on_a_response_without_body(h2srv: RunningServer) -> None:
    client = h2client(h2srv)
    [response] = client.wait(client.get("/trailers-no-content", TE))
    assert (response.status, response.trailers) == (204, None)


def test_h2_early_hints(h2srv: RunningServer) -> None:
    client = h2client(h2srv)
    [response] = client.wait(client.get("/hint"))
    assert [dict(h)[b":status"] for h in response.informational] == [b"103"] * 3
    assert [v for n, v in response.informational[0] if n == b"link"] == LINKS
    assert (response.status, bytes(response.body)) == (200, b"hinted")


def test_h2_push(h2srv: RunningServer) -> None:
    pushed_scopes.clear()
    client = h2client(h2srv)
    sid = client.get("/push")
    [response] = client.wait(sid)
    assert (response.status, bytes(response.body)) == (200, b"<html>")
    assert len(response.promised) == 2
    css, menu = sorted(response.promised)
    assert css % 2 == 0 and menu % 2 == 0
    request = dict(response.promised[css])
    assert request[b":method"] == b"GET" and request[b":path"] == b"/style.css"
    assert request[b":authority"] == b"example.com" and request[b":scheme"] == b"http"
    assert request[b"accept"] == b"text/css" and request[b"x-pushed"] == b"yes"
    assert dict(response.promised[menu])[b":path"] == b"/caf%C3%A9%20menu.css"
    first, second = client.wait(css, menu)
    assert (first.status, bytes(first.body)) == (200, b"css for /style.css")
    assert bytes(second.body) == b"css for /caf%C3%A9%20menu.css"
    scope = next(s for s in pushed_scopes if s["path"] == "/style.css")
    assert (scope["method"], scope["http_version"], scope["query_string"]) == ("GET", "2", b"")
    assert scope["headers"] == [
        (b"host", b"example.com"),
        (b"accept", b"text/css"),
        (b"x-pushed", b"yes"),
    ]
    assert "http.response.push" in scope["extensions"]
    assert any(s["path"] == "/caf\u00e9 menu.css" for s in pushed_scopes)


def test_h2_push_disabled_by_the_client(h2srv: RunningServer) -> None:
    pushed_scopes.clear()
    client = h2client(h2srv, enable_push=False)
    [response] = client.wait(client.get("/push"))
    assert (response.status, bytes(response.body)) == (200, b"<html>")
    assert response.promised == {}
    assert pushed_scopes == []


def test_h2_scope_extensions(h2srv: RunningServer) -> None:
    client = h2client(h2srv)
    [response] = client.wait(client.get("/scope"))
    info = json.loads(bytes(response.body))
    assert info == {
        "version": "2",
        "extensions": [
            "http.response.early_hint",
            "http.response.pathsend",
            "http.response.push",
            "http.response.trailers",
        ],
    }


@pytest.mark.parametrize("case", BEFORE_HEAD)
def test_h2_error_before_the_head_is_a_500(h2srv: RunningServer, case: str) -> None:
    errors.pop(case, None)
    client = h2client(h2srv)
    [response] = client.wait(client.get(f"/bad/{case}", TE))
    assert response.status == 500 and response.informational == []
    assert case in errors


@pytest.mark.parametrize("case", AFTER_HEAD)
def test_h2_error_after_the_head_resets_the_stream(h2srv: RunningServer, case: str) -> None:
    errors.pop(case, None)
    client = h2client(h2srv)
    [response] = client.wait(client.get(f"/bad/{case}", TE))
    assert response.status == 200
    assert response.reset == 2 and response.trailers is None  # INTERNAL_ERROR
    assert case in errors


def test_curl_h2_trailers_and_early_hints(h2srv: RunningServer) -> None:
    if shutil.which("curl") is None:  # pragma: no cover - scripts/test installs it
        pytest.skip("curl not installed")
    command = ["curl", "-s", "--http2-prior-knowledge", "--max-time", "10", "-D", "-"]
    for path in ("/hint", "/trailers"):
        out = subprocess.run(
            [*command, "-H", "TE: trailers", h2srv.url + path],
            capture_output=True,
            timeout=20,
        )
        if b"--http2-prior-knowledge" in out.stderr:  # pragma: no cover - curl without HTTP/2
            pytest.skip("curl without HTTP/2")
        text = out.stdout.decode()
        if path == "/hint":
            assert text.startswith("HTTP/2 103 \r\nlink: </style.css>; rel=preload; as=style\r\n")
            assert "HTTP/2 200 " in text and text.endswith("hinted")
        else:
            # -D writes the trailer fields as they come, after the body
            assert text.endswith("\r\n\r\nhello worldx-checksum: abc\r\nx-more: 1\r\n")
