"""The WebSocket codec over the ``websockets`` sans-I/O layer (``websockets.protocol.Protocol``).

``Protocol`` parses and checks frames (RFC 6455 §5), answers pings, echoes the close frame and
inflates permessage-deflate frames (RFC 7692) within ``max_size``; it yields frames, not
messages. This module adds what it leaves to its connection classes: reassembling fragments,
decoding text, and turning its failures into ``WSProtocolError``.

Invariants:
- ``Protocol`` is told ``max_size`` plus ``frame_slack``: it refuses a frame whose length
  passes what is left of the message's budget before reading its payload, and stops inflating
  at the budget, so neither a huge frame nor a zip bomb is buffered whole. The exact limit,
  over the reassembled message, is checked here on each frame.
- Text is decoded per fragment with an incremental decoder, so invalid UTF-8 fails (1007) on
  the first fragment that contains it, not when the message ends (Autobahn 6.4 "fail fast").
  ``Protocol`` yields a frame only once all of it has arrived, so the part of an uncompressed
  text frame that has arrived is checked as it comes (``_EarlyText``).
- Pongs and the close echo come from ``Protocol.data_to_send()``. Once our close frame is out,
  ``feed`` returns nothing: ``Protocol`` still answers pings then, wsproto cannot, and both
  codecs must send the same bytes.
- On a protocol error the close frame is built here from the error, never taken from
  ``data_to_send()``: its layout depends on the state the error happened in. The pongs owed
  for pings that came before the violation are sent first (in ``WSProtocolError.close_frame``),
  so that the bytes sent never depend on how the input was split.
- A close frame between the fragments of a message is a normal close (RFC 6455 §5.4 allows
  control frames there): ``Protocol`` calls it a protocol error, wsproto does not.
- Outgoing messages are serialized with ``Frame.serialize`` directly: one frame per message, so
  ``Protocol``'s fragmentation bookkeeping and write queue would be pure overhead.
"""

from __future__ import annotations

import codecs
from typing import cast

from websockets.exceptions import (
    InvalidHeaderFormat,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
)
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Close, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.protocol import Protocol, Side, State

try:  # the C version websockets itself uses when it was built with it
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from sleipnir.wire.ws import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    WSHandler,
    WSLimits,
    WSProtocolError,
    check_close_code,
    close_frame,
    frame_slack,
    truncate_reason,
)

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PING = Opcode.PING
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE

_DEFLATE = "permessage-deflate"
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5


