"""HTTP/2 conformance on raw frames (RFC 9113), h2spec-like, against a real server.

Every test talks to a sleipnir server over a real socket on 127.0.0.1 (``conftest.run_server``),
sends frames built by hand (``h2raw``) and checks the frames that come back. Classes follow
the RFC's sections; each test's docstring names the section and the requirement it checks.

Error classes, as RFC 9113 §5.4 defines them: a *connection error* is a GOAWAY with the code and
the connection closed (``expect_goaway``); a *stream error* is a RST_STREAM with the code, after
which the connection still works (``expect_reset`` then ``assert_alive``). Where the RFC leaves
the choice, the suite accepts either (``expect_error``).

The abuse section checks each bound end to end: the connection ends with the right GOAWAY
within the bound, and a second connection to the same server is still served.

Nothing sleeps to synchronize: every read has a socket timeout, conditions on the server are
polled against a deadline (``wait_for``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from conftest import LocalhostCert, RunningServer, run_server, wait_for
from h2raw import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Fields,
    H2Client,
    data,
    frame,
    ping,
    priority,
    request_fields,
    rst_stream,
    settings,
    split,
    window_update,
)
from sleipnir.types import Receive, Scope, Send
from sleipnir.wire.h2 import H2Limits

# What the apps saw, for the tests to poll ("wait:<tag>" when /wait was told the client left).
EVENTS: list[str] = []
GATES: defaultdict[str, threading.Event] = defaultdict(threading.Event)  # for /gated?<name>
STALL_TIMEOUT_S = 0.5  # timeout_keep_alive of the stall server: the zero-window bound


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/wait":  # until the client goes away (a stream that stays open)
        while (await receive())["type"] != "http.disconnect":
            pass
        EVENTS.append(f"wait:{query}")
        return
    if path == "/gated":  # reads nothing until the test is over (bounded)
        gate = GATES[query]
        deadline = time.monotonic() + 10
        while not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if path == "/stall":
        await _stall(query, receive, send)
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            EVENTS.append(f"disconnect:{path}:{query}")
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"text/plain")]
    if path == "/echo":
        out = bytes(body)
    elif path == "/headers":
        out = json.dumps([[n.decode(), v.decode()] for n, v in scope["headers"]]).encode()
    elif path == "/big":
        out = b"x" * int(query)
    elif path == "/size":
        out = b"%d" % len(body)
    else:
        out = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def _stall(query: str, receive: Receive, send: Send) -> None:
    """A large response sent in pieces; records whether the client's disconnect was seen
    while it was still sending."""
    tag, _, size = query.partition("-")
    await receive()  # the (empty) request
    left = asyncio.ensure_future(receive())  # returns once the client is gone
    await send({"type": "http.response.start", "status": 200, "headers": []})
    total = int(size)
    for at in range(0, total, 16384):
        if left.done():
            break
        piece = b"s" * min(16384, total - at)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await asyncio.sleep(0)  # a receive woken by the disconnect has returned after this
    if left.done():
        EVENTS.append(f"stalled:{tag}:{left.result()['type']}")
    else:
        await send({"type": "http.response.body", "body": b""})
        left.cancel()
        EVENTS.append(f"completed:{tag}")


# Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with run_server(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def stall_server() -> Iterator[RunningServer]:
    with run_server(app, timeout_keep_alive=STALL_TIMEOUT_S) as srv:
        yield srv


_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for gate in GATES.values():
        gate.set()
    while _open:
        _open.pop().close()


def connect(
    srv: RunningServer, values: dict[int, int] | None = None, handshake: bool = True
) -> H2Client:
    sock = srv.connect()
    _open.append(sock)
    client = H2Client(sock)
    if handshake:
        client.handshake(values)
    return client


@pytest.fixture
def c(server: RunningServer) -> H2Client:
    """A connection to the shared server, past the SETTINGS exchange."""
    return connect(server)


def assert_served(srv: RunningServer) -> None:
    """A new connection to ``srv`` is served normally (the server survived the abuse)."""
    other = connect(srv)
    resp = other.get()
    assert (resp.status, bytes(resp.body)) == (200, b"hello")


def served(c: H2Client, sid: int) -> None:
    resp = c.response(sid)
    assert (resp.status, bytes(resp.body)) == (200, b"hello"), resp


# §3.4 HTTP/2 connection preface ----------------------------------------------------------


class TestPreface:
    """RFC 9113 §3.4: the connection preface."""

    def test_server_preface_is_a_settings_frame(self, server: RunningServer) -> None:
        """§3.4: the server connection preface MUST be the first frame the server sends, a
        (possibly empty) SETTINGS frame."""
        client = connect(server, handshake=False)
        client.send(PREFACE + settings())
        first = client.read_frame()
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
        assert first.stream_id == 0
        assert first.settings[MAX_CONCURRENT_STREAMS] >= 100  # §6.5.2 recommends >= 100
        assert MAX_HEADER_LIST_SIZE in first.settings

    def test_client_settings_acknowledged(self, server: RunningServer) -> None:
        """§3.4, §6.5.3: the SETTINGS frames of the preface MUST be acknowledged."""
        client = connect(server, handshake=False)
        client.send(PREFACE + settings({MAX_CONCURRENT_STREAMS: 10}))
        ack = client.expect(SettingsFrame)
        while "ACK" not in ack.flags:
            ack = client.expect(SettingsFrame)
        assert ack.settings == {}

    def test_invalid_preface_over_tls(
        self, tls_server: RunningServer, localhost_cert: LocalhostCert
    ) -> None:
        """§3.4: an invalid connection preface MUST be treated as a connection error of type
        PROTOCOL_ERROR (here after TLS ALPN chose h2, so the server knows it is HTTP/2)."""
        client = tls_connect(tls_server, localhost_cert.ca)
        client.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings())
        client.expect_goaway(PROTOCOL_ERROR)

    def test_almost_a_preface_in_cleartext_is_http11(self, server: RunningServer) -> None:
        """§3.3: without the exact preface a cleartext connection is not HTTP/2 (prior
        knowledge is all the server has): it is answered as HTTP/1.1, not left hanging."""
        with server.connect() as sock:
            sock.settimeout(5)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
            assert sock.recv(100).startswith((b"HTTP/1.1 4", b"HTTP/1.1 5"))

    def test_first_frame_not_settings(self, server: RunningServer) -> None:
        """§3.4: the preface MUST be followed by a SETTINGS frame; anything else is a
        connection error of type PROTOCOL_ERROR."""
        client = connect(server, handshake=False)
        client.send(PREFACE + ping())
        client.expect_goaway(PROTOCOL_ERROR)

    def test_first_frame_a_settings_ack(self, server: RunningServer) -> None:
        """§3.4: the client preface's SETTINGS frame is not an acknowledgment (nothing was
        sent to acknowledge yet): PROTOCOL_ERROR."""
        client = connect(server, handshake=False)
        client.send(PREFACE + settings(ack=True))
        client.expect_goaway(PROTOCOL_ERROR)

    def test_preface_in_pieces(self, server: RunningServer) -> None:
        """§3.4: the preface may arrive in any number of reads."""
        client = connect(server, handshake=False)
        wire = PREFACE + settings()
        for at in range(0, len(wire), 5):
            client.send(wire[at : at + 5])
        assert isinstance(client.expect(SettingsFrame), SettingsFrame)
        client.send(settings(ack=True))
        served(client, client.request())


# §4 HTTP frames ---------------------------------------------------------------------------


class TestFrameFormat:
    """RFC 9113 §4.1 (frame format) and §5.5 (extending HTTP/2)."""

    @pytest.mark.parametrize("sid", [0, 1])
    def test_unknown_frame_type_ignored(self, c: H2Client, sid: int) -> None:
        """§4.1, §5.5: implementations MUST ignore and discard frames of unknown types (on
        the connection or on a stream)."""
        c.send(frame(0xFA, 0xFF, sid, b"extension payload"))
        c.assert_alive()
        served(c, c.request())

    def test_unknown_frame_type_on_an_open_stream(self, c: H2Client) -> None:
        """§5.5: an extension frame on an open stream changes nothing for the stream."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(frame(0xFB, 0, sid, b"??"), data(sid, b"body", end=True))
        resp = c.response(sid)
        assert (resp.status, bytes(resp.body)) == (200, b"body")

    def test_unknown_flags_on_ping_ignored(self, c: H2Client) -> None:
        """§4.1: flags with no semantics for a frame type MUST be ignored: a PING with every
        flag but ACK set is a PING, answered with its payload."""
        c.send(frame(PING, 0xFE, 0, b"flagged!"))
        ack = c.expect(PingFrame)
        assert "ACK" in ack.flags and ack.opaque_data == b"flagged!"

    def test_unknown_flags_on_headers_and_data_ignored(self, c: H2Client) -> None:
        """§4.1: undefined flags (0x2, 0x10, 0x40, 0x80 on HEADERS and DATA) are ignored."""
        sid = c.next_sid()
        block = c.block(request_fields(b"POST", b"/echo"))
        c.send(frame(HEADERS, END_HEADERS | 0xD2, sid, block))
        c.send(frame(DATA, END_STREAM | 0xF6, sid, b"flags"))  # 0x8 (PADDED) not set
        resp = c.response(sid)
        assert (resp.status, bytes(resp.body)) == (200, b"flags")

    def test_reserved_bit_of_the_stream_id_ignored(self, c: H2Client) -> None:
        """§4.1: the reserved bit of the stream identifier MUST be ignored when receiving."""
        sid = c.next_sid()
        c.send(
            frame(HEADERS, END_HEADERS | END_STREAM, sid | 0x80000000, c.block(request_fields()))
        )
        served(c, sid)


