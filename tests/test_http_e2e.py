"""HTTP/1.1 end to end: a real server in a thread, real clients (httpx and raw sockets).

Every test runs once per parser (``parser`` fixture). Waits are bounded: events set by the
app, socket timeouts, ``wait_for``; never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import run_server, wait_for
from rawhttp import RawConnection, chunked_body, request, send_and_read
from sleipnir.types import Message, Receive, Scope, Send

JSON = [(b"content-type", b"application/json")]


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


async def wait_gate(gate: threading.Event, timeout: float = 5.0) -> bool:
    """Wait for a test-controlled event without blocking the server's loop."""
    return await asyncio.get_running_loop().run_in_executor(None, gate.wait, timeout)


class Echo:
    """Reads the whole body, records the scope, answers per path:

    ``/stream`` three chunks without Content-Length; ``/status/NNN`` that status with a body
    (which the server must drop where no body is allowed); ``/close`` asks for
    ``Connection: close``; ``/nolength`` one body, no Content-Length; anything else a JSON echo.
    """

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.scopes.append(scope)
        body = await read_body(receive)
        path = scope["path"]
        if path.startswith("/stream"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"chunk-1\n", b"chunk-2\n", b"chunk-3\n"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        echoed = {"path": path, "body": body.decode("latin-1"), "client": scope["client"]}
        status, headers, payload = 200, list(JSON), json.dumps(echoed).encode()
        if path.startswith("/status/"):
            status, headers, payload = int(path[8:]), [], b"must not be sent"
        elif path == "/close":
            headers.append((b"connection", b"close"))
        elif path == "/nolength":
            headers, payload = [], body
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def echoed(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data


@pytest.fixture
def echo() -> Echo:
    return Echo()


# Persistence and pipelining -----------------------------------------------------------------


def test_keep_alive_reuse_with_httpx(parser: str, echo: Echo) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv, httpx.Client() as client:
        responses = [client.get(f"{srv.url}/r{i}") for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.http_version == "HTTP/1.1" and "connection" not in r.headers for r in responses)
    assert len({tuple(echoed(r.content)["client"]) for r in responses}) == 1  # one connection


def test_keep_alive_reuse_raw(parser: str, echo: Echo) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        for i in range(3):
            conn.send(request("GET", f"/r{i}"))
            [resp] = conn.read_responses(1)
            assert resp.status == 200 and echoed(resp.body)["path"] == f"/r{i}"
        assert conn.pending() == b"" and not conn.eof


@pytest.mark.parametrize("count", [3, 16])
def test_pipelining_in_one_packet(parser: str, echo: Echo, count: int) -> None:
    requests = [request("GET", f"/p{i}") for i in range(count)]
    requests[1] = request("POST", "/p1", "Content-Length: 5", body=b"hello")
    requests[2] = request("POST", "/p2", "Transfer-Encoding: chunked", body=chunked_body(b"ab"))
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"".join(requests))
        responses = conn.read_responses(count)
        assert [echoed(r.body)["path"] for r in responses] == [f"/p{i}" for i in range(count)]
        assert [echoed(r.body)["body"] for r in responses[:3]] == ["", "hello", "ab"]
        assert all(r.framing == "length" for r in responses)
        conn.send(request("GET", "/after"))  # still usable, nothing left over
        assert echoed(conn.read_response().body)["path"] == "/after"
        assert conn.pending() == b""


# Framing -------------------------------------------------------------------------------------


def test_chunked_request_body(parser: str, echo: Echo) -> None:
    body = chunked_body(b"hello ", b"chunked", b" world", trailers=["X-Trailer: yes"])
    body = body.replace(b"7\r\n", b"7;ext=1\r\n", 1)
    data = request("POST", "/", "Transfer-Encoding: chunked", body=body)
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        [resp] = send_and_read(sock, data)
    assert echoed(resp.body)["body"] == "hello chunked world"
    assert b"x-trailer" not in [name for name, _ in echo.scopes[0]["headers"]]


def test_streamed_response_is_chunked_and_reusable(parser: str, echo: Echo) -> None:
    data = request("GET", "/stream") + request("GET", "/next")
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        first, second = send_and_read(sock, data, count=2)
    assert first.framing == "chunked" and first.header("content-length") is None
    assert first.body == b"chunk-1\nchunk-2\nchunk-3\n" and not first.trailers
    assert echoed(second.body)["path"] == "/next"


def test_chunked_upload_and_streamed_download_with_httpx(parser: str, echo: Echo) -> None:
    def upload() -> Iterator[bytes]:
        yield from (b"part-%d;" % i for i in range(50))

    with run_server(echo, http=parser, lifespan="off") as srv, httpx.Client() as client:
        response = client.post(f"{srv.url}/up", content=upload())
        with client.stream("GET", f"{srv.url}/stream") as streamed:
            chunks = b"".join(streamed.iter_bytes())
            assert streamed.headers["transfer-encoding"] == "chunked"
    assert echoed(response.content)["body"] == "".join(f"part-{i};" for i in range(50))
    assert (b"transfer-encoding", b"chunked") in echo.scopes[0]["headers"]
    assert chunks == b"chunk-1\nchunk-2\nchunk-3\n"


def test_content_length_framing(parser: str, echo: Echo) -> None:
    payload = bytes(range(256)) * 100
    data = request("POST", "/nolength", f"Content-Length: {len(payload)}", body=payload)
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        [resp] = send_and_read(sock, data)
    assert resp.framing == "length" and resp.header("content-length") == str(len(payload))
    assert resp.body == payload


@pytest.mark.parametrize("body", [b"hello", b""])
def test_single_body_without_content_length_gets_one(parser: str, echo: Echo, body: bytes) -> None:
    data = request("POST", "/nolength", f"Content-Length: {len(body)}", body=body)
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        [resp] = send_and_read(sock, data)
    assert resp.header("content-length") == str(len(body)) and resp.body == body
    assert resp.header("transfer-encoding") is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("HEAD", "/"), ("HEAD", "/stream"), ("GET", "/status/204"), ("GET", "/status/304")],
)
def test_bodiless_response_then_pipelined_get(
    parser: str, echo: Echo, method: str, path: str
) -> None:
    data = request(method, path) + request("GET", "/after")
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(data)
        first, second = conn.read_responses(2, [method, "GET"])
        assert conn.pending() == b""
    assert echoed(second.body)["path"] == "/after"  # the first sent no body bytes
    assert first.header("transfer-encoding") is None
    if path == "/status/204":
        assert first.status == 204 and first.header("content-length") is None
    if path == "/status/304":
        assert first.status == 304
    if path == "/":  # HEAD: the Content-Length a GET would get
        get_length = len(json.dumps({"path": "/", "body": "", "client": echo.scopes[0]["client"]}))
        assert first.header("content-length") == str(get_length)


