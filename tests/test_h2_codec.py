"""The HTTP/2 codec without an event loop: bytes in, ``H2Handler`` calls out, and back.

Two kinds of peer: ``Peer`` wires the codec to a real client-side ``h2.connection.H2Connection``
(bytes both ways; its header validation is off so it can also send malformed requests), and
``Raw`` writes frames with hyperframe and hpack for what no real client sends (floods, bad
prefaces, interleaved CONTINUATION). Classes are named after the RFC 9113 sections they test.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    InformationalResponseReceived,
    PushedStreamReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from sleipnir.wire import h1, h2_fields
from sleipnir.wire.h1 import _GOOD_HOSTS, RequestHead
from sleipnir.wire.h1_writer import ResponseHeaderError
from sleipnir.wire.h2 import (
    PREFACE,
    H2Codec,
    H2ConnectionError,
    H2Limits,
)

Fields = list[tuple[bytes, bytes]]
E = TypeVar("E", bound=Event)
GET: Fields = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"example.com"),
    (b":path", b"/"),
]


def req(method: bytes = b"GET", path: bytes = b"/", extra: Fields | None = None) -> Fields:
    fields = [(b":method", method), (b":scheme", b"http"), (b":authority", b"example.com")]
    return [*fields, (b":path", path), *(extra or [])]


@dataclass
class Seen:
    head: RequestHead
    body: bytes = b""
    complete: bool = False
    reset: int | None = None


@dataclass
class Recorder:
    """An ``H2Handler`` that records every call and checks their order."""

    streams: dict[int, Seen] = field(default_factory=dict)
    windows: list[int] = field(default_factory=list)
    goaways: list[tuple[int, int]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    outcomes: list[tuple[int, int]] = field(default_factory=list)  # (status, error code)

    def on_request(self, stream_id: int, head: RequestHead) -> None:
        assert stream_id not in self.streams
        self.streams[stream_id] = Seen(head)

    def on_body(self, stream_id: int, data: bytes) -> None:
        seen = self.streams[stream_id]
        assert data and not seen.complete and seen.reset is None
        seen.body += data

    def on_complete(self, stream_id: int) -> None:
        seen = self.streams[stream_id]
        assert not seen.complete and seen.reset is None
        seen.complete = True

    def on_reset(self, stream_id: int, error_code: int) -> None:
        assert self.streams[stream_id].reset is None
        self.streams[stream_id].reset = error_code

    def on_window_open(self, stream_id: int) -> None:
        self.windows.append(stream_id)

    def on_goaway(self, error_code: int, last_stream_id: int) -> None:
        self.goaways.append((error_code, last_stream_id))

    def on_refused(self, stream_id: int, status: int, error_code: int, reason: str) -> None:
        assert stream_id not in self.streams and reason
        assert bool(status) != bool(error_code)  # answered with a status, or reset
        self.refused.append((stream_id, reason))
        self.outcomes.append((status, error_code))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """The codec and a real h2 client, bytes carried both ways."""

    def __init__(
        self,
        limits: H2Limits | None = None,
        client_settings: dict[SettingCodes | int, int] | None = None,
    ) -> None:
        self.rec = Recorder()
        self.codec = H2Codec(self.rec, limits or H2Limits())
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.client = H2Connection(config)
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.events: list[Event] = []
        self.to_client(self.codec.initiate())
        self.flush()

    def to_client(self, data: bytes) -> None:
        if data:
            self.events += self.client.receive_data(data)

    def flush(self) -> None:
        """Carry the client's pending bytes to the codec, and the answers back, until quiet."""
        while data := self.client.data_to_send():
            self.to_client(self.codec.feed(data))

    def request(self, fields: Fields, body: Sequence[bytes] = (), end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, fields, end_stream=end and not body)
        for i, chunk in enumerate(body):
            self.send_body(sid, chunk, end and i == len(body) - 1)
        self.flush()
        return sid

    def send_body(self, sid: int, data: bytes, end: bool = False, pad: int | None = None) -> None:
        """One DATA frame per 16 000 bytes, then flush."""
        for at in range(0, len(data), 16000):
            last = at + 16000 >= len(data)
            self.client.send_data(sid, data[at : at + 16000], end and last, pad)
        self.flush()

    def take(self, kind: type[E]) -> list[E]:
        """The events of ``kind`` since the last ``take`` (the others are dropped)."""
        events, self.events = self.events, []
        return [e for e in events if isinstance(e, kind)]

    def respond(self, sid: int, body: bytes = b"ok", status: int = 200) -> None:
        self.to_client(
            self.codec.send_headers(sid, status, [(b"content-type", b"text/plain")], False)
        )
        data, taken = self.codec.send_data(sid, body, True)
        assert taken == len(body)
        self.to_client(data)
        self.to_client(self.codec.close_stream(sid))
        self.flush()


