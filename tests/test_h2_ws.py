"""WebSocket over HTTP/2 (RFC 8441) end to end: a real server, a client made of the h2 library
(extended CONNECT over a plain or TLS socket) and wsproto's frame layer (no handshake: the
extended CONNECT is the handshake).

Every test runs once per WebSocket implementation (``--ws websockets`` and ``--ws wsproto``):
the same ``WSCycle`` and ``WSConnection`` as HTTP/1.1 (tests/test_ws_e2e.py), over a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from conftest import LocalhostCert, RunningServer, run_server, wait_for
from sleipnir.transport.h2_protocol import H2Protocol
from sleipnir.transport.h2_ws import H2StreamTransport, H2WebSocket
from sleipnir.transport.ws_protocol import WSConnection
from sleipnir.types import Receive, Scope, Send
from sleipnir.wire import ws

WS_IMPLS = ["websockets", "wsproto"]
TIMEOUT_S = 10.0
BIG = 1 << 20  # more than every window: the stream's (64 KiB) and the connection's (1 MiB)


# The application ----------------------------------------------------------------------------

# What the apps saw, for the tests to check: "<query>" -> websocket.disconnect (code, reason).
disconnects: dict[str, tuple[int, str]] = {}
release: dict[str, asyncio.Event] = {}  # "/hold" waits for "/release", in the server's loop


def _release_event() -> asyncio.Event:
    event = release.get("event")
    if event is None:
        event = release["event"] = asyncio.Event()
    return event


async def _until_disconnect(scope: Scope, receive: Receive, send: Send, echo: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            disconnects[scope["query_string"].decode()] = (message["code"], message["reason"])
            return
        if echo:
            await send(
                {
                    "type": "websocket.send",
                    "bytes": message.get("bytes"),
                    "text": message.get("text"),
                }
            )


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await receive()
        body = json.dumps({"http_version": scope["http_version"], "path": scope["path"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})
        return
    if scope["type"] != "websocket":
        return
    # The first segment after root_path picks what the app does.
    path = "/" + scope["path"][len(scope["root_path"]) :].split("/")[1]
    assert (await receive())["type"] == "websocket.connect"
    if path == "/deny":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"x-why", b"not today")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})
        return
    if path == "/close-first":
        await send({"type": "websocket.close"})
        return
    if path == "/late":  # accepts once /release was opened
        await _release_event().wait()
    if path == "/proto":
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": scope["subprotocols"][-1],
                "headers": [(b"x-extra", b"1"), (b"content-length", b"0")],
            }
        )
    else:
        await send({"type": "websocket.accept"})
    if path == "/scope":
        info = {
            key: scope[key]
            for key in ("type", "http_version", "scheme", "path", "root_path", "subprotocols")
        }
        info["query_string"] = scope["query_string"].decode()
        info["raw_path"] = scope["raw_path"].decode()
        info["extensions"] = sorted(scope["extensions"])
        info["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        await send({"type": "websocket.send", "text": json.dumps(info)})
    elif path == "/app-close":
        await send({"type": "websocket.send", "text": "closing"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done here"})
    elif path == "/return":
        return  # the server closes with 1000
    elif path == "/hold":  # reads nothing until /release: the client's window must close
        await _release_event().wait()
        total = count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "end":
                break
            total += len(message["bytes"])
            count += 1
        await send({"type": "websocket.send", "text": f"{count} {total}"})
    elif path == "/release":
        _release_event().set()
    elif path == "/flood":  # 32 x 64 KiB to a client that may not read
        for index in range(32):
            await send({"type": "websocket.send", "bytes": bytes([index]) * 65536})
            await asyncio.sleep(0)  # as an app doing anything else would: writes get flushed
        await send({"type": "websocket.send", "text": "done"})
    await _until_disconnect(scope, receive, send, echo=path != "/app-close")


# A client: h2 for the streams, wsproto for the frames ------------------------------------------


@dataclass
class Stream:
    websocket: bool = False  # an extended CONNECT: a 200 starts the frames
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)  # an HTTP response (a denial)
    ws: Connection | None = None
    messages: list[str | bytes] = field(default_factory=list)
    parts: list[Any] = field(default_factory=list)  # a message arriving in pieces
    pings: list[bytes] = field(default_factory=list)  # the server's pings
    pongs: list[bytes] = field(default_factory=list)
    close: CloseConnection | None = None
    received: int = 0  # DATA bytes, to see compression at work
    outgoing: bytearray = field(default_factory=bytearray)  # waiting for window
    end_after: bool = False  # END_STREAM once outgoing is sent
    ended: bool = False  # the server's END_STREAM
    reset: int | None = None


class Client:
    """One HTTP/2 connection; each WebSocket is a stream (RFC 8441). Uploads respect the
    server's windows; received DATA is acknowledged unless ``ack`` is off."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(5.0)
        config = H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self.conn = H2Connection(config)
        self.streams: dict[int, Stream] = {}
        self.settings: dict[int, int] = {}
        self.goaway: int | None = None  # the error code of the server's GOAWAY
        self._inbuf = bytearray()
        self.closed = False
        self.ack = True
        self.auto_pong = True
        self.auto_close = True  # answer the server's close frame, then END_STREAM
        self.unacked: list[tuple[int, int]] = []
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    # Requests ------------------------------------------------------------------------------

    def open(
        self,
        path: str = "/",
        *,
        subprotocols: Sequence[str] = (),
        deflate: bool = False,
        protocol: bytes = b"websocket",
        version: bytes | None = b"13",
        authority: bool = True,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> int:
        """Send an extended CONNECT; the stream stays open for the WebSocket's frames."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", b"http")]
        headers.append((b":path", path.encode()))
        if authority:
            headers.append((b":authority", b"localhost"))
        if version is not None:
            headers.append((b"sec-websocket-version", version))
        if subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
        if deflate:
            headers.append((b"sec-websocket-extensions", b"permessage-deflate"))
        headers += extra
        self.conn.send_headers(sid, headers, end_stream=False)
        self.streams[sid] = Stream(websocket=True)
        self.flush()
        return sid

    def get(self, path: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
        self.conn.send_headers(sid, headers, end_stream=True)
        self.streams[sid] = Stream()
        self.flush()
        return sid

    def connect(self, path: str = "/", **options: Any) -> int:
        """Open a WebSocket and wait for the 200."""
        sid = self.open(path, **options)
        self.wait(lambda: self.streams[sid].status, "the response")
        assert self.streams[sid].status == 200, self.streams[sid]
        return sid

    def send(self, sid: int, event: Any) -> None:
        stream = self.streams[sid]
        assert stream.ws is not None
        stream.outgoing += stream.ws.send(event)
        self._push()

    def end(self, sid: int) -> None:
        """END_STREAM, once what waits for window is out."""
        self.streams[sid].end_after = True
        self._push()

    def reset(self, sid: int, code: int = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.streams[sid].reset = code
        self.flush()

    def _push(self) -> None:
        for sid, stream in self.streams.items():
            if stream.reset is not None:
                continue
            data = stream.outgoing
            window = min(self.conn.local_flow_control_window(sid), len(data))
            size = self.conn.max_outbound_frame_size
            sent = 0
            while sent < window:
                piece = bytes(data[sent : min(sent + size, window)])
                self.conn.send_data(sid, piece)
                sent += len(piece)
            del data[:sent]
            if stream.end_after and not data:
                stream.end_after = False
                self.conn.end_stream(sid)
        self.flush()

    # Receiving ------------------------------------------------------------------------------

    def pump(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(self._without_goaway(data)):
            self._event(event)
        self._push()

    def _without_goaway(self, data: bytes) -> bytes:
        """h2 as a client stops at a GOAWAY (its connection state becomes CLOSED), where real
        clients finish their open streams: GOAWAY frames are taken out here and noted."""
        self._inbuf += data
        buf = self._inbuf
        kept = bytearray()
        while len(buf) >= 9:
            end = 9 + int.from_bytes(buf[:3], "big")
            if len(buf) < end:
                break
            if buf[3] == 7:  # GOAWAY (RFC 9113 §6.8)
                self.goaway = int.from_bytes(buf[13:17], "big")  # its error code
            else:
                kept += buf[:end]
            del buf[:end]
        return bytes(kept)

    def _event(self, event: Any) -> None:
        if isinstance(event, RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.settings[int(code)] = change.new_value
        elif isinstance(event, ResponseReceived):
            stream = self.streams[event.stream_id]
            stream.headers = dict(event.headers)
            stream.status = int(stream.headers[b":status"])
            if stream.websocket and stream.status == 200:
                stream.ws = self._codec(stream.headers.get(b"sec-websocket-extensions"))
        elif isinstance(event, DataReceived):
            stream = self.streams[event.stream_id]
            stream.received += len(event.data)
            if stream.ws is not None and stream.ws.state != ConnectionState.CLOSED:
                stream.ws.receive_data(event.data)
                self._frames(stream)
            else:
                stream.body += event.data
            if self.ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self.unacked.append((event.flow_controlled_length, event.stream_id))
        elif isinstance(event, StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, StreamReset):
            self.streams[event.stream_id].reset = int(event.error_code)
        elif isinstance(event, WindowUpdated):
            pass  # _push runs after every read

    @staticmethod
    def _codec(extensions: bytes | None) -> Connection:
        if extensions is None:
            return Connection(ConnectionType.CLIENT)
        deflate = PerMessageDeflate()
        deflate.finalize(extensions.decode())
        return Connection(ConnectionType.CLIENT, extensions=[deflate])

    def _frames(self, stream: Stream) -> None:
        ws = stream.ws
        assert ws is not None
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                stream.parts.append(event.data)
                if event.message_finished:
                    joined: str | bytes = (
                        "".join(stream.parts)
                        if isinstance(event, TextMessage)
                        else b"".join(stream.parts)
                    )
                    stream.messages.append(joined)
                    stream.parts = []
            elif isinstance(event, Ping):
                stream.pings.append(bytes(event.payload))
                if self.auto_pong:
                    stream.outgoing += ws.send(event.response())
            elif isinstance(event, Pong):
                stream.pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                stream.close = event
                if not self.auto_close:
                    continue
                if ws.state == ConnectionState.REMOTE_CLOSING:
                    stream.outgoing += ws.send(event.response())
                stream.end_after = True  # the close handshake is done on our side

    def give_back(self) -> None:
        """Acknowledge what ``ack = False`` held back."""
        self.ack = True
        for size, sid in self.unacked:
            self.conn.acknowledge_received_data(size, sid)
        self.unacked.clear()
        self.flush()

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert not self.closed, f"connection closed while waiting for {what}"
            self.pump()

    def message(self, sid: int) -> str | bytes:
        stream = self.streams[sid]
        self.wait(lambda: stream.messages, "a message")
        return stream.messages.pop(0)

    def finished(self, sid: int) -> bool:
        stream = self.streams[sid]
        return stream.ended or stream.reset is not None


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=WS_IMPLS)
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(ws_impl: str) -> Callable[..., Any]:
    @contextlib.contextmanager
    def start(application: Any = app, **settings: Any) -> Iterator[RunningServer]:
        settings.setdefault("ws_ping_interval", None)
        settings.setdefault("timeout_graceful_shutdown", 3)
        with run_server(application, ws=ws_impl, **settings) as srv:
            try:
                yield srv
            finally:
                close_sockets()  # the apps see the disconnect: the server stops at once

    return start


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    disconnects.clear()
    release.clear()
    yield


@pytest.fixture
def server(serve: Callable[..., Any]) -> Iterator[RunningServer]:
    with serve() as srv:
        yield srv


_open: list[socket.socket] = []


def close_sockets() -> None:
    while _open:
        _open.pop().close()


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_sockets()


def client(srv: RunningServer) -> Client:
    sock = srv.connect()
    _open.append(sock)
    return Client(sock)


def h2_connection(srv: RunningServer) -> H2Protocol:
    """The server's side of the one HTTP/2 connection (once it took the preface)."""
    state = srv.server.state
    assert state is not None

    def find() -> list[H2Protocol]:
        return [c for c in list(state.clock.connections) if isinstance(c, H2Protocol)]

    found: list[H2Protocol] = wait_for(find, 5.0, "the HTTP/2 connection")
    [conn] = found
    return conn


def released(srv: RunningServer) -> None:
    """Every stream of the connection gave its slot back (H2Protocol.close_stream)."""
    conn = h2_connection(srv)
    wait_for(lambda: not conn.streams and not conn.codec.open_streams, 5.0, "released streams")


def server_side(srv: RunningServer) -> list[WSConnection]:
    """The server's WebSocket connections (on the clock, as HTTP/1.1 ones are)."""
    state = srv.server.state
    assert state is not None
    return [c for c in list(state.clock.connections) if isinstance(c, WSConnection)]


def disconnect_of(query: str) -> tuple[int, str]:
    return wait_for(lambda: disconnects.get(query), 5.0, f"the app's disconnect ({query})")  # type: ignore[no-any-return]


# Settings ---------------------------------------------------------------------------------


def test_enable_connect_protocol_is_advertised(server: RunningServer) -> None:
    """RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 when WebSockets are served."""
    c = client(server)
    c.wait(lambda: c.settings, "the server's SETTINGS")
    assert c.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1


def test_not_advertised_with_ws_none() -> None:
    """--ws none: not advertised, and an extended CONNECT is malformed (RFC 8441 §4)."""
    with run_server(app, ws="none") as srv:
        c = client(srv)
        c.wait(lambda: c.settings, "the server's SETTINGS")
        assert not c.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL)
        sid = c.open("/")
        c.wait(lambda: c.finished(sid), "the refusal")
        assert c.streams[sid].reset == ErrorCodes.PROTOCOL_ERROR
        http = c.get("/after")
        c.wait(lambda: c.finished(http), "an HTTP response")
        assert c.streams[http].status == 200  # a stream error: the connection lives


