"""HTTP/2 end to end: a real server, real clients (the h2 library over a plain socket for
prior knowledge, httpx over TLS with ALPN, curl), the same ASGI HTTP cycle as HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from conftest import LocalhostCert, RunningServer, run_server
from sleipnir.transport.h2_protocol import H2Protocol
from sleipnir.types import Receive, Scope, Send

LOOPS = ["uvloop", "asyncio"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BIG = 1 << 20
UPLOAD = 300_000  # more than the server's 64 KiB stream window and the client's

disconnects: list[str] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/wait":  # until the client goes away
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnects.append(scope["query_string"].decode())
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/slow":
        await asyncio.sleep(0.3)
    headers = [(b"content-type", b"text/plain")]
    if path == "/echo":
        out = bytes(body)
    elif path == "/digest":  # a short answer to a long body
        out = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(4):  # four sends of 256 KiB: each waits for window
            chunk = b"x" * (BIG // 4)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    elif path == "/bigone":  # the whole body in the last message: the app ends before it is out
        out = b"z" * BIG
    elif path == "/scope":
        info = {
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "method": scope["method"],
            "path": scope["path"],
            "query_string": scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "extensions": sorted(scope["extensions"]),
            "client": scope["client"],
            "loop": type(asyncio.get_running_loop()).__module__,
        }
        out = json.dumps(info).encode()
    else:
        out = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


# A raw HTTP/2 client ---------------------------------------------------------------------


@dataclass
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class Client:
    """The h2 library as a client over a blocking socket; uploads respect the windows."""

    def __init__(self, sock: socket.socket, send_preface: bool = True) -> None:
        self.sock = sock
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.responses: dict[int, Response] = {}
        self.uploads: dict[int, bytes] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False
        self.autoflush = True  # False: the caller sends conn.data_to_send() itself
        self.conn.initiate_connection()
        if send_preface:
            self.flush()

    def flush(self) -> None:
        if not self.autoflush:
            return
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self, method: str, path: str, body: bytes = b"", extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *extra,
        ]
        self.conn.send_headers(sid, headers, end_stream=not body)
        self.responses[sid] = Response()
        if body:
            self.uploads[sid] = body
            self._push_uploads()
        self.flush()
        return sid

    def _push_uploads(self) -> None:
        for sid, rest in list(self.uploads.items()):
            window = min(self.conn.local_flow_control_window(sid), len(rest))
            size = self.conn.max_outbound_frame_size
            sent = 0
            while sent < window:
                piece = rest[sent : min(sent + size, window)]
                self.conn.send_data(sid, piece, end_stream=sent + len(piece) == len(rest))
                sent += len(piece)
            rest = rest[sent:]
            if rest:
                self.uploads[sid] = rest
            else:
                del self.uploads[sid]

    def pump(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            return
        self.handle(data)

    def handle(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                response = self.responses[event.stream_id]
                response.headers = dict(event.headers)
                response.status = int(response.headers[b":status"])
            elif isinstance(event, DataReceived):
                self.responses[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self.responses[event.stream_id].ended = True
            elif isinstance(event, StreamReset):
                self.responses[event.stream_id].reset = int(event.error_code)
            elif isinstance(event, WindowUpdated):
                self._push_uploads()
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        self.flush()

    def wait(self, *sids: int, timeout: float = 10.0) -> list[Response]:
        deadline = time.monotonic() + timeout
        while not all(self.responses[s].ended or self.responses[s].reset for s in sids):
            assert time.monotonic() < deadline, "timed out waiting for responses"
            assert not self.closed, "connection closed"
            self.pump()
        return [self.responses[s] for s in sids]


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "uvloop":
        pytest.importorskip("uvloop")
    return name


@pytest.fixture
def server(loop: str) -> Iterator[RunningServer]:
    with run_server(app, loop=loop) as srv:
        yield srv


_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def connect(srv: RunningServer) -> Client:
    sock = srv.connect()
    _open.append(sock)
    return Client(sock)


# Prior knowledge -------------------------------------------------------------------------


def test_get(server: RunningServer, loop: str) -> None:
    client = connect(server)
    [response] = client.wait(client.request("GET", "/scope?a=1"))
    assert response.status == 200
    assert response.headers[b"server"] == b"sleipnir"
    assert b"date" in response.headers
    assert response.headers[b"content-length"] == b"%d" % len(response.body)
    seen = json.loads(response.body)
    assert seen["http_version"] == "2"
    assert (seen["scheme"], seen["method"], seen["path"]) == ("http", "GET", "/scope")
    assert seen["query_string"] == "a=1"
    assert seen["headers"][0] == ["host", "localhost"]
    assert seen["extensions"] == [
        "http.response.early_hint",
        "http.response.pathsend",
        "http.response.push",
        "http.response.trailers",
    ]
    assert seen["loop"].split(".")[0] == loop


def test_post_larger_than_the_windows(server: RunningServer) -> None:
    client = connect(server)
    body = bytes(range(256)) * (UPLOAD // 256)
    [response] = client.wait(client.request("POST", "/echo", body))
    assert response.status == 200
    assert bytes(response.body) == body


def test_large_response_through_windows(server: RunningServer) -> None:
    client = connect(server)
    [response] = client.wait(client.request("GET", "/big"))
    assert response.status == 200
    assert len(response.body) == BIG


def test_concurrent_streams(server: RunningServer) -> None:
    client = connect(server)
    started = time.monotonic()
    sids = [client.request("GET", "/slow") for _ in range(10)]
    responses = client.wait(*sids)
    assert [r.status for r in responses] == [200] * 10
    assert all(r.body == b"hello" for r in responses)
    assert time.monotonic() - started < 2.5  # run together, not one after another (3 s)


def test_reset_disconnects_that_stream_only(server: RunningServer) -> None:
    disconnects.clear()
    client = connect(server)
    waiting = client.request("GET", "/wait?reset")
    other = client.request("GET", "/slow")
    time.sleep(0.1)
    client.conn.reset_stream(waiting, 8)  # CANCEL
    client.flush()
    [response] = client.wait(other)
    assert (response.status, bytes(response.body)) == (200, b"hello")
    deadline = time.monotonic() + 5
    while not disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert disconnects == ["reset"]


def test_app_exception_is_a_500_on_that_stream(server: RunningServer) -> None:
    client = connect(server)
    failing = client.request("GET", "/boom")
    fine = client.request("GET", "/")
    bad, good = client.wait(failing, fine)
    assert bad.status == 500
    assert b"connection" not in bad.headers  # connection-specific: dropped over HTTP/2
    assert (good.status, bytes(good.body)) == (200, b"hello")


def test_head_has_no_body(server: RunningServer) -> None:
    client = connect(server)
    [response] = client.wait(client.request("HEAD", "/"))
    assert response.status == 200
    assert response.headers[b"content-length"] == b"5"
    assert response.body == b""


def test_split_preface(server: RunningServer) -> None:
    sock = server.connect()
    _open.append(sock)
    client = Client(sock, send_preface=False)
    data = client.conn.data_to_send()
    for piece in (data[:3], data[3:20], data[20:]):
        sock.sendall(piece)
        time.sleep(0.05)
    [response] = client.wait(client.request("GET", "/"))
    assert response.status == 200


def test_goaway_on_shutdown_finishes_in_flight_stream(loop: str) -> None:
    # h2 as a client stops at a GOAWAY (its connection state is CLOSED), as real clients do
    # not: what follows it is read as raw frames.
    with run_server(app, loop=loop) as srv:
        client = connect(srv)
        sid = client.request("GET", "/slow")
        client.sock.settimeout(10)
        time.sleep(0.1)
        srv.server.should_exit = True
        received = bytearray()
        while chunk := client.sock.recv(1 << 16):
            received += chunk
    frames = []
    view = memoryview(received)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    kinds = [type(f).__name__ for f in frames if f.stream_id == sid or isinstance(f, GoAwayFrame)]
    assert kinds == ["GoAwayFrame", "HeadersFrame", "DataFrame"]
    goaway = next(f for f in frames if isinstance(f, GoAwayFrame))
    assert (goaway.error_code, goaway.last_stream_id) == (0, sid)
    headers = next(f for f in frames if isinstance(f, HeadersFrame))
    assert dict(Decoder().decode(headers.data, raw=True))[b":status"] == b"200"
    data = next(f for f in frames if isinstance(f, DataFrame))
    assert (bytes(data.data), "END_STREAM" in data.flags) == (b"hello", True)


def test_http2_off_serves_the_preface_as_http11() -> None:
    with run_server(app, http2=False) as srv, srv.connect() as sock:
        sock.sendall(PREFACE)
        assert sock.recv(100).startswith(b"HTTP/1.1 ")


def test_http11_still_served(server: RunningServer) -> None:
    with httpx.Client(timeout=5) as client:
        response = client.post(server.url + "/echo", content=b"abc")
    assert (response.http_version, response.text) == ("HTTP/1.1", "abc")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_prior_knowledge(server: RunningServer) -> None:
    command = ["curl", "-s", "--http2-prior-knowledge", "--max-time", "10"]
    command += ["-w", " %{http_version}", server.url + "/echo", "--data-binary", "x" * 100_000]
    out = subprocess.run(
        command,
        capture_output=True,
        timeout=20,
    )
    if b"--http2-prior-knowledge" in out.stderr:  # pragma: no cover - curl without HTTP/2
        pytest.skip("curl without HTTP/2")
    assert out.stdout == b"x" * 100_000 + b" 2"


# TLS with ALPN ---------------------------------------------------------------------------


def test_tls_alpn(localhost_cert: LocalhostCert, loop: str) -> None:
    ca, cert, key = localhost_cert
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    settings: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "loop": loop}
    with run_server(app, **settings) as srv:
        with httpx.Client(http2=True, verify=context, timeout=5) as client:
            responses = [client.get(srv.url + "/scope") for _ in range(3)]
            upload = client.post(srv.url + "/echo", content=b"y" * UPLOAD)
        with httpx.Client(verify=context, timeout=5) as client:
            plain = client.get(srv.url + "/scope")
    assert {r.http_version for r in responses} == {"HTTP/2"}
    seen = responses[0].json()
    assert (seen["http_version"], seen["scheme"]) == ("2", "https")
    assert upload.content == b"y" * UPLOAD
    assert plain.http_version == "HTTP/1.1"
    assert plain.json()["http_version"] == "1.1"


def test_tls_without_http2_offers_http11_only(localhost_cert: LocalhostCert) -> None:
    ca, cert, key = localhost_cert
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        run_server(app, ssl_certfile=str(cert), ssl_keyfile=str(key), http2=False) as srv,
        srv.connect() as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_many_connections_in_threads(server: RunningServer) -> None:
    """Streams of several connections at once: each connection's windows are its own."""
    errors: list[BaseException] = []

    def one() -> None:
        try:
            client = connect(server)
            [response] = client.wait(client.request("GET", "/big"))
            assert len(response.body) == BIG
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []


