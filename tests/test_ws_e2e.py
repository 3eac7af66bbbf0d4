"""WebSocket end to end: a real server, the websockets client and raw sockets.

Every test runs once per WebSocket implementation (``--ws websockets`` and ``--ws wsproto``)
and event loop (uvloop, asyncio); the handshake tests also once per HTTP/1.1 parser.
RFC 6455 and the ASGI websocket spec (2.4).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from conftest import RunningServer, run_server, wait_for
from rawhttp import recv_until

WS_IMPLS = ["websockets", "wsproto"]
TIMEOUT_S = 10.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@pytest.fixture(params=WS_IMPLS)
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["uvloop", "asyncio"])
def serve(ws_impl: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Start a server with this test's WebSocket implementation, on each event loop (the
    transport calls differ: set_protocol, is_reading, pause and resume)."""

    def start(app: Any, **settings: Any) -> Any:
        return run_server(app, ws=ws_impl, loop=request.param, **settings)

    return start


def response_headers(conn: ClientConnection) -> Headers:
    assert conn.response is not None
    return conn.response.headers


def ws_url(server: RunningServer, path: str = "/") -> str:
    return f"ws://{server.host}:{server.port}{path}"


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TIMEOUT_S)

    return asyncio.run(bounded())


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        reply = {
            "type": "websocket.send",
            "bytes": message.get("bytes"),
            "text": message.get("text"),
        }
        await send(reply)


# --------------------------------------------------------------------------- raw helpers


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def handshake_request(path: str = "/", extra: str = "", key: str | None = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def read_head(sock: socket.socket) -> tuple[bytes, bytearray]:
    """A response head, and whatever arrived after it."""
    sock.settimeout(5.0)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the end of the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, bytearray(rest)


def read_frame(sock: socket.socket, buffered: bytearray) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""

    def need(n: int) -> bytes:
        while len(buffered) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed while reading a frame")
            buffered.extend(chunk)
        data = bytes(buffered[:n])
        del buffered[:n]
        return data

    first, second = need(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", need(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", need(8))
    return first & 0x0F, need(length)


@pytest.fixture
def raw_ws(serve: Callable[..., Any]) -> Iterator[Callable[..., tuple[socket.socket, bytearray]]]:
    """Open a raw WebSocket to an echo server: returns (socket, bytes after the 101)."""
    socks: list[socket.socket] = []
    with serve(echo_app, ws_ping_interval=None) as server:

        def open_ws(extra: str = "") -> tuple[socket.socket, bytearray]:
            sock = server.connect()
            socks.append(sock)
            sock.sendall(handshake_request(extra=extra))
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 "), head
            return sock, rest

        yield open_ws
        for sock in socks:
            sock.close()


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005


# --------------------------------------------------------------------------- messages


def test_echo_text_and_binary(serve: Callable[..., Any], parser: str) -> None:
    """RFC 6455 §5.6: text and binary data frames, both directions."""
    with serve(echo_app, http=parser) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                await conn.send("héllo")
                assert await conn.recv() == "héllo"
                await conn.send(b"\x00\xff" * 1000)
                assert await conn.recv() == b"\x00\xff" * 1000
                await conn.send(["frag", "mented"])  # a fragmented message
                assert await conn.recv() == "fragmented"

        run(client())


def test_large_message_and_compression(serve: Callable[..., Any]) -> None:
    """RFC 7692: permessage-deflate is negotiated with a client that offers it."""
    with serve(echo_app) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                extensions = response_headers(conn).get("sec-websocket-extensions", "")
                assert extensions.startswith("permessage-deflate")
                big = "x" * 1_000_000
                await conn.send(big)
                assert await conn.recv() == big

        run(client())


def test_compression_can_be_turned_off(serve: Callable[..., Any]) -> None:
    with serve(echo_app, ws_per_message_deflate=False) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                assert "sec-websocket-extensions" not in response_headers(conn)
                await conn.send("plain")
                assert await conn.recv() == "plain"

        run(client())


def test_frames_sent_with_the_handshake_are_delivered(raw_ws: Any) -> None:
    """Bytes that arrive in the same packet as the handshake are handed over, not lost."""
    sock, buffered = raw_ws()
    sock.sendall(client_frame(0x1, b"first") + client_frame(0x2, b"second"))
    assert read_frame(sock, buffered) == (0x1, b"first")
    assert read_frame(sock, buffered) == (0x2, b"second")


def test_handshake_and_frames_in_one_packet(serve: Callable[..., Any], parser: str) -> None:
    with serve(echo_app, http=parser) as server, server.connect() as sock:
        sock.sendall(handshake_request() + client_frame(0x1, b"early"))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert read_frame(sock, rest) == (0x1, b"early")


# --------------------------------------------------------------------------- handshake


def test_scope(serve: Callable[..., Any]) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            seen.append(scope)
            await send({"type": "websocket.close"})

    with serve(app, root_path="/api") as server:

        async def client() -> None:
            with pytest.raises(InvalidStatus):
                await connect(
                    ws_url(server, "/chat%20room?x=1"),
                    subprotocols=[Subprotocol("a"), Subprotocol("b")],
                    open_timeout=5,
                )

        run(client())
    scope = seen[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/api/chat room"
    assert scope["raw_path"] == b"/api/chat%20room"
    assert scope["root_path"] == "/api"
    assert scope["query_string"] == b"x=1"
    assert scope["subprotocols"] == ["a", "b"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert "websocket.http.response" in scope["extensions"]
    assert (b"upgrade", b"websocket") in scope["headers"]
    assert "method" not in scope


def test_subprotocol_and_extra_headers(serve: Callable[..., Any]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {"type": "websocket.accept", "subprotocol": "b", "headers": [(b"x-extra", b"1")]}
        )
        await send({"type": "websocket.close"})

    with serve(app) as server:

        async def client() -> None:
            async with connect(
                ws_url(server), subprotocols=[Subprotocol("a"), Subprotocol("b")], open_timeout=5
            ) as conn:
                assert conn.subprotocol == "b"
                assert response_headers(conn)["x-extra"] == "1"
                assert response_headers(conn)["server"] == "sleipnir"
                assert "date" in response_headers(conn)

        run(client())


def test_close_before_accept_is_403(serve: Callable[..., Any]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})

    with serve(app) as server:

        async def client() -> None:
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server), open_timeout=5)
            assert info.value.response.status_code == 403

        run(client())


