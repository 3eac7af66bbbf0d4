"""Errors: malformed requests, failing applications, broken ASGI messages, truncated bodies.

What the client must see: a short ``400``/``500`` with ``Connection: close`` when nothing was
sent yet, otherwise a connection closed before the body is complete (no terminating chunk,
fewer bytes than Content-Length), so that a broken response is never taken as complete.
What the operator must see: one line on ``sleipnir.error`` naming the reason (a traceback only
for exceptions raised by the application), with repeated bad requests rate-limited.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import run_server, wait_for
from rawhttp import exchange, read_until_closed, recv_until
from sleipnir.logging import RateLimitedLog
from sleipnir.transport import state as state_module
from sleipnir.types import Message, Receive, Scope, Send

ERROR_LOGGER = "sleipnir.error"
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# Raw-socket helpers ----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    """Split ``data`` into complete responses (Content-Length or chunked); return the rest."""
    responses: list[Response] = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(n.strip(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
        response = Response(status, headers, b"")
        if response.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, sep, after = rest.partition(b"\r\n")
                if not sep:
                    return responses, data
                size = int(size_line, 16)
                if len(after) < size + 2:
                    return responses, data
                body, rest = body + after[:size], after[size + 2 :]
                if size == 0:
                    break
            response.body = body
        else:
            length = int(response.header("content-length") or 0)
            if len(rest) < length:
                return responses, data
            response.body, rest = rest[:length], rest[length:]
        responses.append(response)
        data = rest
    return responses, data


def one_response(data: bytes) -> Response:
    responses, rest = parse_responses(data)
    assert len(responses) == 1 and not rest, data
    return responses[0]


def error_records(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[Any]:
    return [r for r in caplog.records if r.name == ERROR_LOGGER and r.levelno >= level]


def record_text(record: logging.LogRecord) -> str:
    """The message plus the exception it carries, as an operator would read them."""
    exc = record.exc_info[1] if record.exc_info else None
    return f"{record.getMessage()} {type(exc).__name__}: {exc}" if exc else record.getMessage()


def assert_bad_request(data: bytes, status: int = 400) -> str:
    """A short text error that closes the connection; returns its reason."""
    response = one_response(data)
    assert response.status == status
    assert response.header("connection") == "close"
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert len(response.body) < 200
    text = response.body.decode()
    assert text.endswith("\n")
    return text.split(": ", 1)[1].strip()


# Applications ------------------------------------------------------------------------------------


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def sending(*messages: Message, fail: bool = False) -> App:
    """An app that sends ``messages`` in order, then raises if ``fail``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        for message in messages:
            await send(message)
        if fail:
            raise RuntimeError("the application failed on purpose")

    return app


START = {"type": "http.response.start", "status": 200, "headers": []}
START_CL5 = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


# Malformed requests ------------------------------------------------------------------------------

MALFORMED = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_and_one_log_line(
    parser: str, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["type"])
        await hello(scope, receive, send)

    with run_server(app, http=parser, lifespan="off") as srv:
        reason = assert_bad_request(exchange(srv, request_bytes))
    if b"Transfer-Encoding: chunked\r\n\r\nzz" not in request_bytes:
        assert called == []  # (a bad body may be found after the app started)
    records = error_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "400" in record.getMessage() and reason in record.getMessage()
    assert record.getMessage().startswith("127.0.0.1:")


def test_error_reason_does_not_echo_request_bytes(caplog: pytest.LogCaptureFixture) -> None:
    line = b"GET /" + b"\x01" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    with run_server(hello, http="h11", lifespan="off") as srv:
        assert_bad_request(exchange(srv, line))
    (record,) = error_records(caplog)
    assert len(record.getMessage()) < 200