# h2c Upgrade -----------------------------------------------------------------------------


def _upgrade_request(settings: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET /scope HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n" + extra + b"\r\n"
    )


def test_h2c_upgrade(loop: str, parser: str) -> None:
    with run_server(app, loop=loop, http=parser) as srv:
        _h2c_upgrade(srv)


def _h2c_upgrade(server: RunningServer) -> None:
    sock = server.connect()
    _open.append(sock)
    client = Client(sock, send_preface=False)
    client.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    settings = client.conn.initiate_upgrade_connection()
    assert settings is not None
    client.responses[1] = Response()
    sock.sendall(_upgrade_request(settings))
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(1 << 16)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: h2c" in head.lower()
    client.flush()  # the client preface
    client.handle(rest)
    [response] = client.wait(1)
    assert response.status == 200
    seen = json.loads(response.body)
    assert seen["http_version"] == "2"
    names = {name for name, _ in seen["headers"]}
    assert not names & {"upgrade", "connection", "http2-settings"}
    # The connection is HTTP/2 from here: another stream.
    [again] = client.wait(client.request("GET", "/"))
    assert (again.status, bytes(again.body)) == (200, b"hello")


def test_h2c_invalid_settings_is_a_400(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(_upgrade_request(b"!!"))
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 400 ")


def test_h2c_upgrade_ignored_with_http2_off() -> None:
    with run_server(app, http2=False) as srv, srv.connect() as sock:
        sock.sendall(_upgrade_request(b"AAMAAABkAAQCAAAAAAIAAAAA", b"Connection: close\r\n"))
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 ")


def test_reset_while_the_body_waits_for_window_frees_the_stream(server: RunningServer) -> None:
    client = connect(server)
    sid = client.request("GET", "/bigone")
    while not client.responses[sid].body:  # read, without acknowledging: the window stays shut
        data = client.sock.recv(1 << 16)
        for event in client.conn.receive_data(data):
            if isinstance(event, DataReceived):
                client.responses[sid].body += event.data
    client.conn.reset_stream(sid, 8)
    client.flush()
    state = server.server.state
    assert state is not None
    [conn] = state.clock.connections
    assert isinstance(conn, H2Protocol)
    deadline = time.monotonic() + 5
    while conn.streams:
        assert time.monotonic() < deadline, "the reset stream was never closed"
        time.sleep(0.01)
    [response] = client.wait(client.request("GET", "/"))
    assert response.status == 200


def test_request_body_limit_is_a_413_on_that_stream() -> None:
    with run_server(app, limit_request_body=1000) as srv:
        client = connect(srv)
        declared = client.request("POST", "/echo", b"a" * 5000, [(b"content-length", b"5000")])
        undeclared = client.request("POST", "/echo", b"b" * 5000)
        fine = client.request("POST", "/echo", b"c" * 500)
        first, second, third = client.wait(declared, undeclared, fine)
    assert (first.status, second.status) == (413, 413)
    assert (third.status, bytes(third.body)) == (200, b"c" * 500)


def test_max_concurrent_streams_setting_refuses_the_extra_streams() -> None:
    """--h2-max-concurrent-streams N: advertised, and streams opened beyond it (sent before
    the client read the server's SETTINGS) get REFUSED_STREAM while the first N are served."""
    with run_server(app, h2_max_concurrent_streams=2) as srv:
        client = connect(srv)
        sids = []
        for _ in range(4):  # each stays open (no END_STREAM) until its body is sent below
            sid = client.conn.get_next_available_stream_id()
            fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo")]
            client.conn.send_headers(sid, [*fields, (b":authority", b"localhost")])
            client.responses[sid] = Response()
            sids.append(sid)
        client.flush()
        refused = client.wait(*sids[2:])
        assert [r.reset for r in refused] == [ErrorCodes.REFUSED_STREAM] * 2
        assert client.conn.remote_settings.max_concurrent_streams == 2
        for sid in sids[:2]:
            client.conn.send_data(sid, b"body %d" % sid, end_stream=True)
        client.flush()
        served = client.wait(*sids[:2])
    assert [(r.status, bytes(r.body)) for r in served] == [(200, b"body 1"), (200, b"body 3")]


# Write flow: a full socket buffer holds every stream's sender --------------------------------

flood_timed_out = threading.Event()
FLOOD_CHUNK = 256 * 1024
FLOOD_CHUNKS = 40


async def flood_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Sends 10 MiB; ``?patient=0``: gives up (cancels its send) after 0.3 s blocked."""
    if scope["type"] != "http":
        return
    patient = scope["query_string"] != b"patient=0"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"f" * FLOOD_CHUNK
    for _ in range(FLOOD_CHUNKS):
        message = {"type": "http.response.body", "body": chunk, "more_body": True}
        if patient:
            await send(message)
            continue
        try:
            await asyncio.wait_for(send(message), 0.3)
        except TimeoutError:
            flood_timed_out.set()
            return
    await send({"type": "http.response.body", "body": b""})


def test_a_cancelled_sender_leaves_the_others_waiting(loop: str) -> None:
    """Two streams wait for the connection's full socket buffer (the client reads nothing);
    one app cancels its send (a timeout). The other must go on waiting, then finish: the
    wait they share is not cancelled under it."""
    flood_timed_out.clear()
    with run_server(flood_app, loop=loop) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        _open.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        client = Client(sock, send_preface=False)
        client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        client.flush()
        # Both requests in one write: once the buffer is full the server reads no more.
        client.autoflush = False
        patient = client.request("GET", "/?patient=1")
        impatient = client.request("GET", "/?patient=0")
        client.autoflush = True
        client.flush()
        assert flood_timed_out.wait(10), "the impatient app never blocked"
        kept, dropped = client.wait(patient, impatient, timeout=30)
        assert kept.ended and kept.reset is None
        assert len(kept.body) == FLOOD_CHUNK * FLOOD_CHUNKS
        assert dropped.reset is not None  # its app returned without finishing


# h2c Upgrade of a request with a body ---------------------------------------------------------

FRAMINGS = ["content-length", "chunked"]


def _chunked(body: bytes, size: int = 20_000) -> bytes:
    """``body`` as chunks with an extension on the first, then a trailer section."""
    pieces = [body[at : at + size] for at in range(0, len(body), size)]
    out = [b"%x;ext=1\r\n%s\r\n" % (len(pieces[0]), pieces[0])]
    out += [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces[1:]]
    return b"".join(out) + b"0\r\nx-trailer: 1\r\n\r\n"


def _upgrade_head(path: bytes, settings: bytes, field_line: bytes) -> bytes:
    """The head of an h2c Upgrade request (RFC 7540 §3.2) with a body framed by
    ``field_line``."""
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: " + settings + b"\r\n" + field_line + b"\r\n\r\n"
    )


def _body_upgrade(path: bytes, settings: bytes, framing: str, body: bytes) -> bytes:
    """An h2c Upgrade request carrying ``body``, framed as ``framing``."""
    if framing == "chunked":
        return _upgrade_head(path, settings, b"Transfer-Encoding: chunked") + _chunked(body)
    return _upgrade_head(path, settings, b"Content-Length: %d" % len(body)) + body


def _upgrade_client(sock: socket.socket) -> tuple[Client, bytes]:
    """An h2 client whose request is sent over HTTP/1.1: stream 1 is opened by the 101."""
    _open.append(sock)
    client = Client(sock, send_preface=False)
    client.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    settings = client.conn.initiate_upgrade_connection()  # the preface waits in the client
    assert settings is not None
    client.responses[1] = Response()
    return client, settings


def _read_101(client: Client) -> None:
    """Read the 101 and hand the bytes after it to the HTTP/2 client."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = client.sock.recv(1 << 16)
        assert chunk, f"connection closed before the 101: {received!r}"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"upgrade: h2c" in head.lower()
    client.handle(rest)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("pipelined", [False, True], ids=["preface-after-101", "pipelined"])
def test_h2c_upgrade_with_a_body(loop: str, parser: str, framing: str, pipelined: bool) -> None:
    """The request's body is read as HTTP/1.1 (the 101 comes at its end) and is stream 1's;
    what follows it (the client preface) is HTTP/2. ``pipelined``: the preface comes in the
    same write as the body, so the server finds it in the bytes the HTTP/1.1 parser held."""
    body = bytes(range(256)) * (UPLOAD // 256)  # more than BODY_HIGH_WATER_BYTES
    with run_server(app, loop=loop, http=parser) as srv:
        client, settings = _upgrade_client(srv.connect())
        request = _body_upgrade(b"/echo", settings, framing, body)
        if pipelined:
            client.sock.sendall(request + client.conn.data_to_send())
            _read_101(client)
        else:
            client.sock.sendall(request)
            _read_101(client)
            client.flush()  # the client preface, only now (RFC 7540 §3.2)
        [response] = client.wait(1)
        assert (response.status, response.body == body) == (200, True)
        # The connection is HTTP/2 from here: another stream, with a body of its own.
        [again] = client.wait(client.request("POST", "/echo", b"after"))
        assert (again.status, bytes(again.body)) == (200, b"after")


def test_h2c_upgrade_with_a_body_scope(parser: str) -> None:
    """Stream 1's scope: HTTP/2, the body's framing and the upgrade fields gone."""
    with run_server(app, http=parser) as srv:
        client, settings = _upgrade_client(srv.connect())
        client.sock.sendall(_body_upgrade(b"/scope", settings, "chunked", b"x" * 100))
        _read_101(client)
        client.flush()
        [response] = client.wait(1)
    seen = json.loads(response.body)
    assert (seen["http_version"], seen["method"]) == ("2", "POST")
    names = {name for name, _ in seen["headers"]}
    assert not names & {"upgrade", "connection", "http2-settings", "transfer-encoding"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_h2c_upgrade_with_a_body(loop: str, parser: str, tmp_path: Path) -> None:
    """``curl --http2 -d @file``: h2c Upgrade on a POST; the answer comes back over HTTP/2.

    The answer is a digest of the body, not the body: curl 7.88 (Debian 12) gives up when more
    than its 32 KiB buffer follows the 101 in one read ("connection buffer size is too small
    to store data following HTTP Upgrade response header"), and a server that answers fast
    enough makes that happen at random."""
    body = (b"0123456789abcdef" * (UPLOAD // 16))[:UPLOAD]
    path = tmp_path / "body"
    path.write_bytes(body)
    with run_server(app, loop=loop, http=parser) as srv:
        command = ["curl", "-s", "--http2", "--max-time", "10", "-w", " %{http_version}"]
        out = subprocess.run(
            [*command, "-d", f"@{path}", srv.url + "/digest"],
            capture_output=True,
            timeout=20,
        )
    if b"--http2" in out.stderr:  # pragma: no cover - curl without HTTP/2
        pytest.skip("curl without HTTP/2")
    digest = hashlib.sha256(body).hexdigest().encode()
    assert out.stdout == b"%d %s 2" % (len(body), digest)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_h2c_upgrade_expecting_100_is_served_over_http11(
    server: RunningServer, tmp_path: Path
) -> None:
    """curl asks for 100 Continue before a body over 1 MiB and sends it only then. After a
    101 no HTTP/1.1 100 can come (and a 100 on stream 1 would wait behind the client's
    preface, itself behind the body), so such a request is not upgraded."""
    path = tmp_path / "body"
    path.write_bytes(b"b" * (1 << 20 | 1))
    command = ["curl", "-s", "--http2", "--max-time", "10", "-o", "/dev/null"]
    command += ["-w", "%{http_version} %{http_code} %{size_download}"]
    out = subprocess.run(
        [*command, "--data-binary", f"@{path}", server.url + "/echo"],
        capture_output=True,
        timeout=20,
    )
    assert out.stdout == b"1.1 200 %d" % (1 << 20 | 1)


def test_h2c_upgrade_body_over_the_limit(parser: str) -> None:
    """--limit-request-body: a chunked body that crosses it is a 413 on stream 1 (the rest of
    it is read and dropped, and the connection goes on as HTTP/2); a declared Content-Length
    over it is not upgraded: HTTP/1.1 answers 413 before reading the body."""
    with run_server(app, http=parser, limit_request_body=1000) as srv:
        client, settings = _upgrade_client(srv.connect())
        client.sock.sendall(_body_upgrade(b"/echo", settings, "chunked", b"a" * 5000))
        _read_101(client)
        client.flush()
        [response] = client.wait(1)
        assert response.status == 413
        [again] = client.wait(client.request("GET", "/"))
        assert (again.status, bytes(again.body)) == (200, b"hello")
        with srv.connect() as sock:
            sock.sendall(_body_upgrade(b"/echo", settings, "content-length", b"a" * 5000))
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 413 ")


def _frames(data: bytes) -> list[Frame]:
    frames = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


first_chunk = threading.Event()


async def first_chunk_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Sets ``first_chunk`` once body bytes have arrived; reads the whole body and says how
    many bytes it got."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message["body"])
        if size:
            first_chunk.set()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


@pytest.mark.parametrize("framing", FRAMINGS)
def test_h2c_upgrade_101_waits_for_the_body(parser: str, framing: str) -> None:
    """The 101 goes out once the request's body is complete, not before: curl stops sending
    a body when a 101 comes while it uploads (the request then hangs; RFC 7540 §3.2 has the
    whole request sent before HTTP/2 starts)."""
    first_chunk.clear()
    body = b"p" * 5000
    with run_server(first_chunk_app, http=parser) as srv:
        client, settings = _upgrade_client(srv.connect())
        request = _body_upgrade(b"/", settings, framing, body)
        part = len(request) - 4000
        client.sock.sendall(request[:part])
        assert first_chunk.wait(10)  # the app is reading the body: the upgrade went through
        client.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.sock.recv(1)  # and nothing was written: no 101 yet
        client.sock.setblocking(True)
        client.sock.settimeout(10)
        client.sock.sendall(request[part:])
        _read_101(client)
        client.flush()
        [response] = client.wait(1)
    assert (response.status, bytes(response.body)) == (200, b"5000")


@pytest.mark.parametrize("later", [False, True], ids=["with-the-head", "in-a-later-read"])
def test_h2c_upgrade_invalid_chunked_body_closes(parser: str, later: bool) -> None:
    """Invalid chunked framing in the body of an upgrade: the 101 (held until the body's end)
    goes out, then GOAWAY PROTOCOL_ERROR, then close: the connection is no longer HTTP/1.1
    and not yet HTTP/2 (the client has sent no preface)."""
    first_chunk.clear()
    with run_server(first_chunk_app, http=parser) as srv:
        client, settings = _upgrade_client(srv.connect())
        request = _body_upgrade(b"/", settings, "chunked", b"x" * 10)
        valid, bad = request[: -len(b"0\r\nx-trailer: 1\r\n\r\n")], b"zz\r\nbad\r\n"
        client.sock.settimeout(10)
        if later:  # the head and a valid chunk, read as such, then the invalid chunk-size line
            client.sock.sendall(valid)
            assert first_chunk.wait(10)
            client.sock.sendall(bad)
        else:
            client.sock.sendall(valid + bad)
        received = b""
        while chunk := client.sock.recv(1 << 16):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    if parser == "h11" and not later:
        # h11 checks the chunk-size lines that came with the head before handing the head
        # on: the request is refused before anything is switched.
        assert head.startswith(b"HTTP/1.1 400 ")
        return
    assert head.startswith(b"HTTP/1.1 101 ")
    [goaway] = [f for f in _frames(rest) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR


def _send_until_blocked(
    sock: socket.socket, produce: Any, limit: int, stall_s: float = 1.0
) -> bytes:
    """Send what ``produce()`` returns until the socket stays unwritable for ``stall_s``: the
    peer has stopped reading and every buffer between is full. Returns the unsent rest of
    the last piece. Fails once ``limit`` bytes went out without that."""
    sock.setblocking(False)
    sent, pending = 0, b""
    while sent < limit:
        if not pending:
            pending = produce()
        try:
            size = sock.send(pending)
        except (BlockingIOError, ssl.SSLWantWriteError):
            if not select.select([], [sock], [], stall_s)[1]:
                return pending
            continue
        sent += size
        pending = pending[size:]
    raise AssertionError(f"{sent} bytes sent and the server still reads")


def _server_connection(srv: RunningServer) -> H2Protocol:
    state = srv.server.state
    assert state is not None
    [conn] = [c for c in list(state.clock.connections) if isinstance(c, H2Protocol)]
    return conn


def _small_buffers(srv: RunningServer) -> None:
    """A fixed receive buffer on the listening socket, inherited by accepted ones, so that a
    server that stops reading fills it quickly (loopback autotuning would grow it to MiBs)."""
    srv.server.servers[0].sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)


held_body = threading.Event()


async def hold_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads nothing until ``held_body`` is set (waited for in a thread), then the body; says
    how many bytes it got."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        await asyncio.get_running_loop().run_in_executor(None, held_body.wait, 30)
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


@pytest.mark.parametrize("framing", FRAMINGS)
def test_h2c_upgrade_body_pauses_reading(loop: str, parser: str, framing: str) -> None:
    """The upgrade body is not flow-controlled by HTTP/2: reading stops while the app has
    more than the read-buffer high-water mark unread, as over HTTP/1.1, so the client's
    sends block; once the app reads, all of it arrives."""
    held_body.clear()
    total = 16 << 20
    with run_server(hold_app, loop=loop, http=parser) as srv:
        _small_buffers(srv)
        client, settings = _upgrade_client(srv.connect())
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        # 16 MiB, produced piece by piece: Content-Length, or one chunk per piece.
        if framing == "chunked":
            pieces = [_upgrade_head(b"/hold", settings, b"Transfer-Encoding: chunked")]
            pieces += [b"%x\r\n%s\r\n" % (1 << 16, b"u" * (1 << 16))] * (total >> 16)
            pieces.append(b"0\r\n\r\n")
        else:
            pieces = [_upgrade_head(b"/hold", settings, b"Content-Length: %d" % total)]
            pieces += [b"u" * (1 << 16)] * (total >> 16)
        pieces.reverse()
        rest = _send_until_blocked(client.sock, pieces.pop, total // 2)
        conn = _server_connection(srv)
        assert not conn.transport.is_reading()  # paused: the app has read nothing
        held_body.set()
        client.sock.setblocking(True)
        client.sock.settimeout(10)
        client.sock.sendall(rest + b"".join(reversed(pieces)))
        _read_101(client)
        client.flush()
        [response] = client.wait(1, timeout=20)
    assert (response.status, bytes(response.body)) == (200, b"%d" % total)


# HTTP/2 reads pause while the socket's write buffer is full ----------------------------------


ANSWER = b"a" * 16384


async def pressure_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/flood``: 16 MiB; anything else: 16 KiB at once."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] != "/flood":
        await send({"type": "http.response.body", "body": ANSWER})
        return
    for _ in range(64):
        chunk = b"f" * (256 * 1024)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_reading_pauses_while_the_write_buffer_is_full(loop: str) -> None:
    """A client that asks for a large response, never reads, and keeps sending (PINGs,
    requests, frames of an unknown type, which must be ignored): once the server's write
    buffer is full it stops reading, so the client's sends block instead of the server
    queueing answers without bound. When the client reads again, everything is answered."""
    with run_server(pressure_app, loop=loop) as srv:
        _small_buffers(srv)
        sock = _small_client_buffers(srv.connect())
        _open.append(sock)
        _pressure(srv, sock, b"http")


def test_reading_pauses_while_the_write_buffer_is_full_tls(
    localhost_cert: LocalhostCert, loop: str
) -> None:
    """The same over TLS, where the transport pausing is the TLS layer's (asyncio's and
    uvloop's SSL protocols buffer on both sides of the encryption)."""
    ca, cert, key = localhost_cert
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    settings: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with run_server(pressure_app, loop=loop, **settings) as srv:
        _small_buffers(srv)
        raw = _small_client_buffers(srv.connect())
        tls = context.wrap_socket(raw, server_hostname="localhost")  # takes raw's descriptor
        _open.append(tls)
        assert tls.selected_alpn_protocol() == "h2"
        _pressure(srv, tls, b"https")
        # Before the server stops: uvloop's TLS shutdown waits for the client's close_notify,
        # and an open, silent client leaves the socket to the loop's close (ResourceWarning).
        tls.close()


def _small_client_buffers(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def _pressure(srv: RunningServer, sock: socket.socket, scheme: bytes) -> None:
    """``sock`` asks ``pressure_app`` for /flood without reading, sends until the server
    stops reading, then reads everything."""
    client = Client(sock, send_preface=False)
    client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.conn.increment_flow_control_window(2**31 - 1 - 65535)
    client.flush()
    flood = client.request("GET", "/flood")
    # A frame of an unused type (RFC 9113 §5.5: ignored) pads each piece to 4 KiB.
    filler = b"\x00\x10\x00\xbb\x00\x00\x00\x00\x00" + b"p" * 4096
    fields = [(b":method", b"GET"), (b":scheme", scheme), (b":path", b"/")]
    pieces = 0

    def produce() -> bytes:
        nonlocal pieces
        pieces += 1
        if not pieces % 8:
            client.conn.ping(b"%08d" % pieces)
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [*fields, (b":authority", b"localhost")], True)
        client.responses[sid] = Response()
        return client.conn.data_to_send() + filler

    # Each piece is answered with 16 KiB (and every 8th with a PING ACK): a server that read
    # 16 MiB of them would have queued 64 MiB for a client that does not read. (Apps blocked
    # on the full buffer hold their streams: past 100, new ones get REFUSED_STREAM.)
    rest = _send_until_blocked(sock, produce, 16 << 20)
    conn = _server_connection(srv)
    assert not conn.transport.is_reading()
    # The high-water mark, plus the answers to the read in which it was crossed.
    assert conn.transport.get_write_buffer_size() < 4 << 20
    assert pieces < 1000  # under 4 MiB sent; and far from the PING flood bound
    # The client reads again: the server resumes writing, then reading; all is answered.
    # The client's own sends (the rest of its last piece, WINDOW_UPDATEs) must not block its
    # reading: they go out as the socket takes them.
    responses = [client.responses[sid] for sid in (flood, *range(3, 3 + 2 * pieces, 2))]
    client.autoflush = False
    out = rest
    deadline = time.monotonic() + 30
    while out or not all(r.ended or r.reset is not None for r in responses):
        assert time.monotonic() < deadline, "timed out waiting for the answers"
        assert not client.closed, "connection closed"
        ready = isinstance(sock, ssl.SSLSocket) and sock.pending()
        readable, writable, _ = select.select([sock], [sock] if out else [], [], 0 if ready else 5)
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if writable:
                out = out[sock.send(out) :]
            if readable or ready:
                client.pump()
        out += client.conn.data_to_send()
    client.autoflush = True
    sock.setblocking(True)
    sock.settimeout(10)
    assert len(responses[0].body) == 64 * 256 * 1024
    answered = {(r.status, bytes(r.body)) for r in responses[1:] if r.reset is None}
    assert answered == {(200, ANSWER)}
    assert {r.reset for r in responses[1:]} <= {None, ErrorCodes.REFUSED_STREAM}
    [last] = client.wait(client.request("GET", "/"))
    assert last.status == 200


# Refused streams are logged with what they got ------------------------------------------------


def test_refused_streams_log_their_outcome(caplog: pytest.LogCaptureFixture) -> None:
    """A stream the codec refuses itself is logged as what it got: 431, or RST_STREAM
    REFUSED_STREAM, not a blanket 400."""
    with run_server(app, h2_max_concurrent_streams=1) as srv:
        client = connect(srv)
        slow = client.request("GET", "/slow")  # sent before the client read the server's
        over = client.request("GET", "/")  # SETTINGS: the second is over the limit
        refused, served = client.wait(over, slow)
        too_many = [(b"x-%d" % i, b"1") for i in range(101)]
        [big] = client.wait(client.request("GET", "/", extra=too_many))
    assert (big.status, refused.reset, served.status) == (431, ErrorCodes.REFUSED_STREAM, 200)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "sleipnir.error" and r.levelno >= logging.WARNING
    ]
    assert any(" - 431: HTTP/2 stream refused" in m for m in messages), messages
    assert any("RST_STREAM REFUSED_STREAM" in m for m in messages), messages
    assert not any(" - 400: " in m for m in messages), messages