def test_denial_response_extension(serve: Callable[..., Any], parser: str) -> None:
    """ASGI websocket.http.response: a custom status, headers and a streamed body."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})

    with serve(app, http=parser) as server, server.connect() as sock:
        sock.sendall(handshake_request())
        data = recv_until(sock, b"0\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 401 ")
        assert b"www-authenticate: Bearer\r\n" in data
        assert b"transfer-encoding: chunked" in data
        assert b"3\r\nno \r\n5\r\nentry\r\n0\r\n\r\n" in data
        assert b"connection: close" in data


@pytest.mark.parametrize("fails", [True, False], ids=["raises", "returns"])
def test_app_without_answer_gets_500(serve: Callable[..., Any], fails: bool) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if fails:
            raise RuntimeError("boom")

    with serve(app) as server:

        async def client() -> None:
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server), open_timeout=5)
            assert info.value.response.status_code == 500

        run(client())


@pytest.mark.parametrize(
    ("extra", "status", "header"),
    [
        ("", 426, b"sec-websocket-version: 13"),
        ("Sec-WebSocket-Version: 8\r\n", 426, b"sec-websocket-version: 13"),
        ("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n", 400, None),
        ("Sec-WebSocket-Version: 13\r\n", 400, None),
    ],
    ids=["no-version", "version-8", "bad-key", "no-key"],
)
def test_invalid_handshake(
    serve: Callable[..., Any], parser: str, extra: str, status: int, header: bytes | None
) -> None:
    """RFC 6455 §4.2.1-§4.4: a malformed handshake gets 400, an unknown version 426."""
    with serve(echo_app, http=parser) as server, server.connect() as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + extra.encode()
            + b"\r\n"
        )
        data = read_head(sock)[0]
        assert data.startswith(b"HTTP/1.1 %d " % status)
        if header is not None:
            assert header in data.lower()


def test_ws_none_serves_upgrades_as_http(parser: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["type"].encode()})

    with run_server(app, ws="none", http=parser) as server, server.connect() as sock:
        sock.sendall(handshake_request())
        head, _ = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")


def test_proxy_headers_give_wss(serve: Callable[..., Any]) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            seen.append(scope)
            await send({"type": "websocket.close"})

    with serve(app, forwarded_allow_ips="127.0.0.1") as server, server.connect() as sock:
        sock.sendall(handshake_request(extra="X-Forwarded-Proto: https\r\n"))
        assert read_head(sock)[0].startswith(b"HTTP/1.1 403 ")
    assert seen[0]["scheme"] == "wss"


# --------------------------------------------------------------------------- closing


def test_app_close_code_and_reason(serve: Callable[..., Any]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done here"})

    with serve(app) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "done here")

        run(client())


def test_client_close_reaches_the_app_and_send_then_raises(serve: Callable[..., Any]) -> None:
    """ASGI 2.4: websocket.disconnect carries code and reason; a later send raises OSError."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            seen.append(exc)

    with serve(app) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                await conn.close(4001, "bye")

        run(client())
        wait_for(lambda: len(seen) == 2, TIMEOUT_S, "the app to finish")
    assert seen[0] == {"type": "websocket.disconnect", "code": 4001, "reason": "bye"}
    assert isinstance(seen[1], OSError)


