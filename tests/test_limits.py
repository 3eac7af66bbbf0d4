"""Production limits: request line, header block, header count, body size, concurrency,
request count, keep-alive timeout, and h11's incomplete-event buffer, each at its documented
default (docs/settings.md) and at a configured value.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, cli_server, run_server, wait_for
from rawhttp import exchange, read_until_closed, recv_until
from sleipnir.types import Message, Receive, Scope, Send

# Raw-socket helpers ----------------------------------------------------------------------------


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def status_of(data: bytes) -> int:
    """The status of the one response in ``data``, which must close the connection."""
    found = statuses(data)
    assert len(found) == 1, data[:500]
    assert b"\r\nconnection: close\r\n" in data.split(b"\r\n\r\n")[0] + b"\r\n"
    return found[0]


def get(target: bytes = b"/", headers: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\n%sConnection: close\r\n\r\n" % (target, headers)


def documented_default(name: str) -> int:
    """The default column of a setting in docs/settings.md."""
    text = (REPO / "docs" / "settings.md").read_text()
    match = re.search(rf"^\| `{name}` \|.*\| `(\d+)` \|[^|]*\|$", text, re.MULTILINE)
    assert match is not None, name
    return int(match.group(1))


# Applications ----------------------------------------------------------------------------------

calls: list[str] = []


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the number of body bytes it received, or stops at a disconnect."""
    if scope["type"] != "http":
        return
    calls.append(scope["path"])
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            calls.append("disconnect")
            return
        size += len(message["body"])
        if not message["more_body"]:
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


# Request line, header block, header count ------------------------------------------------------


# The limit is on the whole request line, "GET " + target + " HTTP/1.1": 13 bytes more than
# the target for GET.
LINE_OVERHEAD = len(b"GET  HTTP/1.1")


def test_request_line_limit(parser: str) -> None:
    longest = 100 - LINE_OVERHEAD
    with run_server(echo, http=parser, lifespan="off", limit_request_line=100) as srv:
        assert status_of(exchange(srv, get(b"/" + b"a" * (longest - 1)))) == 200
        assert status_of(exchange(srv, get(b"/" + b"a" * longest))) == 414
        assert status_of(exchange(srv, get(b"/?q=" + b"a" * 500))) == 414
    assert calls == ["/" + "a" * (longest - 1)]


def test_request_line_limit_counts_the_whole_line(parser: str) -> None:
    line = b"GET /" + b"a" * 90 + b" HTTP/1.1"  # 104 bytes, the target alone is 91
    with run_server(echo, http=parser, lifespan="off", limit_request_line=100) as srv:
        assert status_of(exchange(srv, line + b"\r\nHost: a\r\nConnection: close\r\n\r\n")) == 414


def test_request_line_default(parser: str) -> None:
    limit = documented_default("limit_request_line")
    assert limit == 8190
    with run_server(echo, http=parser, lifespan="off") as srv:
        longest = limit - LINE_OVERHEAD
        assert status_of(exchange(srv, get(b"/" + b"a" * (longest - 1)))) == 200
        assert status_of(exchange(srv, get(b"/" + b"a" * longest))) == 414
        assert status_of(exchange(srv, get(b"/" + b"a" * 9 * 1024))) == 414


def test_header_block_limit(parser: str) -> None:
    with run_server(echo, http=parser, lifespan="off", limit_request_header_size=1000) as srv:
        assert status_of(exchange(srv, get(headers=b"x-a: %b\r\n" % (b"v" * 800)))) == 200
        assert status_of(exchange(srv, get(headers=b"x-a: %b\r\n" % (b"v" * 1200)))) == 431
        many = b"".join(b"x-%d: %b\r\n" % (i, b"v" * 90) for i in range(20))
        assert status_of(exchange(srv, get(headers=many))) == 431
    assert calls == ["/"]


def test_header_block_default(parser: str) -> None:
    limit = documented_default("limit_request_header_size")
    assert limit == 65536
    with run_server(echo, http=parser, lifespan="off") as srv:
        assert status_of(exchange(srv, get(headers=b"x-a: %b\r\n" % (b"v" * 60000)))) == 200
        assert status_of(exchange(srv, get(headers=b"x-a: %b\r\n" % (b"v" * limit)))) == 431


