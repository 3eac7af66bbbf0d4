"""The WebSocket codec over wsproto (``wsproto.connection.Connection``).

``Connection`` parses frames, decodes text incrementally and yields message pieces as bytes
arrive, even inside one frame. It has no size limit, inflates without bound, and reports a
protocol violation as a ``CloseConnection`` event, like the peer's close frame. This module
reassembles the pieces and adds the rest through one extension, ``_Guard``, which wsproto
calls for every frame's header, payload and end.

Invariants:
- ``_Guard`` enforces ``max_size`` as ``ws_websockets`` does: a data frame whose length passes
  what is left of the message's budget (plus ``frame_slack`` when compressed) is refused at
  its header (1009), and a compressed payload is inflated in slices that cannot overshoot the
  budget by more than a few hundred kilobytes, so a zip bomb is never inflated whole.
- ``_Guard`` is always installed; it compresses only when permessage-deflate was negotiated.
  Control frames never reach ``PerMessageDeflate``: wsproto resets its per-message state at the
  end of any frame, so a ping between the fragments of a compressed message would make it
  inflate the remaining fragments as plain data.
- A ``CloseConnection`` event is the peer's close frame when it moved ``Connection.state`` to
  REMOTE_CLOSING or CLOSED; otherwise it is a parse failure, answered with our close frame.
- wsproto refuses close code 1014 (registered since RFC 6455) and checks the code before the
  reason's UTF-8; ``_Guard`` keeps the close payload, and a refused close frame is judged again
  as websockets judges it, so both codecs accept and refuse the same close frames.
- On a protocol error, ``WSProtocolError.close_frame`` holds the pongs owed for the pings that
  came before the violation, then our close frame: the bytes sent never depend on how the
  input was split.
- Corrupt compressed data fails with 1002, as with websockets (wsproto says 1007).
- Once our close frame is out, pings are not answered (``Connection`` cannot send a pong in
  LOCAL_CLOSING) and ``feed`` returns nothing, as with websockets.
"""

from __future__ import annotations

import re

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from sleipnir.wire.ws import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    WSHandler,
    WSLimits,
    WSProtocolError,
    check_close_code,
    close_frame,
    frame_slack,
    truncate_reason,
    valid_close_code,
)

_PEER_CLOSED = (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED)
_NO_RSV = RsvBits(False, False, False)
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5

# Deflate's best ratio is 1032:1 (a 258-byte match in two bits); a slice of compressed input
# inflates to at most that much, plus a match left over from the previous slice.
_DEFLATE_MAX_RATIO = 1032
# Smallest slice: the overshoot it allows (~260 KiB) is harmless, and it keeps the number of
# inflate calls low for input that produces little (empty blocks after a full budget).
_MIN_INFLATE_SLICE = 256

_DEFLATE = "permessage-deflate"
_SERVER_WINDOW_BITS = frozenset(str(bits) for bits in range(9, 16))  # zlib cannot deflate with 8
_CLIENT_WINDOW_BITS = frozenset(str(bits) for bits in range(8, 16))