@pytest.mark.parametrize(("fails", "code"), [(True, 1011), (False, 1000)])
def test_app_ending_after_accept_closes(serve: Callable[..., Any], fails: bool, code: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if fails:
            raise RuntimeError("boom")

    with serve(app) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == code

        run(client())


def test_dropped_connection_is_1006(serve: Callable[..., Any]) -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    with serve(app) as server:
        sock = server.connect()
        sock.sendall(handshake_request())
        read_head(sock)
        sock.close()
        wait_for(lambda: seen, TIMEOUT_S, "the disconnect")
    assert seen[0]["code"] == 1006


def test_shutdown_closes_with_1012() -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())  # "hi": the connection is being served
        seen.append(await receive())

    with run_server(app) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5, ping_interval=None) as conn:
                await conn.send("hi")  # the server is now serving this connection
                server.server.should_exit = True
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012

        run(client())
        wait_for(lambda: len(seen) == 2, TIMEOUT_S, "the app to see the disconnect")
    assert seen[0]["type"] == "websocket.receive"
    assert seen[1] == {
        "type": "websocket.disconnect",
        "code": 1012,
        "reason": "server shutting down",
    }


# --------------------------------------------------------------------------- bad input


def test_oversize_message_is_1009(serve: Callable[..., Any]) -> None:
    with serve(echo_app, ws_max_size=1024) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5) as conn:
                await conn.send("x" * 1024)
                assert await conn.recv() == "x" * 1024
                await conn.send("x" * 1025)
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1009

        run(client())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x1, b"\xff\xfe"), 1007),
        (client_frame(0x3, b"x"), 1002),
        (client_frame(0x1, b"x", rsv=0x20), 1002),
        (client_frame(0x9, b"x" * 126), 1002),
        (client_frame(0x0, b"x"), 1002),
        (b"\x81\x05hello", 1002),  # unmasked
    ],
    ids=["bad-utf8", "reserved-opcode", "rsv2", "long-ping", "lone-continuation", "unmasked"],
)
def test_protocol_errors_close_with_the_right_code(raw_ws: Any, frame: bytes, code: int) -> None:
    """RFC 6455 §7.1.7: fail the connection with a close frame, then TCP close; other
    connections keep being served."""
    sock, buffered = raw_ws()
    other, other_buffered = raw_ws()
    sock.sendall(frame)
    opcode, payload = read_frame(sock, buffered)
    assert (opcode, close_code(payload)) == (0x8, code)
    assert sock.recv(1) == b""  # the server closed the TCP connection
    other.sendall(client_frame(0x1, b"still here"))
    assert read_frame(other, other_buffered) == (0x1, b"still here")


def test_ping_is_answered(raw_ws: Any) -> None:
    sock, buffered = raw_ws()
    sock.sendall(client_frame(0x9, b"are you there"))
    assert read_frame(sock, buffered) == (0xA, b"are you there")


def test_client_close_is_echoed_and_tcp_closed(raw_ws: Any) -> None:
    sock, buffered = raw_ws()
    sock.sendall(client_frame(0x8, struct.pack("!H", 1000) + b"ok"))
    opcode, payload = read_frame(sock, buffered)
    assert (opcode, close_code(payload)) == (0x8, 1000)
    assert sock.recv(1) == b""


def test_keepalive_ping_timeout_is_1011(serve: Callable[..., Any]) -> None:
    """A client that never answers pings is closed with 1011 after --ws-ping-timeout."""
    with serve(echo_app, ws_ping_interval=0.1, ws_ping_timeout=0.2) as server:
        sock = server.connect()
        sock.sendall(handshake_request())
        _, buffered = read_head(sock)
        assert read_frame(sock, buffered)[0] == 0x9  # the server's ping, left unanswered
        opcode, payload = read_frame(sock, buffered)
        assert (opcode, close_code(payload)) == (0x8, 1011)
        sock.close()


def test_keepalive_pings_keep_a_live_client(serve: Callable[..., Any]) -> None:
    with serve(echo_app, ws_ping_interval=0.05, ws_ping_timeout=0.5) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5, ping_interval=None) as conn:
                pings = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 0.6  # > the ping timeout: the pongs kept it open
                while loop.time() < deadline:
                    await conn.send("tick")
                    assert await conn.recv() == "tick"
                    await asyncio.sleep(0.05)
                    pings += 1
                assert pings > 1

        run(client())


