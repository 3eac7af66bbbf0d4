"""WSGIMiddleware driven directly as an ASGI app (an ASGI contract test, no network)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from sleipnir.asgi.wsgi import ClientDisconnected, WSGIMiddleware, build_environ
from sleipnir.types import Message, Scope

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class FakeClient:
    """In-memory receive/send for one HTTP request; records what happens in ``log``."""

    def __init__(self, body: list[bytes] | None = None) -> None:
        chunks = body if body is not None else [b""]
        last = len(chunks) - 1
        self.inbox: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < last}
            for i, chunk in enumerate(chunks)
        ]
        self.sent: list[Message] = []
        self.log: list[str] = []
        self.received = 0
        self.gone = asyncio.Event()
        self.disconnect_after_body_chunks: int | None = None
        self.send_delay = 0.0

    async def receive(self) -> Message:
        if self.inbox:
            self.log.append(f"receive {self.received}")
            self.received += 1
            return self.inbox.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        self.sent.append(message)
        self.log.append(f"sent {message['type']}")
        chunks = sum(1 for m in self.sent if m["type"] == "http.response.body")
        if chunks == self.disconnect_after_body_chunks:
            self.gone.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.sent[1:]]


def make_scope(**overrides: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "server": ("127.0.0.1", 8000),
        "client": ("10.0.0.1", 50000),
    }
    scope.update(overrides)
    return scope


def run(app: WSGIApp, client: FakeClient | None = None, **scope: Any) -> FakeClient:
    client = client or FakeClient()
    middleware = WSGIMiddleware(app)
    try:
        asyncio.run(middleware(make_scope(**scope), client.receive, client.send))
    finally:
        middleware.executor.shutdown(wait=True)
    return client


def simple_app(body: Iterable[bytes], status: str = "200 OK", **headers: str) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [(k.replace("_", "-"), v) for k, v in headers.items()])
        return body

    return app


class ClosingIterable:
    """A response iterable that records ``close()`` and can fail after some chunks."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise ValueError("failed while streaming")
            yield chunk

    def close(self) -> None:
        self.closed.set()


# --------------------------------------------------------------------------- environ


def test_environ() -> None:
    environ = build_environ(
        make_scope(
            method="POST",
            scheme="https",
            root_path="/mount",
            path="/mount/café/x",
            query_string=b"a=1&b=%20",
            headers=[
                (b"host", b"example.com"),
                (b"content-type", b"text/plain"),
                (b"content-length", b"5"),
                (b"x-dup", b"one"),
                (b"x-dup", b"two"),
                (b"cookie", b"a=1"),
                (b"cookie", b"b=2"),
                (b"x_user", b"spoofed"),
                (b"x-user", b"real"),
            ],
        ),
        wsgi_input="INPUT",
        errors=sys.stderr,
    )
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/mount"
    assert environ["PATH_INFO"] == "/café/x".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.1", "50000")
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_X_DUP"] == "one, two"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_USER"] == "real"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.input"] == "INPUT"
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.run_once"] is False


@pytest.mark.parametrize(
    ("root_path", "path", "script_name", "path_info"),
    [
        ("", "/a/b", "", "/a/b"),
        ("/app", "/app", "/app", ""),
        ("/app/", "/app/x", "/app", "/x"),
        ("/app", "/application", "/app", "/application"),  # not on a segment boundary
        ("/app", "/other", "/app", "/other"),  # path given without the root_path prefix
    ],
)
def test_script_name_and_path_info(
    root_path: str, path: str, script_name: str, path_info: str
) -> None:
    environ = build_environ(make_scope(root_path=root_path, path=path), None, None)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (script_name, path_info)


def test_environ_without_server_or_client() -> None:
    environ = build_environ(make_scope(server=None, client=None, scheme="https"), None, None)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "443")
    assert "REMOTE_ADDR" not in environ


# --------------------------------------------------------------------------- responses


def test_list_response_is_sent_in_one_go_with_content_length() -> None:
    client = run(simple_app([b"Hello, ", b"", b"world"], content_type="text/plain"))
    assert client.status == 200
    assert client.headers == {b"content-type": b"text/plain", b"content-length": b"12"}
    assert client.bodies == [(b"Hello, ", True), (b"world", False)]


@pytest.mark.parametrize(
    ("status", "method", "headers"),
    [
        ("204 No Content", "GET", {}),
        ("304 Not Modified", "GET", {}),
        ("200 OK", "HEAD", {}),
        ("200 OK", "GET", {"content_length": "3"}),
        ("200 OK", "GET", {"transfer_encoding": "chunked"}),
    ],
)
def test_content_length_is_not_added(status: str, method: str, headers: dict[str, str]) -> None:
    client = run(simple_app([b"abc"], status, **headers), method=method)
    assert client.status == int(status[:3])
    assert client.headers == {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}


def test_empty_list_response() -> None:
    client = run(simple_app([], "404 Not Found"))
    assert client.status == 404
    assert client.headers == {b"content-length": b"0"}
    assert client.bodies == [(b"", False)]