class TestFrameSize:
    """RFC 9113 §4.2: frame size."""

    def test_frame_of_max_frame_size_accepted(self, c: H2Client) -> None:
        """§4.2: all implementations MUST be capable of receiving frames up to 2^14 octets."""
        sid = c.next_sid()
        body = bytes(range(256)) * 64  # 16384
        c.send(c.headers(sid, request_fields(b"POST", b"/size"), end_stream=False))
        c.send(data(sid, body, end=True))
        assert bytes(c.response(sid).body) == b"16384"

    def test_data_over_max_frame_size(self, c: H2Client) -> None:
        """§4.2: a frame exceeding SETTINGS_MAX_FRAME_SIZE MUST be answered with a
        FRAME_SIZE_ERROR (here a connection error; a stream error is allowed for DATA)."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/size"), end_stream=False))
        c.send(data(sid, b"x" * 16385, end=True))
        assert c.expect_error(sid, FRAME_SIZE_ERROR)

    def test_headers_over_max_frame_size(self, c: H2Client) -> None:
        """§4.2: a frame size error in a frame carrying a field block MUST be treated as a
        connection error."""
        block = c.block(request_fields())
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block + b"\x82" * (16385 - len(block))))
        c.expect_goaway(FRAME_SIZE_ERROR)

    def test_settings_length_not_a_multiple_of_6(self, c: H2Client) -> None:
        """§6.5: a SETTINGS frame with a length other than a multiple of 6 octets MUST be
        treated as a connection error of type FRAME_SIZE_ERROR."""
        c.send(frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64\x00"))
        c.expect_goaway(FRAME_SIZE_ERROR)

    def test_settings_ack_with_payload(self, c: H2Client) -> None:
        """§6.5: receipt of a SETTINGS frame with the ACK flag set and a length other than 0
        MUST be treated as a connection error of type FRAME_SIZE_ERROR."""
        c.send(frame(SETTINGS, ACK, 0, b"\x00\x03\x00\x00\x00\x64"))
        c.expect_goaway(FRAME_SIZE_ERROR)

    @pytest.mark.parametrize("length", [0, 7, 9])
    def test_ping_length(self, c: H2Client, length: int) -> None:
        """§6.7: a PING frame with a length other than 8 MUST be treated as a connection
        error of type FRAME_SIZE_ERROR."""
        c.send(frame(PING, 0, 0, b"p" * length))
        c.expect_goaway(FRAME_SIZE_ERROR)

    @pytest.mark.parametrize("sid", [0, 1])
    def test_window_update_length(self, c: H2Client, sid: int) -> None:
        """§6.9: a WINDOW_UPDATE frame with a length other than 4 octets MUST be treated as a
        connection error of type FRAME_SIZE_ERROR."""
        if sid:
            c.request(b"/wait", sid=sid)
        c.send(frame(WINDOW_UPDATE, 0, sid, b"\x00\x00\x01"))
        c.expect_goaway(FRAME_SIZE_ERROR)

    def test_rst_stream_length(self, c: H2Client) -> None:
        """§6.4: a RST_STREAM frame with a length other than 4 octets MUST be treated as a
        connection error of type FRAME_SIZE_ERROR."""
        sid = c.request(b"/wait")
        c.send(frame(RST_STREAM, 0, sid, b"\x00\x00\x00\x08\x00"))
        c.expect_goaway(FRAME_SIZE_ERROR)

    def test_priority_length_on_an_open_stream(self, c: H2Client) -> None:
        """§6.3: a PRIORITY frame with a length other than 5 octets MUST be treated as a
        stream error of type FRAME_SIZE_ERROR: that stream is reset, the connection lives."""
        sid = c.request(b"/wait?priority-length")
        c.send(frame(PRIORITY, 0, sid, b"\x00\x00\x00\x00"))
        c.expect_reset(sid, FRAME_SIZE_ERROR)
        wait_for(lambda: "wait:priority-length" in EVENTS, 5, "the app to see http.disconnect")
        c.assert_alive()
        served(c, c.request())

    def test_goaway_too_short(self, c: H2Client) -> None:
        """§6.8, §4.2: a GOAWAY too small to hold its fields is a FRAME_SIZE_ERROR."""
        c.send(frame(GOAWAY, 0, 0, b"\x00\x00\x00"))
        c.expect_goaway(FRAME_SIZE_ERROR)


# §4.3 Field section compression ------------------------------------------------------------


class TestFieldCompression:
    """RFC 9113 §4.3 and RFC 7541 (HPACK): a decoding error is a connection error of type
    COMPRESSION_ERROR."""

    def test_invalid_index(self, c: H2Client) -> None:
        """§4.3: a field block that cannot be decompressed (an index past the tables, RFC
        7541 §2.3.3) MUST be a connection error of type COMPRESSION_ERROR."""
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x82\x86\x84\xff\x00"))
        c.expect_goaway(COMPRESSION_ERROR)

    def test_bad_huffman_string(self, c: H2Client) -> None:
        """RFC 7541 §5.2: a Huffman string with the EOS symbol or padding over 7 bits MUST be
        a decoding error: COMPRESSION_ERROR."""
        block = c.block(request_fields()) + b"\x00\x84\xff\xff\xff\xff\x01a"
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        c.expect_goaway(COMPRESSION_ERROR)

    def test_table_size_update_over_the_setting(self, c: H2Client) -> None:
        """RFC 7541 §4.2, §6.3: a dynamic table size update above SETTINGS_HEADER_TABLE_SIZE
        (4096 here) MUST be treated as a decoding error: COMPRESSION_ERROR."""
        block = b"\x3f\xe1\x3f" + c.block(request_fields())  # size update to 8192
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        c.expect_goaway(COMPRESSION_ERROR)

    def test_table_size_update_after_a_field(self, c: H2Client) -> None:
        """RFC 7541 §4.2: a dynamic table size update MUST occur at the beginning of a field
        block; one after a field is a decoding error."""
        block = c.block(request_fields()) + b"\x20"
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        c.expect_goaway(COMPRESSION_ERROR)

    def test_dynamic_table_state_spans_requests(self, c: H2Client) -> None:
        """§4.3: one decompression context per connection: the second request's block
        refers to entries the first one inserted."""
        extra = [(b"x-custom", b"value-that-gets-indexed")]
        first = c.request(b"/headers", extra=extra)
        second = c.request(b"/headers", extra=extra)  # encoded as dynamic table indices
        for sid in (first, second):
            seen = json.loads(c.response(sid).body)
            assert ["x-custom", "value-that-gets-indexed"] in seen

    def test_header_table_size_zero_honoured(self, server: RunningServer) -> None:
        """§6.5.2, RFC 7541 §4.2: after the client sets SETTINGS_HEADER_TABLE_SIZE to 0, the
        server's next field block starts with a dynamic table size update to 0, and the
        responses decode with no dynamic table at all."""
        client = connect(server, {HEADER_TABLE_SIZE: 0})
        client.dec.max_allowed_table_size = 0
        sid = client.request()
        head = client.expect(HeadersFrame, sid)
        assert bytes(head.data)[:1] == b"\x20"  # size update, new size 0
        for _ in range(3):
            resp = client.get()
            assert resp.status == 200


# §5.1 Stream states -----------------------------------------------------------------------


class TestStreamStates:
    """RFC 9113 §5.1 and §5.1.1: stream states and identifiers."""

    def test_data_on_an_idle_stream(self, c: H2Client) -> None:
        """§5.1 idle: receiving any frame other than HEADERS or PRIORITY on an idle stream
        MUST be treated as a connection error of type PROTOCOL_ERROR."""
        c.send(data(1, b"data", end=True))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_rst_stream_on_an_idle_stream(self, c: H2Client) -> None:
        """§6.4: a RST_STREAM on an idle stream MUST be a connection error PROTOCOL_ERROR."""
        c.send(rst_stream(1))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_window_update_on_an_idle_stream(self, c: H2Client) -> None:
        """§5.1 idle: a WINDOW_UPDATE on an idle stream is a connection error PROTOCOL_ERROR."""
        c.send(window_update(1, 100))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_continuation_on_an_idle_stream(self, c: H2Client) -> None:
        """§5.1, §6.10: a CONTINUATION that follows no HEADERS is a connection error
        PROTOCOL_ERROR."""
        c.send(frame(CONTINUATION, END_HEADERS, 1, c.block(request_fields())))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_headers_on_a_half_closed_remote_stream(self, c: H2Client) -> None:
        """§5.1 half-closed (remote): frames other than WINDOW_UPDATE, PRIORITY and
        RST_STREAM MUST be answered with a stream error of type STREAM_CLOSED."""
        sid = c.request(b"/wait", extra=[(b"x-tag", b"1")])
        c.send(c.headers(sid, request_fields(b"GET", b"/again")))
        c.expect_reset(sid, STREAM_CLOSED)
        c.assert_alive()
        served(c, c.request())

    def test_data_on_a_half_closed_remote_stream(self, c: H2Client) -> None:
        """§5.1 half-closed (remote): DATA after END_STREAM is a stream error STREAM_CLOSED."""
        sid = c.request(b"/wait")
        c.send(data(sid, b"late", end=True))
        c.expect_reset(sid, STREAM_CLOSED)
        c.assert_alive()

    def test_data_after_the_client_reset_the_stream(self, c: H2Client) -> None:
        """§5.1 closed: any frame other than PRIORITY after a RST_STREAM MUST be a stream
        error of type STREAM_CLOSED (a connection error is accepted too)."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(rst_stream(sid))
        c.send(data(sid, b"after the reset", end=True))
        if c.expect_error(sid, STREAM_CLOSED) == "stream":
            c.assert_alive()

    def test_headers_on_a_closed_stream(self, c: H2Client) -> None:
        """§5.1 closed: a HEADERS frame on a stream closed by END_STREAM both ways is an
        error of type STREAM_CLOSED (stream or connection error)."""
        sid = c.request()
        served(c, sid)
        c.send(c.headers(sid, request_fields()))
        if c.expect_error(sid, STREAM_CLOSED) == "stream":
            c.assert_alive()

    def test_window_update_and_rst_stream_on_a_closed_stream(self, c: H2Client) -> None:
        """§5.1 closed: WINDOW_UPDATE or RST_STREAM may arrive shortly after a stream closed
        and MUST NOT be treated as errors; PRIORITY may always be sent."""
        sid = c.request()
        served(c, sid)
        c.send(window_update(sid, 1000), rst_stream(sid, CANCEL), priority(sid, 0))
        c.assert_alive()
        served(c, c.request())

    def test_even_stream_id(self, c: H2Client) -> None:
        """§5.1.1: streams initiated by a client MUST use odd-numbered identifiers; an even
        one is a connection error PROTOCOL_ERROR."""
        c.send(c.headers(2, request_fields()))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_decreasing_stream_id(self, c: H2Client) -> None:
        """§5.1.1: a new stream identifier MUST be greater than all the client opened; a
        smaller one is a connection error PROTOCOL_ERROR."""
        c.send(c.headers(5, request_fields()))
        served(c, 5)
        c.send(c.headers(3, request_fields()))
        goaway = c.expect_goaway(PROTOCOL_ERROR)
        assert goaway.last_stream_id == 5  # §6.8: the last stream the server processed

    @pytest.mark.parametrize(
        "ftype,payload",
        [
            (DATA, b"x"),
            (HEADERS, b"\x82"),
            (PRIORITY, b"\x00\x00\x00\x01\x10"),
            (RST_STREAM, b"\x00\x00\x00\x08"),
        ],
        ids=["DATA", "HEADERS", "PRIORITY", "RST_STREAM"],
    )
    def test_stream_frames_on_stream_zero(self, c: H2Client, ftype: int, payload: bytes) -> None:
        """§6.1-§6.4: DATA, HEADERS, PRIORITY and RST_STREAM frames MUST be associated with a
        stream; on stream 0 they are a connection error of type PROTOCOL_ERROR."""
        c.send(frame(ftype, END_HEADERS if ftype == HEADERS else 0, 0, payload))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_push_promise_from_a_client(self, c: H2Client) -> None:
        """§8.4: a client cannot push; a server MUST treat a PUSH_PROMISE as a connection
        error of type PROTOCOL_ERROR."""
        sid = c.request(b"/wait")
        block = (2).to_bytes(4, "big") + c.block(request_fields())
        c.send(frame(PUSH_PROMISE, END_HEADERS, sid, block))
        c.expect_goaway(PROTOCOL_ERROR)