def test_backpressure_stops_reading_until_the_app_receives(serve: Callable[..., Any]) -> None:
    """--ws-max-queue: a slow app makes the server stop reading; nothing is lost."""
    released = asyncio.Event()
    got: list[str] = []
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        loop_box.append(asyncio.get_running_loop())
        await send({"type": "websocket.accept"})
        await released.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            got.append(message["text"])
            if message["text"] == "last":
                await send({"type": "websocket.send", "text": str(len(got))})

    with serve(app, ws_max_queue=4, ws_per_message_deflate=False) as server:

        async def client() -> None:
            async with connect(ws_url(server), open_timeout=5, compression=None) as conn:
                transport = conn.transport
                payload = "y" * 4096
                sent = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                # Without backpressure the server would read everything; with it, the
                # client's own buffer must fill up.
                while transport.get_write_buffer_size() == 0 and loop.time() < deadline:
                    await conn.send(payload)
                    sent += 1
                    await asyncio.sleep(0)
                assert transport.get_write_buffer_size() > 0, "the server kept reading"
                loop_box[0].call_soon_threadsafe(released.set)
                await conn.send("last")
                assert await conn.recv() == str(sent + 1)

        run(client())
    assert got[-1] == "last" and len(got) > 4


def test_ping_flood_from_a_client_that_never_reads(raw_ws: Any) -> None:
    """The pongs owed to a client that does not read cannot pile up: the server stops
    reading from it (so its own sends block), and other connections are served."""
    sock, _ = raw_ws()
    other, other_buffered = raw_ws()
    sock.setblocking(False)
    ping = client_frame(0x9, b"p" * 125) * 64
    sent = 0
    # 20 k writes of 8 KiB: 160 MiB, far past any socket buffer.
    with pytest.raises(BlockingIOError):
        for _ in range(20_000):
            sent += sock.send(ping)
    assert sent < 64 << 20, f"the server read {sent} bytes of pings"
    other.sendall(client_frame(0x1, b"fine"))
    assert read_frame(other, other_buffered) == (0x1, b"fine")


def test_app_sending_to_a_client_that_never_reads_waits(serve: Callable[..., Any]) -> None:
    """websocket.send awaits drain: the app is held back instead of buffering without bound."""
    progress: list[int] = []
    total = 2000  # 2000 x 64 KiB = 125 MiB if nothing held the app back

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(total):
            await send({"type": "websocket.send", "bytes": b"z" * 65536})
            progress.append(i)

    with serve(app, ws_per_message_deflate=False) as server, server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(handshake_request())
        _, rest = read_head(sock)
        wait_for(lambda: progress, TIMEOUT_S, "the app to start sending")
        # Bounded negative check: without backpressure the app would finish within this time.
        held = wait_for_stable(progress, 0.5)
        assert held < total - 1, "the app was never held back"
        received = len(rest)
        sock.settimeout(TIMEOUT_S)
        while received < total * 65536:
            chunk = sock.recv(1 << 20)
            assert chunk, (received, len(progress))
            received += len(chunk)
        wait_for(lambda: len(progress) == total, TIMEOUT_S, "the app to finish")


def wait_for_stable(progress: list[int], seconds: float) -> int:
    """How far ``progress`` got once it stopped growing for ``seconds`` (bounded to 10 s)."""
    import time

    deadline = time.monotonic() + 10
    last, since = len(progress), time.monotonic()
    while time.monotonic() < deadline:
        now = len(progress)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return last
        time.sleep(0.01)
    return last


def test_unanswered_close_drops_the_connection(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6455 §7.1.1: a peer that never answers our close frame is dropped after the close
    timeout (shortened here; the server runs in this process)."""
    from sleipnir.transport import ws_protocol

    monkeypatch.setattr(ws_protocol, "CLOSE_TIMEOUT_S", 0.2)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4002})

    with serve(app) as server, server.connect() as sock:
        sock.sendall(handshake_request())
        _, buffered = read_head(sock)
        opcode, payload = read_frame(sock, buffered)
        assert (opcode, close_code(payload)) == (0x8, 4002)
        sock.settimeout(TIMEOUT_S)
        assert sock.recv(1) == b""  # dropped, without our answer


def test_upgrade_in_http10_is_plain_http(serve: Callable[..., Any], parser: str) -> None:
    """RFC 9110 §7.8: a server must ignore Upgrade in an HTTP/1.0 request."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            seen.append(scope["type"])
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with serve(app, http=parser) as server, server.connect() as sock:
        sock.sendall(handshake_request().replace(b"HTTP/1.1", b"HTTP/1.0"))
        assert read_head(sock)[0].startswith(b"HTTP/1.1 204 ")
    assert seen == ["http"]