def test_generator_response_is_streamed() -> None:
    seen: list[list[str]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        seen.append(list(client.log))
        yield b""  # empty chunks do not send the head
        seen.append(list(client.log))
        yield b"one"
        seen.append(list(client.log))
        yield b"two"

    client = FakeClient()
    run(app, client)
    sent_one = ["receive 0", "sent http.response.start", "sent http.response.body"]
    assert seen == [["receive 0"], ["receive 0"], sent_one]  # the head went out with "one"
    assert client.headers == {b"content-type": b"text/plain"}  # length unknown: not added
    assert client.bodies == [(b"one", True), (b"two", True), (b"", False)]


def test_generator_without_chunks_sends_head_at_the_end() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield from ()

    client = run(app)
    assert client.status == 200
    assert client.bodies == [(b"", False)]


def test_write_callable() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("201 Created", [("X-A", "1")])
        write(b"first ")
        write(bytearray(b"second "))
        return [b"third"]

    client = run(app)
    assert client.status == 201
    assert client.headers == {b"x-a": b"1"}  # head went out with write(): no content-length
    assert client.bodies == [(b"first ", True), (b"second ", True), (b"third", False)]


def test_empty_write_sends_the_head() -> None:
    sent_before_return: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])(b"")
        sent_before_return.append(len(client.sent))
        return []

    client = FakeClient()
    run(app, client)
    assert sent_before_return == [1]
    assert client.bodies == [(b"", False)]


def test_send_has_backpressure() -> None:
    order: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for chunk in (b"a", b"b"):
            yield chunk
            order.append(f"after {chunk.decode()}: {len(client.sent)} sent")

    client = FakeClient()
    client.send_delay = 0.01
    run(app, client)
    # the thread resumed only after the slow send of each chunk had completed
    assert order == ["after a: 2 sent", "after b: 3 sent"]


# --------------------------------------------------------------------------- request body


def echo_reads(sizes: list[int]) -> tuple[WSGIApp, list[bytes]]:
    reads: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        reads.extend(stream.read(size) for size in sizes)
        start_response("200 OK", [])
        return reads

    return app, reads


def test_request_body_is_pulled_as_the_app_reads() -> None:
    log: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        while data := stream.read(3):
            log.append(f"read {data.decode()} after {client.received} received")
        start_response("200 OK", [])
        return []

    client = FakeClient([b"abc", b"def", b"ghi"])
    run(app, client)
    assert log == [
        "read abc after 1 received",
        "read def after 2 received",
        "read ghi after 3 received",
    ]


def test_read_sizes_across_message_boundaries() -> None:
    app, reads = echo_reads([2, 5, 0, -1, 10])
    client = run(app, FakeClient([b"abc", b"", b"defg", b"hij"]))
    assert reads == [b"ab", b"cdefg", b"", b"hij", b""]
    assert client.bodies == [(b"ab", True), (b"cdefg", True), (b"hij", False)]


def test_readline_readlines_and_iteration() -> None:
    results: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        results.append(stream.readline())
        results.append(stream.readline(3))
        results.append(stream.readline(None))
        results.append(stream.readlines(1))
        results.append(list(stream))
        results.append(stream.readline())
        start_response("200 OK", [])
        return []

    run(app, FakeClient([b"line1\nli", b"ne2\nl", b"ine3\nline4\n", b"tail"]))
    assert results == [b"line1\n", b"lin", b"e2\n", [b"line3\n"], [b"line4\n", b"tail"], b""]


def test_readlines_without_hint_and_read_all() -> None:
    results: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        results.append(environ["wsgi.input"].readlines())
        results.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return []

    run(app, FakeClient([b"a\nb", b"\nc"]))
    assert results == [[b"a\n", b"b\n", b"c"], b""]


def test_unread_body_is_left_alone() -> None:
    client = run(simple_app([b"ok"]), FakeClient([b"x" * 10, b"y" * 10]))
    assert client.received == 1
    assert client.bodies == [(b"ok", False)]


# --------------------------------------------------------------------------- errors


def test_start_response_exc_info_before_head_replaces_it() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Ok", "1")])
        try:
            raise ValueError("oops")
        except ValueError:
            start_response("500 Internal Server Error", [("X-Error", "1")], sys.exc_info())
        return [b"error page"]

    client = run(app)
    assert client.status == 500
    assert client.headers == {b"x-error": b"1", b"content-length": b"10"}


def test_start_response_exc_info_after_head_reraises() -> None:
    iterable = ClosingIterable([])

    def app(environ: Environ, start_response: StartResponse) -> ClosingIterable:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise KeyError("late failure")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return iterable

    client = FakeClient()
    with pytest.raises(KeyError, match="late failure"):
        run(app, client)
    assert client.status == 200
    assert client.bodies == [(b"partial", True)]


def test_start_response_twice_without_exc_info() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    with pytest.raises(RuntimeError, match="second time"):
        run(app)