class TestConcurrency:
    """RFC 9113 §5.1.2: stream concurrency."""

    def test_over_max_concurrent_streams_refused(self, c: H2Client) -> None:
        """§5.1.2: a HEADERS frame that exceeds the advertised SETTINGS_MAX_CONCURRENT_STREAMS
        MUST be a stream error of type PROTOCOL_ERROR or REFUSED_STREAM; the connection
        goes on (REFUSED_STREAM: the client may retry)."""
        limit = c.server_settings[MAX_CONCURRENT_STREAMS]
        fields = request_fields(b"GET", b"/wait?concurrency")
        sids = [c.next_sid() for _ in range(limit + 1)]
        c.send(*[c.headers(sid, fields) for sid in sids])
        c.expect_reset(sids[-1], REFUSED_STREAM)
        c.assert_alive()
        c.send(rst_stream(sids[0]))  # one slot frees once its app ended
        wait_for(lambda: "wait:concurrency" in EVENTS, 5, "the reset stream's app to end")
        served(c, c.request())  # the freed slot is usable


# §5.3 Priority ----------------------------------------------------------------------------


class TestPriority:
    """RFC 9113 §5.3 and §6.3: priority signals are accepted and otherwise ignored (§5.3.2
    deprecates the RFC 7540 scheme) but a self-dependency is still an error."""

    def test_priority_on_an_idle_stream(self, c: H2Client) -> None:
        """§5.1 idle: PRIORITY may be received on an idle stream; it does not open it."""
        c.send(priority(7, 0, 200))
        c.assert_alive()
        served(c, c.request(sid=7))

    def test_priority_on_an_open_stream(self, c: H2Client) -> None:
        """§6.3: PRIORITY can be sent in any stream state, including open."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(priority(sid, 0, 1, exclusive=True), data(sid, b"ok", end=True))
        assert bytes(c.response(sid).body) == b"ok"

    def test_priority_on_a_closed_stream(self, c: H2Client) -> None:
        """§5.1 closed: PRIORITY frames on a closed stream MUST be accepted."""
        sid = c.request()
        served(c, sid)
        c.send(priority(sid, 0, 10))
        c.assert_alive()

    def test_priority_depending_on_itself(self, c: H2Client) -> None:
        """§5.3.1: a stream cannot depend on itself: a stream error of type PROTOCOL_ERROR."""
        sid = c.request(b"/wait")
        c.send(priority(sid, sid))
        c.expect_reset(sid, PROTOCOL_ERROR)
        c.assert_alive()
        served(c, c.request())

    def test_headers_depending_on_itself(self, c: H2Client) -> None:
        """§5.3.1: a HEADERS frame whose priority makes the stream depend on itself is a
        stream error of type PROTOCOL_ERROR; the field block is still decoded (HPACK state)."""
        sid = c.next_sid()
        prio = sid.to_bytes(4, "big") + b"\x10"
        extra = [(b"x-first", b"indexed")]
        c.send(
            frame(
                HEADERS,
                END_HEADERS | END_STREAM | PRIORITY_FLAG,
                sid,
                prio + c.block(request_fields(extra=extra)),
            )
        )
        c.expect_reset(sid, PROTOCOL_ERROR)
        resp = c.get(b"/headers", extra=extra)  # refers to the entry the refused block added
        assert ["x-first", "indexed"] in json.loads(resp.body)

    def test_priority_in_headers(self, c: H2Client) -> None:
        """§6.2: the PRIORITY flag adds a dependency and weight before the field block; the
        request is served."""
        sid = c.next_sid()
        prio = (0x80000000).to_bytes(4, "big") + b"\xff"  # exclusive on stream 0, weight 256
        c.send(
            frame(
                HEADERS,
                END_HEADERS | END_STREAM | PRIORITY_FLAG,
                sid,
                prio + c.block(request_fields()),
            )
        )
        served(c, sid)

    def test_priority_in_padded_headers(self, c: H2Client) -> None:
        """§6.2: padding and priority together: Pad Length, the priority fields, the block."""
        sid = c.next_sid()
        payload = (
            b"\x03" + (0).to_bytes(4, "big") + b"\x10" + c.block(request_fields()) + b"\x00" * 3
        )
        c.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG | PADDED, sid, payload))
        served(c, sid)


# §5.4 / §6.8 Error handling and GOAWAY ----------------------------------------------------


class TestGoaway:
    """RFC 9113 §5.4 and §6.8."""

    def test_goaway_on_a_stream(self, c: H2Client) -> None:
        """§6.8: a GOAWAY with a stream identifier other than 0 MUST be treated as a
        connection error of type PROTOCOL_ERROR."""
        c.send(frame(GOAWAY, 0, 1, bytes(8)))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_client_goaway_lets_open_streams_finish(self, c: H2Client) -> None:
        """§6.8: after the client's GOAWAY no new streams come, but streams it already
        opened are served; then the connection closes."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        c.send(data(sid, b"still served", end=True))
        resp = c.response(sid)
        assert (resp.status, bytes(resp.body)) == (200, b"still served")
        c.expect_closed()

    def test_connection_error_names_the_last_stream(self, c: H2Client) -> None:
        """§6.8: the GOAWAY's last stream identifier is the highest stream the server may
        have acted on, so the client knows which requests to retry."""
        for _ in range(3):
            served(c, c.request())
        c.send(ping(b"short"))
        goaway = c.expect_goaway(FRAME_SIZE_ERROR)
        assert goaway.last_stream_id == 5

    def test_rst_stream_is_not_answered_with_rst_stream(self, c: H2Client) -> None:
        """§5.4.2: to avoid looping, an endpoint MUST NOT send a RST_STREAM in response to
        a RST_STREAM; the app sees http.disconnect."""
        sid = c.request(b"/wait?rst")
        c.assert_alive()  # the stream started (a reset in the same read means it never did)
        c.send(rst_stream(sid, CANCEL))
        wait_for(lambda: "wait:rst" in EVENTS, 5, "the app to see http.disconnect")
        c.assert_alive()
        assert not [f for f in c.seen if isinstance(f, RstStreamFrame)]