class WebsocketsCodec:
    """``WSCodec`` over ``websockets.protocol.Protocol``."""

    __slots__ = (
        "_binary_parts",
        "_close_sent",
        "_closed",
        "_decoder",
        "_early",
        "_extensions",
        "_handler",
        "_max_size",
        "_protocol",
        "_size",
        "_text_parts",
        "extensions_header",
    )

    def __init__(self, handler: WSHandler, limits: WSLimits, offers: list[bytes]) -> None:
        self._handler = handler
        self._max_size = limits.max_size
        # Protocol checks a frame's length against the message's budget before reading it, the
        # compressed length for a compressed frame, and counts control frames too. Given some
        # slack it never refuses a valid message that way; the exact limit is checked here.
        self._protocol = protocol = Protocol(
            Side.SERVER,
            state=State.OPEN,
            max_size=limits.max_size + frame_slack(limits.max_size),
        )
        self.extensions_header: bytes | None = None
        if limits.per_message_deflate and offers:
            accepted = negotiate_deflate(offers)
            if accepted is not None:
                self.extensions_header, extension = accepted
                protocol.extensions = [extension]
        self._extensions = protocol.extensions
        # A fragmented message in progress: text parts with their decoder, or binary parts.
        self._decoder: codecs.IncrementalDecoder | None = None
        self._size = 0
        self._text_parts: list[str] = []
        self._binary_parts: list[bytes] = []
        self._close_sent = False  # ours, the echo of theirs, or the one of a protocol error
        self._closed = False  # the peer's close arrived, or the connection failed
        self._early = _EarlyText()

    # Incoming -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self._closed:
            return b""  # RFC 6455 §1.4: data after the closing handshake is discarded
        protocol = self._protocol
        protocol.receive_data(data)
        handler = self._handler
        pings = 0
        try:
            # Only frames: the handshake (Request, Response events) happened before the codec.
            for frame in cast("list[Frame]", protocol.events_received()):
                opcode = frame.opcode
                if frame.fin and (opcode is _TEXT or opcode is _BINARY):  # the common case
                    payload = frame.data
                    if len(payload) > self._max_size:
                        raise self._too_big()
                    if opcode is _BINARY:
                        handler.on_message(bytes(payload))
                        continue
                    try:
                        text = str(payload, "utf-8")
                    except UnicodeDecodeError as exc:
                        raise self._fail(CLOSE_INVALID_DATA, _utf8_reason(exc)) from None
                    handler.on_message(text)
                elif opcode is _PING:
                    pings += 1  # Protocol queued the pong
                elif opcode is _PONG:
                    handler.on_pong(bytes(frame.data))
                elif opcode is _CLOSE:  # Protocol queued the echo, unless ours went first
                    close = protocol.close_rcvd
                    assert close is not None
                    return self._peer_closed(close, protocol.data_to_send())
                else:
                    self._fragment(frame)
        except WSProtocolError as exc:
            if pings and exc.close_frame:
                # The pongs owed for the pings before the violation go first, so that the bytes
                # sent do not depend on how the input was split.
                exc.close_frame = b"".join(protocol.data_to_send()[:pings]) + exc.close_frame
            raise
        if protocol.parser_exc is not None:
            return self._parser_failed(protocol.parser_exc, pings)
        if not self._closed:
            try:
                self._early.scan(data, self._decoder)
            except UnicodeDecodeError as exc:
                raise self._fail(CLOSE_INVALID_DATA, _utf8_reason(exc)) from None
        if not pings:
            return b""
        writes = protocol.data_to_send()
        return b"" if self._close_sent else b"".join(writes)

    def _fragment(self, frame: Frame) -> None:
        """A fragment of a message: the first (TEXT or BINARY without FIN) or a continuation.
        Protocol refuses a continuation without a message, and a new message inside one."""
        data = frame.data
        if frame.opcode is _CONT:
            self._size += len(data)
        else:
            self._size = len(data)
            if frame.opcode is _TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        if self._size > self._max_size:
            raise self._too_big()
        decoder = self._decoder
        if decoder is None:
            self._binary_parts.append(bytes(data))
            if frame.fin:
                blob = b"".join(self._binary_parts)
                self._binary_parts = []
                self._handler.on_message(blob)
            return
        try:
            # Per fragment: invalid UTF-8 fails here, before the rest of the message arrives.
            self._text_parts.append(decoder.decode(data, frame.fin))
        except UnicodeDecodeError as exc:
            raise self._fail(CLOSE_INVALID_DATA, _utf8_reason(exc)) from None
        if frame.fin:
            text = "".join(self._text_parts)
            self._text_parts = []
            self._decoder = None
            self._handler.on_message(text)

    def _peer_closed(self, close: Close, writes: list[bytes]) -> bytes:
        self._closed = True
        self._handler.on_close(int(close.code), close.reason)
        if self._close_sent:
            return b""  # Protocol wrote only the end-of-stream marker
        self._close_sent = True
        return b"".join(writes)  # pongs owed, then the echo (b"" is the end-of-stream marker)

    def _parser_failed(self, exc: Exception, pings: int) -> bytes:
        protocol = self._protocol
        writes = protocol.data_to_send()
        close = protocol.close_rcvd
        if close is not None:
            # The only failure after a valid close frame: it came inside a fragmented message,
            # which Protocol calls a protocol error. RFC 6455 §5.4 allows control frames between
            # fragments, and wsproto takes it as a close: so do we, and echo it ourselves, since
            # Protocol wrote a 1002 close instead (after one pong per ping, in order).
            self._closed = True
            self._handler.on_close(int(close.code), close.reason)
            if self._close_sent:
                return b""
            self._close_sent = True
            return b"".join(writes[:pings]) + close_frame(int(close.code), close.reason)
        if isinstance(exc, PayloadTooBig):
            # Its message gives the limit with our slack added: say the real one.
            error = self._too_big()
        elif isinstance(exc, ProtocolError):
            error = self._fail(CLOSE_PROTOCOL_ERROR, str(exc))
        elif isinstance(exc, UnicodeDecodeError):  # the reason of a close frame
            error = self._fail(CLOSE_INVALID_DATA, f"invalid UTF-8 in close reason: {exc.reason}")
        else:  # pragma: no cover - Protocol logs it and closes with 1011; no input reaches it
            error = self._fail(CLOSE_INTERNAL_ERROR, "internal error")
        if error.close_frame:
            error.close_frame = b"".join(writes[:pings]) + error.close_frame  # pongs owed first
        raise error

    def _too_big(self) -> WSProtocolError:
        return self._fail(CLOSE_TOO_BIG, f"message over {self._max_size} bytes")

    def _fail(self, code: int, reason: str) -> WSProtocolError:
        """RFC 6455 §7.1.7: the codec reads no more; the error carries our close frame, if
        any. It is not counted as sent: the connection may first send answers to messages
        that came before the error, then the close frame."""
        self._closed = True
        frame = b"" if self._close_sent else close_frame(code, reason)
        return WSProtocolError(code, reason, frame)

    # Outgoing -----------------------------------------------------------------------------

    def send_message(self, data: str | bytes) -> bytes:
        if self._close_sent:
            return b""  # RFC 6455 §5.5.1: no data frame after a close frame
        if isinstance(data, str):
            return Frame(_TEXT, data.encode()).serialize(mask=False, extensions=self._extensions)
        return Frame(_BINARY, data).serialize(mask=False, extensions=self._extensions)

    def send_ping(self, payload: bytes) -> bytes:
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        if self._close_sent:
            return b""
        return Frame(_PING, payload).serialize(mask=False)

    def send_close(self, code: int, reason: str) -> bytes:
        check_close_code(code)
        if self._close_sent:
            return b""
        self._close_sent = True
        # Through Protocol, so that the peer's answer ends the handshake instead of being echoed.
        if code == CLOSE_NO_STATUS:
            self._protocol.send_close()
        else:
            self._protocol.send_close(code, truncate_reason(reason))
        return b"".join(self._protocol.data_to_send())


