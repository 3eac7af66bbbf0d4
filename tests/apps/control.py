"""An app whose requests the test controls from outside (shutdown and access log tests).

``GET /hold`` is held until the server process receives SIGUSR1 (the handler is installed by
the request itself, before it says "app: holding"), then answers 200 "released". A test can
therefore start a request, shut the server down, and only then let the request finish,
without sleeping. If the request's task is cancelled it says "app: hold cancelled".
``GET /stream`` sends its head and b"first " at once, waits for SIGUSR1 the same way, then
sends b"last" and ends the response. ``GET /ready`` answers "draining" once the server drains
(--shutdown-delay). Every other path answers 200 "ok" at once. Lifespan
startup and shutdown are announced, and the shutdown line tells whether a held request was
still running.
"""

from __future__ import annotations

import asyncio
import signal

from sleipnir.types import Receive, Scope, Send

holding = 0


def say(text: str) -> None:
    print(f"app: {text}", flush=True)


async def _lifespan(receive: Receive, send: Send) -> None:
    await receive()
    say("startup ran")
    await send({"type": "lifespan.startup.complete"})
    await receive()
    say(f"shutdown ran with {holding} held")
    await send({"type": "lifespan.shutdown.complete"})


async def _hold() -> None:
    global holding
    released = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, released.set)
    holding += 1
    say("holding")
    try:
        await released.wait()
    except asyncio.CancelledError:
        say("hold cancelled")
        raise
    finally:
        holding -= 1
    say("released")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first ", "more_body": True})
        await _hold()
        await send({"type": "http.response.body", "body": b"last"})
        return
    body = b"ok"
    if scope["path"] == "/hold":
        await _hold()
        body = b"released"
    elif scope["path"] == "/ready" and "sleipnir.draining" in scope["extensions"]:
        body = b"draining"  # a readiness check that fails while the server drains
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