class WsprotoCodec:
    """``WSCodec`` over ``wsproto.connection.Connection``."""

    __slots__ = (
        "_binary_parts",
        "_close_sent",
        "_closed",
        "_conn",
        "_guard",
        "_handler",
        "_text_parts",
        "extensions_header",
    )

    def __init__(self, handler: WSHandler, limits: WSLimits, offers: list[bytes]) -> None:
        self._handler = handler
        accepted = negotiate_deflate(offers) if limits.per_message_deflate and offers else None
        self.extensions_header: bytes | None = None
        self._guard = guard = _Guard(limits.max_size)
        if accepted is not None:
            self.extensions_header, offer = accepted
            guard.enable_deflate(offer)
        self._conn = Connection(ConnectionType.SERVER, extensions=[guard])
        self._text_parts: list[str] = []
        self._binary_parts: list[bytes] = []
        self._close_sent = False  # ours, the echo of theirs, or the one of a protocol error
        self._closed = False  # the peer's close arrived, or the connection failed

    # Incoming -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self._closed:
            return b""  # RFC 6455 §1.4: data after the closing handshake is discarded
        conn = self._conn
        conn.receive_data(data)
        handler = self._handler
        out = b""
        for event in conn.events():
            if isinstance(event, TextMessage):
                if not event.message_finished:
                    self._text_parts.append(event.data)
                elif self._text_parts:
                    self._text_parts.append(event.data)
                    message = "".join(self._text_parts)
                    self._text_parts = []
                    handler.on_message(message)
                else:
                    handler.on_message(event.data)
            elif isinstance(event, BytesMessage):
                if not event.message_finished:
                    self._binary_parts.append(bytes(event.data))
                elif self._binary_parts:
                    self._binary_parts.append(bytes(event.data))
                    blob = b"".join(self._binary_parts)
                    self._binary_parts = []
                    handler.on_message(blob)
                else:
                    handler.on_message(bytes(event.data))
            elif isinstance(event, Ping):
                if not self._close_sent:
                    out += conn.send(event.response())
            elif isinstance(event, Pong):
                handler.on_pong(event.payload)
            else:  # the last kind of event a Connection yields once open
                assert isinstance(event, CloseConnection)
                return self._close_event(event, out)
        return out

    def _close_event(self, event: CloseConnection, out: bytes) -> bytes:
        """The peer's close frame, or a failure; ``out`` holds the pongs owed so far."""
        conn = self._conn
        if conn.state in _PEER_CLOSED:
            return out + self._peer_closed(int(event.code), event.reason or "", event)
        payload = self._guard.close_payload
        if payload is not None:
            # wsproto refused the close frame it just read: judge it as websockets does.
            code, reason, ok = _judge_close(payload)
            if ok:
                return out + self._peer_closed(code, reason, CloseConnection(code, reason))
            raise self._fail(code, reason, out)
        reason = self._guard.error or event.reason or "protocol error"
        raise self._fail(int(event.code), reason, out)

    def _peer_closed(self, code: int, reason: str, echo: CloseConnection) -> bytes:
        self._closed = True
        self._handler.on_close(code, reason)
        if self._close_sent:
            return b""
        self._close_sent = True
        return self._conn.send(echo)

    def _fail(self, code: int, reason: str, owed: bytes) -> WSProtocolError:
        """RFC 6455 §7.1.7: the codec reads no more; the error carries our close frame, if any,
        after the pongs ``owed`` for pings that came before the violation (so that the bytes
        sent never depend on how the input was split). It is not counted as sent: answers to
        messages that came before the error may go out first."""
        self._closed = True
        frame = b"" if self._close_sent else owed + close_frame(code, reason)
        return WSProtocolError(code, reason, frame)

    # Outgoing -----------------------------------------------------------------------------

    def send_message(self, data: str | bytes) -> bytes:
        if self._close_sent:
            return b""  # RFC 6455 §5.5.1: no data frame after a close frame
        if isinstance(data, str):
            return self._conn.send(TextMessage(data))
        return self._conn.send(BytesMessage(data))

    def send_ping(self, payload: bytes) -> bytes:
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        if self._close_sent:
            return b""
        return self._conn.send(Ping(payload))

    def send_close(self, code: int, reason: str) -> bytes:
        check_close_code(code)
        if self._close_sent:
            return b""
        self._close_sent = True
        if code == CLOSE_NO_STATUS:
            # wsproto sends an empty close frame only for the CloseReason member itself.
            return self._conn.send(CloseConnection(CloseReason.NO_STATUS_RCVD))
        return self._conn.send(CloseConnection(code, truncate_reason(reason)))


