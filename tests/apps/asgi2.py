"""ASGI 2 ("double callable") applications: a class and a function returning a coroutine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sleipnir.types import Receive, Scope, Send


class App:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        await _hello(send, b"asgi2 class " + self.scope["path"].encode())


def app(scope: Scope) -> Callable[[Receive, Send], Awaitable[None]]:
    async def instance(receive: Receive, send: Send) -> None:
        await _hello(send, b"asgi2 function")

    return instance


async def _hello(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
