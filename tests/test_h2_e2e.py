"""HTTP/2 end to end: a real server, real clients (the h2 library over a plain socket for
prior knowledge, httpx over TLS with ALPN, curl), the same ASGI HTTP cycle as HTTP/1.1."""

from __future__ import annotations

import asyncio
import json
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
import trustme
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

from conftest import RunningServer, run_server
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
        self.conn.initiate_connection()
        if send_preface:
            self.flush()

    def flush(self) -> None:
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


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    directory = tmp_path_factory.mktemp("h2-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ca, cert, key


def test_tls_alpn(certs: tuple[trustme.CA, Path, Path], loop: str) -> None:
    ca, cert, key = certs
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


def test_tls_without_http2_offers_http11_only(certs: tuple[trustme.CA, Path, Path]) -> None:
    ca, cert, key = certs
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
        patient = client.request("GET", "/?patient=1")
        impatient = client.request("GET", "/?patient=0")
        assert flood_timed_out.wait(10), "the impatient app never blocked"
        kept, dropped = client.wait(patient, impatient, timeout=30)
        assert kept.ended and kept.reset is None
        assert len(kept.body) == FLOOD_CHUNK * FLOOD_CHUNKS
        assert dropped.reset is not None  # its app returned without finishing
