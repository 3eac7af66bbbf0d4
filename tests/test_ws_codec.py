"""The WebSocket codecs without an event loop: bytes in, ``WSHandler`` calls out.

Every codec test runs once per codec (the ``kind`` fixture: websockets, wsproto), and both must
give the same answer: where a library differs, the wrapper is fixed, not the test. The peer is
a real client-side sans-I/O ``websockets`` protocol (masked frames, permessage-deflate
negotiated from the codec's own response header); the malformed frames are built by hand.

Classes follow RFC 6455 (and RFC 7692 for compression); the last ones cover ``wire/ws.py``'s
handshake checks, which are shared by both codecs.
"""

from __future__ import annotations

import os
import tracemalloc
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.headers import parse_extension
from websockets.protocol import Protocol, Side, State
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from sleipnir.wire.ws import (
    Handshake,
    HandshakeError,
    WSCodec,
    WSLimits,
    WSProtocolError,
    accept_key,
    check_handshake,
    is_upgrade,
    make_codec,
)
from sleipnir.wire.ws_websockets import WebsocketsCodec
from sleipnir.wire.ws_wsproto import WsprotoCodec

KINDS = ["websockets", "wsproto"]
DEFLATE = [b"permessage-deflate"]
MASK = b"\x37\xfa\x21\x3d"

# Raw opcodes and header bits (RFC 6455 §5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Call = tuple[str, object]


@dataclass
class Recorder:
    """A ``WSHandler`` that records every call in order; nothing may follow on_close."""

    calls: list[Call] = field(default_factory=list)

    def _add(self, call: Call) -> None:
        assert not any(name == "close" for name, _ in self.calls), f"{call} after on_close"
        self.calls.append(call)

    def on_message(self, data: str | bytes) -> None:
        assert isinstance(data, (str, bytes))
        self._add(("message", data))

    def on_pong(self, payload: bytes) -> None:
        assert type(payload) is bytes
        self._add(("pong", payload))

    def on_close(self, code: int, reason: str) -> None:
        assert type(code) is int
        self._add(("close", (code, reason)))


def make(
    kind: str,
    max_size: int = 1 << 20,
    offers: Iterable[bytes] = (),
    deflate: bool = True,
) -> tuple[WSCodec, Recorder]:
    handler = Recorder()
    limits = WSLimits(max_size=max_size, per_message_deflate=deflate)
    return make_codec(kind, handler, limits, list(offers)), handler


class Client:
    """The peer: websockets' client-side sans-I/O protocol, already open."""

    def __init__(self, extensions_header: bytes | None = None) -> None:
        self.protocol = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
        if extensions_header is not None:
            [(_, params)] = parse_extension(extensions_header.decode())
            factory = ClientPerMessageDeflateFactory()
            self.protocol.extensions = [factory.process_response_params(params, [])]

    def _out(self) -> bytes:
        return b"".join(self.protocol.data_to_send())

    def text(self, text: str, fin: bool = True) -> bytes:
        self.protocol.send_text(text.encode(), fin)
        return self._out()

    def binary(self, data: bytes, fin: bool = True) -> bytes:
        self.protocol.send_binary(data, fin)
        return self._out()

    def cont(self, data: bytes, fin: bool = True) -> bytes:
        self.protocol.send_continuation(data, fin)
        return self._out()

    def ping(self, payload: bytes = b"") -> bytes:
        self.protocol.send_ping(payload)
        return self._out()

    def pong(self, payload: bytes = b"") -> bytes:
        self.protocol.send_pong(payload)
        return self._out()

    def close(self, code: int | None = 1000, reason: str = "") -> bytes:
        self.protocol.send_close(code, reason)
        return self._out()

    def receive(self, data: bytes) -> list[Frame]:
        """The frames in what the server sent."""
        self.protocol.receive_data(data)
        return [e for e in self.protocol.events_received() if isinstance(e, Frame)]