# HTTP/1.0 -------------------------------------------------------------------------------------


def test_http10_gets_close_delimited_body(parser: str, echo: Echo) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"GET /stream HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert conn.eof  # close-delimited: read to the end
    assert resp.framing == "close" and resp.header("transfer-encoding") is None
    assert resp.header("connection") == "close"
    assert resp.body == b"chunk-1\nchunk-2\nchunk-3\n"
    assert echo.scopes[0]["http_version"] == "1.0"


def test_http10_without_keep_alive_is_closed(parser: str, echo: Echo) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert conn.closed_by_server()
    assert resp.framing == "length" and resp.header("connection") == "close"
    assert [s["path"] for s in echo.scopes] == ["/a"]


def test_http10_keep_alive_honoured(parser: str, echo: Echo) -> None:
    keep = b"Connection: keep-alive\r\n"
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"GET /a HTTP/1.0\r\n" + keep + b"\r\nGET /b HTTP/1.0\r\n" + keep + b"\r\n")
        first, second = conn.read_responses(2)
        assert first.header("connection") == second.header("connection") == "keep-alive"
        conn.send(b"GET /stream HTTP/1.0\r\n" + keep + b"\r\n")  # unknown length: must close
        streamed = conn.read_response()
        assert conn.eof
    assert [echoed(r.body)["path"] for r in (first, second)] == ["/a", "/b"]
    assert streamed.framing == "close" and streamed.header("connection") == "close"