# §6.1 / §6.2 DATA and HEADERS -------------------------------------------------------------


class TestDataAndHeaders:
    """RFC 9113 §6.1 and §6.2: padding."""

    def test_padded_data(self, c: H2Client) -> None:
        """§6.1: padding is not part of the content."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(data(sid, b"abc", pad=10), data(sid, b"", end=True, pad=0))
        assert bytes(c.response(sid).body) == b"abc"

    def test_padded_headers(self, c: H2Client) -> None:
        """§6.2: a padded HEADERS frame; the padding is discarded."""
        sid = c.next_sid()
        payload = b"\x05" + c.block(request_fields()) + bytes(5)
        c.send(frame(HEADERS, END_HEADERS | END_STREAM | PADDED, sid, payload))
        served(c, sid)

    def test_data_padding_longer_than_payload(self, c: H2Client) -> None:
        """§6.1: padding whose length is the payload's length or more MUST be treated as a
        connection error of type PROTOCOL_ERROR."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(frame(DATA, PADDED | END_STREAM, sid, b"\x06abcde"))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_headers_padding_longer_than_payload(self, c: H2Client) -> None:
        """§6.2: the same rule for HEADERS: connection error PROTOCOL_ERROR."""
        block = c.block(request_fields())
        payload = bytes((len(block) + 1,)) + block
        c.send(frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, payload))
        c.expect_goaway(PROTOCOL_ERROR)


# §6.5 SETTINGS ----------------------------------------------------------------------------


