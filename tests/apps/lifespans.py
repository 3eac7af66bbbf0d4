"""Lifespan behaviours, one ASGI app per attribute (run by tests/test_lifespan.py).

Each app answers HTTP requests with 200 "ok", and prints "app: ..." lines (flushed) so that a
test reading the server's output can tell what the app saw and in which order.
"""

from __future__ import annotations

import asyncio

from sleipnir.types import Receive, Scope, Send


def say(text: str) -> None:
    print(f"app: {text}", flush=True)


async def ok(send: Send, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def startup_failed(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await ok(send)


async def startup_raises(scope: Scope, receive: Receive, send: Send) -> None:
    """Raises on the lifespan scope: "unsupported" in auto mode, a failure in on mode."""
    if scope["type"] == "lifespan":
        raise RuntimeError("this app does not do lifespan")
    await ok(send)


async def shutdown_failed(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush the cache"})
        return
    await ok(send)


async def shutdown_raises(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("shutdown exploded")
    await ok(send)


async def startup_hangs(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        say("startup hangs")
        await asyncio.Event().wait()
    await ok(send)


async def shutdown_hangs(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        say("shutdown hangs")
        await asyncio.Event().wait()
    await ok(send)


async def announcing(scope: Scope, receive: Receive, send: Send) -> None:
    """Completes both phases and says so."""
    if scope["type"] == "lifespan":
        await receive()
        say("startup ran")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        say("shutdown ran")
        await send({"type": "lifespan.shutdown.complete"})
        return
    await ok(send)


async def returns_after_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers startup, then returns: nothing to shut down (uvicorn: shutdown complete)."""
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    await ok(send)


async def crashes_after_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers startup, then its lifespan task dies while the server is running."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("lifespan task crashed")
    await ok(send)