class _Guard(PerMessageDeflate):
    """Sees every frame: enforces ``max_size``, bounds inflation, keeps the close payload.

    Without ``enable_deflate`` it claims no reserved bit and passes payloads through.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._slack = frame_slack(max_size)
        self._deflate = False
        self._size = 0  # bytes of the current message so far, inflated
        self._control = False  # the current frame is a control frame
        self._compressed = False  # the current message is compressed
        self._close_buffer: bytes | None = None
        self.close_payload: bytes | None = None  # the last complete close frame's payload
        self.error: str | None = None  # why the guard failed the connection

    def enable_deflate(self, offer: str) -> None:
        self.accept(offer)  # configures PerMessageDeflate; the offer is already validated
        self._deflate = True

    def enabled(self) -> bool:
        return True  # always in the frame pipeline, negotiated or not

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            self._control = True
            self._close_buffer = b"" if opcode is Opcode.CLOSE else None
            return _NO_RSV  # RSV1 on a control frame: wsproto refuses it (1002)
        self._control = False
        if self._deflate and opcode is not Opcode.CONTINUATION:
            self._compressed = rsv.rsv1
        # Checked before the payload is read, as websockets does; a compressed frame may be
        # longer than the message it carries (see frame_slack), its inflated size is exact.
        budget = self._max_size - self._size
        if payload_length > (budget + self._slack if self._compressed else budget):
            return self._too_big()
        if not self._deflate:
            return _NO_RSV
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._control:
            if self._close_buffer is not None:
                self._close_buffer += data
            return data
        if not self._compressed:
            self._size += len(data)  # within the budget: checked at the header
            return data
        return self._inflate(proto, data)

    def _inflate(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        budget = self._max_size - self._size
        pieces: list[bytes] = []
        pos = 0
        while True:
            # Sized so that this slice cannot inflate much past what is left of the budget.
            step = budget // _DEFLATE_MAX_RATIO + _MIN_INFLATE_SLICE
            piece = super().frame_inbound_payload_data(
                proto, data if pos == 0 and step >= len(data) else data[pos : pos + step]
            )
            if isinstance(piece, CloseReason):
                return self._corrupt()
            budget -= len(piece)
            if budget < 0:
                return self._too_big()
            pieces.append(piece)
            pos += step
            if pos >= len(data):
                break
        self._size = self._max_size - budget
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._control:
            if self._close_buffer is not None:
                self.close_payload = self._close_buffer
            return None
        # Called for every data frame once negotiated: it also resets its per-message state.
        result = super().frame_inbound_complete(proto, fin) if self._deflate else None
        if isinstance(result, CloseReason):
            return self._corrupt()
        if isinstance(result, bytes):
            self._size += len(result)
            if self._size > self._max_size:
                return self._too_big()
        if fin:
            self._size = 0
            self._compressed = False
        return result

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if not self._deflate:
            return (rsv, data)
        return super().frame_outbound(proto, opcode, rsv, data, fin)

    def _corrupt(self) -> CloseReason:
        # zlib failed. wsproto says 1007, websockets 1002: the payload is not valid for the
        # extension, whatever the message type, so 1002.
        self.error = "decompression failed"
        return CloseReason.PROTOCOL_ERROR

    def _too_big(self) -> CloseReason:
        self.error = f"message over {self._max_size} bytes"
        return CloseReason.MESSAGE_TOO_BIG


def negotiate_deflate(offers: list[bytes]) -> tuple[bytes, str] | None:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 §5, §7.1).

    Same answers as websockets' ``ServerPerMessageDeflateFactory`` with its defaults, and the
    same header: server_no_context_takeover and client_no_context_takeover are echoed,
    server_max_window_bits is echoed (8 is declined: zlib cannot compress with it),
    client_max_window_bits is echoed when it has a value and left out when it has none. Unknown,
    duplicate or invalid parameters decline the offer; a header line that does not parse is
    skipped. wsproto's own ``accept`` is lenient about all of these (and its header splitting
    ignores quoted strings), so the checks are done here; it is then given the accepted
    parameters to configure itself. It always inflates with a 15-bit window, which decodes
    any smaller one (wsproto refuses a client window of 8).

    Returns the response header and the offer for ``PerMessageDeflate.accept``.
    """
    for value in offers:
        for name, params in _parse_extensions(value.decode("latin-1").strip(" \t")) or ():
            if name != _DEFLATE:
                continue
            accepted = _accept_params(params)
            if accepted is not None:
                response, offer = accepted
                return f"{_DEFLATE}{response}".encode("ascii"), f"{_DEFLATE}{offer}"
    return None


