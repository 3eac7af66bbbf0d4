"""Eager requests (docs/architecture.md, "Eager requests") over real sockets.

An HTTP/1.1 request's coroutine, or an HTTP/2 stream's, takes its first step without a task of
its own, with the connection's runner as the current task; one that suspends goes on in the
runner. What an app can see of that must be what a task per request gives it: a current task
(asyncio.timeout, anyio), a fresh context per request, a timeout that works in every request
of a connection, the next request served while an earlier app goes on after its response, and
pipelined responses in order however many there are (HTTP/2: every stream of a read answered,
whichever of them suspend).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from hyperframe.frame import DataFrame, RstStreamFrame

from conftest import STARTUP_TIMEOUT_S, cli_server, run_server, wait_for
from h2raw import H2Client, request_fields
from rawhttp import RawConnection, request
from sleipnir.transport.eager import EAGER_BATCH
from sleipnir.types import Receive, Scope, Send

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test_var", default="unset")


class Probe:
    """What the apps saw, and the server's loop (to count its tasks from the test thread)."""

    def __init__(self, loop_impl: str) -> None:
        self.loop_impl = loop_impl  # the server's --loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.release: asyncio.Event | None = None
        self.last = ""

    def task_count(self) -> int:
        """How many tasks the server's loop has besides its main one."""
        loop = self.loop
        assert loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks()) - 2  # the server's main task and this one

        return asyncio.run_coroutine_threadsafe(count(), loop).result(5)


async def reply(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_app(probe: Probe) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # accept, then close at once
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["type"] != "http":
            return
        probe.loop = asyncio.get_running_loop()
        path = scope["path"]
        task = asyncio.current_task()
        probe.tasks.append(task)
        if path == "/task":
            await reply(send, f"{task is not None} {anyio.get_current_task().id != 0}".encode())
        elif path == "/anyio":
            # A cancel scope that expires, and a task group: anyio needs the current task.
            with anyio.move_on_after(0.01) as scope_:
                await anyio.sleep(5)
            async with anyio.create_task_group() as group:
                group.start_soon(anyio.sleep, 0)
            await reply(send, f"cancelled {scope_.cancelled_caught}".encode())
        elif path == "/var":
            seen = VAR.get()
            VAR.set(scope["query_string"].decode())
            await reply(send, seen.encode())
        elif path == "/suspend":
            for _ in range(3):
                await asyncio.sleep(0)
            seen = VAR.get()
            VAR.set("suspended")
            await reply(send, b"suspended " + seen.encode())
        elif path == "/linger":
            # Answers, then waits for the next request on the same connection to release it:
            # that request must not wait for this app to return.
            probe.release = asyncio.Event()
            await reply(send, b"answered")
            await asyncio.wait_for(probe.release.wait(), 5)
        elif path == "/release":
            assert probe.release is not None
            probe.release.set()
            await reply(send, b"released")
        elif path == "/timeout":
            try:
                async with asyncio.timeout(0.01):  # type: ignore[attr-defined]
                    await asyncio.sleep(5)
            except TimeoutError:
                await reply(send, b"timed out")
        elif path == "/swallow":
            # Cancels its own task and carries on (poor style, but it happens): the count of
            # cancellation requests this leaves must not reach the next request's task.
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)
            await reply(send, b"swallowed")
        elif path == "/disconnect":
            await receive()  # the (empty) body
            probe.last = (await receive())["type"]  # waits for the client to go
        elif path == "/cancelling":
            assert task is not None
            await reply(send, str(task.cancelling()).encode())  # type: ignore[attr-defined]
        elif path == "/group":
            try:
                async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                    group.create_task(fail_soon())
                    await asyncio.sleep(5)
            except Exception as exc:  # an ExceptionGroup; a CancelledError would escape
                await reply(send, type(exc).__name__.encode())
        else:
            await reply(send, scope["path"].encode())

    return app


async def fail_soon() -> None:
    raise ValueError("child task failed")


@pytest.fixture(params=["uvloop", "asyncio"])
def probe(request: pytest.FixtureRequest) -> Probe:
    """Each test using this runs once per event loop (the current task is the loop's)."""
    return Probe(str(request.param))