def raw(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """A frame built by hand (RFC 6455 §5.2), to say what a real client never would."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return bytes(head) + payload
    return bytes(head) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def sent_frames(data: bytes) -> list[tuple[Opcode, bytes]]:
    """What a client sees in the server's bytes: (opcode, payload), unmasked."""
    return [(f.opcode, bytes(f.data)) for f in Client().receive(data)]


def sent_close(data: bytes) -> tuple[int, str]:
    [(opcode, payload)] = sent_frames(data)
    assert opcode is Opcode.CLOSE
    close = Close.parse(payload)
    return int(close.code), close.reason


def fails(codec: WSCodec, data: bytes, code: int) -> WSProtocolError:
    """Feed ``data``: it must fail with ``code``, and the close frame must carry it."""
    with pytest.raises(WSProtocolError) as info:
        codec.feed(data)
    error = info.value
    assert error.code == code, error.reason
    # The close frame comes last, after the pongs owed for pings before the violation.
    opcode, payload = sent_frames(error.close_frame)[-1]
    assert opcode is Opcode.CLOSE
    assert Close.parse(payload).code == code
    return error


def messages(handler: Recorder) -> list[object]:
    return [value for name, value in handler.calls if name == "message"]


def pieces(data: bytes, size: int = 1) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_make_codec_builds_each_kind() -> None:
    assert isinstance(make("websockets")[0], WebsocketsCodec)
    assert isinstance(make("wsproto")[0], WsprotoCodec)


class TestDataFramesRFC6455Section5_6:
    """§5.6: text (UTF-8) and binary messages, both ways."""

    @pytest.mark.parametrize(
        "message", ["", "hello", "héllo wörld ✓ 🐍", "x" * 125, "y" * 126, "z" * 70_000]
    )
    def test_text_in(self, kind: str, message: str) -> None:
        codec, handler = make(kind)
        assert codec.feed(Client().text(message)) == b""
        assert handler.calls == [("message", message)]

    @pytest.mark.parametrize("data", [b"", b"\x00\xff\x80", os.urandom(65_536)])
    def test_binary_in(self, kind: str, data: bytes) -> None:
        codec, handler = make(kind)
        assert codec.feed(Client().binary(data)) == b""
        assert handler.calls == [("message", data)]
        assert type(messages(handler)[0]) is bytes

    def test_several_messages_in_one_feed(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        codec.feed(client.text("a") + client.binary(b"b") + client.text("c"))
        assert messages(handler) == ["a", b"b", "c"]

    @pytest.mark.parametrize("message", ["", "héllo", "x" * 200, "y" * 70_000])
    def test_text_out(self, kind: str, message: str) -> None:
        codec, _ = make(kind)
        assert sent_frames(codec.send_message(message)) == [(Opcode.TEXT, message.encode())]

    @pytest.mark.parametrize("data", [b"", b"\x00\x01", os.urandom(70_000)])
    def test_binary_out(self, kind: str, data: bytes) -> None:
        codec, _ = make(kind)
        assert sent_frames(codec.send_message(data)) == [(Opcode.BINARY, data)]


class TestFragmentationRFC6455Section5_4:
    """§5.4: fragments are reassembled; control frames may come between them."""

    def test_text_reassembled(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        assert codec.feed(client.text("hel", fin=False)) == b""
        assert codec.feed(client.cont(b"lo ", fin=False)) == b""
        assert handler.calls == []
        codec.feed(client.cont(b"world"))
        assert handler.calls == [("message", "hello world")]

    def test_binary_reassembled(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        data = client.binary(b"\x00", fin=False) + client.cont(b"", fin=False)
        codec.feed(data + client.cont(b"\x01\x02"))
        assert handler.calls == [("message", b"\x00\x01\x02")]

    def test_empty_fragments(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        codec.feed(client.text("", fin=False) + client.cont(b"", fin=False) + client.cont(b""))
        assert handler.calls == [("message", "")]

    def test_control_frames_between_fragments(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        out = codec.feed(client.text("a", fin=False) + client.ping(b"1"))
        assert sent_frames(out) == [(Opcode.PONG, b"1")]
        out = codec.feed(client.pong(b"2") + client.cont(b"b", fin=False) + client.ping(b"3"))
        assert sent_frames(out) == [(Opcode.PONG, b"3")]
        codec.feed(client.cont(b"c"))
        assert handler.calls == [("pong", b"2"), ("message", "abc")]

    def test_message_after_a_fragmented_one(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        codec.feed(client.binary(b"a", fin=False) + client.cont(b"b") + client.text("c"))
        assert messages(handler) == [b"ab", "c"]

    def test_continuation_without_a_message(self, kind: str) -> None:
        codec, _ = make(kind)
        fails(codec, raw(CONT, b"x"), 1002)

    def test_final_continuation_without_a_message(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        codec.feed(client.text("a"))
        fails(codec, raw(CONT, b"x", fin=True), 1002)
        assert messages(handler) == ["a"]

    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    def test_new_message_while_fragmented(self, kind: str, opcode: int) -> None:
        codec, _ = make(kind)
        codec.feed(raw(TEXT, b"a", fin=False))
        fails(codec, raw(opcode, b"b"), 1002)

    def test_fragmented_control_frame(self, kind: str) -> None:
        codec, _ = make(kind)
        fails(codec, raw(PING, b"x", fin=False), 1002)


class TestControlFramesRFC6455Section5_5:
    """§5.5: pings are answered with the same payload, pongs delivered, at most 125 bytes."""

    @pytest.mark.parametrize("payload", [b"", b"ping!", bytes(range(125))])
    def test_ping_answered(self, kind: str, payload: bytes) -> None:
        codec, handler = make(kind)
        assert sent_frames(codec.feed(Client().ping(payload))) == [(Opcode.PONG, payload)]
        assert handler.calls == []

    def test_pings_answered_in_order(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        out = codec.feed(client.ping(b"1") + client.text("m") + client.ping(b"2"))
        assert sent_frames(out) == [(Opcode.PONG, b"1"), (Opcode.PONG, b"2")]
        assert handler.calls == [("message", "m")]

    def test_pong_delivered(self, kind: str) -> None:
        codec, handler = make(kind)
        assert codec.feed(Client().pong(b"keepalive")) == b""
        assert handler.calls == [("pong", b"keepalive")]

    def test_send_ping(self, kind: str) -> None:
        codec, _ = make(kind)
        assert sent_frames(codec.send_ping(b"abc")) == [(Opcode.PING, b"abc")]
        assert sent_frames(codec.send_ping(b"")) == [(Opcode.PING, b"")]

    def test_send_ping_too_long(self, kind: str) -> None:
        codec, _ = make(kind)
        with pytest.raises(ValueError, match="125"):
            codec.send_ping(b"x" * 126)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_control_frame_over_125_bytes(self, kind: str, opcode: int) -> None:
        codec, _ = make(kind)
        fails(codec, raw(opcode, b"\x03\xe8" + b"x" * 124), 1002)


class TestBaseFramingRFC6455Section5_2:
    """§5.1-5.3: client frames are masked, reserved bits and opcodes are refused."""

    def test_unmasked_client_frame(self, kind: str) -> None:
        codec, _ = make(kind)
        fails(codec, raw(TEXT, b"hi", masked=False), 1002)

    @pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3])
    def test_reserved_bits_without_extension(self, kind: str, rsv: int) -> None:
        codec, _ = make(kind)
        fails(codec, raw(TEXT, b"hi", rsv=rsv), 1002)

    @pytest.mark.parametrize("rsv", [RSV2, RSV3])
    def test_reserved_bits_not_used_by_deflate(self, kind: str, rsv: int) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        fails(codec, raw(TEXT, b"hi", rsv=rsv), 1002)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    def test_reserved_opcode(self, kind: str, opcode: int) -> None:
        codec, _ = make(kind)
        fails(codec, raw(opcode, b"x"), 1002)

    def test_messages_before_the_error_are_delivered(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        error = fails(codec, client.text("first") + client.ping(b"p") + raw(3) + raw(PING), 1002)
        assert handler.calls == [("message", "first")]
        assert sent_frames(error.close_frame)[0] == (Opcode.PONG, b"p")
        assert len(sent_frames(error.close_frame)) == 2  # no pong for the ping after it

    def test_frames_split_anywhere(self, kind: str) -> None:
        codec, handler = make(kind)
        data = Client().text("x" * 300)  # 16-bit length
        codec.feed(data[:1])
        codec.feed(data[1:3])
        codec.feed(data[3:7])
        assert handler.calls == []
        codec.feed(data[7:])
        assert handler.calls == [("message", "x" * 300)]


class TestClosingHandshakeRFC6455Section7:
    """§5.5.1, §7: the closing handshake in both directions, and the close codes."""

    def test_peer_closes_first(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        out = codec.feed(client.close(1000, "bye"))
        assert handler.calls == [("close", (1000, "bye"))]
        assert sent_close(out) == (1000, "bye")
        # The echo ends it: nothing more is delivered or sent.
        assert codec.feed(raw(TEXT, b"late") + raw(PING, b"p")) == b""
        assert codec.send_message("late") == b""
        assert codec.send_ping(b"p") == b""
        assert codec.send_close(1000, "") == b""
        assert handler.calls == [("close", (1000, "bye"))]

    def test_we_close_first(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        out = codec.send_close(1001, "going away")
        [frame] = client.receive(out)
        assert Close.parse(frame.data) == Close(1001, "going away")
        assert codec.send_close(1000, "again") == b""
        assert codec.send_message("after close") == b""
        assert codec.send_ping(b"") == b""
        # The client echoes our close: the handshake is complete, no second echo.
        assert codec.feed(b"".join(client.protocol.data_to_send())) == b""
        assert handler.calls == [("close", (1001, "going away"))]

    def test_messages_between_our_close_and_theirs(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        codec.send_close(1000, "")
        # RFC 6455 §1.4: the peer may still send until it sees our close. Pings are not
        # answered any more (wsproto cannot; websockets could).
        assert codec.feed(client.text("in flight") + client.ping(b"p")) == b""
        assert codec.feed(client.pong(b"q") + client.close(1000)) == b""
        assert handler.calls == [
            ("message", "in flight"),
            ("pong", b"q"),
            ("close", (1000, "")),
        ]

    def test_close_without_code(self, kind: str) -> None:
        codec, handler = make(kind)
        out = codec.feed(raw(CLOSE))
        assert handler.calls == [("close", (1005, ""))]
        assert sent_frames(out) == [(Opcode.CLOSE, b"")]  # echoed as it came, empty

    @pytest.mark.parametrize(
        "code",
        [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999],
    )
    def test_valid_close_codes(self, kind: str, code: int) -> None:
        codec, handler = make(kind)
        out = codec.feed(raw(CLOSE, close_payload(code, "é".encode())))
        assert handler.calls == [("close", (code, "é"))]
        assert sent_close(out) == (code, "é")

    @pytest.mark.parametrize(
        "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
    )
    def test_invalid_close_codes(self, kind: str, code: int) -> None:
        codec, handler = make(kind)
        fails(codec, raw(CLOSE, close_payload(code)), 1002)
        assert handler.calls == []

    def test_close_payload_of_one_byte(self, kind: str) -> None:
        codec, _ = make(kind)
        fails(codec, raw(CLOSE, b"\x03"), 1002)

    def test_close_reason_invalid_utf8(self, kind: str) -> None:
        codec, handler = make(kind)
        fails(codec, raw(CLOSE, close_payload(1000, b"\xff\xfe")), 1007)
        assert handler.calls == []

    def test_close_reason_checked_before_code(self, kind: str) -> None:
        codec, _ = make(kind)
        fails(codec, raw(CLOSE, close_payload(999, b"\xff")), 1007)

    def test_close_inside_fragmented_message(self, kind: str) -> None:
        # Control frames may come between fragments (§5.4), the close frame too: the
        # unfinished message is dropped and the close is a normal one.
        codec, handler = make(kind)
        client = Client()
        out = codec.feed(client.text("unfinished", fin=False) + client.ping(b"p") + raw(CLOSE))
        assert sent_frames(out) == [(Opcode.PONG, b"p"), (Opcode.CLOSE, b"")]
        assert handler.calls == [("close", (1005, ""))]

    def test_close_inside_fragmented_message_after_ours(self, kind: str) -> None:
        codec, handler = make(kind)
        codec.feed(raw(BINARY, b"unfinished", fin=False))
        codec.send_close(1000, "")
        assert codec.feed(raw(CLOSE, close_payload(1000))) == b""
        assert handler.calls == [("close", (1000, ""))]

    def test_nothing_after_close_in_the_same_feed(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        data = client.text("before") + client.close(1000) + raw(TEXT, b"after") + raw(PING)
        out = codec.feed(data)
        assert sent_frames(out) == [(Opcode.CLOSE, close_payload(1000))]
        assert handler.calls == [("message", "before"), ("close", (1000, ""))]

    def test_pings_before_close_answered(self, kind: str) -> None:
        codec, _ = make(kind)
        client = Client()
        out = codec.feed(client.ping(b"1") + client.close(1001, "x"))
        assert sent_frames(out) == [(Opcode.PONG, b"1"), (Opcode.CLOSE, close_payload(1001, b"x"))]

    def test_send_close_without_code(self, kind: str) -> None:
        codec, _ = make(kind)
        assert sent_frames(codec.send_close(1005, "")) == [(Opcode.CLOSE, b"")]

    @pytest.mark.parametrize("code", [999, 1004, 1006, 1015, 2000, 5000])
    def test_send_close_invalid_code(self, kind: str, code: int) -> None:
        codec, _ = make(kind)
        with pytest.raises(ValueError, match=str(code)):
            codec.send_close(code, "")
        assert sent_close(codec.send_close(1000, "")) == (1000, "")  # nothing was sent

    def test_send_close_long_reason_truncated(self, kind: str) -> None:
        codec, _ = make(kind)
        code, reason = sent_close(codec.send_close(4000, "é" * 100))
        assert (code, reason) == (4000, "é" * 61)  # 122 bytes: a whole character fits no more


class TestProtocolErrorsRFC6455Section7_1_7:
    """§7.1.7: failing the connection; the codec reads nothing afterwards."""

    def test_reads_nothing_after_error(self, kind: str) -> None:
        codec, handler = make(kind)
        client = Client()
        fails(codec, raw(TEXT, b"x", masked=False), 1002)
        assert codec.feed(client.text("more") + client.ping(b"p")) == b""
        assert handler.calls == []

    def test_answers_can_precede_the_close_frame(self, kind: str) -> None:
        """The error's close frame is not counted as sent: the connection may first send the
        answers to messages that arrived before the error (Autobahn 3.2, 4.1.3, 5.15)."""
        codec, handler = make(kind)
        client = Client()
        with pytest.raises(WSProtocolError):
            codec.feed(client.text("first") + raw(TEXT, b"x", masked=False))
        assert handler.calls == [("message", "first")]
        assert codec.send_message("first") == b"\x81\x05first"

    def test_error_after_our_close_sends_no_second_close(self, kind: str) -> None:
        codec, _ = make(kind)
        codec.send_close(1000, "")
        with pytest.raises(WSProtocolError) as info:
            codec.feed(raw(3))
        assert info.value.code == 1002
        assert info.value.close_frame == b""


class TestUTF8RFC6455Section8_1:
    """§8.1: text must be valid UTF-8, checked per fragment so that it fails fast."""

    @pytest.mark.parametrize(
        "payload",
        [b"\xff", b"ab\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xce", b"ok\xe2\x82"],
        ids=["invalid-byte", "overlong", "surrogate", "above-max", "truncated", "truncated-3"],
    )
    def test_invalid_single_frame(self, kind: str, payload: bytes) -> None:
        codec, handler = make(kind)
        fails(codec, raw(TEXT, payload), 1007)
        assert handler.calls == []

    def test_character_split_across_fragments(self, kind: str) -> None:
        codec, handler = make(kind)
        snake = "🐍".encode()
        codec.feed(raw(TEXT, b"a" + snake[:1], fin=False))
        codec.feed(raw(CONT, snake[1:3], fin=False))
        codec.feed(raw(CONT, snake[3:] + "é".encode()[:1], fin=False))
        codec.feed(raw(CONT, "é".encode()[1:]))
        assert handler.calls == [("message", "a🐍é")]

    def test_invalid_across_fragments(self, kind: str) -> None:
        codec, _ = make(kind)
        codec.feed(raw(TEXT, b"\xce", fin=False))
        fails(codec, raw(CONT, b"A"), 1007)

    def test_fails_on_the_first_bad_fragment(self, kind: str) -> None:
        codec, _ = make(kind)
        assert codec.feed(raw(TEXT, "héllo".encode(), fin=False)) == b""
        # Not at the end of the message: the final fragment never comes.
        fails(codec, raw(CONT, b"\xf8\x88\x80\x80\x80", fin=False), 1007)

    def test_truncated_at_the_end_of_the_message(self, kind: str) -> None:
        codec, _ = make(kind)
        codec.feed(raw(TEXT, b"ok", fin=False))
        fails(codec, raw(CONT, b"\xe2\x82"), 1007)

    def test_binary_is_not_checked(self, kind: str) -> None:
        codec, handler = make(kind)
        codec.feed(raw(BINARY, b"\xff\xfe"))
        assert handler.calls == [("message", b"\xff\xfe")]

    @pytest.mark.parametrize("header_split", [False, True], ids=["whole-header", "split-header"])
    def test_fails_inside_a_frame_still_arriving(self, kind: str, header_split: bool) -> None:
        """Autobahn 6.4.3/6.4.4: one frame in pieces; the bad bytes fail before the rest."""
        codec, handler = make(kind)
        frame = raw(TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 300)
        cut = 3 if header_split else 8 + len("κόσμε".encode())  # 8: header with a 16-bit length
        assert codec.feed(frame[:cut]) == b""
        if header_split:
            assert codec.feed(frame[cut : 8 + len("κόσμε".encode())]) == b""
        fails(codec, frame[8 + len("κόσμε".encode()) : -100], 1007)
        assert handler.calls == []

    def test_valid_frame_in_pieces_and_a_continuation_mid_character(self, kind: str) -> None:
        """No false alarm: a continuation frame that completes a character of the previous
        fragment, itself arriving in pieces, byte by byte."""
        codec, handler = make(kind)
        snake = "🐍".encode()
        codec.feed(raw(TEXT, b"a" + snake[:2], fin=False) + raw(PING, b"p"))
        for byte in raw(CONT, snake[2:] + "é".encode() * 200):
            codec.feed(bytes([byte]))
        assert handler.calls == [("message", "a🐍" + "é" * 200)]

    def test_compressed_frame_in_pieces(self, kind: str) -> None:
        """Compressed bytes are not text: they are checked once inflated, not before."""
        codec, handler = make(kind, offers=[b"permessage-deflate"])
        text = "".join(chr(0x400 + i % 200) for i in range(3000))
        data = zlib.compressobj(wbits=-15)
        payload = data.compress(text.encode()) + data.flush(zlib.Z_SYNC_FLUSH)
        frame = raw(TEXT, payload[:-4], rsv=0x40)
        for i in range(0, len(frame), 7):
            codec.feed(frame[i : i + 7])
        assert handler.calls == [("message", text)]


class TestMessageSizeRFC6455Section10_4:
    """§10.4: a message over ``max_size`` fails with 1009, counted in bytes."""

    def test_exactly_max_size(self, kind: str) -> None:
        codec, handler = make(kind, max_size=100)
        client = Client()
        codec.feed(client.binary(b"x" * 100))
        codec.feed(client.text("a" * 40, fin=False) + client.cont(b"b" * 60))
        assert messages(handler) == [b"x" * 100, "a" * 40 + "b" * 60]

    def test_single_frame_over(self, kind: str) -> None:
        codec, handler = make(kind, max_size=100)
        fails(codec, Client().binary(b"x" * 101), 1009)
        assert handler.calls == []

    def test_refused_at_the_header(self, kind: str) -> None:
        # Only the header of a frame announcing 1 GiB: refused before any payload arrives.
        codec, _ = make(kind, max_size=1 << 20)
        fails(codec, raw(BINARY, length=1 << 30)[:10], 1009)

    def test_over_across_fragments(self, kind: str) -> None:
        codec, handler = make(kind, max_size=100)
        client = Client()
        codec.feed(client.binary(b"x" * 60, fin=False))
        fails(codec, client.cont(b"y" * 41), 1009)
        assert handler.calls == []

    def test_text_counted_in_bytes(self, kind: str) -> None:
        codec, handler = make(kind, max_size=4)
        codec.feed(Client().text("éé"))
        assert messages(handler) == ["éé"]
        fails(codec, Client().text("ééé"), 1009)

    def test_control_frames_not_counted(self, kind: str) -> None:
        codec, handler = make(kind, max_size=100)
        client = Client()
        data = client.binary(b"x" * 99, fin=False) + client.ping(b"p" * 125) + client.cont(b"y")
        assert sent_frames(codec.feed(data)) == [(Opcode.PONG, b"p" * 125)]
        assert messages(handler) == [b"x" * 99 + b"y"]

    def test_limit_is_per_message(self, kind: str) -> None:
        codec, handler = make(kind, max_size=10)
        client = Client()
        codec.feed(b"".join(client.binary(b"0123456789") for _ in range(5)))
        assert len(messages(handler)) == 5


class TestNegotiationRFC7692Section7_1:
    """RFC 7692 §5, §7.1: permessage-deflate negotiation from the raw offers."""

    @pytest.mark.parametrize(
        ("offers", "expected"),
        [
            ([b"permessage-deflate"], b"permessage-deflate"),
            # Chrome's offer: a client window limit without value is not echoed.
            ([b"permessage-deflate; client_max_window_bits"], b"permessage-deflate"),
            (
                [b"permessage-deflate; client_max_window_bits=10"],
                b"permessage-deflate; client_max_window_bits=10",
            ),
            (
                [b"permessage-deflate; client_max_window_bits=8"],
                b"permessage-deflate; client_max_window_bits=8",
            ),
            (
                [b"permessage-deflate; server_no_context_takeover"],
                b"permessage-deflate; server_no_context_takeover",
            ),
            (
                [b"permessage-deflate;server_max_window_bits=10;client_no_context_takeover"],
                b"permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
            ),
            (
                [b'permessage-deflate; server_max_window_bits="12"'],
                b"permessage-deflate; server_max_window_bits=12",
            ),
            (
                # Autobahn 13.7: the first offer asks for a window of 8, which zlib cannot do.
                [
                    b"permessage-deflate; client_no_context_takeover; client_max_window_bits;"
                    b" server_no_context_takeover; server_max_window_bits=8,"
                    b" permessage-deflate; client_no_context_takeover; client_max_window_bits;"
                    b" server_no_context_takeover, permessage-deflate"
                ],
                b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            ([b"x-webkit-deflate-frame, permessage-deflate"], b"permessage-deflate"),
            ([b"permessage-deflate; foo=1", b"permessage-deflate"], b"permessage-deflate"),
            (
                [b'permessage-deflate; x="unterminated', b"permessage-deflate"],
                b"permessage-deflate",
            ),
            ([b" , permessage-deflate ,, "], b"permessage-deflate"),
        ],
    )
    def test_accepted(self, kind: str, offers: list[bytes], expected: bytes) -> None:
        codec, _ = make(kind, offers=offers)
        assert codec.extensions_header == expected

    @pytest.mark.parametrize(
        "offer",
        [
            b"x-webkit-deflate-frame",
            b"permessage-deflate; server_max_window_bits=8",
            b"permessage-deflate; server_max_window_bits=16",
            b"permessage-deflate; server_max_window_bits",
            b"permessage-deflate; client_max_window_bits=7",
            b"permessage-deflate; client_max_window_bits=foo",
            b"permessage-deflate; server_no_context_takeover=1",
            b"permessage-deflate; client_no_context_takeover=1",
            b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            b"permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            b"permessage-deflate; unknown",
            b'permessage-deflate; server_max_window_bits="1 0"',
            b"permessage-deflate; server_max_window_bits=",
            b"permessage-deflate; =10",
            b"permessage-deflate x",
            b"permessage-deflate;",
            b"",
            b"\xff",
        ],
    )
    def test_declined(self, kind: str, offer: bytes) -> None:
        codec, _ = make(kind, offers=[offer])
        assert codec.extensions_header is None

    def test_disabled(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE, deflate=False)
        assert codec.extensions_header is None
        fails(codec, raw(TEXT, b"\xcaH\xcd\xc9\xc9\x07\x00", rsv=RSV1), 1002)

    def test_no_offers(self, kind: str) -> None:
        codec, _ = make(kind)
        assert codec.extensions_header is None


OFFERS = {
    "default": b"permessage-deflate",
    "client-window": b"permessage-deflate; client_max_window_bits=9",
    "server-window": b"permessage-deflate; server_max_window_bits=9",
    "no-context": b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
}


class TestCompressionRFC7692Section7_2:
    """RFC 7692 §6, §7.2: compressed messages both ways, within ``max_size``."""

    @pytest.fixture(params=list(OFFERS))
    def offer(self, request: pytest.FixtureRequest) -> bytes:
        return OFFERS[request.param]

    def test_round_trip(self, kind: str, offer: bytes) -> None:
        codec, handler = make(kind, offers=[offer])
        client = Client(codec.extensions_header)
        sent: list[str | bytes] = ["héllo " * 50, b"\x00" * 5000, "", os.urandom(3000), "again"]
        for message in sent:
            data = client.text(message) if isinstance(message, str) else client.binary(message)
            assert data[0] & RSV1  # really compressed
            codec.feed(data)
            out = codec.send_message(message)
            assert out[0] & RSV1
            [frame] = client.receive(out)
            assert frame.data == (message.encode() if isinstance(message, str) else message)
        assert messages(handler) == sent

    def test_large_message_out(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        message = "lorem ipsum " * 10_000
        out = codec.send_message(message)
        assert len(out) < len(message) // 10
        assert [bytes(f.data) for f in Client(codec.extensions_header).receive(out)] == [
            message.encode()
        ]

    def test_fragmented_with_control_frames_between(self, kind: str) -> None:
        # wsproto alone would inflate the fragments after the ping as plain data.
        codec, handler = make(kind, offers=DEFLATE)
        client = Client(codec.extensions_header)
        data = client.text("hello ", fin=False) + client.ping(b"p") + client.cont(b"big ", False)
        assert sent_frames(codec.feed(data)) == [(Opcode.PONG, b"p")]
        codec.feed(client.pong(b"q") + client.cont(b"world"))
        assert handler.calls == [("pong", b"q"), ("message", "hello big world")]

    def test_uncompressed_message_allowed(self, kind: str) -> None:
        codec, handler = make(kind, offers=DEFLATE)
        codec.feed(raw(TEXT, b"plain") + raw(BINARY, b"b", fin=False) + raw(CONT, b"c"))
        client = Client(codec.extensions_header)
        codec.feed(client.text("compressed"))
        assert messages(handler) == ["plain", b"bc", "compressed"]

    def test_rsv1_on_control_frame(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        fails(codec, raw(PING, b"", rsv=RSV1), 1002)

    def test_rsv1_on_continuation(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        client = Client(codec.extensions_header)
        codec.feed(client.text("a", fin=False))
        fails(codec, raw(CONT, b"\x03\x00", rsv=RSV1), 1002)

    def test_corrupt_compressed_data(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        fails(codec, raw(BINARY, b"\xff\xff\xff\xff", rsv=RSV1), 1002)

    def test_corrupt_at_the_final_flush(self, kind: str) -> None:
        # A stored block whose lengths the appended 00 00 ff ff (RFC 7692 §7.2.2) contradicts.
        codec, _ = make(kind, offers=DEFLATE)
        fails(codec, raw(BINARY, b"\x00\x00\x00", rsv=RSV1), 1002)

    @pytest.mark.parametrize(("max_size", "ok"), [(6, True), (5, False)])
    def test_last_byte_from_the_final_flush(self, kind: str, max_size: int, ok: bool) -> None:
        # b"\xb2" starts a fixed-Huffman block whose only literal ("8") is completed by the
        # 00 00 ff ff appended at the end of the message: it counts against max_size too.
        codec, handler = make(kind, max_size=max_size, offers=DEFLATE)
        codec.feed(Client(codec.extensions_header).binary(b"hello", fin=False))
        if ok:
            codec.feed(raw(CONT, b"\xb2"))
            assert messages(handler) == [b"hello8"]
        else:
            fails(codec, raw(CONT, b"\xb2"), 1009)

    def test_compressed_invalid_utf8(self, kind: str) -> None:
        codec, _ = make(kind, offers=DEFLATE)
        compressor = zlib.compressobj(wbits=-15)
        payload = compressor.compress(b"ok\xff") + compressor.flush(zlib.Z_SYNC_FLUSH)
        fails(codec, raw(TEXT, payload[:-4], rsv=RSV1), 1007)

    def test_exactly_max_size_compressed(self, kind: str) -> None:
        # Incompressible data: the compressed frame is longer than max_size, the message not.
        codec, handler = make(kind, max_size=5000, offers=DEFLATE)
        client = Client(codec.extensions_header)
        data = os.urandom(5000)
        codec.feed(client.binary(data))
        codec.feed(client.binary(b"\x00" * 5000))
        assert messages(handler) == [data, b"\x00" * 5000]

    @pytest.mark.parametrize("size", [1001, 100_000])
    def test_inflates_past_max_size(self, kind: str, size: int) -> None:
        codec, handler = make(kind, max_size=1000, offers=DEFLATE)
        fails(codec, Client(codec.extensions_header).binary(b"\x00" * size), 1009)
        assert handler.calls == []

    def test_inflates_past_max_size_across_fragments(self, kind: str) -> None:
        codec, handler = make(kind, max_size=1000, offers=DEFLATE)
        client = Client(codec.extensions_header)
        codec.feed(client.text("a" * 600, fin=False))
        fails(codec, client.cont(b"b" * 401), 1009)
        assert handler.calls == []

    def test_zip_bomb_is_not_inflated_whole(self, kind: str) -> None:
        max_size = 1 << 20
        codec, handler = make(kind, max_size=max_size, offers=DEFLATE)
        bomb = Client(codec.extensions_header).binary(bytes(64 << 20))
        assert len(bomb) < 100_000
        tracemalloc.start()
        try:
            fails(codec, bomb, 1009)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * max_size, f"{peak} bytes allocated for a 64 MiB bomb"
        assert handler.calls == []


class TestWsprotoClientRFC7692:
    """Another implementation as the peer: wsproto's client, with its own deflate offer."""

    def test_round_trip(self, kind: str) -> None:
        offer = PerMessageDeflate()
        offer_params = offer.offer()
        assert isinstance(offer_params, str)
        codec, handler = make(kind, offers=[f"permessage-deflate; {offer_params}".encode()])
        header = codec.extensions_header
        assert header == b"permessage-deflate; server_max_window_bits=15; client_max_window_bits=15"
        offer.finalize(header.decode())
        client = Connection(ConnectionType.CLIENT, extensions=[offer])
        data = client.send(TextMessage("hé" * 500)) + client.send(BytesMessage(b"\x00" * 999))
        assert data[0] & RSV1
        client.receive_data(codec.feed(data + client.send(Ping(b"p"))))
        client.receive_data(codec.send_message("ünïcode " * 100))
        assert list(client.events()) == [Pong(b"p"), TextMessage("ünïcode " * 100)]
        client.receive_data(codec.feed(client.send(CloseConnection(1000, "bye"))))
        assert list(client.events()) == [CloseConnection(1000, "bye")]
        assert handler.calls == [
            ("message", "hé" * 500),
            ("message", b"\x00" * 999),
            ("close", (1000, "bye")),
        ]


def stream_clean() -> bytes:
    client = Client()
    return b"".join(
        [
            client.text("héllo"),
            client.ping(b"ping"),
            client.binary(b"\x00" * 300, fin=False),
            client.pong(b"pong"),
            client.cont(b"\x01" * 70_000),
            client.text("snake " + "🐍", fin=False),
            client.cont("🐍".encode()[:2], fin=False),
            client.cont("🐍".encode()[2:]),
            client.text(""),
            client.close(1000, "done"),
            raw(TEXT, b"ignored"),
        ]
    )


def stream_compressed() -> bytes:
    client = Client(b"permessage-deflate; client_no_context_takeover")
    return b"".join(
        [
            client.text("compressed " * 100),
            client.ping(b"p"),
            client.binary(os.urandom(2000)),
            client.text("fragmented ", fin=False),
            client.cont(b"message"),
            client.close(1001),
        ]
    )


def stream_bad_utf8() -> bytes:
    client = Client()
    return client.text("fine") + raw(TEXT, b"ab", fin=False) + raw(CONT, b"\xff" + b"x" * 200)


def stream_too_big() -> bytes:
    client = Client()
    return client.text("fine") + client.ping(b"1") + client.binary(b"x" * 2000)


STREAMS = {
    "clean": (stream_clean, [], 1 << 20),
    "compressed": (stream_compressed, [b"permessage-deflate; client_no_context_takeover"], 1 << 20),
    "bad-utf8": (stream_bad_utf8, [], 1 << 20),
    "too-big": (stream_too_big, [], 1000),
    "unmasked": (lambda: Client().text("a") + raw(BINARY, b"x", masked=False), [], 1 << 20),
}


class TestIncrementalFeeding:
    """Frames split anywhere give the same handler calls and the same bytes out."""

    @staticmethod
    def run(
        kind: str, chunks: list[bytes], offers: list[bytes], max_size: int
    ) -> tuple[list[Call], bytes, int | None]:
        codec, handler = make(kind, max_size=max_size, offers=offers)
        out = bytearray()
        try:
            for chunk in chunks:
                out += codec.feed(chunk)
        except WSProtocolError as exc:
            return handler.calls, bytes(out) + exc.close_frame, exc.code
        return handler.calls, bytes(out), None

    @pytest.mark.parametrize("name", list(STREAMS))
    @pytest.mark.parametrize("size", [1, 7, 1000])
    def test_pieces(self, kind: str, name: str, size: int) -> None:
        make_stream, offers, max_size = STREAMS[name]
        data = make_stream()
        whole = self.run(kind, [data], offers, max_size)
        assert self.run(kind, pieces(data, size), offers, max_size) == whole

    def test_clean_stream_result(self, kind: str) -> None:
        calls, out, error = self.run(kind, [stream_clean()], [], 1 << 20)
        assert error is None
        assert calls == [
            ("message", "héllo"),
            ("pong", b"pong"),
            ("message", b"\x00" * 300 + b"\x01" * 70_000),
            ("message", "snake 🐍🐍"),
            ("message", ""),
            ("close", (1000, "done")),
        ]
        assert sent_frames(out) == [
            (Opcode.PONG, b"ping"),
            (Opcode.CLOSE, close_payload(1000, b"done")),
        ]


class TestParity:
    """Both codecs put the same bytes on the wire."""

    @pytest.mark.parametrize("offers", [[], DEFLATE, [OFFERS["no-context"]]])
    def test_same_bytes(self, offers: list[bytes]) -> None:
        (a, _), (b, _) = (make(k, offers=offers) for k in KINDS)
        assert a.extensions_header == b.extensions_header
        sent: list[str | bytes] = ["text", b"bytes", "long " * 20_000, b"", os.urandom(3000)]
        for message in sent:
            assert a.send_message(message) == b.send_message(message)
        assert a.send_ping(b"p") == b.send_ping(b"p")
        assert a.feed(Client().ping(b"x")) == b.feed(Client().ping(b"x"))
        assert a.send_close(1000, "bye") == b.send_close(1000, "bye")


# wire/ws.py: the opening handshake, shared by both codecs -------------------------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request(
    *extra: tuple[bytes, bytes], version: bytes | None = b"13"
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"host", b"example.com"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", KEY),
    ]
    if version is not None:
        headers.append((b"sec-websocket-version", version))
    return headers + list(extra)


class TestOpeningHandshakeRFC6455Section4_2:
    """§4.2.1, §4.2.2, §4.4: the server's checks of the opening handshake."""

    def test_valid(self) -> None:
        offer = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")
        handshake = check_handshake("GET", "1.1", request(offer))
        assert handshake == Handshake(KEY, [], [offer[1]])

    def test_accept_key_rfc_example(self) -> None:
        assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def test_subprotocols(self) -> None:
        headers = request(
            (b"sec-websocket-protocol", b"chat, SuperChat,,"),
            (b"sec-websocket-protocol", b" v2.json "),
        )
        assert check_handshake("GET", "1.1", headers).subprotocols == [
            "chat",
            "SuperChat",
            "v2.json",
        ]

    def test_extension_offers_in_order(self) -> None:
        headers = request(
            (b"sec-websocket-extensions", b"a"), (b"sec-websocket-extensions", b"b; x=1")
        )
        assert check_handshake("GET", "1.1", headers).extension_offers == [b"a", b"b; x=1"]

    @pytest.mark.parametrize(
        "header", [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    )
    def test_request_body(self, header: tuple[bytes, bytes]) -> None:
        with pytest.raises(HandshakeError) as info:
            check_handshake("GET", "1.1", request(header))
        assert info.value.status == 400

    def test_empty_request_body(self) -> None:
        assert check_handshake("GET", "1.1", request((b"content-length", b"0"))).key == KEY

    @pytest.mark.parametrize(
        ("method", "version"), [("POST", "1.1"), ("HEAD", "1.1"), ("GET", "1.0")]
    )
    def test_not_get_or_not_http11(self, method: str, version: str) -> None:
        with pytest.raises(HandshakeError) as info:
            check_handshake(method, version, request())
        assert info.value.status == 400

    @pytest.mark.parametrize(
        "keys",
        [
            [],
            [KEY, KEY],
            [b"dGhlIHNhbXBsZSBub25jZQ="],  # 23 characters
            [b"dGhlIHNhbXBsZSBub25jZQ=x"],
            [b"!!!!!!!!!!!!!!!!!!!!!!=="],  # not base64
            [b"dGhlIHNhbXBsZSBub25jZXg="],  # 17 bytes once decoded
        ],
    )
    def test_missing_duplicate_or_invalid_key(self, keys: list[bytes]) -> None:
        headers = [h for h in request() if h[0] != b"sec-websocket-key"]
        headers += [(b"sec-websocket-key", key) for key in keys]
        with pytest.raises(HandshakeError) as info:
            check_handshake("GET", "1.1", headers)
        assert info.value.status == 400

    @pytest.mark.parametrize("versions", [[], [b"8"], [b"13", b"13"], [b"14"], [b"13, 8"]])
    def test_unsupported_version(self, versions: list[bytes]) -> None:
        headers = request(*((b"sec-websocket-version", v) for v in versions), version=None)
        with pytest.raises(HandshakeError) as info:
            check_handshake("GET", "1.1", headers)
        assert info.value.status == 426
        assert (b"sec-websocket-version", b"13") in info.value.headers

    @pytest.mark.parametrize(
        ("upgrade", "connection", "expected"),
        [
            (b"websocket", b"Upgrade", True),
            (b"WebSocket", b"keep-alive, UPGRADE", True),
            (b"h2c, websocket", b"upgrade,close", True),
            (b"h2c", b"upgrade", False),
            (b"websocket", b"keep-alive", False),
            (b"websocketx", b"upgrade", False),
            (None, b"upgrade", False),
            (b"websocket", None, False),
        ],
    )
    def test_is_upgrade(
        self, upgrade: bytes | None, connection: bytes | None, expected: bool
    ) -> None:
        headers = [(b"host", b"example.com")]
        if upgrade is not None:
            headers.append((b"upgrade", upgrade))
        if connection is not None:
            headers.append((b"connection", connection))
        assert is_upgrade(headers) is expected

    def test_is_upgrade_across_repeated_headers(self) -> None:
        headers = [(b"connection", b"keep-alive"), (b"connection", b"Upgrade")]
        headers += [(b"upgrade", b"h2c"), (b"upgrade", b"websocket")]
        assert is_upgrade(headers)