def test_header_count_limit(parser: str) -> None:
    def fields(n: int) -> bytes:  # plus Host and Connection
        return b"".join(b"x-%d: 1\r\n" % i for i in range(n))

    with run_server(echo, http=parser, lifespan="off", limit_request_headers=5) as srv:
        assert status_of(exchange(srv, get(headers=fields(3)))) == 200
        assert status_of(exchange(srv, get(headers=fields(4)))) == 431
    default = documented_default("limit_request_headers")
    assert default == 100
    with run_server(echo, http=parser, lifespan="off") as srv:
        assert status_of(exchange(srv, get(headers=fields(default - 2)))) == 200
        assert status_of(exchange(srv, get(headers=fields(default - 1)))) == 431
    assert calls == ["/", "/"]


def test_h11_max_incomplete_event_size() -> None:
    """h11's limit is on what it buffers of an unfinished head (as with uvicorn)."""
    with run_server(echo, http="h11", lifespan="off", h11_max_incomplete_event_size=1024) as srv:
        assert status_of(exchange(srv, get(headers=b"x-a: %b\r\n" % (b"v" * 900)))) == 200
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nx-a: " + b"v" * 2000)
            assert status_of(read_until_closed(sock)) == 431
        with srv.connect() as sock:
            sock.sendall(b"GET /" + b"a" * 2000)
            assert status_of(read_until_closed(sock)) == 414
    assert calls == ["/"]


# Request body ----------------------------------------------------------------------------------


def post(body: bytes, path: bytes = b"/") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)