def serve(probe: Probe, parser: str, **settings: Any) -> Any:
    return run_server(make_app(probe), loop=probe.loop_impl, http=parser, **settings)


def bodies(conn: RawConnection, count: int) -> list[bytes]:
    return [conn.read_response().body for _ in range(count)]


def test_every_request_has_a_current_task(parser: str, probe: Probe) -> None:
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(request("GET", "/task"))
        assert conn.read_response().body == b"True True"
        conn.send(request("GET", "/task") * 3)  # pipelined
        assert bodies(conn, 3) == [b"True True"] * 3
        for _ in range(2):
            conn.send(request("GET", "/anyio"))
            assert conn.read_response().body == b"cancelled True"
        conn.send(request("GET", "/anyio") * 2)
        assert bodies(conn, 2) == [b"cancelled True"] * 2


def test_a_connections_requests_share_its_runner_from_the_first(parser: str, probe: Probe) -> None:
    # The documented difference from a task per request (docs/architecture.md): sequential
    # requests on one connection see the same current task, the first one included.
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        for path in ("/a", "/suspend", "/b"):
            conn.send(request("GET", path))
            conn.read_response()
    first, second, third = probe.tasks
    assert first is second is third


def test_an_app_that_cancels_its_task_at_once(parser: str, probe: Probe) -> None:
    # The first request of a connection cancels its current task, the runner, before the
    # runner has taken a step; it goes on in a task of its own, which delivers the
    # cancellation. The next request gets a new runner with nothing pending.
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(request("GET", "/swallow"))
        assert conn.read_response().body == b"swallowed"
        conn.send(request("GET", "/cancelling") + request("GET", "/a"))
        assert bodies(conn, 2) == [b"0", b"/a"]


def test_each_request_starts_from_a_fresh_context(parser: str, probe: Probe) -> None:
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        for value in ("a", "b"):
            conn.send(request("GET", f"/var?{value}"))
            assert conn.read_response().body == b"unset"
        conn.send(request("GET", "/var?c") + request("GET", "/suspend") + request("GET", "/var?d"))
        assert bodies(conn, 3) == [b"unset", b"suspended unset", b"unset"]


def test_suspending_and_eager_requests_pipelined_in_order(parser: str, probe: Probe) -> None:
    paths = [f"/{'suspend' if i % 3 == 0 else i}" for i in range(30)]
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"".join(request("GET", path) for path in paths))
        expected = [b"suspended unset" if p == "/suspend" else p.encode() for p in paths]
        assert bodies(conn, len(paths)) == expected


def test_a_long_pipeline_is_answered_in_order(parser: str, probe: Probe) -> None:
    count = 3 * EAGER_BATCH + 5  # more than one batch of eager requests per read
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(b"".join(request("GET", f"/{i}") for i in range(count)))
        assert bodies(conn, count) == [f"/{i}".encode() for i in range(count)]


@pytest.mark.parametrize("pipelined", [False, True])
def test_next_request_does_not_wait_for_an_app_still_running(
    parser: str, probe: Probe, pipelined: bool
) -> None:
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        if pipelined:
            conn.send(request("GET", "/linger") + request("GET", "/release"))
            assert bodies(conn, 2) == [b"answered", b"released"]
        else:
            conn.send(request("GET", "/linger"))
            assert conn.read_response().body == b"answered"
            conn.send(request("GET", "/release"))
            assert conn.read_response().body == b"released"
        conn.send(request("GET", "/after"))
        assert conn.read_response().body == b"/after"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_a_cancellation_never_reaches_the_next_request(parser: str, probe: Probe) -> None:
    # A timeout cancels the current task; a runner that saw it is replaced, else the next
    # request's asyncio.timeout would take its own expiry for an outside cancellation.
    with serve(probe, parser) as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        for _ in range(3):
            conn.send(request("GET", "/timeout"))
            assert conn.read_response().body == b"timed out"
        conn.send(request("GET", "/timeout") * 2)
        assert bodies(conn, 2) == [b"timed out"] * 2
        for _ in range(2):
            conn.send(request("GET", "/swallow"))
            assert conn.read_response().body == b"swallowed"
            # A task per request would start with no cancellation requested: so must this.
            conn.send(request("GET", "/cancelling"))
            assert conn.read_response().body == b"0"
            conn.send(request("GET", "/timeout") + request("GET", "/group"))
            assert bodies(conn, 2) == [b"timed out", b"ExceptionGroup"]
            conn.send(request("GET", "/swallow") + request("GET", "/cancelling"))
            assert bodies(conn, 2) == [b"swallowed", b"0"]


