"""ASGI 3 applications in the shapes people write them."""

from __future__ import annotations

import functools
from types import SimpleNamespace

from sleipnir.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await _hello(send, b"asgi3")


class CallableApp:
    """An instance with ``async def __call__(self, scope, receive, send)``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _hello(send, b"callable")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _hello(send, b"method")


async def greeter(scope: Scope, receive: Receive, send: Send, *, greeting: bytes) -> None:
    await _hello(send, greeting)


callable_app = CallableApp()
bound_method_app = callable_app.handle
partial_app = functools.partial(greeter, greeting=b"partial")
container = SimpleNamespace(app=app)


async def _hello(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