def chunked(*chunks: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % body


def test_body_limit_refuses_a_declared_length_before_the_app(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    with run_server(echo, http=parser, lifespan="off", limit_request_body=1000) as srv:
        assert statuses(exchange(srv, post(b"x" * 1000) + get())) == [200, 200]
        # The head alone is enough: the body is never awaited.
        with srv.connect() as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
            data = read_until_closed(sock)
        assert status_of(data) == 413
        assert data.endswith(
            b"Request Entity Too Large: declared request body larger than the limit\n"
        )
        assert status_of(exchange(srv, post(b"x" * 5000))) == 413
        response = httpx.post(srv.url, content=b"x" * 2_000_000)
        assert response.status_code == 413
    assert calls == ["/", "/"]
    refusals = [r.getMessage() for r in caplog.records if "413" in r.getMessage()]
    assert len(refusals) == 3
    assert all(m.endswith("413: declared request body larger than the limit") for m in refusals)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_limit_413_reaches_a_client_still_sending(parser: str, framing: str) -> None:
    """A client that sends its whole body before reading still gets the 413: the server
    reads and discards for a while instead of resetting the connection (RFC 9112 §9.6)."""
    body = b"x" * 8_000_000
    request = chunked(body) if framing == "chunked" else post(body)
    settings = {"limit_request_body": 1000}
    with run_server(echo, http=parser, lifespan="off", **settings) as srv, srv.connect() as sock:
        sock.sendall(request)  # a reset would raise here
        assert status_of(read_until_closed(sock)) == 413
    assert calls in ([], ["/", "disconnect"])


def test_body_limit_on_a_chunked_body(parser: str) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message["more_body"]:
                break
        if message["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    with run_server(app, http=parser, lifespan="off", limit_request_body=1000) as srv:
        assert statuses(exchange(srv, chunked(b"x" * 600, b"y" * 400) + get())) == [200, 200]
        assert sum(len(m["body"]) for m in seen) == 1000
        seen.clear()
        with srv.connect() as sock:
            sock.sendall(chunked(b"x" * 600)[:-5])  # the first chunk; no end yet
            wait_for(lambda: seen, 5, "the app to receive the first chunk")
            sock.sendall(b"%x\r\n%s\r\n" % (401, b"y" * 401))
            assert status_of(read_until_closed(sock)) == 413
        wait_for(lambda: len(seen) >= 2, 5, "the app to see the disconnect")
        assert seen[0] == {"type": "http.request", "body": b"x" * 600, "more_body": True}
        assert seen[1:] == [{"type": "http.disconnect"}]  # the refused bytes never reach it
        # In one read: the app may not have run yet; either way it never gets the bytes.
        seen.clear()
        assert status_of(exchange(srv, chunked(b"z" * 1001))) == 413
        assert all(m == {"type": "http.disconnect"} for m in seen)


def test_body_limit_after_the_response_started_closes(parser: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        message = await receive()
        while message["type"] == "http.request" and message["more_body"]:
            message = await receive()
        calls.append(message["type"])

    with run_server(app, http=parser, lifespan="off", limit_request_body=100) as srv:
        with srv.connect() as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            recv_until(sock, b"\r\n\r\n5\r\nearly\r\n")
            sock.sendall(b"%x\r\n%s\r\n" % (101, b"y" * 101))
            assert read_until_closed(sock) == b""  # closed: too late for a 413
        wait_for(lambda: calls, 5, "the app to finish")
    assert calls == ["http.disconnect"]


def test_body_limit_on_a_pipelined_request(parser: str) -> None:
    """A refused request queued behind one in progress is answered once that one is done."""
    release = threading.Event()
    entered = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            entered.set()
            await asyncio.to_thread(release.wait, 5)
        await echo(scope, receive, send)

    with run_server(app, http=parser, lifespan="off", limit_request_body=10) as srv:
        for refused in (post(b"x" * 20), post(b"x" * 20)[:-15], chunked(b"x" * 20)):
            calls.clear()
            entered.clear()
            release.clear()
            with srv.connect() as sock:
                sock.sendall(post(b"", b"/hold") + refused)
                assert entered.wait(5)
                release.set()
                data = read_until_closed(sock)
            assert statuses(data) == [200, 413], data
            assert calls == ["/hold"]  # the refused request never reaches the app


def test_body_limit_default_is_none(parser: str) -> None:
    with run_server(echo, http=parser, lifespan="off") as srv:
        response = httpx.post(srv.url, content=b"x" * 3_000_000)
    assert response.status_code == 200 and response.text == "3000000"


# Concurrency -----------------------------------------------------------------------------------


def test_limit_concurrency(parser: str) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            entered.release()
            await asyncio.to_thread(release.wait, 5)
        await echo(scope, receive, send)

    with run_server(app, http=parser, lifespan="off", limit_concurrency=2) as srv:
        held = [srv.connect(), srv.connect()]
        try:
            for sock in held:
                sock.sendall(get(b"/hold"))
                assert entered.acquire(timeout=5)
            data = exchange(srv, get())
            assert status_of(data) == 503
            assert b"server: sleipnir\r\n" in data and b"\r\ndate: " in data
            release.set()
            for sock in held:
                assert status_of(read_until_closed(sock)) == 200
        finally:
            for sock in held:
                sock.close()
        state = srv.server.state
        assert state is not None
        wait_for(lambda: not state.tasks and not state.clock.connections, 5, "the held to end")
        assert status_of(exchange(srv, get())) == 200
    assert calls == ["/hold", "/hold", "/"]


# Request count ---------------------------------------------------------------------------------


def test_limit_max_requests_stops_the_server(caplog: pytest.LogCaptureFixture) -> None:
    with run_server(echo, lifespan="off", limit_max_requests=3) as srv:
        with httpx.Client(base_url=srv.url) as client:
            for _ in range(3):
                assert client.get("/").status_code == 200
        wait_for(lambda: not srv.thread.is_alive(), 5, "the server to stop")
    assert any("Maximum request limit of 3 exceeded" in r.getMessage() for r in caplog.records)
    assert calls == ["/"] * 3


def test_limit_max_requests_cli_exits_0() -> None:
    with cli_server("tests.apps.asgi3:app", "--port", "0", "--limit-max-requests", "2") as srv:
        for _ in range(2):
            assert httpx.get(srv.url).status_code == 200
        assert srv.wait(10) == 0
    assert "Maximum request limit of 2 exceeded" in srv.output


# Keep-alive ------------------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed(parser: str) -> None:
    settings = {"timeout_keep_alive": 0.5, "timeout_request_header": 10}
    with run_server(echo, http=parser, lifespan="off", **settings) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        recv_until(sock, b"\r\n\r\n0")
        answered = time.monotonic()
        assert read_until_closed(sock) == b""
        assert 0.4 <= time.monotonic() - answered < 3


def test_silent_connection_is_closed_after_keep_alive(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"timeout_keep_alive": 0.5, "timeout_request_header": 10}
    with run_server(echo, http=parser, lifespan="off", **settings) as srv, srv.connect() as sock:
        opened = time.monotonic()
        assert read_until_closed(sock) == b""
        assert 0.4 <= time.monotonic() - opened < 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_keep_alive_connection_is_reused(parser: str) -> None:
    settings = {"timeout_keep_alive": 0.5}
    with run_server(echo, http=parser, lifespan="off", **settings) as srv, srv.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            recv_until(sock, b"\r\n\r\n0")


def test_documented_defaults_match_config() -> None:
    from sleipnir.config import Config

    config = Config("tests.apps.asgi3:app")
    for name in ("limit_request_line", "limit_request_header_size", "limit_request_headers"):
        assert getattr(config, name) == documented_default(name)
    assert config.timeout_keep_alive == 5 and config.timeout_request_header == 10
    assert config.limit_request_body is None and config.limit_concurrency is None
    assert Path(REPO / "docs" / "settings.md").exists()
