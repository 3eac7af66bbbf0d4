"""The headers the server adds: ``server: sleipnir``, ``date`` (RFC 9110 §6.6.1) and --header
extras, on every response including the server's own errors, each exactly once; switched off
by ``server_header=False`` / ``date_header=False``; replaced, not duplicated, by the app's own.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import httpx
import pytest

from conftest import RunningServer, cli_server, run_server, wait_for
from rawhttp import read_until_closed
from sleipnir import Config
from sleipnir.transport.clock import http_date
from sleipnir.types import Receive, Scope, Send

# RFC 9110 §5.6.7 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT"
)


def head_fields(data: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The status and header fields (lowercase names) of the first response in ``data``."""
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = [line.split(":", 1) for line in lines[1:]]
    return int(lines[0].split(" ")[1]), [(n.lower(), v.strip()) for n, v in fields]


def raw(srv: RunningServer, request: bytes) -> tuple[int, list[tuple[str, str]]]:
    with srv.connect() as sock:
        sock.sendall(request)
        return head_fields(read_until_closed(sock))


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fields if n == name]


def assert_fresh_date(value: str) -> None:
    assert IMF_FIXDATE.fullmatch(value), value
    # Cached and refreshed once per clock tick (at most a second), truncated to the second.
    age = time.time() - parsedate_to_datetime(value).timestamp()
    assert -1 <= age <= 3, value


def assert_defaults(fields: list[tuple[str, str]]) -> None:
    assert values(fields, "server") == ["sleipnir"]
    (date,) = values(fields, "date")
    assert_fresh_date(date)


GET = b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/status/N`` answers N; ``/raise`` fails; ``/stream`` is chunked; others 200."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path == "/raise":
        raise RuntimeError("the application failed on purpose")
    status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    if path == "/stream":
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"" if status in (204, 304) else b"ok"})


REQUESTS = {
    "200": GET % b"/",
    "204": GET % b"/status/204",
    "304": GET % b"/status/304",
    "404": GET % b"/status/404",
    "chunked": GET % b"/stream",
    "head": b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "500-app": GET % b"/raise",
    "400-parser": b"GARBAGE\r\n\r\n",
    "400-host": b"GET / HTTP/1.1\r\n\r\n",
    "413": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n",
    "414": GET % (b"/" + b"a" * 200),
    "431": b"GET / HTTP/1.1\r\nHost: a\r\nx-big: %s\r\n\r\n" % (b"v" * 3000),
    "501": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
}
LIMITS = {"limit_request_body": 10, "limit_request_line": 100, "limit_request_header_size": 1000}


@pytest.mark.parametrize("request_bytes", REQUESTS.values(), ids=REQUESTS.keys())
def test_every_response_has_server_and_date(parser: str, request_bytes: bytes) -> None:
    with run_server(app, http=parser, lifespan="off", **LIMITS) as srv:
        status, fields = raw(srv, request_bytes)
    assert status >= 200
    assert_defaults(fields)


