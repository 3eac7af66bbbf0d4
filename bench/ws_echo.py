"""WebSocket echo app for the benchmark's ws-echo workload (``ws_echo:app``).

Every ``websocket.receive`` is sent straight back, text as text and bytes as bytes; the
connection is accepted at once, whatever the path. Plain HTTP gets the 13-byte plaintext reply
(the harness's readiness probe is a ``GET /``); lifespan returns at once. No framework, so the
numbers measure the server. (Self-contained: the server imports it with this folder on
PYTHONPATH.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ACCEPT: Message = {"type": "websocket.accept"}
_PLAIN_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
_PLAIN_BODY: Message = {"type": "http.response.body", "body": b"Hello, world!"}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
            elif kind == "websocket.connect":
                await send(_ACCEPT)
            else:  # websocket.disconnect
                return
    elif scope["type"] == "http":
        await send(_PLAIN_START)
        await send(_PLAIN_BODY)