class TestSettings:
    """RFC 9113 §6.5."""

    def test_settings_on_a_stream(self, c: H2Client) -> None:
        """§6.5: a SETTINGS frame whose stream identifier is not 0 MUST be a connection error
        of type PROTOCOL_ERROR."""
        c.send(frame(SETTINGS, 0, 1, b""))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_invalid_enable_push(self, c: H2Client) -> None:
        """§6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 MUST be a connection error of type
        PROTOCOL_ERROR."""
        c.send(settings({ENABLE_PUSH: 2}))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_initial_window_size_too_large(self, c: H2Client) -> None:
        """§6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 MUST be a connection error of
        type FLOW_CONTROL_ERROR."""
        c.send(settings({INITIAL_WINDOW_SIZE: 2**31}))
        c.expect_goaway(FLOW_CONTROL_ERROR)

    @pytest.mark.parametrize("value", [16383, 2**24])
    def test_max_frame_size_out_of_range(self, c: H2Client, value: int) -> None:
        """§6.5.2: SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1 MUST be a connection error
        of type PROTOCOL_ERROR."""
        c.send(settings({MAX_FRAME_SIZE: value}))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_unknown_setting_ignored(self, c: H2Client) -> None:
        """§6.5.2: an endpoint MUST ignore a setting with an unknown identifier (and still
        acknowledge the frame, §6.5.3)."""
        c.send(settings({0xFF: 1, 0x4242: 0xFFFFFFFF}))
        ack = c.expect(SettingsFrame)
        assert "ACK" in ack.flags
        served(c, c.request())

    def test_max_frame_size_of_the_client_honoured(self, server: RunningServer) -> None:
        """§4.2, §6.5.2: the server never sends a frame larger than the client's
        SETTINGS_MAX_FRAME_SIZE (16384 by default) and may use a larger one it advertised."""
        client = connect(server, {MAX_FRAME_SIZE: 20000, INITIAL_WINDOW_SIZE: 1 << 20})
        client.send(window_update(0, 1 << 20))
        sid = client.request(b"/big?100000")
        resp = client.response(sid)
        assert len(resp.body) == 100000
        sizes = [
            len(f.data) for f in client.seen if isinstance(f, DataFrame) and f.stream_id == sid
        ]
        assert max(sizes) <= 20000


# §6.7 PING --------------------------------------------------------------------------------