def _accept_params(params: list[tuple[str, str | None]]) -> tuple[str, str] | None:
    found: dict[str, str | None] = {}
    for name, value in params:
        if name in found:
            return None
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            if value not in _SERVER_WINDOW_BITS:
                return None
        elif name == "client_max_window_bits":
            if value is not None and value not in _CLIENT_WINDOW_BITS:
                return None
        else:
            return None
        found[name] = value
    response = offer = ""
    if "server_no_context_takeover" in found:
        response += "; server_no_context_takeover"
    if "client_no_context_takeover" in found:
        response += "; client_no_context_takeover"
    offer = response
    server_bits = found.get("server_max_window_bits")
    if server_bits is not None:
        response += f"; server_max_window_bits={server_bits}"
        offer = response
    client_bits = found.get("client_max_window_bits")
    if client_bits is not None:
        response += f"; client_max_window_bits={client_bits}"
    return response, offer


# RFC 6455 §9.1: extension-list = 1#( extension-token *( ";" extension-param ) ),
# extension-param = token [ "=" ( token / quoted-string ) ], the unquoted value a token.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_QUOTED = re.compile(r'"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e\x80-\xff])*)"')
_ESCAPE = re.compile(r"\\(.)")
_OWS = re.compile(r"[ \t]*")


def _parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]] | None:
    """Parse a Sec-WebSocket-Extensions value; None when it is malformed."""
    items: list[tuple[str, list[tuple[str, str | None]]]] = []
    end = len(value)
    pos = 0
    while True:
        while pos < end and value[pos] == ",":  # RFC 9110 §5.6.1: empty elements are ignored
            pos = _skip_ows(value, pos + 1)
        if pos == end:
            return items
        match = _TOKEN.match(value, pos)
        if match is None:
            return None
        name = match.group()
        pos = _skip_ows(value, match.end())
        params: list[tuple[str, str | None]] = []
        while pos < end and value[pos] == ";":
            match = _TOKEN.match(value, _skip_ows(value, pos + 1))
            if match is None:
                return None
            param = match.group()
            pos = _skip_ows(value, match.end())
            param_value: str | None = None
            if pos < end and value[pos] == "=":
                pos = _skip_ows(value, pos + 1)
                quoted = _QUOTED.match(value, pos)
                if quoted is not None:
                    param_value = _ESCAPE.sub(r"\1", quoted.group(1))
                    if _TOKEN.fullmatch(param_value) is None:
                        return None
                    pos = quoted.end()
                else:
                    match = _TOKEN.match(value, pos)
                    if match is None:
                        return None
                    param_value = match.group()
                    pos = match.end()
                pos = _skip_ows(value, pos)
            params.append((param, param_value))
        items.append((name, params))
        if pos < end and value[pos] != ",":
            return None


def _skip_ows(value: str, pos: int) -> int:
    match = _OWS.match(value, pos)
    assert match is not None  # it matches the empty string
    return match.end()


def _judge_close(payload: bytes) -> tuple[int, str, bool]:
    """A close payload judged as websockets does (RFC 6455 §5.5.1, §7.4): the reason's UTF-8
    first (1007), then the code (1002). Returns (code, reason, valid)."""
    if len(payload) < 2:
        return CLOSE_PROTOCOL_ERROR, "close frame too short", False
    code = int.from_bytes(payload[:2], "big")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as exc:
        return CLOSE_INVALID_DATA, f"invalid UTF-8 in close reason: {exc.reason}", False
    if not valid_close_code(code):
        return CLOSE_PROTOCOL_ERROR, f"invalid close code {code}", False
    return code, reason, True