# Messages ---------------------------------------------------------------------------------


def test_echo_text_binary_and_fragments(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect("/echo")
    headers = c.streams[sid].headers
    assert b"sec-websocket-accept" not in headers  # RFC 8441 §5: no key, no accept
    assert b"content-length" not in headers
    assert headers[b"server"] == b"sleipnir"
    c.send(sid, TextMessage("héllo"))
    assert c.message(sid) == "héllo"
    c.send(sid, BytesMessage(b"\x00\xff" * 1000))
    assert c.message(sid) == b"\x00\xff" * 1000
    c.send(sid, TextMessage("frag", message_finished=False))
    c.send(sid, TextMessage("mented"))
    assert c.message(sid) == "fragmented"


def test_frames_sent_with_the_handshake_are_delivered(server: RunningServer) -> None:
    """DATA right behind the extended CONNECT, before the 200, is held and handed over."""
    c = client(server)
    sid = c.open("/late")
    early = Connection(ConnectionType.CLIENT)  # a frame layer of its own: masks are per frame
    c.conn.send_data(sid, early.send(TextMessage("early")) + early.send(BytesMessage(b"bird")))
    c.flush()
    streams = h2_connection(server).streams

    def held() -> bool:
        stream = streams.get(sid)
        return isinstance(stream, H2WebSocket) and bool(stream._held)

    wait_for(held, 5.0, "the held frames")
    c.connect("/release")
    assert c.message(sid) == "early"
    assert c.message(sid) == b"bird"
    assert c.streams[sid].status == 200


def test_protocol_error_closes_with_1002(server: RunningServer) -> None:
    """A broken frame (unmasked, RFC 6455 §5.1): our close frame, then END_STREAM."""
    c = client(server)
    sid = c.connect("/?broken")
    c.conn.send_data(sid, b"\x81\x05hello")
    c.flush()
    c.wait(lambda: c.streams[sid].close, "the close frame")
    close = c.streams[sid].close
    assert close is not None and close.code == 1002
    c.wait(lambda: c.streams[sid].ended, "END_STREAM")
    assert disconnect_of("broken")[0] == 1002


def test_scope(serve: Callable[..., Any]) -> None:
    with serve(root_path="/api") as srv:
        c = client(srv)
        sid = c.connect("/scope/x%20y?q=1", subprotocols=["a", "b"])
        info = json.loads(c.message(sid))
    assert info["type"] == "websocket"
    assert info["http_version"] == "2"
    assert info["scheme"] == "ws"
    assert (info["path"], info["raw_path"]) == ("/api/scope/x y", "/api/scope/x%20y")
    assert (info["root_path"], info["query_string"]) == ("/api", "q=1")
    assert info["subprotocols"] == ["a", "b"]
    assert info["extensions"] == ["websocket.http.response"]
    assert info["headers"][0] == ["host", "localhost"]
    assert ["sec-websocket-version", "13"] in info["headers"]


def test_subprotocol_and_extra_headers(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect("/proto", subprotocols=["a", "b"])
    headers = c.streams[sid].headers
    assert headers[b"sec-websocket-protocol"] == b"b"
    assert headers[b"x-extra"] == b"1"
    assert b"content-length" not in headers  # RFC 9110 §9.3.6: none in a 2xx to CONNECT
    assert b"date" in headers


def test_ping_is_answered(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect()
    c.send(sid, Ping(b"are you there"))
    c.wait(lambda: c.streams[sid].pongs, "the pong")
    assert c.streams[sid].pongs == [b"are you there"]


def test_keepalive_pings_on_the_clock(serve: Callable[..., Any]) -> None:
    """The server's pings come from the same deadline sweep as over HTTP/1.1."""
    with serve(ws_ping_interval=0.1, ws_ping_timeout=5) as srv:
        c = client(srv)
        sid = c.connect()
        c.wait(lambda: len(c.streams[sid].pings) >= 2, "two keep-alive pings")
        c.send(sid, TextMessage("still here"))
        assert c.message(sid) == "still here"


def test_unanswered_ping_closes_with_1011(serve: Callable[..., Any]) -> None:
    with serve(ws_ping_interval=0.1, ws_ping_timeout=0.2) as srv:
        c = client(srv)
        c.auto_pong = False
        sid = c.connect("/?noping")
        c.wait(lambda: c.streams[sid].close, "the close frame")
        close = c.streams[sid].close
        assert close is not None and close.code == 1011
        assert disconnect_of("noping")[0] == 1011


def test_permessage_deflate(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect(deflate=True)
    extensions = c.streams[sid].headers[b"sec-websocket-extensions"]
    assert extensions.startswith(b"permessage-deflate")
    text = "compress me " * 20_000
    before = c.streams[sid].received
    c.send(sid, TextMessage(text))
    assert c.message(sid) == text
    assert c.streams[sid].received - before < len(text) // 20  # it went out compressed


def test_permessage_deflate_off(serve: Callable[..., Any]) -> None:
    with serve(ws_per_message_deflate=False) as srv:
        c = client(srv)
        sid = c.connect(deflate=True)
        assert b"sec-websocket-extensions" not in c.streams[sid].headers
        c.send(sid, TextMessage("plain"))
        assert c.message(sid) == "plain"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_large_messages_cross_the_windows(
    serve: Callable[..., Any], deflate: bool, loop: str
) -> None:
    """A 1 MiB message each way: more than the stream windows (64 KiB) on both sides, sent
    as WINDOW_UPDATEs come (h2 would fail the connection if either side overran one)."""
    with serve(loop=loop) as srv:
        c = client(srv)
        sid = c.connect(deflate=deflate)
        blob = bytes(range(256)) * (BIG // 256)
        c.send(sid, BytesMessage(blob))
        assert c.message(sid) == blob
        c.send(sid, TextMessage("x" * BIG))
        assert c.message(sid) == "x" * BIG


# Closing ----------------------------------------------------------------------------------


def test_client_close_code_reaches_the_app(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect("/?client-close")
    c.send(sid, CloseConnection(4000, "bye"))
    c.wait(lambda: c.streams[sid].close, "the echoed close frame")
    close = c.streams[sid].close
    assert close is not None and (close.code, close.reason) == (4000, "bye")
    c.wait(lambda: c.streams[sid].ended, "END_STREAM")  # RFC 8441 §5: the TCP FIN
    assert disconnect_of("client-close") == (4000, "bye")


def test_app_close(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect("/app-close?app-close")
    assert c.message(sid) == "closing"
    c.wait(lambda: c.streams[sid].close, "the close frame")
    close = c.streams[sid].close
    assert close is not None and (close.code, close.reason) == (4001, "done here")
    c.wait(lambda: c.streams[sid].ended, "END_STREAM after the closing handshake")
    assert c.streams[sid].reset is None
    assert disconnect_of("app-close")[0] == 4001
    released(server)
    assert not server_side(server)


def test_app_return_closes_with_1000(server: RunningServer) -> None:
    c = client(server)
    sid = c.connect("/return")
    c.wait(lambda: c.streams[sid].close, "the close frame")
    close = c.streams[sid].close
    assert close is not None and close.code == 1000
    c.wait(lambda: c.streams[sid].ended, "END_STREAM")


def test_client_reset_is_1006_and_other_streams_go_on(server: RunningServer) -> None:
    c = client(server)
    gone = c.connect("/?reset")
    stays = c.connect("/?stays")
    c.send(gone, TextMessage("before"))
    assert c.message(gone) == "before"
    c.reset(gone)
    assert disconnect_of("reset") == (1006, "")
    c.send(stays, TextMessage("still open"))
    assert c.message(stays) == "still open"
    http = c.get("/plain")
    c.wait(lambda: c.finished(http), "an HTTP response")
    assert c.streams[http].status == 200
    wait_for(lambda: len(server_side(server)) == 1, 5.0, "the reset WebSocket to go")
    c.send(stays, CloseConnection(1000))
    c.wait(lambda: c.streams[stays].ended, "END_STREAM")
    released(server)


def test_client_end_stream_without_close_frame_is_1006(server: RunningServer) -> None:
    """END_STREAM is the TCP FIN of RFC 8441 §5: without a close frame, 1006."""
    c = client(server)
    sid = c.connect("/?eof")
    c.end(sid)
    c.wait(lambda: c.finished(sid), "the server's END_STREAM")
    assert disconnect_of("eof") == (1006, "")


def test_unanswered_close_resets_the_stream(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No close frame back within the close timeout (shortened here; the server runs in this
    process): RST_STREAM CANCEL, RFC 8441 §5's form of a TCP RST."""
    from sleipnir.transport import ws_protocol

    monkeypatch.setattr(ws_protocol, "CLOSE_TIMEOUT_S", 0.2)
    with serve() as srv:
        c = client(srv)
        c.auto_close = False
        sid = c.connect("/app-close?unanswered")
        c.wait(lambda: c.streams[sid].close, "the close frame")
        c.wait(lambda: c.streams[sid].reset is not None, "RST_STREAM")
        assert c.streams[sid].reset == ErrorCodes.CANCEL
        assert not c.streams[sid].ended
        assert disconnect_of("unanswered") == (1006, "")  # no close frame came back


def test_shutdown_closes_with_1012(serve: Callable[..., Any]) -> None:
    with serve() as srv:
        c = client(srv)
        sid = c.connect("/?shutdown")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        try:
            c.wait(lambda: c.streams[sid].close, "the close frame")
            close = c.streams[sid].close
            assert close is not None and close.code == 1012
            c.wait(lambda: c.finished(sid), "the end of the stream")
            c.wait(lambda: c.goaway is not None, "GOAWAY")
            assert c.goaway == ErrorCodes.NO_ERROR
            c.wait(lambda: c.closed, "the connection to close")
        finally:
            stopper.join(15)
        assert not stopper.is_alive()
    assert disconnects["shutdown"][0] == 1012


# Denials and bad handshakes -----------------------------------------------------------------


def test_denial_response(server: RunningServer) -> None:
    """websocket.http.response goes out as an HTTP/2 response on the stream."""
    c = client(server)
    sid = c.open("/deny")
    c.wait(lambda: c.finished(sid), "the response")
    stream = c.streams[sid]
    assert stream.status == 403
    assert stream.headers[b"x-why"] == b"not today"
    assert bytes(stream.body) == b"no entry"
    assert stream.ended
    released(server)  # RST_STREAM NO_ERROR for the unfinished request (RFC 9113 §8.1)


def test_close_before_accept_is_403(server: RunningServer) -> None:
    c = client(server)
    sid = c.open("/close-first")
    c.wait(lambda: c.finished(sid), "the response")
    assert c.streams[sid].status == 403


@pytest.mark.parametrize(
    ("options", "status"),
    [
        ({"version": b"8"}, 400),
        ({"version": None}, 400),
        ({"extra": [(b"content-length", b"0")]}, 400),
        ({"protocol": b"connect-udp"}, 501),  # RFC 9220 §3
    ],
    ids=["version-8", "no-version", "content-length", "other-protocol"],
)
def test_refused_handshakes(server: RunningServer, options: dict[str, Any], status: int) -> None:
    c = client(server)
    sid = c.open("/", **options)
    c.wait(lambda: c.finished(sid), "the refusal")
    stream = c.streams[sid]
    assert stream.status == status
    if "version" in options:
        assert stream.headers[b"sec-websocket-version"] == b"13"  # RFC 6455 §4.4
    ok = c.connect("/")  # the connection serves the next one
    c.send(ok, TextMessage("fine"))
    assert c.message(ok) == "fine"


def test_extended_connect_without_authority_is_malformed(server: RunningServer) -> None:
    c = client(server)
    sid = c.open("/", authority=False)
    c.wait(lambda: c.finished(sid), "the refusal")
    assert c.streams[sid].reset == ErrorCodes.PROTOCOL_ERROR


def test_plain_connect_is_still_501(server: RunningServer) -> None:
    c = client(server)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    c.streams[sid] = Stream()
    c.flush()
    c.wait(lambda: c.finished(sid), "the refusal")
    assert c.streams[sid].status == 501


# Multiplexing and flow control ------------------------------------------------------------


def test_two_websockets_and_a_request_on_one_connection(server: RunningServer) -> None:
    c = client(server)
    first = c.connect("/?first")
    second = c.connect("/?second", deflate=True)
    http = c.get("/page")
    for index in range(5):
        c.send(first, TextMessage(f"one {index}"))
        c.send(second, BytesMessage(b"two %d" % index))
    assert [c.message(first) for _ in range(5)] == [f"one {i}" for i in range(5)]
    assert [c.message(second) for _ in range(5)] == [b"two %d" % i for i in range(5)]
    c.wait(lambda: c.finished(http), "the HTTP response")
    assert json.loads(c.streams[http].body) == {"http_version": "2", "path": "/page"}
    c.send(first, CloseConnection(1000))
    assert disconnect_of("first")[0] == 1000
    c.send(second, TextMessage("after the other closed"))
    assert c.message(second) == "after the other closed"


def test_app_not_reading_closes_the_clients_window(serve: Callable[..., Any]) -> None:
    """While the app does not receive, the server stops giving DATA back to the stream's
    window (its reading is paused, as a socket's would be), then catches up."""
    with serve(ws_max_queue=2) as srv:
        c = client(srv)
        sid = c.connect("/hold")
        chunk = b"h" * 16384
        for _ in range(40):  # 640 KiB, ten times the stream window
            c.send(sid, BytesMessage(chunk))
        c.send(sid, TextMessage("end"))
        [conn] = server_side(srv)

        def held() -> bool:
            transport = conn.transport
            assert isinstance(transport, H2StreamTransport)
            return not transport.is_reading() and bool(transport._held)

        wait_for(held, 5.0, "the server to hold DATA unacknowledged")
        assert c.streams[sid].outgoing  # the window is shut: the rest waits
        releaser = c.connect("/release")
        assert c.message(sid) == f"40 {40 * len(chunk)}"
        assert not c.streams[sid].outgoing
        c.send(releaser, CloseConnection(1000))


def test_client_not_reading_blocks_the_apps_send(serve: Callable[..., Any]) -> None:
    """The app's sends wait for the client's window (drain), then all of it arrives."""
    with serve() as srv:
        c = client(srv)
        c.ack = False
        sid = c.connect("/flood")
        [conn] = server_side(srv)
        wait_for(lambda: conn.write_paused, 5.0, "the app's send to wait for window")
        assert len(c.streams[sid].messages) < 32
        c.give_back()
        for index in range(32):
            assert c.message(sid) == bytes([index]) * 65536
        assert c.message(sid) == "done"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_full_socket_buffer_blocks_the_apps_send(serve: Callable[..., Any], loop: str) -> None:
    """Windows wide open, but the client does not read its socket: the connection's transport
    pauses writing, and the WebSocket's sends wait for it (WriteFlow.when_drained)."""
    with serve(loop=loop) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((srv.host, srv.port))
        _open.append(sock)
        c = Client(sock)
        c.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        c.conn.increment_flow_control_window(2**31 - 1 - 65535)
        c.flush()
        c.wait(lambda: c.settings, "the server's SETTINGS")
        # Small kernel buffers on both ends, so that 2 MiB cannot all sit in them.
        server_sock = h2_connection(srv).transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sid = c.connect("/flood")
        [conn] = server_side(srv)
        transport = conn.transport
        assert isinstance(transport, H2StreamTransport)
        wait_for(lambda: conn.write_paused, 5.0, "the app's send to wait for the socket")
        assert not transport.get_write_buffer_size()  # not the windows: the socket buffer
        assert h2_connection(srv).write_paused
        for index in range(32):
            assert c.message(sid) == bytes([index]) * 65536
        assert c.message(sid) == "done"
        wait_for(lambda: not conn.write_paused, 5.0, "the send side to resume")


# TLS: wss ---------------------------------------------------------------------------------


def test_wss_over_tls_alpn(serve: Callable[..., Any], localhost_cert: LocalhostCert) -> None:
    ca, cert, key = localhost_cert
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    with serve(ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        raw = srv.connect()
        tls = context.wrap_socket(raw, server_hostname="localhost")
        _open.append(tls)
        assert tls.selected_alpn_protocol() == "h2"
        c = Client(tls)
        sid = c.connect("/scope")
        info = json.loads(c.message(sid))
        assert (info["scheme"], info["http_version"]) == ("wss", "2")
        c.send(sid, TextMessage("secure"))
        assert c.message(sid) == "secure"


# The request check (wire/ws.py), shared with HTTP/1.1 --------------------------------------

FIELDS = [
    (b"host", b"localhost"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"chat, superchat"),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
]


def test_check_extended_connect_reads_the_fields_as_http11_does() -> None:
    handshake = ws.check_extended_connect("CONNECT", b"websocket", FIELDS)
    assert handshake.subprotocols == ["chat", "superchat"]
    assert handshake.extension_offers == [b"permessage-deflate; client_max_window_bits"]
    assert handshake.key == b""  # RFC 8441 §5: no key, no accept
    http11 = [*FIELDS, (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    same = ws.check_handshake("GET", "1.1", http11)
    assert (same.subprotocols, same.extension_offers) == (
        handshake.subprotocols,
        handshake.extension_offers,
    )


def test_check_extended_connect_ignores_a_key_and_any_case_of_the_token() -> None:
    fields = [*FIELDS, (b"sec-websocket-key", b"not even base64")]
    assert ws.check_extended_connect("CONNECT", b"WebSocket", fields).key == b""


@pytest.mark.parametrize(
    ("protocol", "fields", "status", "headers"),
    [
        (b"websocket", FIELDS[:1], 400, [(b"sec-websocket-version", b"13")]),
        (
            b"websocket",
            [(b"sec-websocket-version", b"8")],
            400,
            [(b"sec-websocket-version", b"13")],
        ),
        (b"websocket", [*FIELDS, (b"content-length", b"0")], 400, []),
        (b"connect-udp", FIELDS, 501, []),  # RFC 9220 §3
    ],
    ids=["no-version", "version-8", "content-length", "other-protocol"],
)
def test_check_extended_connect_refusals(
    protocol: bytes, fields: list[tuple[bytes, bytes]], status: int, headers: Any
) -> None:
    with pytest.raises(ws.HandshakeError) as info:
        ws.check_extended_connect("CONNECT", protocol, fields)
    assert (info.value.status, info.value.headers) == (status, headers)


def test_accept_headers_drop_what_the_server_writes() -> None:
    extra = [(b"X-A", b"1"), (b"Sec-WebSocket-Accept", b"forged"), (b"connection", b"x")]
    assert ws.accept_headers("chat", b"permessage-deflate", extra) == [
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"X-A", b"1"),
    ]