class Raw:
    """The codec and hand-made frames."""

    def __init__(self, limits: H2Limits | None = None, clock: Clock | None = None) -> None:
        self.rec = Recorder()
        self.codec = H2Codec(self.rec, limits or H2Limits(), clock or Clock())
        self.codec.initiate()
        self.enc = Encoder()
        self.out = b""

    def start(self) -> Raw:
        self.send(PREFACE + SettingsFrame(0).serialize())
        return self

    def send(self, *parts: bytes | Frame) -> bytes:
        data = b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts)
        out = self.codec.feed(data)
        self.out += out
        return out

    def headers(
        self, sid: int, fields: Fields, flags: Iterable[str] = ("END_HEADERS", "END_STREAM")
    ) -> HeadersFrame:
        return HeadersFrame(sid, data=self.enc.encode(fields), flags=flags)

    def refused(self, parts: Sequence[bytes | Frame], code: int) -> H2ConnectionError:
        with pytest.raises(H2ConnectionError) as info:
            self.send(*parts)
        error = info.value
        assert error.code == code and error.reason
        goaway = frames(error.goaway)[-1]
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == code
        return error

    def frames(self) -> list[Frame]:
        return frames(self.out)


def frames(data: bytes) -> list[Frame]:
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def resets(data: bytes) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in frames(data) if isinstance(f, RstStreamFrame)}


class TestPreface:
    """RFC 9113 §3.4 and §6.5: the connection preface and the SETTINGS exchange."""

    def test_settings_advertised_and_acknowledged(self) -> None:
        peer = Peer()
        changed = peer.client.remote_settings
        assert changed.max_concurrent_streams == 100
        assert changed.enable_connect_protocol == 1
        assert changed.max_header_list_size == 65536
        assert peer.take(SettingsAcknowledged)  # our SETTINGS, acknowledged by the client
        # The connection window was raised to 1 MiB in the preface.
        assert peer.client.outbound_flow_control_window == 1 << 20

    def test_client_settings_acknowledged(self) -> None:
        raw = Raw()
        out = raw.send(PREFACE, SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 20000}))
        ack = frames(out)
        assert len(ack) == 1 and isinstance(ack[0], SettingsFrame) and "ACK" in ack[0].flags

    def test_byte_by_byte(self) -> None:
        raw = Raw()
        data = PREFACE + SettingsFrame(0).serialize()
        data += raw.headers(1, req(b"POST"), ["END_HEADERS"]).serialize()
        data += DataFrame(1, b"hello", flags=["END_STREAM"]).serialize()
        for i in range(len(data)):
            raw.send(data[i : i + 1])
        seen = raw.rec.streams[1]
        assert seen.head.method == "POST" and seen.body == b"hello" and seen.complete

    def test_invalid_preface(self) -> None:
        raw = Raw()
        raw.refused([b"GET / HTTP/1.1\r\n\r\n"], ErrorCodes.PROTOCOL_ERROR)

    def test_invalid_preface_after_a_valid_start(self) -> None:
        raw = Raw()
        raw.send(PREFACE[:10])
        raw.refused([b"X" * 20], ErrorCodes.PROTOCOL_ERROR)

    def test_first_frame_must_be_settings(self) -> None:
        raw = Raw()
        raw.refused([PREFACE, raw.headers(1, GET)], ErrorCodes.PROTOCOL_ERROR)