def test_timeout_and_overload_responses_have_server_and_date(parser: str) -> None:
    release = threading.Event()
    entered = threading.Event()

    async def holding(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.to_thread(release.wait, 5)
        await app(scope, receive, send)

    settings: dict[str, Any] = {"limit_concurrency": 1, "timeout_request_header": 0.2}
    with run_server(holding, http=parser, lifespan="off", **settings) as srv:
        status, fields = raw(srv, b"GET / HTTP/1.1\r\nHost: a\r\n")  # never completed
        assert status == 408
        assert_defaults(fields)
        with srv.connect() as held:
            held.sendall(GET % b"/")
            assert entered.wait(5)
            status, fields = raw(srv, GET % b"/")
            assert status == 503
            assert_defaults(fields)
            release.set()
            assert head_fields(read_until_closed(held))[0] == 200


def test_date_is_imf_fixdate_and_advances() -> None:
    with run_server(app, lifespan="off", timeout_keep_alive=0.2) as srv:  # ticks every 50 ms
        first = httpx.get(srv.url).headers["date"]
        assert_fresh_date(first)
        later = wait_for(
            lambda: (d := httpx.get(srv.url).headers["date"]) != first and d, 3, "a new date"
        )
    assert_fresh_date(later)
    assert parsedate_to_datetime(later) > parsedate_to_datetime(first)


# Extras and switches -------------------------------------------------------------------------


def test_extra_headers_on_every_response(parser: str) -> None:
    extras = [("x-a", "1"), ("X-Multi", "a, b"), "x-colon:a:b"]
    with run_server(app, http=parser, lifespan="off", headers=extras, **LIMITS) as srv:
        for request in (GET % b"/", GET % b"/raise", b"GARBAGE\r\n\r\n", GET % b"/stream"):
            _, fields = raw(srv, request)
            assert_defaults(fields)
            assert values(fields, "x-a") == ["1"]
            assert values(fields, "x-multi") == ["a, b"]
            assert values(fields, "x-colon") == ["a:b"]


def test_extra_headers_from_the_command_line() -> None:
    with cli_server(
        "tests.apps.asgi3:app", "--port", "0", "--header", "x-a:1", "--header", "x-b: two"
    ) as srv:
        response = httpx.get(srv.url)
    assert response.headers.get_list("x-a") == ["1"]
    assert response.headers.get_list("x-b") == ["two"]
    assert response.headers.get_list("server") == ["sleipnir"]


def test_server_header_off(parser: str) -> None:
    with run_server(app, http=parser, lifespan="off", server_header=False) as srv:
        for request in (GET % b"/", b"GARBAGE\r\n\r\n"):
            _, fields = raw(srv, request)
            assert values(fields, "server") == []
            assert len(values(fields, "date")) == 1


def test_date_header_off(parser: str) -> None:
    with run_server(app, http=parser, lifespan="off", date_header=False) as srv:
        for request in (GET % b"/", b"GARBAGE\r\n\r\n"):
            _, fields = raw(srv, request)
            assert values(fields, "date") == []
            assert values(fields, "server") == ["sleipnir"]


def test_both_off_and_a_configured_server() -> None:
    settings: dict[str, Any] = {"server_header": False, "date_header": False}
    with run_server(app, lifespan="off", **settings) as srv:
        _, fields = raw(srv, GET % b"/")
        assert values(fields, "server") == values(fields, "date") == []
    with run_server(app, lifespan="off", headers=[("Server", "edge")]) as srv:
        _, fields = raw(srv, GET % b"/")
        assert values(fields, "server") == ["edge"]  # the configured one replaces ours


# The application's own ------------------------------------------------------------------------


def sending_headers(headers: list[tuple[bytes, bytes]]) -> Callable[..., Any]:
    async def app_with(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app_with


@pytest.mark.parametrize(
    ("headers", "server", "date", "x_a"),
    [
        ([(b"server", b"app/1.0")], ["app/1.0"], None, ["1"]),
        ([(b"Server", b"app/1.0")], ["app/1.0"], None, ["1"]),
        ([(b"date", b"Sun, 06 Nov 1994 08:49:37 GMT")], ["sleipnir"], "1994", ["1"]),
        ([(b"DATE", b"Sun, 06 Nov 1994 08:49:37 GMT")], ["sleipnir"], "1994", ["1"]),
        ([(b"x-a", b"app")], ["sleipnir"], None, ["app"]),
        ([(b"x-a", b"app"), (b"x-a", b"again")], ["sleipnir"], None, ["app", "again"]),
    ],
    ids=["server", "Server", "date", "DATE", "extra", "extra-twice"],
)
def test_app_headers_replace_the_defaults(
    parser: str,
    headers: list[tuple[bytes, bytes]],
    server: list[str],
    date: str | None,
    x_a: list[str],
) -> None:
    with run_server(
        sending_headers(headers), http=parser, lifespan="off", headers=["x-a:1"]
    ) as srv:
        _, fields = raw(srv, GET % b"/")
    assert values(fields, "server") == server
    (date_value,) = values(fields, "date")
    if date is None:
        assert_fresh_date(date_value)
    else:
        assert date in date_value
    assert values(fields, "x-a") == x_a


@pytest.mark.parametrize("header", ["x-a:€", "x\x01a:1", "x-a:a\x7fb"])
def test_unsendable_configured_header_is_a_config_error(header: str) -> None:
    with pytest.raises(ValueError):
        Config(app, headers=[header])


@pytest.mark.parametrize("now", [0.0, 784111777.0, 951782400.0, 1735689599.9, 4102444800.0])
def test_http_date_is_the_imf_fixdate(now: float) -> None:
    # 1970, 1994-11-06 (RFC 9110's example), a leap day, a year's last second, 2100
    assert http_date(now) == formatdate(now, usegmt=True).encode()