def test_exception_before_response_propagates() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise ZeroDivisionError("app bug")

    client = FakeClient()
    with pytest.raises(ZeroDivisionError):
        run(app, client)
    assert client.sent == []


def test_exception_while_streaming_propagates_and_closes() -> None:
    iterable = ClosingIterable([b"a", b"b", b"c"], fail_after=2)
    client = FakeClient()
    with pytest.raises(ValueError, match="failed while streaming"):
        run(simple_app(iterable), client)
    assert client.bodies == [(b"a", True), (b"b", True)]
    assert iterable.closed.is_set()


def test_close_is_called_on_success() -> None:
    iterable = ClosingIterable([b"a"])
    client = run(simple_app(iterable))
    assert client.bodies == [(b"a", True), (b"", False)]
    assert iterable.closed.is_set()


def test_app_that_never_calls_start_response() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return [b"body"]

    with pytest.raises(RuntimeError, match="did not call start_response"):
        run(app)


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (200, [], TypeError),
        ("OK", [], ValueError),
        ("2000 OK", [], ValueError),
        ("200 OK", [("X-A", 1)], TypeError),
        ("200 OK", [("X-A", "a\r\nSet-Cookie: x=1")], ValueError),
        ("200 OK", [("Bad Name", "1")], ValueError),
    ],
)
def test_invalid_status_or_headers(status: Any, headers: Any, error: type[Exception]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(status, headers)
        return []

    with pytest.raises(error):
        run(app)


def test_str_body_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be bytes, not str"):
        run(simple_app(["text"]))  # type: ignore[list-item]


# --------------------------------------------------------------------------- disconnects


def test_disconnect_while_reading_body_is_not_an_app_error() -> None:
    caught: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            caught.append(exc)
            raise
        return []

    client = FakeClient([b"abc", b"def"])
    client.inbox[1] = {"type": "http.disconnect"}
    run(app, client)
    assert len(caught) == 1
    assert client.sent == []


def test_disconnect_stops_consuming_the_response() -> None:
    produced: list[int] = []
    iterable_closed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for i in range(10_000):
                produced.append(i)
                yield b"chunk"
        finally:
            iterable_closed.set()

    client = FakeClient()
    client.disconnect_after_body_chunks = 3
    run(app, client)
    assert iterable_closed.is_set()
    assert len(produced) < 100
    assert all(more for _, more in client.bodies)


def test_disconnect_before_the_app_runs() -> None:
    calls: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        calls.append(environ)
        return []

    client = FakeClient()
    client.inbox[0] = {"type": "http.disconnect"}
    run(app, client)
    assert calls == []


def test_cancelled_call_unblocks_the_thread() -> None:
    closed = threading.Event()
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"never delivered"
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            closed.set()

    async def stuck_send(message: Message) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        middleware = WSGIMiddleware(app)
        task = asyncio.create_task(middleware(make_scope(), FakeClient().receive, stuck_send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.get_running_loop().run_in_executor(None, closed.wait, 5)
        middleware.executor.shutdown(wait=True)

    asyncio.run(main())
    assert closed.is_set()
    assert [type(e) for e in errors] == [GeneratorExit]  # closed, not thrown into


# --------------------------------------------------------------------------- scopes, threads


def test_lifespan_scope_returns_at_once() -> None:
    async def forbidden_receive() -> Message:
        raise AssertionError("receive called")

    async def forbidden_send(message: Message) -> None:
        raise AssertionError("send called")

    middleware = WSGIMiddleware(simple_app([]))
    asyncio.run(middleware({"type": "lifespan"}, forbidden_receive, forbidden_send))


def test_websocket_is_rejected() -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(WSGIMiddleware(simple_app([]))({"type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1000}]


def test_unknown_scope_type() -> None:
    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(RuntimeError, match="'telepathy'"):
        asyncio.run(WSGIMiddleware(simple_app([]))({"type": "telepathy"}, receive, send))


def test_thread_pool_is_bounded() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        start_response("200 OK", [])
        return [b"ok"]

    async def main() -> list[FakeClient]:
        middleware = WSGIMiddleware(app, workers=2)
        clients = [FakeClient() for _ in range(6)]
        await asyncio.gather(*(middleware(make_scope(), c.receive, c.send) for c in clients))
        middleware.executor.shutdown(wait=True)
        return clients

    clients = asyncio.run(main())
    assert peak == 2
    assert all(c.bodies == [(b"ok", False)] for c in clients)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        WSGIMiddleware(simple_app([]), workers=0)


def test_context_variables_reach_the_thread() -> None:
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(request_id.get())
        start_response("200 OK", [])
        return []

    async def main() -> None:
        request_id.set("req-1")
        middleware = WSGIMiddleware(app)
        client = FakeClient()
        await middleware(make_scope(), client.receive, client.send)
        middleware.executor.shutdown(wait=True)

    asyncio.run(main())
    assert seen == ["req-1"]