class TestFrameSize:
    """RFC 9113 §4.2: frames over SETTINGS_MAX_FRAME_SIZE; fixed-size frames of the wrong size."""

    def test_oversized_frame_refused_before_its_payload(self) -> None:
        raw = Raw().start()
        header = (16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
        raw.refused([header], ErrorCodes.FRAME_SIZE_ERROR)

    def test_larger_frames_and_windows_when_configured(self) -> None:
        raw = Raw(H2Limits(max_frame_size=65536, initial_window_size=1 << 20)).start()
        settings = frames(H2Codec(Recorder(), H2Limits(initial_window_size=1 << 20)).initiate())[0]
        assert isinstance(settings, SettingsFrame)
        assert settings.settings[SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20
        raw.send(raw.headers(1, req(b"POST"), ["END_HEADERS"]))
        raw.send(DataFrame(1, b"x" * 40000, flags=["END_STREAM"]))
        assert len(raw.rec.streams[1].body) == 40000

    def test_ping_of_wrong_length(self) -> None:
        raw = Raw().start()
        raw.refused(
            [b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"x" * 7], ErrorCodes.FRAME_SIZE_ERROR
        )


class TestFieldCompression:
    """RFC 9113 §4.3 and §10.5.1: HPACK errors, header list limits, the HPACK bomb."""

    def test_invalid_header_block(self) -> None:
        raw = Raw().start()
        bad = HeadersFrame(1, data=b"\xff\xff\xff\xff\xff", flags=["END_HEADERS"])
        raw.refused([bad], ErrorCodes.COMPRESSION_ERROR)

    def test_header_list_over_the_setting_gets_431(self) -> None:
        peer = Peer()
        # One field, indexed by HPACK after its first use: 3 KiB on the wire, 66 KiB decoded.
        big = [(b"x-big", b"v" * 3000)] * 22
        sid = peer.request(req(extra=big))
        response = peer.take(ResponseReceived)
        assert len(response) == 1 and (b":status", b"431") in response[0].headers
        assert peer.rec.refused[0][0] == sid and not peer.rec.streams
        assert peer.rec.outcomes == [(431, 0)]
        assert peer.request(GET) == sid + 2 and peer.rec.streams  # the connection lives on

    def test_too_many_fields_gets_431(self) -> None:
        peer = Peer()
        peer.request(req(extra=[(b"x-%d" % i, b"1") for i in range(101)]))
        response = peer.take(ResponseReceived)
        assert (b":status", b"431") in response[0].headers

    def test_431_resets_a_request_still_sending(self) -> None:
        peer = Peer(H2Limits(max_header_count=3))
        sid = peer.request(req(b"POST", extra=[(b"a", b"1"), (b"b", b"2")]), end=False)
        assert peer.take(StreamReset)[0].error_code == ErrorCodes.NO_ERROR
        assert peer.rec.refused[0][0] == sid

    def test_hpack_bomb(self) -> None:
        raw = Raw().start()
        # One 4000-byte field in the dynamic table, then referenced 40 times: ~160 KiB
        # decoded from ~4 KiB on the wire.
        first = raw.enc.encode([*GET, (b"x-bomb", b"b" * 4000)])
        index = raw.enc.encode([(b"x-bomb", b"b" * 4000)])  # indexed: one byte
        assert len(index) == 1
        block = first + index * 40
        raw.refused(
            [HeadersFrame(1, data=block, flags=["END_HEADERS"])], ErrorCodes.ENHANCE_YOUR_CALM
        )


class TestStreamStates:
    """RFC 9113 §5.1: concurrent streams, MAX_CONCURRENT_STREAMS, RST_STREAM."""

    def test_concurrent_streams(self) -> None:
        peer = Peer()
        a = peer.request(req(b"POST"), [b"a1"], end=False)
        b = peer.request(req(b"POST"), [b"b1"], end=False)
        peer.client.send_data(a, b"a2", end_stream=True)
        peer.client.send_data(b, b"b2", end_stream=True)
        peer.flush()
        assert peer.rec.streams[a].body == b"a1a2" and peer.rec.streams[b].body == b"b1b2"
        assert peer.codec.open_streams == 2
        peer.respond(b, b"second")
        peer.respond(a, b"first")
        bodies = {e.stream_id: e.data for e in peer.take(DataReceived)}
        assert bodies == {a: b"first", b: b"second"} and peer.codec.open_streams == 0

    def test_max_concurrent_streams(self) -> None:
        raw = Raw(H2Limits(max_concurrent_streams=2)).start()
        raw.send(raw.headers(1, GET), raw.headers(3, GET), raw.headers(5, GET))
        assert set(raw.rec.streams) == {1, 3}
        assert resets(raw.out) == {5: ErrorCodes.REFUSED_STREAM}
        assert raw.rec.refused[0][0] == 5
        assert raw.rec.outcomes == [(0, ErrorCodes.REFUSED_STREAM)]
        # A reset by the client does not free the slot: the app still runs (Rapid Reset).
        raw.send(RstStreamFrame(1, ErrorCodes.CANCEL))
        assert raw.rec.streams[1].reset == ErrorCodes.CANCEL
        raw.send(raw.headers(7, GET))
        assert 7 not in raw.rec.streams and raw.codec.open_streams == 2
        raw.codec.close_stream(1)
        raw.send(raw.headers(9, GET))
        assert 9 in raw.rec.streams

    def test_reset_reaches_only_its_stream(self) -> None:
        peer = Peer()
        a = peer.request(GET)
        b = peer.request(GET)
        peer.client.reset_stream(a, ErrorCodes.CANCEL)
        peer.flush()
        assert peer.rec.streams[a].reset == ErrorCodes.CANCEL
        assert peer.rec.streams[b].reset is None
        assert peer.codec.send_headers(a, 200, [], True) == b""
        assert peer.codec.send_data(a, b"lost", True) == (b"", 4)
        assert peer.codec.send_trailers(a, []) == b""
        assert peer.codec.reset(a) == b""
        assert peer.codec.window(a) == 0
        peer.respond(b)
        assert [e.stream_id for e in peer.take(StreamEnded)] == [b]

    def test_reset_in_the_same_read_is_never_delivered(self) -> None:
        raw = Raw().start()
        raw.send(raw.headers(1, GET), RstStreamFrame(1, ErrorCodes.CANCEL))
        assert not raw.rec.streams and raw.codec.open_streams == 0

    def test_close_stream_ends_an_unfinished_request(self) -> None:
        peer = Peer()
        sid = peer.request(req(b"POST"), [b"partial"], end=False)
        peer.to_client(peer.codec.send_headers(sid, 413, [], True))
        peer.to_client(peer.codec.close_stream(sid))
        assert peer.take(StreamReset)[0].error_code == ErrorCodes.NO_ERROR
        assert peer.codec.close_stream(sid) == b""

    def test_close_stream_cancels_an_unfinished_response(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        peer.to_client(peer.codec.send_headers(sid, 200, [], False))
        peer.to_client(peer.codec.close_stream(sid))
        assert peer.take(StreamReset)[0].error_code == ErrorCodes.CANCEL

    def test_reset_by_the_server(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        peer.to_client(peer.codec.reset(sid))
        assert peer.take(StreamReset)[0].error_code == ErrorCodes.INTERNAL_ERROR
        assert peer.codec.open_streams == 1  # until the cycle ends
        assert peer.codec.close_stream(sid) == b"" and peer.codec.open_streams == 0


class TestFlowControl:
    """RFC 9113 §5.2 and §6.9: both directions, stream and connection windows."""

    def test_send_data_stops_at_the_window(self) -> None:
        peer = Peer(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        sid = peer.request(GET)
        peer.to_client(peer.codec.send_headers(sid, 200, [], False))
        data, taken = peer.codec.send_data(sid, b"x" * 2500, True)
        assert taken == 1000 and peer.codec.window(sid) == 0
        peer.to_client(data)
        assert peer.codec.send_data(sid, b"x" * 1500, True) == (b"", 0)
        got = peer.take(DataReceived)
        assert sum(len(e.data) for e in got) == 1000 and not peer.take(StreamEnded)
        peer.client.increment_flow_control_window(5000, sid)
        peer.flush()
        assert sid in peer.rec.windows
        data, taken = peer.codec.send_data(sid, b"x" * 1500, True)
        assert taken == 1500
        peer.to_client(data)
        assert peer.take(StreamEnded)

    def test_large_body_split_at_the_frame_size(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        peer.to_client(peer.codec.send_headers(sid, 200, [], False))
        data, taken = peer.codec.send_data(sid, b"y" * 40000, True)
        assert taken == 40000
        sizes = [len(f.data) for f in frames(data) if isinstance(f, DataFrame)]
        assert sizes == [16384, 16384, 7232]
        assert "END_STREAM" in frames(data)[-1].flags

    def test_connection_window_and_settings_increase(self) -> None:
        peer = Peer(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sid = peer.request(GET)
        assert peer.codec.send_data(sid, b"z", False) == (b"", 0)
        assert peer.codec.send_data(sid, b"", True)[1] == 0  # END_STREAM needs no window
        peer.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        peer.flush()
        assert 0 in peer.rec.windows

    def test_slow_reader_stops_the_client(self) -> None:
        peer = Peer()
        sid = peer.request(req(b"POST"), end=False)
        peer.send_body(sid, b"u" * 65535)
        assert peer.client.local_flow_control_window(sid) == 0
        assert len(peer.rec.streams[sid].body) == 65535
        peer.to_client(peer.codec.acknowledge(sid, 40000))
        assert peer.client.local_flow_control_window(sid) == 40000
        peer.to_client(peer.codec.acknowledge(sid, 10**9))  # clamped to what was delivered
        assert peer.codec.acknowledge(sid, 1) == b""  # nothing left to give back
        assert peer.codec.acknowledge(99, 1) == b""

    # A 64 KiB connection window in these three: h2 sends a WINDOW_UPDATE once half of the
    # window was consumed, which is then easy to reach.
    SMALL = H2Limits(connection_window_size=65535)

    def test_padding_is_returned_at_once(self) -> None:
        peer = Peer(self.SMALL)
        sid = peer.request(req(b"POST"), end=False)
        peer.send_body(sid, b"p" * 30000, pad=255)
        peer.send_body(sid, b"p" * 30000, end=True, pad=255)
        assert len(peer.rec.streams[sid].body) == 60000
        # 4 frames carried 1 KiB of padding: only the body is left to acknowledge.
        assert peer.client.outbound_flow_control_window == 65535 - 61024
        peer.to_client(peer.codec.acknowledge(sid, 60000))
        assert peer.client.outbound_flow_control_window == 65535

    def test_close_stream_gives_back_unread_bytes(self) -> None:
        peer = Peer(self.SMALL)
        sid = peer.request(req(b"POST"), [b"q" * 60000])
        peer.take(Event)
        peer.to_client(peer.codec.send_headers(sid, 204, [], True))
        peer.to_client(peer.codec.close_stream(sid))
        updates = [e for e in peer.take(WindowUpdated) if e.stream_id == 0]
        assert sum(e.delta for e in updates) == 60000

    def test_data_for_a_refused_stream_keeps_the_connection_window(self) -> None:
        raw = Raw(self.SMALL).start()
        bad = req(b"POST", extra=[(b"connection", b"close")])
        data = [DataFrame(1, b"d" * 16000) for _ in range(3)]
        raw.send(raw.headers(1, bad, ["END_HEADERS"]), *data)
        assert resets(raw.out) == {1: ErrorCodes.PROTOCOL_ERROR}
        updates = [f for f in raw.frames() if isinstance(f, WindowUpdateFrame)]
        assert [(f.stream_id, f.window_increment) for f in updates] == [(0, 48000)]


class TestPriority:
    """RFC 9113 §5.3: priority signals are accepted and ignored; self-dependency is an error."""

    def test_priority_frames_ignored(self) -> None:
        raw = Raw().start()
        raw.send(PriorityFrame(3, depends_on=0, stream_weight=200), PriorityFrame(5, depends_on=3))
        raw.send(
            HeadersFrame(
                1,
                data=raw.enc.encode(GET),
                flags=["END_HEADERS", "END_STREAM", "PRIORITY"],
                depends_on=3,
                stream_weight=10,
            )
        )
        raw.send(PriorityFrame(1, depends_on=5, exclusive=True))
        assert raw.rec.streams[1].complete and not resets(raw.out)

    def test_headers_depending_on_itself(self) -> None:
        raw = Raw().start()
        frame = HeadersFrame(
            1,
            data=raw.enc.encode(GET),
            flags=["END_HEADERS", "END_STREAM", "PRIORITY", "PADDED"],
            depends_on=1,
            pad_length=3,
        )
        raw.send(frame)
        assert resets(raw.out) == {1: ErrorCodes.PROTOCOL_ERROR} and not raw.rec.streams
        raw.send(raw.headers(3, GET))  # HPACK state intact: the next request decodes
        assert raw.rec.streams[3].head.method == "GET"

    def test_priority_on_an_open_stream_depending_on_itself(self) -> None:
        raw = Raw().start()
        raw.send(raw.headers(1, req(b"POST"), ["END_HEADERS"]), PriorityFrame(1, depends_on=1))
        assert resets(raw.out) == {1: ErrorCodes.PROTOCOL_ERROR}
        assert raw.rec.streams[1].reset == ErrorCodes.PROTOCOL_ERROR

    def test_priority_on_an_idle_stream_depending_on_itself(self) -> None:
        raw = Raw().start()
        raw.refused([PriorityFrame(7, depends_on=7)], ErrorCodes.PROTOCOL_ERROR)


class TestSettingsAndPing:
    """RFC 9113 §6.5 and §6.7, with the flood bounds (CVE-2019-9515, CVE-2019-9512)."""

    def test_ping_answered(self) -> None:
        raw = Raw().start()
        out = frames(raw.send(PingFrame(0, opaque_data=b"12345678")))
        assert isinstance(out[0], PingFrame) and "ACK" in out[0].flags
        assert out[0].opaque_data == b"12345678"

    @pytest.mark.parametrize(
        ("make", "bound"),
        [
            (lambda: SettingsFrame(0), "max_settings"),
            (lambda: PingFrame(0, opaque_data=b"\0" * 8), "max_pings"),
            (lambda: DataFrame(1), "max_empty_data"),
        ],
    )
    def test_flood(self, make: object, bound: str) -> None:
        assert callable(make)
        clock = Clock()
        raw = Raw(H2Limits(**{bound: 10}), clock).start()  # type: ignore[arg-type]
        raw.send(raw.headers(1, req(b"POST"), ["END_HEADERS"]))
        raw.send(*(make() for _ in range(9)))  # the preface SETTINGS counted as one
        clock.now += 10.0  # a new window
        raw.send(*(make() for _ in range(10)))
        raw.refused([make()], ErrorCodes.ENHANCE_YOUR_CALM)


class TestGoaway:
    """RFC 9113 §6.8: graceful shutdown, and the client's GOAWAY."""

    def test_graceful_shutdown(self) -> None:
        peer = Peer()
        a = peer.request(GET)
        out = peer.codec.goaway()
        assert peer.codec.draining and peer.codec.goaway() == b""
        peer.to_client(out)
        goaway = next(f for f in frames(out) if isinstance(f, GoAwayFrame))
        assert goaway.last_stream_id == a and goaway.error_code == 0
        raw_b = HeadersFrame(
            a + 2, data=peer.client.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]
        )
        out = peer.codec.feed(raw_b.serialize())
        assert resets(out) == {a + 2: ErrorCodes.REFUSED_STREAM} and a + 2 not in peer.rec.streams
        assert peer.codec.open_streams == 1
        respond = peer.codec.send_headers(a, 200, [], True)  # in-flight streams still answered
        assert any(isinstance(f, HeadersFrame) for f in frames(respond))
        peer.codec.close_stream(a)
        assert peer.codec.open_streams == 0

    def test_client_goaway(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        peer.client.close_connection(ErrorCodes.NO_ERROR)
        peer.codec.feed(peer.client.data_to_send())
        assert peer.rec.goaways == [(0, 0)]
        assert peer.codec.send_headers(sid, 200, [], True)  # the response still goes out


class TestContinuation:
    """RFC 9113 §6.10, and the CONTINUATION flood (CVE-2024-27316)."""

    def test_split_header_block(self) -> None:
        raw = Raw().start()
        block = raw.enc.encode(req(extra=[(b"x-long", b"l" * 300)]))
        raw.send(
            HeadersFrame(1, data=block[:100], flags=["END_STREAM"]),
            ContinuationFrame(1, data=block[100:200]),
            ContinuationFrame(1, data=block[200:], flags=["END_HEADERS"]),
        )
        assert raw.rec.streams[1].head.headers[-1] == (b"x-long", b"l" * 300)

    def test_interleaved_frame(self) -> None:
        raw = Raw().start()
        block = raw.enc.encode(GET)
        parts = [HeadersFrame(1, data=block[:5]), PingFrame(0, opaque_data=b"\0" * 8)]
        raw.refused(parts, ErrorCodes.PROTOCOL_ERROR)

    def test_continuation_on_another_stream(self) -> None:
        raw = Raw().start()
        block = raw.enc.encode(GET)
        parts = [HeadersFrame(1, data=block[:5]), ContinuationFrame(3, data=block[5:])]
        raw.refused(parts, ErrorCodes.PROTOCOL_ERROR)

    def test_flood_of_frames(self) -> None:
        raw = Raw(H2Limits(max_continuation_frames=8)).start()
        raw.send(HeadersFrame(1, data=raw.enc.encode(GET)[:3]))
        raw.send(*(ContinuationFrame(1) for _ in range(7)))
        raw.refused([ContinuationFrame(1)], ErrorCodes.ENHANCE_YOUR_CALM)
        assert not raw.rec.streams

    def test_flood_of_bytes(self) -> None:
        raw = Raw().start()
        raw.send(HeadersFrame(1, data=b"\x00" * 16000))
        raw.send(*(ContinuationFrame(1, data=b"\x00" * 16000) for _ in range(3)))
        raw.refused([ContinuationFrame(1, data=b"\x00" * 2000)], ErrorCodes.ENHANCE_YOUR_CALM)

    def test_header_block_too_large_at_once(self) -> None:
        raw = Raw(H2Limits(max_header_list_size=1000)).start()
        raw.refused([HeadersFrame(1, data=b"\x00" * 1001)], ErrorCodes.ENHANCE_YOUR_CALM)


class TestRapidReset:
    """CVE-2023-44487: streams opened and reset at once."""

    def test_bound(self) -> None:
        raw = Raw(H2Limits(max_resets=20)).start()
        parts: list[bytes | Frame] = []
        for sid in range(1, 41, 2):
            parts += [raw.headers(sid, GET), RstStreamFrame(sid, ErrorCodes.CANCEL)]
        raw.send(*parts)  # 20 resets: at the bound
        assert not raw.rec.streams  # none of them reached the application
        error = raw.refused(
            [raw.headers(41, GET), RstStreamFrame(41, 8)], ErrorCodes.ENHANCE_YOUR_CALM
        )
        assert frames(error.goaway)[-1].last_stream_id == 39  # type: ignore[attr-defined]

    def test_refusals_count_too(self) -> None:
        raw = Raw(H2Limits(max_resets=5)).start()
        bad = req(extra=[(b"upgrade", b"x")])
        raw.send(*(raw.headers(sid, bad) for sid in range(1, 11, 2)))
        assert len(raw.rec.refused) == 5
        raw.refused([raw.headers(11, bad)], ErrorCodes.ENHANCE_YOUR_CALM)


class TestRequests:
    """RFC 9113 §8.1-8.3: request heads, bodies, malformed requests (stream errors)."""

    def test_get(self) -> None:
        peer = Peer()
        fields = req(
            path=b"/a%20b?x=1",
            extra=[(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")],
        )
        sid = peer.request(fields)
        seen = peer.rec.streams[sid]
        head = seen.head
        assert (head.method, head.path, head.raw_path, head.query_string) == (
            "GET",
            "/a b",
            b"/a%20b",
            b"x=1",
        )
        assert head.http_version == "2" and head.upgrade is None and seen.complete
        assert head.headers == [
            (b"host", b"example.com"),
            (b"accept", b"*/*"),
            (b"cookie", b"a=1; b=2"),
        ]
        peer.respond(sid, b"hello")
        assert [e.data for e in peer.take(DataReceived)] == [b"hello"]

    def test_post_in_several_frames(self) -> None:
        peer = Peer()
        sid = peer.request(
            req(b"POST", extra=[(b"content-length", b"9")]), [b"abc", b"def", b"ghi"]
        )
        seen = peer.rec.streams[sid]
        assert seen.body == b"abcdefghi" and seen.complete

    def test_host_without_authority_and_asterisk(self) -> None:
        peer = Peer()
        sid = peer.request(
            [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"), (b"host", b"h:1")]
        )
        head = peer.rec.streams[sid].head
        assert head.raw_path == b"*" and head.headers == [(b"host", b"h:1")]

    def test_matching_host_kept_once_and_te_trailers(self) -> None:
        peer = Peer()
        sid = peer.request(
            req(
                b"PROPFIND",
                extra=[
                    (b"host", b"example.com"),
                    (b"te", b"trailers"),
                    (b"expect", b"100-continue"),
                ],
            )
        )
        head = peer.rec.streams[sid].head
        assert head.method == "PROPFIND" and head.expect_continue
        assert [n for n, _ in head.headers] == [b"host", b"te", b"expect"]

    def test_request_trailers_dropped(self) -> None:
        peer = Peer()
        sid = peer.request(req(b"POST"), [b"body"], end=False)
        peer.client.send_headers(sid, [(b"x-checksum", b"1")], end_stream=True)
        peer.flush()
        seen = peer.rec.streams[sid]
        assert seen.complete and seen.body == b"body"

    @pytest.mark.parametrize(
        "fields",
        [
            [f for f in GET if f[0] != b":method"],
            [f for f in GET if f[0] != b":path"],
            [f for f in GET if f[0] != b":scheme"],
            [*GET, (b":path", b"/again")],
            [*GET, (b":authority", b"again")],
            [*GET, (b":method", b"GET")],
            [*GET, (b":scheme", b"https")],
            [*GET, (b":foo", b"bar")],
            [*GET, (b":status", b"200")],
            [(b"accept", b"*/*"), *GET],
            [*GET, (b"Accept", b"*/*")],
            [*GET, (b"", b"empty name")],
            [*GET, (b"x y", b"1")],
            [*GET, (b"connection", b"keep-alive")],
            [*GET, (b"keep-alive", b"1")],
            [*GET, (b"proxy-connection", b"1")],
            [*GET, (b"transfer-encoding", b"chunked")],
            [*GET, (b"upgrade", b"websocket")],
            [*GET, (b"te", b"gzip")],
            [*GET, (b"host", b"other.example")],
            [*GET, (b"x", b"a\r\nb")],
            [*GET, (b"x", b"nul\0")],
            [*GET, (b"x", b" padded")],
            [*GET, (b"x", b"padded\t")],
            req(path=b""),
            req(path=b"relative"),
            req(path=b"*"),
            req(method=b"G T"),
            req(method=b""),
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"a@b"),
                (b":path", b"/"),
            ],
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"/"),
                (b"host", b"a"),
                (b"host", b"a"),
            ],
            [*GET, (b":protocol", b"websocket")],
            [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
            [(b":method", b"CONNECT")],
            [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"a")],
        ],
    )
    def test_malformed(self, fields: Fields) -> None:
        peer = Peer()
        sid = peer.request(fields)
        assert {e.stream_id: e.error_code for e in peer.take(StreamReset)} == {
            sid: ErrorCodes.PROTOCOL_ERROR
        }
        assert not peer.rec.streams and peer.rec.refused[0][0] == sid
        assert peer.rec.outcomes == [(0, ErrorCodes.PROTOCOL_ERROR)]
        assert peer.request(GET) in peer.rec.streams  # a stream error: the connection lives

    def test_connect_tunnel_not_served(self) -> None:
        peer = Peer()
        peer.request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        assert (b":status", b"501") in peer.take(ResponseReceived)[0].headers
        assert peer.rec.outcomes == [(501, 0)]

    def test_content_length_mismatch_is_a_stream_error(self) -> None:
        """RFC 9113 §8.1.1: a malformed request, RST_STREAM PROTOCOL_ERROR; the connection
        goes on."""
        peer = Peer()
        sid = peer.request(req(b"POST", extra=[(b"content-length", b"10")]), end=False)
        peer.client.send_data(sid, b"short", end_stream=True)
        peer.flush()
        assert [(e.stream_id, e.error_code) for e in peer.take(StreamReset)] == [
            (sid, ErrorCodes.PROTOCOL_ERROR)
        ]
        assert not peer.rec.streams[sid].complete
        other = peer.request(req(b"GET"))
        assert peer.rec.streams[other].complete


class TestExtendedConnect:
    """RFC 8441: WebSocket over HTTP/2."""

    FIELDS: Fields = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":path", b"/chat"),
        (b":authority", b"example.com"),
        (b"sec-websocket-version", b"13"),
    ]

    def test_accepted_when_advertised(self) -> None:
        peer = Peer()
        assert peer.client.remote_settings.enable_connect_protocol == 1
        sid = peer.request(self.FIELDS, end=False)
        head = peer.rec.streams[sid].head
        assert (head.method, head.upgrade, head.raw_path) == ("CONNECT", b"websocket", b"/chat")
        assert not peer.rec.streams[sid].complete
        peer.client.send_data(sid, b"ws-frame")
        peer.flush()
        assert peer.rec.streams[sid].body == b"ws-frame"

    def test_refused_when_not_advertised(self) -> None:
        peer = Peer(H2Limits(enable_connect_protocol=False))
        assert not peer.client.remote_settings.enable_connect_protocol
        sid = peer.request(self.FIELDS, end=False)
        assert peer.take(StreamReset)[0].error_code == ErrorCodes.PROTOCOL_ERROR
        assert sid not in peer.rec.streams


class TestResponses:
    """RFC 9113 §8.1, §8.2.2: response heads, informational responses, trailers."""

    def test_connection_specific_fields_stripped_and_names_lowercased(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        headers = [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close"),
            (b"keep-alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"proxy-connection", b"x"),
            (b"x-1", b"y"),
        ]
        peer.to_client(peer.codec.send_headers(sid, 200, headers, True))
        got = peer.take(ResponseReceived)[0].headers
        assert got == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-1", b"y")]

    @pytest.mark.parametrize(
        "headers",
        [[(b"x", b"a\r\nb")], [(b"x", b"\0")], [(b"x y", b"1")], [(b"", b"1")], [(b":path", b"/")]],
    )
    def test_invalid_headers(self, headers: Fields) -> None:
        peer = Peer()
        sid = peer.request(GET)
        with pytest.raises(ResponseHeaderError):
            peer.codec.send_headers(sid, 200, headers, True)

    def test_invalid_status(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        with pytest.raises(ResponseHeaderError):
            peer.codec.send_headers(sid, 42, [], True)
        with pytest.raises(ResponseHeaderError):
            peer.codec.send_informational(sid, 101, [])
        peer.to_client(peer.codec.send_headers(sid, 799, [], True))
        assert (b":status", b"799") in peer.take(ResponseReceived)[0].headers

    def test_early_hints_then_response(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        peer.to_client(
            peer.codec.send_informational(sid, 103, [(b"Link", b"</s.css>; rel=preload")])
        )
        peer.respond(sid)
        events = peer.take(Event)
        info = [e for e in events if isinstance(e, InformationalResponseReceived)]
        assert info[0].headers == [(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]
        assert any(isinstance(e, ResponseReceived) for e in events)

    def test_trailers(self) -> None:
        peer = Peer()
        sid = peer.request(
            req(b"POST", extra=[(b"content-type", b"application/grpc"), (b"te", b"trailers")]),
            [b"\0\0\0\0\0"],
        )
        peer.to_client(
            peer.codec.send_headers(sid, 200, [(b"content-type", b"application/grpc")], False)
        )
        peer.to_client(peer.codec.send_data(sid, b"\0\0\0\0\0", False)[0])
        peer.to_client(peer.codec.send_trailers(sid, [(b"grpc-status", b"0")]))
        trailers = peer.take(TrailersReceived)
        assert trailers[0].headers == [(b"grpc-status", b"0")]


class TestServerPush:
    """RFC 9113 §8.4: PUSH_PROMISE when the client allows it."""

    def test_push(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        promised = peer.codec.push_promise(
            sid, "GET", b"/s.css", b"example.com", b"http", [(b"accept", b"text/css")]
        )
        assert promised is not None
        pushed, out = promised
        peer.to_client(out)
        event = peer.take(PushedStreamReceived)[0]
        assert event.pushed_stream_id == pushed == 2
        assert event.headers is not None and (b":path", b"/s.css") in event.headers
        assert peer.codec.open_streams == 2
        peer.respond(pushed, b"body{}")
        peer.respond(sid)
        assert {e.stream_id for e in peer.take(StreamEnded)} == {sid, pushed}
        assert peer.codec.open_streams == 0
        assert peer.codec.push_promise(sid, "GET", b"/x", b"a", b"http", []) is None  # closed

    def test_push_disabled_by_the_client(self) -> None:
        peer = Peer(client_settings={SettingCodes.ENABLE_PUSH: 0})
        sid = peer.request(GET)
        assert peer.codec.push_promise(sid, "GET", b"/s.css", b"example.com", b"http", []) is None

    def test_only_safe_methods(self) -> None:
        peer = Peer()
        sid = peer.request(GET)
        with pytest.raises(ValueError, match="GET and HEAD"):
            peer.codec.push_promise(sid, "POST", b"/", b"a", b"http", [])


class TestUpgrade:
    """RFC 7540 §3.2: h2c Upgrade from HTTP/1.1; the request becomes stream 1."""

    def setup_client(self) -> tuple[H2Connection, bytes]:
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        header = client.initiate_upgrade_connection()
        assert header is not None  # the client's preface waits in client.data_to_send()
        return client, header.rstrip(b"=")  # base64url as sent: no padding

    def head(self, extra: Fields) -> RequestHead:
        headers = [
            (b"host", b"example.com"),
            (b"connection", b"Upgrade, HTTP2-Settings"),
            (b"upgrade", b"h2c"),
            (b"http2-settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
            *extra,
        ]
        return RequestHead(
            "POST" if extra else "GET", b"/up", b"", "1.1", headers, True, False, b"h2c"
        )

    def test_without_body(self) -> None:
        client, header = self.setup_client()
        rec = Recorder()
        codec = H2Codec(rec, H2Limits())
        events = client.receive_data(codec.initiate_upgrade(header, self.head([])))
        assert any(isinstance(e, RemoteSettingsChanged) for e in events)
        seen = rec.streams[1]
        assert (
            seen.complete
            and seen.head.http_version == "2"
            and seen.head.headers == [(b"host", b"example.com")]
        )
        assert not codec.upgrade_pending
        client.receive_data(codec.feed(client.data_to_send()))
        out = codec.send_headers(1, 200, [], False) + codec.send_data(1, b"upgraded", True)[0]
        events = client.receive_data(out)
        assert [e.data for e in events if isinstance(e, DataReceived)] == [b"upgraded"]

    def test_with_body(self) -> None:
        header = self.setup_client()[1]
        rec = Recorder()
        codec = H2Codec(rec, H2Limits())
        codec.initiate_upgrade(header, self.head([(b"content-length", b"6")]))
        seen = rec.streams[1]
        assert codec.upgrade_pending and not seen.complete
        codec.upgrade_body(b"abc")
        codec.upgrade_body(b"def")
        codec.upgrade_complete()
        assert rec.streams[1] == Seen(seen.head, b"abcdef", complete=True)
        assert codec.acknowledge(1, 6) == b""  # read over HTTP/1.1: not flow-controlled

    def test_response_before_the_body_was_read(self) -> None:
        header = self.setup_client()[1]
        rec = Recorder()
        codec = H2Codec(rec, H2Limits())
        codec.initiate_upgrade(header, self.head([(b"transfer-encoding", b"chunked")]))
        codec.send_headers(1, 413, [], True)
        codec.close_stream(1)
        codec.upgrade_body(b"late")  # the cycle is gone: nothing is delivered
        codec.upgrade_complete()
        assert rec.streams[1].body == b"" and not rec.streams[1].complete

    @pytest.mark.parametrize(
        "header",
        [
            b"!!!",
            base64.urlsafe_b64encode(b"12345"),
            base64.urlsafe_b64encode(b"\x00\x02\x00\x00\x00\x05"),
        ],
    )
    def test_invalid_settings_header(self, header: bytes) -> None:
        codec = H2Codec(Recorder(), H2Limits())
        with pytest.raises(ValueError, match="HTTP2-Settings"):
            codec.initiate_upgrade(header, self.head([]))


class TestCaches:
    """The bounded caches of validated hosts and response header names."""

    def test_full_caches_still_validate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(h1, "_GOOD_HOSTS_MAX", 0)
        monkeypatch.setattr(h2_fields, "_NAMES_MAX", 0)
        peer = Peer()
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"never-seen.example"),
        ]
        sid = peer.request([*fields, (b":path", b"/")])
        assert peer.rec.streams[sid].head.headers == [(b"host", b"never-seen.example")]
        assert b"never-seen.example" not in _GOOD_HOSTS
        peer.to_client(peer.codec.send_headers(sid, 200, [(b"X-Uncached", b"1")], True))
        assert b"X-Uncached" not in h2_fields._NAMES
        assert (b"x-uncached", b"1") in peer.take(ResponseReceived)[0].headers
