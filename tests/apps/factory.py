"""App factories, good and bad."""

from __future__ import annotations

from sleipnir.types import ASGIApp, Receive, Scope, Send

calls = 0


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def create_app() -> ASGIApp:
    global calls
    calls += 1
    return _app


def broken_factory() -> ASGIApp:
    raise RuntimeError("factory exploded")


def needs_arguments(settings: dict[str, str]) -> ASGIApp:
    return _app


def returns_none() -> None:
    return None


not_callable = 42