def test_garbage_after_a_valid_request(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_server(hello, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET + b"NOT HTTP AT ALL\r\n\r\n")
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [200, 400] and rest == b""
    assert responses[0].body == b"hello"
    assert responses[0].header("connection") is None
    assert responses[1].header("connection") == "close"
    assert len(error_records(caplog)) == 1


def test_bad_requests_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    with run_server(hello, lifespan="off") as srv:
        for _ in range(25):
            assert_bad_request(exchange(srv, b"GARBAGE\r\n\r\n"))
    messages = [r.getMessage() for r in error_records(caplog)]
    # RateLimitedLog's default: 10 lines per reason per window; at shutdown one more line
    # reports what was held back.
    assert len([m for m in messages if "suppressed" not in m]) == 10, messages
    assert messages[-1] == "bad-request-400: 15 similar message(s) suppressed in the last 60s"


def test_suppressed_count_is_reported_when_the_window_rolls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    limited = functools.partial(RateLimitedLog, limit=3, window=60.0, clock=lambda: now[0])
    monkeypatch.setattr(state_module, "RateLimitedLog", limited)
    with run_server(hello, lifespan="off") as srv:
        for _ in range(8):
            assert_bad_request(exchange(srv, b"GARBAGE\r\n\r\n"))
        assert len(error_records(caplog)) == 3
        now[0] += 61.0
        assert_bad_request(exchange(srv, b"GARBAGE\r\n\r\n"))
    messages = [r.getMessage() for r in error_records(caplog)]
    assert len(messages) == 5, messages
    assert "5 similar message(s) suppressed" in messages[3]
    assert "400" in messages[4]  # the new window's first line; nothing held back at shutdown


# Applications that fail --------------------------------------------------------------------------


def test_exception_before_start_gives_500_and_a_traceback(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    with run_server(sending(fail=True), http=parser, lifespan="off") as srv:
        response = one_response(exchange(srv, GET))
    assert response.status == 500
    assert response.header("connection") == "close"
    assert response.body == b"Internal Server Error\n"
    (record,) = error_records(caplog)
    assert record.levelno == logging.ERROR
    assert "Exception in ASGI application" in record.getMessage()
    assert record.exc_info is not None and "on purpose" in str(record.exc_info[1])


def test_exception_after_start_truncates_a_chunked_body(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = sending(START, body(b"part", more=True), fail=True)
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(srv.url)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in data
    assert data.endswith(b"\r\n\r\n4\r\npart\r\n")  # no terminating 0\r\n\r\n
    records = error_records(caplog)
    assert len(records) == 2 and all(r.exc_info for r in records)


def test_exception_after_start_truncates_a_content_length_body(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = sending(START_CL5, body(b"abc", more=True), fail=True)
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(srv.url)
    assert b"content-length: 5\r\n" in data and data.endswith(b"\r\n\r\nabc")
    assert all(r.exc_info for r in error_records(caplog))


def test_return_without_response_gives_500(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_server(sending(), http=parser, lifespan="off") as srv:
        response = one_response(exchange(srv, GET))
    assert response.status == 500
    (record,) = error_records(caplog)
    assert "returned without starting the response" in record.getMessage()


def test_return_after_start_without_finishing_truncates(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = sending(START, body(b"part", more=True))
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(srv.url)
    assert data.endswith(b"\r\n\r\n4\r\npart\r\n")
    messages = [r.getMessage() for r in error_records(caplog)]
    assert messages == ["ASGI application returned without completing the response"] * 2


def test_return_after_start_only_gives_500(caplog: pytest.LogCaptureFixture) -> None:
    """The head waits for the first body message, so nothing was written: a 500 is possible."""
    with run_server(sending(START), lifespan="off") as srv:
        response = one_response(exchange(srv, GET))
    assert response.status == 500
    (record,) = error_records(caplog)
    assert "without completing" in record.getMessage()


# Broken ASGI messages ----------------------------------------------------------------------------

# (messages sent, what the error log must say); none of them starts the response.
BEFORE_START: dict[str, tuple[tuple[Message, ...], str]] = {
    "body-before-start": ((body(b"x"),), "expected ASGI message 'http.response.start'"),
    "start-twice": ((START, START), "expected ASGI message 'http.response.body'"),
    "unknown-type": (({"type": "http.response.bogus"},), "'http.response.bogus'"),
    "status-str": (({**START, "status": "200"},), "invalid status '200'"),
    "status-bool": (({**START, "status": True},), "invalid status True"),
    "status-out-of-range": (({**START, "status": 1000},), "invalid status 1000"),
    "status-missing": (({"type": "http.response.start"},), "invalid status None"),
    "header-str": (({**START, "headers": [("x-a", "1")]}, body(b"")), "'headers' must be"),
    "header-int-value": (({**START, "headers": [(b"x-a", 3)]}, body(b"")), "'headers' must be"),
    "header-triple": (({**START, "headers": [(b"x", b"1", b"2")]}, body(b"")), "'headers' must"),
    "headers-dict": (({**START, "headers": {b"x-a": b"1"}}, body(b"")), "'headers' must be"),
    "body-str": ((START, {"type": "http.response.body", "body": "text"}), "'body' must be bytes"),
    "body-longer-than-cl": ((START_CL5, body(b"123456")), "longer than its Content-Length"),
}


@pytest.mark.parametrize(("messages", "problem"), BEFORE_START.values(), ids=BEFORE_START.keys())
def test_asgi_error_before_start_gives_500(
    parser: str, messages: tuple[Message, ...], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with run_server(sending(*messages), http=parser, lifespan="off") as srv:
        response = one_response(exchange(srv, GET))
    assert response.status == 500
    assert response.header("connection") == "close"
    (record,) = error_records(caplog)
    assert record.levelno == logging.ERROR
    assert problem in record_text(record)


# Messages sent after a streamed response started: the connection is closed mid-body.
AFTER_START: dict[str, tuple[tuple[Message, ...], str]] = {
    "start-again": ((START, body(b"part", True), START), "expected ASGI message"),
    "unknown-type": ((START, body(b"part", True), {"type": "http.bogus"}), "'http.bogus'"),
    "body-str": (
        (START, body(b"part", True), {"type": "http.response.body", "body": "x"}),
        "'body'",
    ),
}


@pytest.mark.parametrize(("messages", "problem"), AFTER_START.values(), ids=AFTER_START.keys())
def test_asgi_error_after_start_closes(
    parser: str, messages: tuple[Message, ...], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with run_server(sending(*messages), http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
    assert data.endswith(b"\r\n\r\n4\r\npart\r\n")
    (record,) = error_records(caplog)
    assert problem in record_text(record)


def test_body_after_completion_is_logged(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    app = sending(START, body(b"done"), body(b"extra"))
    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        sock.sendall(GET)
        wait_for(lambda: error_records(caplog), 5, "the error line")
        sock.shutdown(socket.SHUT_WR)
        response = one_response(read_until_closed(sock))
    assert response.status == 200 and response.body == b"done"
    (record,) = error_records(caplog)
    assert "after the response completed" in record_text(record)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1\r\nx-injected: yes")],
        [(b"x-a", b"1\nx-injected: yes")],
        [(b"x-a", b"1\rx-injected: yes")],
        [(b"x-a", b"1\x00x-injected: yes")],
        [(b"x-injected: yes\r\nx-a", b"1")],
        [(b"x a", b"1")],
        [(b"x-a:", b"1")],
        [(b"", b"1")],
        [(b"server", b"s\r\nx-injected: yes")],
        [(b"content-length", b"5\r\nx-injected: yes")],
    ],
    ids=["crlf", "lf", "cr", "nul", "name-crlf", "name-space", "name-colon", "name-empty",
         "default-name", "content-length"],
)  # fmt: skip
def test_response_header_injection_is_refused(
    parser: str, headers: list[tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    app = sending({**START, "headers": headers}, body(b"hello"))
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
    assert b"injected" not in data
    assert one_response(data).status == 500
    (record,) = error_records(caplog)
    message = record.getMessage()
    assert message.startswith("ASGI protocol error: refused response head: ")
    assert any(s in message for s in ("CR, LF or NUL", "invalid header name", "content-length"))


def test_streamed_body_longer_than_content_length_closes(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = sending(START_CL5, body(b"abc", more=True), body(b"def", more=True), body(b""))
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
    assert data.endswith(b"\r\n\r\nabc")
    (record,) = error_records(caplog)
    assert "longer than its Content-Length" in record_text(record)


def test_final_body_longer_than_content_length_closes(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = sending(START_CL5, body(b"abc", more=True), body(b"def"))
    with run_server(app, http=parser, lifespan="off") as srv:
        data = exchange(srv, GET)
    assert data.endswith(b"\r\n\r\nabc")  # the over-long last message is not written at all
    (record,) = error_records(caplog)
    assert "longer than its Content-Length" in record_text(record)


@pytest.mark.parametrize("streamed", [False, True])
def test_body_shorter_than_content_length_closes(
    parser: str, streamed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    messages = (body(b"ab", more=True), body(b"c")) if streamed else (body(b"abc"),)
    with run_server(sending(START_CL5, *messages), http=parser, lifespan="off") as srv:
        data = exchange(srv, GET + GET)  # the second request must not be served
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(srv.url)
    assert data.count(b"HTTP/1.1") == 1 and data.endswith(b"\r\n\r\nabc")
    messages_logged = [r.getMessage() for r in error_records(caplog)]
    assert len(messages_logged) == 2
    assert all("shorter than its Content-Length" in m for m in messages_logged)


# Clients that go away ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_client_gone_mid_body_is_a_disconnect(
    parser: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    first_chunk = threading.Event()
    seen: list[Message] = []
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] == "http.disconnect":
                    return
                first_chunk.set()
        finally:
            done.set()

    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        assert first_chunk.wait(5)
        if how == "close":
            sock.close()
        else:
            sock.shutdown(socket.SHUT_WR)
        assert done.wait(5)
    assert seen[0] == {"type": "http.request", "body": b"0123456789", "more_body": True}
    assert seen[-1] == {"type": "http.disconnect"}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_client_gone_after_the_body_is_a_disconnect(
    parser: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An app waiting for the client to leave (a long poll) learns it did, as with uvicorn;
    a client that only half-closed still gets the response the app sends anyway."""
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        seen.append(await receive())  # waits until the client goes away
        await send(START)
        await send(body(b"bye"))

    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        wait_for(lambda: seen, 5, "the app to read the body")
        if how == "close":
            sock.close()
            wait_for(lambda: len(seen) == 2, 5, "http.disconnect")
        else:
            sock.shutdown(socket.SHUT_WR)
            response = one_response(read_until_closed(sock))
            assert response.status == 200 and response.body == b"bye"
            assert response.header("connection") == "close"
    assert seen == [
        {"type": "http.request", "body": b"hi", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


def test_app_stopping_after_a_half_close_ends_the_connection(
    parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # then return without answering: the client left

    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""  # closed, not left half-open
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_client_gone_while_app_streams(parser: str, caplog: pytest.LogCaptureFixture) -> None:
    """send() after the client left is a no-op (uvicorn's behaviour); receive() says so."""
    gone = threading.Event()
    results: list[Message] = []
    finished = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        results.append(await receive())
        await send(START)
        await send(body(b"first", more=True))
        await asyncio.get_running_loop().run_in_executor(None, gone.wait, 5)
        disconnect = asyncio.ensure_future(receive())
        for _ in range(500):  # keep writing until a write fails and the server notices
            await send(body(b"more" * 1000, more=True))
            await asyncio.wait({disconnect}, timeout=0.01)
            if disconnect.done():
                break
        results.append(await disconnect)
        await send(body(b""))
        finished.set()

    with run_server(app, http=parser, lifespan="off", timeout_graceful_shutdown=1) as srv:
        with srv.connect() as sock:
            sock.sendall(GET)
            recv_until(sock, b"first\r\n")
        gone.set()
        assert finished.wait(5)
    assert results == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
