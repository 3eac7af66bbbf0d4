"""WSGI (PEP 3333) applications served through ASGI: ``--interface wsgi``.

Invariants
----------
* The WSGI app runs in a bounded ``ThreadPoolExecutor`` (``workers`` threads, shared by all
  requests of one middleware); requests beyond that wait for a free thread.
* The app thread never touches the event loop's objects directly. Everything it needs from the
  loop (a body chunk, a send) goes through :class:`_LoopBridge`, which runs one coroutine at a
  time on the loop with ``asyncio.run_coroutine_threadsafe`` and blocks the thread until it is
  done. So ``send`` has natural backpressure: while the server is waiting for the client to
  drain, the app thread waits too.
* The request body is pulled, never pushed: ``wsgi.input`` asks the loop for the next ASGI
  ``http.request`` message only when the app reads past what it already holds, so at most one
  message (plus the unread rest of the previous one) is buffered. The first message is received
  before the thread starts (every request has one, even an empty body).
* Exactly one coroutine awaits ``receive()`` at any time: the body reader until the last body
  message, then a watcher task that only listens for ``http.disconnect``. After a disconnect
  the app's iterable is no longer consumed (it is still closed), and ``wsgi.input`` raises
  :class:`ClientDisconnected`, which is not reported as an application error.
* The response head is sent lazily (PEP 3333): together with the first non-empty body chunk or
  ``write()`` call, or at the end of an empty body. Until then ``start_response`` may be called
  again with ``exc_info`` to replace it; afterwards that call re-raises the exception.
  When the app returns a list or tuple, the whole body is known: it is sent in one hop and a
  missing ``Content-Length`` is added (not for HEAD, 1xx, 204 or 304 responses).
* ``close()`` of the returned iterable is called on every path, including errors.
* Any exception from the app propagates out of the ASGI call: before the response started the
  server answers 500, after that it closes the connection.
* If the ASGI call is cancelled (server shutdown), any loop call the thread is waiting on is
  cancelled and later ones fail at once, so the thread unwinds instead of hanging.
* ``http`` scopes only. A ``lifespan`` scope returns at once (the server then treats lifespan
  as unsupported); a ``websocket`` connection is rejected with ``websocket.close``.

Environ: ``SCRIPT_NAME`` is the ``root_path``; ``PATH_INFO`` is ``path`` with that prefix
removed; both are the UTF-8 path re-decoded as latin-1, as PEP 3333 requires. Repeated request
headers are joined with ``", "`` (``"; "`` for Cookie). Header names containing ``_`` are
dropped: in the environ ``X_User`` and ``X-User`` would both become ``HTTP_X_USER``, letting a
client spoof a header set by a proxy. ``wsgi.errors`` is ``sys.stderr``.
``wsgi.input_terminated`` is set: ``wsgi.input`` ends where the body ends, so a chunked request
body (no ``CONTENT_LENGTH``) can be read to EOF.

Ideas from uvicorn's ``middleware/wsgi.py`` (which environ keys to build) and a2wsgi (pulling
the body from the thread through ``run_coroutine_threadsafe``); the code is ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import re
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from sleipnir.types import Message, Receive, Scope, Send

__all__ = ["ClientDisconnected", "WSGIMiddleware", "build_environ"]

Environ: TypeAlias = dict[str, Any]
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable: TypeAlias = Callable[[bytes], None]
StartResponse: TypeAlias = Callable[..., WriteCallable]
WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]

_T = TypeVar("_T")

_BAD_NAME = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class ClientDisconnected(OSError):
    """Raised by ``wsgi.input`` when the client went away before the body was read."""


class WSGIMiddleware:
    """Serve the WSGI application ``app`` as an ASGI 3 application."""

    def __init__(self, app: WSGIApp, workers: int = 10) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.app = app
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="sleipnir-wsgi"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            call = _WSGICall(scope, receive, send, asyncio.get_running_loop())
            await call.run(self.app, self.executor)
        elif kind == "websocket":
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1000})
        elif kind != "lifespan":
            raise RuntimeError(f"A WSGI application cannot serve {kind!r} connections.")


def build_environ(scope: Scope, wsgi_input: Any, errors: Any) -> Environ:
    """The PEP 3333 environ for an ASGI ``http`` scope."""
    root = _to_latin1(scope.get("root_path", "")).rstrip("/")
    path = _to_latin1(scope["path"])
    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root,
        "PATH_INFO": _strip_root(path, root),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": wsgi_input,
        "wsgi.input_terminated": True,  # reading to EOF is safe, even without Content-Length
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    environ.update(_server_vars(scope))
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    environ.update(_header_vars(scope.get("headers", ())))
    return environ


def _to_latin1(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _strip_root(path: str, root: str) -> str:
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path


def _server_vars(scope: Scope) -> dict[str, str]:
    server = scope.get("server")
    if server and server[1] is not None:
        return {"SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1])}
    port = _DEFAULT_PORTS.get(scope.get("scheme", "http"), "80")
    return {"SERVER_NAME": "localhost", "SERVER_PORT": port}


def _header_vars(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in result:
            value = result[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
        result[key] = value
    return result


# --------------------------------------------------------------------------- thread <-> loop


class _LoopBridge:
    """Runs coroutines on the event loop for the app thread, one at a time, blocking."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._closed = False

    def call(self, func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        """From the app thread: run ``func(*args)`` on the loop and return its result."""
        with self._lock:
            if self._closed:
                raise concurrent.futures.CancelledError("the ASGI call has ended")
            coro = func(*args)
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            except BaseException:
                coro.close()
                raise
            self._pending = future
        try:
            return future.result()
        finally:
            self._pending = None

    def close(self) -> None:
        """From the loop: cancel the call in progress and refuse further ones."""
        with self._lock:
            self._closed = True
            if self._pending is not None:
                self._pending.cancel()


class _InputStream:
    """``wsgi.input``: a blocking binary stream over the ASGI request body messages."""

    def __init__(self, first: bytes, more: bool, fetch: Callable[[], tuple[bytes, bool]]):
        self._buffer = bytearray(first)
        self._more = more
        self._fetch = fetch

    def _fill(self) -> bool:
        """Append the next non-empty body chunk to the buffer; False at the end of the body."""
        while self._more:
            data, self._more = self._fetch()
            if data:
                self._buffer += data
                return True
        return False

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        scanned = 0
        while True:
            end = self._buffer.find(b"\n", scanned)
            if end >= 0:
                end += 1
                break
            scanned = len(self._buffer)
            if 0 <= limit <= scanned or not self._fill():
                end = scanned
                break
        return self._take(end if limit < 0 else min(end, limit))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


# --------------------------------------------------------------------------- one request


class _WSGICall:
    """One HTTP request/response cycle of a WSGI app.

    Methods marked "loop" run on the event loop, the others in the app thread.
    """

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.loop = loop
        self.bridge = _LoopBridge(loop)
        self.disconnected = False
        self.watcher: asyncio.Task[None] | None = None
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_sent = False

    async def run(self, app: WSGIApp, executor: concurrent.futures.Executor) -> None:
        """Loop: receive the first body message, then run the app in the pool."""
        body, more = self._accept(await self.receive())
        if self.disconnected:
            return
        stream = _InputStream(body, more, self._fetch_body)
        environ = build_environ(self.scope, stream, sys.stderr)
        serve = functools.partial(contextvars.copy_context().run, self._serve, app, environ)
        try:
            await self.loop.run_in_executor(executor, serve)
        finally:
            self.bridge.close()
            if self.watcher is not None:
                self.watcher.cancel()

    def _accept(self, message: Message) -> tuple[bytes, bool]:
        """Loop: unpack a received message; start the disconnect watcher after the body."""
        if message["type"] == "http.disconnect":
            self.disconnected = True
            return b"", False
        more = bool(message.get("more_body", False))
        if not more and self.watcher is None:
            self.watcher = self.loop.create_task(self._watch_disconnect())
        return message.get("body", b""), more

    async def _next_body(self) -> tuple[bytes, bool]:
        return self._accept(await self.receive())

    async def _watch_disconnect(self) -> None:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True

    async def _send_all(self, messages: list[Message]) -> None:
        for message in messages:
            await self.send(message)

    def _fetch_body(self) -> tuple[bytes, bool]:
        body, more = self.bridge.call(self._next_body)
        if self.disconnected:
            raise ClientDisconnected("The client disconnected before sending the whole body.")
        return body, more

    def _serve(self, app: WSGIApp, environ: Environ) -> None:
        try:
            result = app(environ, self._start_response)
            try:
                if isinstance(result, (list, tuple)):
                    self._send_sequence(result)
                else:
                    self._send_iterable(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ClientDisconnected:
            pass  # nobody to answer; not the app's fault

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> WriteCallable:
        if exc_info is not None and exc_info[1] is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info.")
        self.status = _parse_status(status)
        self.headers = _encode_headers(headers)
        return self._write

    def _write(self, data: bytes) -> None:
        data = _as_bytes(data)
        if data:
            self._send([_body_message(data, more=True)])
        elif not self.head_sent:
            self._send([])

    def _send_iterable(self, result: Iterable[bytes]) -> None:
        for chunk in result:
            if self.disconnected:
                return
            data = _as_bytes(chunk)
            if data:  # an empty chunk does not send the head (PEP 3333)
                self._send([_body_message(data, more=True)])
        if not self.disconnected:
            self._send([_body_message(b"", more=False)])

    def _send_sequence(self, result: list[bytes] | tuple[bytes, ...]) -> None:
        chunks = [chunk for chunk in map(_as_bytes, result) if chunk] or [b""]
        if not self.head_sent:
            self._add_content_length(sum(map(len, chunks)))
        last = len(chunks) - 1
        self._send([_body_message(chunk, more=i < last) for i, chunk in enumerate(chunks)])

    def _add_content_length(self, length: int) -> None:
        status = self.status
        if status is None or status < 200 or status in (204, 304):
            return
        if self.scope["method"] == "HEAD":
            return
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers):
            return
        self.headers.append((b"content-length", str(length).encode("ascii")))

    def _send(self, messages: list[Message]) -> None:
        """Send ``messages``, preceded by the response head if it has not gone out yet."""
        if not self.head_sent:
            if self.status is None:
                raise RuntimeError("The WSGI application did not call start_response().")
            head = {"type": "http.response.start", "status": self.status, "headers": self.headers}
            messages.insert(0, head)
            self.head_sent = True
        if messages:
            self.bridge.call(self._send_all, messages)


def _body_message(body: bytes, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"WSGI response data must be bytes, not {type(chunk).__name__}.")


def _parse_status(status: object) -> int:
    if not isinstance(status, str):
        raise TypeError(f"WSGI status must be a str such as '200 OK', not {type(status).__name__}.")
    code = status.partition(" ")[0]
    if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] == "0":
        raise ValueError(f"Invalid WSGI status {status!r}.")
    return int(code)


def _encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    encoded = []
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"WSGI header names and values must be str: {(name, value)!r}.")
        if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            raise ValueError(f"Invalid WSGI response header {(name, value)!r}.")
        encoded.append((name.lower().encode("ascii"), value.encode("latin-1")))
    return encoded