def test_no_task_outlives_its_connection(parser: str, probe: Probe) -> None:
    with serve(probe, parser) as srv:
        for paths in (["/a"], ["/suspend"], ["/a", "/suspend", "/b"], ["/timeout"]):
            if "/timeout" in paths and sys.version_info < (3, 11):
                continue
            with srv.connect() as sock:
                conn = RawConnection(sock)
                conn.send(b"".join(request("GET", path) for path in paths))
                bodies(conn, len(paths))
            wait_for(lambda: probe.task_count() == 0, 5, "the connection's tasks to end")
        assert not srv.server.state.tasks


def test_a_request_handed_over_is_served_after_the_connection_is_gone(
    parser: str, probe: Probe
) -> None:
    # The first request of a connection, with a reset right behind it: it suspends in its
    # eager step, the connection is lost, and the runner still goes on with it, so that its
    # app learns that the client left and the request ends.
    with serve(probe, parser) as srv:
        for _ in range(5):
            probe.last = ""
            sock = srv.connect()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(request("GET", "/disconnect"))
            sock.close()  # RST
            wait_for(lambda: probe.last == "http.disconnect", 5, "the app to see the disconnect")
            wait_for(lambda: not srv.server.state.tasks, 5, "the request to end")


def test_the_runner_ends_when_the_connection_switches_to_websocket(
    parser: str, probe: Probe
) -> None:
    upgrade = request(
        "GET",
        "/ws",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    )
    with serve(probe, parser, ws="wsproto") as srv, srv.connect() as sock:
        conn = RawConnection(sock)
        conn.send(request("GET", "/suspend") + request("GET", "/a"))
        assert bodies(conn, 2) == [b"suspended unset", b"/a"]
        conn.send(upgrade)
        assert conn.read_response().status == 101
        # The connection stays open (the close frame is not answered): only its runner could
        # still be a task, and it must have ended.
        wait_for(lambda: probe.task_count() == 0, 5, "the runner to end")


EXIT_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/exit":
        raise SystemExit(3)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    await send(start)
    await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_system_exit_in_an_app_ends_the_server(parser: str, loop: str, tmp_path: Path) -> None:
    # As it does from a task: gunicorn's worker timeout raises SystemExit in the app and relies
    # on it (tests/test_gunicorn.py). From a read callback, uvloop would only close the
    # connection.
    (tmp_path / "exit_app.py").write_text(EXIT_APP)
    args = ["exit_app:app", "--app-dir", str(tmp_path), "--port", "0", "--loop", loop]
    with cli_server(*args, "--http", parser) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            conn = RawConnection(sock)
            conn.send(request("GET", "/ok"))  # by the next read the connection's runner runs
            assert conn.read_response().body == b"ok"
            conn.send(request("GET", "/exit"))
            assert conn.read_response().status == 500
        srv.proc.wait(STARTUP_TIMEOUT_S)  # raises if the server goes on serving


# HTTP/2: the streams a read starts run eagerly once it is parsed; the first that suspends
# goes on in the runner, and the streams after it get tasks of their own.


def h2_exchange(client: H2Client, paths: list[str]) -> list[bytes]:
    """Open a stream for each path in one send (one read, as a rule), and return the bodies
    in the same order once every stream has ended."""
    sids = []
    frames = []
    for path in paths:
        sid = client.next_sid()
        sids.append(sid)
        frames.append(client.headers(sid, request_fields(path=path.encode())))
    client.send(*frames)
    got = dict.fromkeys(sids, b"")
    waiting = set(sids)
    while waiting:
        f = client.read_frame()
        assert f is not None, f"closed with streams {sorted(waiting)} open"
        if f.stream_id not in got:
            continue
        if isinstance(f, DataFrame):
            got[f.stream_id] += f.data
        if isinstance(f, RstStreamFrame) or "END_STREAM" in f.flags:
            waiting.discard(f.stream_id)
    return [got[sid] for sid in sids]