class TestPing:
    """RFC 9113 §6.7."""

    def test_ping_answered_with_its_payload(self, c: H2Client) -> None:
        """§6.7: receivers of a PING without ACK MUST send a PING with ACK set and an
        identical payload in response."""
        c.send(ping(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"))
        ack = c.expect(PingFrame)
        assert "ACK" in ack.flags and ack.opaque_data == b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"
        assert ack.stream_id == 0

    def test_ping_on_a_stream(self, c: H2Client) -> None:
        """§6.7: a PING whose stream identifier is not 0 MUST be a connection error of type
        PROTOCOL_ERROR."""
        c.send(frame(PING, 0, 1, bytes(8)))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_ping_ack_not_answered(self, c: H2Client) -> None:
        """§6.7: an endpoint MUST NOT respond to PING frames with ACK set."""
        c.send(ping(b"unasked!", ack=True))
        c.assert_alive()  # a round trip: an answer to the ACK would have come before
        assert not [f for f in c.seen if isinstance(f, PingFrame) and f.opaque_data == b"unasked!"]


# §6.9 Flow control ------------------------------------------------------------------------


class TestFlowControl:
    """RFC 9113 §5.2 and §6.9."""

    def test_zero_increment_on_a_stream(self, c: H2Client) -> None:
        """§6.9: a WINDOW_UPDATE with an increment of 0 MUST be a stream error of type
        PROTOCOL_ERROR; the connection goes on."""
        sid = c.request(b"/wait")
        c.send(window_update(sid, 0))
        c.expect_reset(sid, PROTOCOL_ERROR)
        c.assert_alive()
        served(c, c.request())

    def test_zero_increment_on_the_connection(self, c: H2Client) -> None:
        """§6.9: errors on the connection flow-control window MUST be connection errors."""
        c.send(window_update(0, 0))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_connection_window_overflow(self, c: H2Client) -> None:
        """§6.9.1: a WINDOW_UPDATE that makes the connection window exceed 2^31-1 MUST end
        the connection with GOAWAY FLOW_CONTROL_ERROR."""
        c.send(window_update(0, 2**31 - 1))
        c.expect_goaway(FLOW_CONTROL_ERROR)

    def test_stream_window_overflow(self, c: H2Client) -> None:
        """§6.9.1: a stream window beyond 2^31-1 MUST end that stream with RST_STREAM
        FLOW_CONTROL_ERROR; the connection goes on."""
        sid = c.request(b"/wait")
        c.send(window_update(sid, 2**31 - 1))
        c.expect_reset(sid, FLOW_CONTROL_ERROR)
        c.assert_alive()
        served(c, c.request())

    def test_small_initial_window_respected(self, server: RunningServer) -> None:
        """§6.9.1: a sender MUST NOT send a flow-controlled frame with a length that exceeds
        the space available in the receiver's window; it resumes after a WINDOW_UPDATE."""
        client = connect(server, {INITIAL_WINDOW_SIZE: 100})
        sid = client.request(b"/big?1000")
        got = 0
        while got < 100:
            got += len(client.expect(DataFrame, sid).data)
        assert got == 100
        client.assert_alive()  # a round trip: nothing more came meanwhile
        assert sum(len(f.data) for f in client.seen if isinstance(f, DataFrame)) == 100
        client.send(window_update(sid, 900))
        rest = client.response(sid, window=False)
        assert len(rest.body) == 900 and rest.ended

    def test_settings_change_adjusts_open_streams(self, server: RunningServer) -> None:
        """§6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE adjusts every open stream's
        window by the difference, possibly below 0."""
        client = connect(server, {INITIAL_WINDOW_SIZE: 100})
        sid = client.request(b"/big?1000")
        got = 0
        while got < 100:
            got += len(client.expect(DataFrame, sid).data)
        client.send(settings({INITIAL_WINDOW_SIZE: 50}))  # the window is now -50
        client.expect(SettingsFrame)  # its ACK
        client.send(window_update(sid, 100))  # -50 + 100: 50 bytes may go
        while got < 150:
            got += len(client.expect(DataFrame, sid).data)
        client.assert_alive()
        assert got == 150
        client.send(settings({INITIAL_WINDOW_SIZE: 900}))  # +850: the rest
        rest = client.response(sid, window=False)
        assert got + len(rest.body) == 1000 and rest.ended

    def test_window_opened_by_settings_alone(self, server: RunningServer) -> None:
        """§6.9.2: with an initial window of 0 the server sends the head only; raising
        SETTINGS_INITIAL_WINDOW_SIZE releases the body."""
        client = connect(server, {INITIAL_WINDOW_SIZE: 0})
        sid = client.request(b"/big?1000")
        client.expect(HeadersFrame, sid)
        client.assert_alive()
        assert not [f for f in client.seen if isinstance(f, DataFrame)]
        client.send(settings({INITIAL_WINDOW_SIZE: 1000}))
        resp = client.response(sid, window=False)
        assert len(resp.body) == 1000

    def test_data_beyond_the_stream_window(self, c: H2Client) -> None:
        """§6.9.1: the client MUST NOT send more than the window the server advertised
        (65535 here, the app reading nothing meanwhile): FLOW_CONTROL_ERROR (stream or
        connection error)."""
        window = c.server_settings.get(INITIAL_WINDOW_SIZE, 65535)
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/gated?window"), end_stream=False))
        parts = [data(sid, b"x" * 16384) for _ in range(window // 16384)]
        parts.append(data(sid, b"x" * (window % 16384 + 1), end=True))
        c.send(*parts)
        if c.expect_error(sid, FLOW_CONTROL_ERROR) == "stream":
            c.assert_alive()

    def test_upload_acknowledged_as_the_app_reads(self, c: H2Client) -> None:
        """§6.9: the server gives window back as the app consumes the body, so an upload
        larger than the initial window completes."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/size"), end_stream=False))
        sent, total, window = 0, 200_000, 65535
        while sent < total:
            while window <= 0:
                update = c.expect(WindowUpdateFrame)
                if update.stream_id == sid:
                    window += update.window_increment
            size = min(16384, window, total - sent)
            c.send(data(sid, b"u" * size, end=sent + size == total))
            sent += size
            window -= size
        assert bytes(c.response(sid).body) == b"200000"


# §6.10 CONTINUATION -----------------------------------------------------------------------


class TestContinuation:
    """RFC 9113 §6.10 and §4.3: a field block is HEADERS plus CONTINUATION frames, with no
    other frame between them."""

    def test_block_split_over_continuations(self, c: H2Client) -> None:
        """§6.10: a field block in HEADERS and two CONTINUATION frames is decoded as one."""
        sid = c.next_sid()
        block = c.block(request_fields(b"GET", b"/headers", [(b"x-long", b"y" * 300)]))
        first, second, third = split(block, 3)
        c.send(
            frame(HEADERS, END_STREAM, sid, first),
            frame(CONTINUATION, 0, sid, second),
            frame(CONTINUATION, END_HEADERS, sid, third),
        )
        seen = json.loads(c.response(sid).body)
        assert ["x-long", "y" * 300] in seen

    def test_empty_continuation(self, c: H2Client) -> None:
        """§6.10: a CONTINUATION may carry an empty fragment."""
        sid = c.next_sid()
        c.send(
            frame(HEADERS, END_STREAM, sid, c.block(request_fields())),
            frame(CONTINUATION, END_HEADERS, sid, b""),
        )
        served(c, sid)

    @pytest.mark.parametrize(
        "between",
        [ping(), frame(0xFA, 0, 1, b"ext"), data(1, b"x")],
        ids=["PING", "unknown-type", "DATA"],
    )
    def test_frame_inside_a_block(self, c: H2Client, between: bytes) -> None:
        """§6.10, §4.3: a field block MUST be transmitted as a contiguous sequence of frames;
        any other frame (even of an unknown type) in between is a connection error of type
        PROTOCOL_ERROR."""
        first, second = split(c.block(request_fields()), 2)
        c.send(frame(HEADERS, END_STREAM, 1, first), between)
        c.send(frame(CONTINUATION, END_HEADERS, 1, second))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_continuation_on_another_stream(self, c: H2Client) -> None:
        """§6.10: the CONTINUATION must be on the stream of the HEADERS: PROTOCOL_ERROR."""
        first, second = split(c.block(request_fields()), 2)
        c.send(frame(HEADERS, END_STREAM, 1, first), frame(CONTINUATION, END_HEADERS, 3, second))
        c.expect_goaway(PROTOCOL_ERROR)

    def test_continuation_after_end_headers(self, c: H2Client) -> None:
        """§6.10: a CONTINUATION not preceded by HEADERS, PUSH_PROMISE or CONTINUATION without
        END_HEADERS MUST be a connection error of type PROTOCOL_ERROR."""
        sid = c.request(b"/wait")
        c.send(frame(CONTINUATION, END_HEADERS, sid, c.block([(b"x-late", b"1")])))
        c.expect_goaway(PROTOCOL_ERROR)


# §8 HTTP message exchanges ----------------------------------------------------------------


def _req(*fields: tuple[bytes, bytes]) -> Fields:
    return list(fields)


_M, _S, _A, _P = b":method", b":scheme", b":authority", b":path"
MALFORMED: dict[str, Fields] = {
    "uppercase-name": request_fields(extra=[(b"X-Upper", b"1")]),
    "connection": request_fields(extra=[(b"connection", b"keep-alive")]),
    "keep-alive": request_fields(extra=[(b"keep-alive", b"timeout=5")]),
    "proxy-connection": request_fields(extra=[(b"proxy-connection", b"keep-alive")]),
    "transfer-encoding": request_fields(extra=[(b"transfer-encoding", b"chunked")]),
    "upgrade": request_fields(extra=[(b"upgrade", b"h2c")]),
    "te-gzip": request_fields(extra=[(b"te", b"gzip")]),
    "pseudo-after-regular": _req((_M, b"GET"), (_S, b"http"), (b"x-a", b"1"), (_P, b"/")),
    "unknown-pseudo": [*request_fields()[:2], (b":foo", b"bar"), *request_fields()[2:]],
    "duplicate-method": [(_M, b"GET"), *request_fields()],
    "duplicate-path": [*request_fields()[:3], (_P, b"/"), (_P, b"/x")],
    "missing-method": _req((_S, b"http"), (_A, b"localhost"), (_P, b"/")),
    "missing-scheme": _req((_M, b"GET"), (_A, b"localhost"), (_P, b"/")),
    "missing-path": _req((_M, b"GET"), (_S, b"http"), (_A, b"localhost")),
    "empty-path": _req((_M, b"GET"), (_S, b"http"), (_A, b"localhost"), (_P, b"")),
    "relative-path": _req((_M, b"GET"), (_S, b"http"), (_A, b"localhost"), (_P, b"x")),
    "asterisk-path-not-options": request_fields(path=b"*"),
    "response-pseudo": [(b":status", b"200"), *request_fields()],
    "status-among-request": [*request_fields()[:2], (b":status", b"200"), *request_fields()[2:]],
    "host-differs": request_fields(extra=[(b"host", b"elsewhere")]),
    "value-leading-space": request_fields(extra=[(b"x-a", b" 1")]),
    "value-nul": request_fields(extra=[(b"x-a", b"a\x00b")]),
    "value-lf": request_fields(extra=[(b"x-a", b"a\nb")]),
    "empty-name": request_fields(extra=[(b"", b"v")]),
    "protocol-without-connect": [
        *request_fields()[:1],
        (b":protocol", b"websocket"),
        *request_fields()[1:],
    ],
    "connect-with-path": _req((_M, b"CONNECT"), (_A, b"example.com:443"), (_P, b"/")),
    "connect-with-scheme": _req((_M, b"CONNECT"), (_S, b"https"), (_A, b"example.com:443")),
    "connect-without-authority": _req((_M, b"CONNECT")),
    "content-length-not-digits": request_fields(extra=[(b"content-length", b"abc")]),
    "content-length-negative": request_fields(extra=[(b"content-length", b"-1")]),
    "content-length-conflicting": request_fields(
        extra=[(b"content-length", b"1"), (b"content-length", b"2")]
    ),
}


class TestMessages:
    """RFC 9113 §8.1-§8.3 and §8.5: a malformed request is a stream error of type
    PROTOCOL_ERROR (§8.1.1): RST_STREAM, and the connection is still usable."""

    @pytest.mark.parametrize("fields", list(MALFORMED.values()), ids=list(MALFORMED))
    def test_malformed_request(self, c: H2Client, fields: Fields) -> None:
        """§8.1.1: malformed requests MUST be treated as a stream error of type
        PROTOCOL_ERROR (§8.2.1 names, §8.2.2 connection-specific fields, §8.3 pseudo-header
        fields, §8.3.1 :path and Host, §8.5 CONNECT)."""
        sid = c.next_sid()
        c.send(c.headers(sid, fields))
        c.expect_reset(sid, PROTOCOL_ERROR)
        c.assert_alive()
        served(c, c.request())

    def test_te_trailers_allowed(self, c: H2Client) -> None:
        """§8.2.2: TE may be present with the value "trailers"."""
        served(c, c.request(extra=[(b"te", b"trailers")]))

    def test_options_asterisk(self, c: H2Client) -> None:
        """§8.3.1: ':path' is "*" for a server-wide OPTIONS request."""
        served(c, c.request(b"*", b"OPTIONS"))

    def test_cookie_crumbs_joined(self, c: H2Client) -> None:
        """§8.2.3: several cookie fields are joined with "; " before an HTTP/1.1-style
        consumer sees them."""
        resp = c.get(b"/headers", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        assert ["cookie", "a=1; b=2"] in json.loads(resp.body)

    @pytest.mark.parametrize("declared,sent", [(10, b"short"), (2, b"too long")])
    def test_content_length_mismatch(self, c: H2Client, declared: int, sent: bytes) -> None:
        """§8.1.1: a request whose content-length does not equal the sum of its DATA
        payloads is malformed: a stream error of type PROTOCOL_ERROR."""
        sid = c.next_sid()
        path = b"/echo?length-%d" % declared
        fields = request_fields(b"POST", path, [(b"content-length", b"%d" % declared)])
        c.send(c.headers(sid, fields, end_stream=False), data(sid, sent, end=True))
        c.expect_reset(sid, PROTOCOL_ERROR)
        seen = f"disconnect:/echo:length-{declared}"
        wait_for(lambda: seen in EVENTS, 5, "the app to see the reset")
        c.assert_alive()
        served(c, c.request())

    def test_content_length_matching(self, c: H2Client) -> None:
        """§8.1.1: a content-length equal to the DATA sent is served (RFC 9110 §8.6: the
        same value twice is one content-length)."""
        sid = c.next_sid()
        length = (b"content-length", b"5")
        fields = request_fields(b"POST", b"/echo", [length, length])
        c.send(
            c.headers(sid, fields, end_stream=False), data(sid, b"ab"), data(sid, b"cde", end=True)
        )
        assert bytes(c.response(sid).body) == b"abcde"

    def test_trailers_served(self, c: H2Client) -> None:
        """§8.1: a request may end with a trailer section (HEADERS with END_STREAM)."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        c.send(data(sid, b"body"), c.headers(sid, [(b"x-checksum", b"1")]))
        assert bytes(c.response(sid).body) == b"body"

    def test_trailers_without_end_stream(self, c: H2Client) -> None:
        """§8.1: a HEADERS frame without END_STREAM after the request's header section makes
        the request malformed: stream error PROTOCOL_ERROR."""
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo?unended"), end_stream=False))
        c.send(data(sid, b"body"), c.headers(sid, [(b"x-checksum", b"1")], end_stream=False))
        c.expect_reset(sid, PROTOCOL_ERROR)
        wait_for(lambda: "disconnect:/echo:unended" in EVENTS, 5, "the app to see the reset")
        c.assert_alive()
        served(c, c.request())

    @pytest.mark.parametrize(
        "trailer",
        [(b":path", b"/x"), (b"X-Upper", b"1"), (b"connection", b"close"), (b"x-a", b"a\rb")],
        ids=["pseudo-header", "uppercase", "connection-specific", "cr-in-value"],
    )
    def test_malformed_trailers(self, c: H2Client, trailer: tuple[bytes, bytes]) -> None:
        """§8.1: trailers MUST NOT include pseudo-header fields, and §8.2.1/§8.2.2 apply to
        them as to any field section: the request is malformed, a stream error."""
        tag = "trailers-" + trailer[0].decode().strip(":").lower()
        sid = c.next_sid()
        c.send(c.headers(sid, request_fields(b"POST", b"/echo?" + tag.encode()), end_stream=False))
        c.send(data(sid, b"body"), c.headers(sid, [trailer]))
        c.expect_reset(sid, PROTOCOL_ERROR)
        # The app is told the client went away, never that the body is complete.
        wait_for(lambda: f"disconnect:/echo:{tag}" in EVENTS, 5, "the app to see the reset")
        c.assert_alive()
        served(c, c.request())

    def test_connect_tunnel(self, c: H2Client) -> None:
        """§8.5: a well-formed CONNECT (only :method and :authority) is a request the server
        may refuse: 501 on that stream, the connection goes on."""
        sid = c.next_sid()
        c.send(c.headers(sid, [(_M, b"CONNECT"), (_A, b"example.com:443")]))
        assert c.response(sid).status == 501
        c.assert_alive()

    def test_too_many_fields_is_431(self, c: H2Client) -> None:
        """§8.2, RFC 6585 §5: a request with more fields than the server takes gets 431 on
        its stream (the block was decoded: HPACK state is sound)."""
        extra = [(b"x-%d" % i, b"v") for i in range(120)]
        resp = c.get(extra=extra)
        assert resp.status == 431
        served(c, c.request())


# Abuse ------------------------------------------------------------------------------------


class TestAbuse:
    """Denial-of-service bounds (RFC 9113 §10.5): each abuse ends the connection with the
    right GOAWAY within its bound, and the server keeps serving other connections."""

    def test_rapid_reset(self, server: RunningServer) -> None:
        """CVE-2023-44487: streams opened and reset at once, in a loop, end in GOAWAY
        ENHANCE_YOUR_CALM (§10.5: an endpoint MAY treat such activity as a connection error)."""
        client = connect(server)
        fields = request_fields(b"GET", b"/wait")
        for _ in range(40):
            batch = []
            for _ in range(10):
                sid = client.next_sid()
                batch += [client.headers(sid, fields), rst_stream(sid)]
            if not client.send_quietly(*batch):
                break
        goaway = client.expect_goaway(ENHANCE_YOUR_CALM)
        # Stopped at the bound: no stream after the reset that went over it was processed.
        assert goaway.last_stream_id <= 2 * H2Limits().max_resets + 1
        assert_served(server)

    def test_continuation_flood_of_frames(self, server: RunningServer) -> None:
        """CVE-2024-27316: endless CONTINUATION frames without END_HEADERS end in GOAWAY
        ENHANCE_YOUR_CALM long before the server buffers much."""
        client = connect(server)
        client.send(frame(HEADERS, END_STREAM, 1, client.block(request_fields())))
        flood = frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b")
        for _ in range(100):
            if not client.send_quietly(flood * 100):
                break
        client.expect_goaway(ENHANCE_YOUR_CALM)
        assert_served(server)

    def test_continuation_flood_of_bytes(self, server: RunningServer) -> None:
        """CVE-2024-27316: a few large CONTINUATION frames: a block larger than
        SETTINGS_MAX_HEADER_LIST_SIZE is refused before it is buffered whole."""
        client = connect(server)
        client.send(frame(HEADERS, END_STREAM, 1, client.block(request_fields())))
        big = frame(CONTINUATION, 0, 1, b"\x00" * 16384)
        for _ in range(64):  # 1 MiB if nothing stopped it
            if not client.send_quietly(big):
                break
        client.expect_goaway(ENHANCE_YOUR_CALM)
        assert_served(server)

    def test_settings_flood(self, server: RunningServer) -> None:
        """CVE-2019-9515: SETTINGS frames without end end in GOAWAY ENHANCE_YOUR_CALM."""
        client = connect(server)
        client.send_quietly(settings({MAX_CONCURRENT_STREAMS: 100}) * 1000)
        client.expect_goaway(ENHANCE_YOUR_CALM)
        assert_served(server)

    def test_ping_flood(self, server: RunningServer) -> None:
        """CVE-2019-9512: PING frames without end end in GOAWAY ENHANCE_YOUR_CALM."""
        client = connect(server)
        client.send_quietly(ping() * 5000)
        client.expect_goaway(ENHANCE_YOUR_CALM)
        assert_served(server)

    def test_empty_data_flood(self, server: RunningServer) -> None:
        """CVE-2019-9518: empty DATA frames without END_STREAM end in GOAWAY
        ENHANCE_YOUR_CALM."""
        client = connect(server)
        sid = client.next_sid()
        client.send(client.headers(sid, request_fields(b"POST", b"/echo"), end_stream=False))
        client.send_quietly(data(sid, b"") * 5000)
        client.expect_goaway(ENHANCE_YOUR_CALM)
        assert_served(server)

    def test_hpack_bomb(self, server: RunningServer) -> None:
        """RFC 7541 §7.3, §10.5.1: one large field inserted in the dynamic table and
        referenced thousands of times (a few KiB on the wire, megabytes decoded) is
        refused without decoding it all: GOAWAY (or 431), and the server lives."""
        client = connect(server)
        sid = client.next_sid()
        block = client.block(request_fields(extra=[(b"x-bomb", b"b" * 4000)]))
        block += b"\xbe" * 20000  # dynamic index 62: the bomb, 20000 times (80 MB decoded)
        first, rest = block[:16000], block[16000:]
        client.send(
            frame(HEADERS, END_STREAM, sid, first), frame(CONTINUATION, END_HEADERS, sid, rest)
        )
        while True:
            f = client.read_frame()
            if f is None or isinstance(f, GoAwayFrame):
                assert f is not None, "closed without GOAWAY"
                assert f.error_code in (ENHANCE_YOUR_CALM, COMPRESSION_ERROR)
                break
            if isinstance(f, HeadersFrame) and f.stream_id == sid:
                assert dict(client.blocks[sid][-1])[b":status"] == b"431"
                break
        assert_served(server)

    def test_header_list_over_the_setting_is_431(self, c: H2Client) -> None:
        """§6.5.2, §10.5.1: a header list over the advertised SETTINGS_MAX_HEADER_LIST_SIZE
        (but within what the server decodes) gets 431 on its stream; the connection lives."""
        limit = c.server_settings[MAX_HEADER_LIST_SIZE]
        count = limit // 4038 + 2
        sid = c.next_sid()
        block = c.block(request_fields(extra=[(b"x-big", b"b" * 4000)])) + b"\xbe" * count
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
        assert c.response(sid).status == 431
        served(c, c.request())


# Zero-window stall ------------------------------------------------------------------------


def tls_connect(srv: RunningServer, ca: trustme.CA) -> H2Client:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    raw = srv.connect()
    sock = context.wrap_socket(raw, server_hostname="localhost")
    _open.append(sock)
    assert sock.selected_alpn_protocol() == "h2"
    return H2Client(sock)


@pytest.fixture(scope="module")
def tls_server(localhost_cert: LocalhostCert) -> Iterator[RunningServer]:
    _, cert, key = localhost_cert
    settings_: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with run_server(app, **settings_) as srv:
        yield srv


class TestZeroWindowStall:
    """A response blocked on a zero flow-control window (§6.9: the client is allowed to keep
    it shut) is not held for ever: after ``timeout_keep_alive`` without progress the stream
    gets RST_STREAM CANCEL and its app ``http.disconnect``; when every open stream of the
    connection is stalled, the connection is closed with GOAWAY."""

    def test_stalled_stream_reset_and_connection_closed(self, stall_server: RunningServer) -> None:
        """Stream window 0 (SETTINGS_INITIAL_WINDOW_SIZE 0): the head goes out, no DATA; the
        only stream is reset with CANCEL, then GOAWAY and close."""
        client = connect(stall_server, {INITIAL_WINDOW_SIZE: 0})
        started = time.monotonic()
        sid = client.request(b"/stall?a-100000")
        client.expect(HeadersFrame, sid)
        client.expect_reset(sid, CANCEL)
        assert time.monotonic() - started >= STALL_TIMEOUT_S * 0.8
        client.expect_goaway(NO_ERROR)
        assert not [f for f in client.seen if isinstance(f, DataFrame)]
        wait_for(lambda: "stalled:a:http.disconnect" in EVENTS, 5, "the app to see the reset")

    def test_connection_window_stall(self, stall_server: RunningServer) -> None:
        """The connection window (65535, never updated) is the one that stalls: the stream
        is reset all the same and the connection closed."""
        client = connect(stall_server, {INITIAL_WINDOW_SIZE: 1 << 20})
        sid = client.next_sid()
        client.send(client.headers(sid, request_fields(b"GET", b"/stall?b-300000")))
        client.expect_reset(sid, CANCEL)
        got = sum(len(f.data) for f in client.seen if isinstance(f, DataFrame))
        assert got == 65535
        client.expect_goaway(NO_ERROR)
        wait_for(lambda: "stalled:b:http.disconnect" in EVENTS, 5, "the app to see the reset")

    def test_only_the_stalled_stream_is_reset(self, stall_server: RunningServer) -> None:
        """A stalled stream next to one that is not (waiting for its request body) is reset
        alone; the connection goes on."""
        client = connect(stall_server, {INITIAL_WINDOW_SIZE: 0})
        other = client.next_sid()
        client.send(client.headers(other, request_fields(b"POST", b"/echo"), end_stream=False))
        sid = client.next_sid()
        client.send(client.headers(sid, request_fields(b"GET", b"/stall?c-100000")))
        client.expect_reset(sid, CANCEL)
        wait_for(lambda: "stalled:c:http.disconnect" in EVENTS, 5, "the app to see the reset")
        client.assert_alive()
        client.send(data(other, b"fine", end=True), settings({INITIAL_WINDOW_SIZE: 65535}))
        resp = client.response(other)
        assert bytes(resp.body) == b"fine"

    def test_new_streams_do_not_postpone_the_stall(self, stall_server: RunningServer) -> None:
        """Streams opened (and served) while another is stalled do not restart its clock."""
        client = connect(stall_server, {INITIAL_WINDOW_SIZE: 0})
        started = time.monotonic()
        stalled = client.request(b"/stall?e-100000")
        client.expect(HeadersFrame, stalled)
        for _ in range(3):
            client.read_for(STALL_TIMEOUT_S / 4)  # pace: a new stream every quarter timeout
            sid = client.request()
            client.send(window_update(sid, 100))
            served(client, sid)
        client.expect_reset(stalled, CANCEL)
        assert time.monotonic() - started < STALL_TIMEOUT_S * 4
        client.expect_goaway(NO_ERROR)  # it was the only open stream left

    def test_a_slow_reader_that_progresses_is_not_cut(self, stall_server: RunningServer) -> None:
        """The bound is on time without progress, not on the response's duration: a client
        that opens its window a little at a time, for longer than the timeout in total,
        gets the whole response."""
        client = connect(stall_server, {INITIAL_WINDOW_SIZE: 0})
        started = time.monotonic()
        sid = client.request(b"/stall?d-2000")
        client.expect(HeadersFrame, sid)
        got = 0
        for rounds in range(1, 8):  # 300 bytes at a time, 7 times
            client.read_for(STALL_TIMEOUT_S * 0.4)  # pace the reader: no frame is due
            assert not [f for f in client.seen if isinstance(f, RstStreamFrame)]
            client.send(window_update(sid, 300))
            while got < min(2000, 300 * rounds):
                got += len(client.expect(DataFrame, sid).data)
        assert got == 2000
        assert time.monotonic() - started > STALL_TIMEOUT_S * 2
        resp = client.response(sid, window=False)
        assert resp.ended and resp.reset is None
        wait_for(lambda: "completed:d" in EVENTS, 5, "the app to finish")
