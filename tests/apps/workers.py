"""An app for the multi-process tests (tests/test_supervisor_e2e.py, tests/test_nginx.py).

``GET /pid``           200, the pid of the worker process that served it (as text).
``GET /burn?s=S``      burns CPU in pure Python for S seconds (default 3) on the event loop, then
                       200 "burned PID": the worker's event loop is busy all that time.
``GET /slow?s=S``      says "app: slow started PID" (flushed), awaits S seconds (default 1.5),
                       then 200 "slow done": an in-flight request for shutdown tests.
``GET /ready``         200 "draining" once the server drains (--shutdown-delay), else "ready".
Anything else          200 "ok".

No lifespan: the lifespan scope returns at once ("unsupported" in auto mode, quietly).
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import parse_qs

from sleipnir.types import Receive, Scope, Send


def _seconds(scope: Scope, default: float) -> float:
    values = parse_qs(scope["query_string"].decode("latin-1")).get("s")
    return float(values[0]) if values else default


def burn(seconds: float) -> int:
    """Keep the CPU busy in Python bytecode (no sleeping, no C call that drops the GIL)."""
    end = time.monotonic() + seconds
    total = 0
    while time.monotonic() < end:
        for i in range(1000):
            total += i * i
    return total


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    pid = os.getpid()
    body = b"ok"
    if path == "/pid":
        body = str(pid).encode()
    elif path == "/burn":
        burn(_seconds(scope, 3.0))
        body = b"burned %d" % pid
    elif path == "/ready":
        body = b"draining" if "sleipnir.draining" in scope["extensions"] else b"ready"
    elif path == "/slow":
        print(f"app: slow started {pid}", flush=True)
        await asyncio.sleep(_seconds(scope, 1.5))
        body = b"slow done"
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