def negotiate_deflate(offers: list[bytes]) -> tuple[bytes, PerMessageDeflate] | None:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 §5, §7.1).

    ``ServerPerMessageDeflateFactory`` decides, with its defaults: server_no_context_takeover
    and client_no_context_takeover are echoed, server_max_window_bits is echoed (8 is declined:
    zlib cannot compress with it), client_max_window_bits is echoed when it has a value and left
    out when it has none. Unknown, duplicate or invalid parameters decline the offer. A header
    line that does not parse is skipped.
    """
    factory = ServerPerMessageDeflateFactory()
    for value in offers:
        try:
            items = parse_extension(value.decode("latin-1").strip(" \t"))
        except InvalidHeaderFormat:
            continue
        for name, params in items:
            if name != _DEFLATE or ("server_max_window_bits", "8") in params:
                # websockets < 14 accepts a window of 8, then zlib refuses to compress with it.
                continue
            try:
                response, extension = factory.process_request_params(params, [])
            except NegotiationError:
                continue
            return build_extension([(name, response)]).encode("ascii"), extension
    return None


class _EarlyText:
    """Frame boundaries of the input, to check the UTF-8 of a text frame still arriving.

    RFC 6455 §8.1 lets an endpoint fail on invalid UTF-8 as soon as it sees it; Autobahn 6.4.3
    and 6.4.4 send one frame in pieces and want that. Only headers are parsed here (``Protocol``
    does all the checking); the payload of an uncompressed text frame that does not complete in
    this read is unmasked and decoded, continuing the message's decoder. A complete frame costs
    one header parse and is left to ``Protocol``.
    """

    __slots__ = ("_decoder", "_head", "_left", "_mask", "_offset", "_text")

    def __init__(self) -> None:
        self._head = b""  # an incomplete frame header
        self._left = 0  # payload bytes of the current frame still to come
        self._decoder: codecs.IncrementalDecoder | None = None  # checking the current frame
        self._mask = b""
        self._offset = 0  # payload bytes of the current frame seen so far
        self._text = False  # inside a fragmented, uncompressed text message

    def scan(self, data: bytes, message: codecs.IncrementalDecoder | None) -> None:
        """Follow ``data``; raise ``UnicodeDecodeError`` on invalid text in a partial frame.
        ``message`` is the decoder of the text message in progress (after complete frames)."""
        pos = 0
        size = len(data)
        if self._left:
            pos = min(self._left, size)
            self._check(data[:pos])
            self._left -= pos
        if self._head:
            data = self._head + data[pos:]
            self._head = b""
            pos, size = 0, len(data)
        while pos < size:
            if size - pos < 2:
                self._head = data[pos:]
                return
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            masked = second & 0x80
            header = 2 + (4 if masked else 0) + (2 if length == 126 else 8 if length == 127 else 0)
            if size - pos < header:
                self._head = data[pos:]
                return
            if length >= 126:
                end = pos + (4 if length == 126 else 10)
                length = int.from_bytes(data[pos + 2 : end], "big")
            opcode = first & 0x0F
            if opcode == 1:  # TEXT starts a message: fragmented if not FIN, compressed if RSV1
                text = not first & 0x40
                self._text = text and not first & 0x80
            elif opcode == 0:  # CONT
                text = self._text
                if first & 0x80:
                    self._text = False
            else:
                text = False
                if opcode == 2:
                    self._text = False
            start = pos + header
            pos = start + length
            if pos > size:  # the frame goes on in later reads
                self._left = pos - size
                self._decoder = None
                if text and masked:
                    decoder = codecs.getincrementaldecoder("utf-8")()
                    if opcode == 0 and message is not None:
                        decoder.setstate(message.getstate())
                    self._decoder = decoder
                    self._mask = data[start - 4 : start]
                    self._offset = 0
                    self._check(data[start:])

    def _check(self, payload: bytes) -> None:
        decoder = self._decoder
        if decoder is None or not payload:
            return
        shift = self._offset % 4
        mask = self._mask[shift:] + self._mask[:shift]
        self._offset += len(payload)
        decoder.decode(apply_mask(payload, mask))


def _utf8_reason(exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8: {exc.reason}"