# Expect: 100-continue ---------------------------------------------------------------------------


def test_expect_100_continue_sent_on_first_receive(parser: str) -> None:
    started, proceed = threading.Event(), threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await wait_gate(proceed)
        body = await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"got " + body})

    head = request("POST", "/", "Content-Length: 5", "Expect: 100-continue")
    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(head)
        assert started.wait(5)
        assert conn.pending() == b""  # the app has not asked for the body yet: no 100
        proceed.set()
        interim = conn.read_response()
        assert (interim.status, interim.raw_head) == (100, b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.send(b"hello")
        final = conn.read_response()
    assert (final.status, final.body) == (200, b"got hello")


def test_expect_100_not_sent_when_the_app_never_reads(parser: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 417, "headers": []})
        await send({"type": "http.response.body", "body": b"no thanks"})

    head = request("POST", "/", "Content-Length: 5", "Expect: 100-continue")
    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(head)
        [resp] = conn.read_responses(1)
        assert conn.closed_by_server()  # the unread body makes the connection unusable
    assert (resp.status, resp.body) == (417, b"no thanks")


def test_expect_100_ignored_for_http10(parser: str, echo: Echo) -> None:
    data = b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        responses = send_and_read(sock, data)
    assert [r.status for r in responses] == [200]  # no interim 100 (RFC 9110 §10.1.1)
    assert echoed(responses[0].body)["body"] == "hi"


# Connection: close ------------------------------------------------------------------------


def test_connection_close_from_client(parser: str, echo: Echo) -> None:
    data = request("GET", "/first", "Connection: close") + request("GET", "/second")
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(data)
        resp = conn.read_response()
        assert conn.closed_by_server()
    assert resp.status == 200 and resp.header("connection") == "close"
    assert [s["path"] for s in echo.scopes] == ["/first"]  # RFC 9112 §9.6


def test_connection_close_from_app(parser: str, echo: Echo) -> None:
    data = request("GET", "/close") + request("GET", "/second")
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(data)
        resp = conn.read_response()
        assert conn.closed_by_server()
    assert resp.status == 200 and resp.header("connection") == "close"
    assert [s["path"] for s in echo.scopes] == ["/close"]


# Request targets and the scope --------------------------------------------------------------


def test_absolute_form_target(parser: str, echo: Echo) -> None:
    data = request("GET", "http://other.example:8080/a%2Fb?q=1", host="localhost")
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        [resp] = send_and_read(sock, data)
    scope = echo.scopes[0]
    assert resp.status == 200
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/a/b", b"/a%2Fb", b"q=1")
    assert [v for n, v in scope["headers"] if n == b"host"] == [b"other.example:8080"]


def test_options_asterisk(parser: str, echo: Echo) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv, srv.connect() as sock:
        [resp] = send_and_read(sock, request("OPTIONS", "*"))
    assert resp.status == 200
    scope = echo.scopes[0]
    assert (scope["method"], scope["path"], scope["raw_path"]) == ("OPTIONS", "*", b"*")


def test_scope_contents(parser: str, echo: Echo) -> None:
    target = "/a%20b/%E2%82%AC?x=1&y=%20"
    data = request("GET", target, "X-Custom:  Value ", "x-custom: two")
    with run_server(echo, http=parser, lifespan="off", root_path="/api") as srv:
        with srv.connect() as sock:
            client = sock.getsockname()
            [resp] = send_and_read(sock, data)
        with srv.connect() as sock:
            send_and_read(sock, b"POST /p HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert resp.status == 200
    scope = echo.scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["http_version"], scope["method"], scope["scheme"]) == ("1.1", "GET", "http")
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b/\u20ac"
    assert scope["raw_path"] == b"/api/a%20b/%E2%82%AC"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["headers"] == [
        (b"host", b"example.com"),
        (b"x-custom", b"Value"),
        (b"x-custom", b"two"),
    ]
    assert all(type(n) is bytes and type(v) is bytes for n, v in scope["headers"])
    assert tuple(scope["client"]) == client
    assert tuple(scope["server"]) == ("127.0.0.1", srv.port)
    assert isinstance(scope["extensions"], dict)  # what it advertises is tested elsewhere
    assert all(isinstance(v, dict) for v in scope["extensions"].values())
    assert scope["state"] == {}
    other = echo.scopes[1]
    assert (other["http_version"], other["method"], other["path"]) == ("1.0", "POST", "/api/p")


