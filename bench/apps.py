"""Bare ASGI 3 apps for the benchmark: no framework, so the numbers measure the server.

Use as ``apps:<name>`` with any ASGI server (``bench/run.py`` puts this folder on PYTHONPATH):

    plaintext  GET  -> 200 text/plain, b"Hello, world!" (13 bytes, content-length)
    json       GET  -> 200 application/json, json.dumps() per request (28 bytes)
    echo       POST -> 200, the request body read in full and sent back (content-length)
    large      GET  -> 200, one 1 MiB body (content-length)
    stream     GET  -> 200, 100 body messages of 64 bytes (more_body=True) and an empty last
               one, no content-length (so chunked on HTTP/1.1): 6,400 bytes, STREAM_BODY
    router     /plaintext /json /echo /large /stream by path ('/' is plaintext), 404 otherwise;
               used by the functional check

Every app returns at once on a ``lifespan`` scope, which servers treat as "no lifespan".
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PLAINTEXT_BODY = b"Hello, world!"
JSON_OBJ = {"message": "Hello, world!"}
LARGE_BODY = b"x" * (1024 * 1024)
# chunk i is b"00-...-\n" with its two-digit number first, so a lost or reordered chunk shows
STREAM_CHUNKS = [b"%02d" % i + b"-" * 61 + b"\n" for i in range(100)]
STREAM_BODY = b"".join(STREAM_CHUNKS)


def _start(status: int, content_type: bytes, length: int) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(length).encode())],
    }


# Messages that never change are built once, so the app's own cost stays negligible.
_PLAIN_START = _start(200, b"text/plain", len(PLAINTEXT_BODY))
_PLAIN_BODY: Message = {"type": "http.response.body", "body": PLAINTEXT_BODY}
_LARGE_START = _start(200, b"application/octet-stream", len(LARGE_BODY))
_LARGE_BODY: Message = {"type": "http.response.body", "body": LARGE_BODY}
_STREAM_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
_STREAM_BODIES: list[Message] = [
    {"type": "http.response.body", "body": c, "more_body": True} for c in STREAM_CHUNKS
]
_STREAM_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_NOT_FOUND_START = _start(404, b"text/plain", 9)
_NOT_FOUND_BODY: Message = {"type": "http.response.body", "body": b"Not Found"}


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _plaintext(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_PLAIN_START)
    await send(_PLAIN_BODY)


async def _json_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = jsonlib.dumps(JSON_OBJ).encode()
    await send(_start(200, b"application/json", len(body)))
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = await _read_body(receive)
    await send(_start(200, b"application/octet-stream", len(body)))
    await send({"type": "http.response.body", "body": body})


async def _large(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_LARGE_START)
    await send(_LARGE_BODY)


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    """As a streaming response does it: one send per chunk, then an empty closing one."""
    await send(_STREAM_START)
    for message in _STREAM_BODIES:
        await send(message)
    await send(_STREAM_END)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_NOT_FOUND_START)
    await send(_NOT_FOUND_BODY)


_ROUTES: dict[str, ASGIApp] = {
    "/": _plaintext,
    "/plaintext": _plaintext,
    "/json": _json_app,
    "/echo": _echo,
    "/large": _large,
    "/stream": _stream,
}


async def _router(scope: Scope, receive: Receive, send: Send) -> None:
    await _ROUTES.get(scope["path"], _not_found)(scope, receive, send)


def http_only(app: ASGIApp) -> ASGIApp:
    """Wrap an HTTP app so that it returns at once on any other scope (lifespan)."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await app(scope, receive, send)

    return wrapper


plaintext = http_only(_plaintext)
json = http_only(_json_app)
echo = http_only(_echo)
large = http_only(_large)
stream = http_only(_stream)
router = http_only(_router)