def h2_serve(probe: Probe) -> Any:
    return run_server(make_app(probe), loop=probe.loop_impl)


def test_h2_streams_have_a_current_task_and_a_fresh_context(probe: Probe) -> None:
    with h2_serve(probe) as srv, srv.connect() as sock:
        client = H2Client(sock)
        client.handshake()
        paths = ["/task", "/var?a", "/anyio", "/var?b", "/suspend", "/var?c", "/task"]
        assert h2_exchange(client, paths) == [
            b"True True",
            b"unset",
            b"cancelled True",
            b"unset",
            b"suspended unset",
            b"unset",
            b"True True",
        ]
        assert all(task is not None for task in probe.tasks)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="eager from Python 3.11 only")
def test_h2_streams_of_a_connection_share_its_runner(probe: Probe) -> None:
    # As HTTP/1.1 requests do (docs/architecture.md): what shows the streams ran eagerly.
    with h2_serve(probe) as srv, srv.connect() as sock:
        client = H2Client(sock)
        client.handshake()
        assert h2_exchange(client, ["/a", "/b", "/c"]) == [b"/a", b"/b", b"/c"]
        assert h2_exchange(client, ["/d"]) == [b"/d"]
    first, *others = probe.tasks
    assert first is not None and all(task is first for task in others)


def test_h2_streams_after_one_that_suspends_do_not_wait_for_it(probe: Probe) -> None:
    with h2_serve(probe) as srv, srv.connect() as sock:
        client = H2Client(sock)
        client.handshake()
        # /linger answers, then waits for /release, which comes on a later stream of the
        # same read (so it cannot run in the runner, busy with /linger) and of the next one.
        assert h2_exchange(client, ["/linger", "/a", "/release", "/b"]) == [
            b"answered",
            b"/a",
            b"released",
            b"/b",
        ]
        assert h2_exchange(client, ["/linger", "/c"]) == [b"answered", b"/c"]
        assert h2_exchange(client, ["/release", "/d"]) == [b"released", b"/d"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_h2_a_cancellation_never_reaches_another_stream(probe: Probe) -> None:
    with h2_serve(probe) as srv, srv.connect() as sock:
        client = H2Client(sock)
        client.handshake()
        for _ in range(2):
            assert h2_exchange(client, ["/timeout", "/cancelling", "/timeout", "/group"]) == [
                b"timed out",
                b"0",
                b"timed out",
                b"ExceptionGroup",
            ]
            assert h2_exchange(client, ["/swallow", "/cancelling", "/a"]) == [
                b"swallowed",
                b"0",
                b"/a",
            ]
            assert h2_exchange(client, ["/cancelling"]) == [b"0"]


def test_h2_no_task_outlives_its_connection(probe: Probe) -> None:
    with h2_serve(probe) as srv:
        for paths in (["/a"], ["/suspend"], ["/a", "/suspend", "/b", "/suspend"]):
            with srv.connect() as sock:
                client = H2Client(sock)
                client.handshake()
                h2_exchange(client, paths)
            wait_for(lambda: probe.task_count() == 0, 5, "the connection's tasks to end")
        assert not srv.server.state.tasks


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_h2_system_exit_in_an_app_ends_the_server(loop: str, tmp_path: Path) -> None:
    (tmp_path / "exit_app.py").write_text(EXIT_APP)
    args = ["exit_app:app", "--app-dir", str(tmp_path), "--port", "0", "--loop", loop]
    with cli_server(*args) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            client = H2Client(sock)
            client.handshake()
            assert h2_exchange(client, ["/ok"]) == [b"ok"]
            assert client.get(b"/exit").status == 500
        srv.proc.wait(STARTUP_TIMEOUT_S)  # raises if the server goes on serving