def test_lifespan_state_is_copied_per_request(parser: str) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"].update(counter=0, name="lifespan")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        seen.append(dict(scope["state"]))
        scope["state"]["counter"] += 1
        scope["state"]["added"] = True
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(app, http=parser, lifespan="on") as srv, httpx.Client() as client:
        assert [client.get(srv.url).status_code for _ in range(2)] == [204, 204]
    assert seen == [{"counter": 0, "name": "lifespan"}] * 2


# receive(): the request body and http.disconnect --------------------------------------------


def test_more_body_sequence_for_a_chunked_upload(parser: str) -> None:
    messages: list[Message] = []
    received = threading.Semaphore(0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            received.release()
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    head = request("POST", "/", "Transfer-Encoding: chunked")
    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(head)
        for part in (b"first", b"second", b"third"):
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            assert received.acquire(timeout=5)  # delivered before the next is sent
        conn.send(b"0\r\n\r\n")
        assert conn.read_response().status == 204
    assert [(m["type"], m["body"], m["more_body"]) for m in messages] == [
        ("http.request", b"first", True),
        ("http.request", b"second", True),
        ("http.request", b"third", True),
        ("http.request", b"", False),
    ]


def test_disconnect_when_the_client_closes_mid_body(parser: str) -> None:
    got: list[Message] = []
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            got.append(await receive())
            if got[-1]["type"] == "http.disconnect":
                done.set()
                return

    with run_server(app, http=parser, lifespan="off") as srv:
        with srv.connect() as sock:
            sock.sendall(request("POST", "/", "Content-Length: 10", body=b"hello"))
            wait_for(lambda: got, 5, "the first body message")
        assert done.wait(5)
    assert got[0] == {"type": "http.request", "body": b"hello", "more_body": True}
    assert got[-1] == {"type": "http.disconnect"}


@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_disconnect_when_the_client_closes_after_the_body(parser: str, how: str) -> None:
    # uvicorn delivers http.disconnect here; a half-close counts too (the response could
    # still be written, see HTTPCycle.peer_closed). The graceful timeout bounds a regression.
    waiting, done = threading.Event(), threading.Event()
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        waiting.set()
        got.append(await receive())  # e.g. a long poll waiting for the client to go away
        done.set()

    settings: dict[str, Any] = {"http": parser, "lifespan": "off", "timeout_graceful_shutdown": 1}
    with run_server(app, **settings) as srv:
        with srv.connect() as sock:
            sock.sendall(request("POST", "/", "Content-Length: 2", body=b"hi"))
            assert waiting.wait(5)
            if how == "shutdown":
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.close()
            arrived = done.wait(1)
        assert arrived, "no http.disconnect after the client closed"
    assert got == [{"type": "http.disconnect"}]


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_streamed_pieces_reach_the_client_while_the_app_waits(parser: str, framing: str) -> None:
    # The pieces of a streamed body are gathered into one write per loop iteration: they must
    # still go out as soon as the app suspends (server-sent events), not when it finishes.
    gate = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"200")] if framing == "length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await wait_gate(gate)  # released by the test once it has read the 50 pieces
        await send({"type": "http.response.body", "body": b"cd" * 50})

    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        sock.settimeout(5.0)
        sock.sendall(request("GET", "/"))
        data = b""
        while data.count(b"ab") < 50:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert not gate.is_set() and b"cd" not in data
        gate.set()
        while data.count(b"cd") < 50:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
