"""The WebSocket codec interface (RFC 6455, RFC 7692) and the opening-handshake checks.

A codec (``ws_websockets`` or ``ws_wsproto``) is sans-I/O, like the HTTP/1.1 parsers: the
connection feeds it bytes, it calls ``WSHandler`` methods with whole messages, and it returns
the bytes to send. The handshake is HTTP: it is parsed by the HTTP/1.1 parser (or arrives as an
HTTP/2 extended CONNECT), checked here once for both codecs, and the codec is created only when
the application accepts, with the extension offers of the request.

Invariants:
- ``feed`` delivers complete messages (fragments reassembled, text decoded) in order. It never
  delivers a message larger than ``WSLimits.max_size``.
- Pings are answered inside ``feed``: the pong is part of the returned bytes.
- A protocol violation raises ``WSProtocolError`` carrying the close code (1002, 1007, 1009...)
  and the close frame to send; after it, the codec is dead and the connection is closed.
- When the peer's close frame arrives, ``feed`` calls ``on_close`` and returns the close frame
  echoed back (unless we sent ours first); after that nothing more is delivered.
- No asyncio here: codecs are tested without an event loop.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

from sleipnir.wire.h1 import H1Error, Headers

# RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = b"13"
_MAX_REASON_BYTES = 123  # a control frame's 125 bytes, less the close code

# Close codes used by the server (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # never sent: "the close frame had no code"
CLOSE_ABNORMAL = 1006  # never sent: "the connection dropped without a close frame"
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012


@dataclass(frozen=True)
class WSLimits:
    """The slice of the settings a WebSocket codec needs."""

    max_size: int = 16 * 1024 * 1024  # largest incoming message, after decompression
    per_message_deflate: bool = True  # accept a permessage-deflate offer (RFC 7692)


class WSProtocolError(Exception):
    """The peer broke RFC 6455: send ``close_frame``, then close the connection."""

    def __init__(self, code: int, reason: str, close_frame: bytes) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.close_frame = close_frame


class WSHandler(Protocol):
    """What a codec calls; implemented by the WebSocket session (``transport/``)."""

    def on_message(self, data: str | bytes) -> None:
        """A complete text (``str``) or binary (``bytes``) message."""

    def on_pong(self, payload: bytes) -> None:
        """A pong frame (answer to a keep-alive ping, or unsolicited)."""

    def on_close(self, code: int, reason: str) -> None:
        """The peer's close frame: ``code`` is 1005 when the frame carried none."""


class WSCodec(Protocol):
    """The codec interface: bytes in, handler calls out; messages in, bytes out."""

    extensions_header: bytes | None
    """The Sec-WebSocket-Extensions value for the 101 response, or None."""

    def feed(self, data: bytes) -> bytes:
        """Parse ``data``; return what must be sent in reply (pongs, the echoed close).

        Raises ``WSProtocolError`` on a violation (and ``on_close`` was not called).
        """

    def send_message(self, data: str | bytes) -> bytes:
        """One message as frames (compressed when negotiated)."""

    def send_ping(self, payload: bytes) -> bytes: ...

    def send_close(self, code: int, reason: str) -> bytes:
        """Our close frame; b"" when a close frame was already sent."""


@dataclass(frozen=True)
class Handshake:
    """What a valid opening handshake asks for (RFC 6455 §4.2.1)."""

    key: bytes
    subprotocols: list[str]
    extension_offers: list[bytes]  # raw Sec-WebSocket-Extensions values, in order


class HandshakeError(H1Error):
    """An invalid opening handshake: answered with ``status`` and ``headers``, then closed."""


def is_upgrade(headers: Headers) -> bool:
    """True for a request asking to switch to WebSocket (``Upgrade: websocket`` with
    ``Connection: upgrade``); anything else is served as plain HTTP."""
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in _tokens(value)
        elif name == b"connection":
            connection = connection or b"upgrade" in _tokens(value)
    return upgrade and connection


def check_handshake(method: str, http_version: str, headers: Headers) -> Handshake:
    """Validate an HTTP/1.1 upgrade request (RFC 6455 §4.2.1); raise ``HandshakeError``."""
    if method != "GET":
        raise HandshakeError(400, "WebSocket handshake must use GET")
    if http_version != "1.1":
        raise HandshakeError(400, "WebSocket handshake needs HTTP/1.1")
    keys, versions, subprotocols, offers = _handshake_fields(headers, empty_body_ok=True)
    if versions != [SUPPORTED_VERSION]:
        # RFC 6455 §4.4: 426 with the versions we speak.
        raise HandshakeError(
            426,
            "unsupported WebSocket version",
            [(b"sec-websocket-version", SUPPORTED_VERSION), (b"upgrade", b"websocket")],
        )
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise HandshakeError(400, "missing or invalid Sec-WebSocket-Key")
    return Handshake(keys[0], subprotocols, offers)


def check_extended_connect(method: str, protocol: bytes | None, headers: Headers) -> Handshake:
    """Validate an HTTP/2 extended CONNECT (RFC 8441 §4-5); raise ``HandshakeError``.

    The codec (``h2_fields.build_request``) already refused, as malformed, a ``:protocol``
    outside a CONNECT or one without ``:scheme``, ``:path`` or ``:authority``. Here:

    - A ``:protocol`` other than "websocket" is 501 Not Implemented (RFC 9220 §3, which states
      it for HTTP/3 with semantics "identical to those in HTTP/2 as defined in RFC 8441").
    - Sec-WebSocket-Version must be 13. A mismatch is 400 with the versions we speak (RFC 6455
      §4.4 asks for "an appropriate HTTP error code"; its example, 426, requires an Upgrade
      header, which HTTP/2 forbids: RFC 9110 §15.5.22, RFC 9113 §8.2.2).
    - Sec-WebSocket-Key is not required and not processed (RFC 8441 §5: superseded by
      ``:protocol``); the accept carries no Sec-WebSocket-Accept. ``Handshake.key`` is b"".
    - Subprotocols and extension offers are read exactly as over HTTP/1.1.
    - A CONNECT has no content (RFC 9110 §9.3.6): any Content-Length is refused, since the
      WebSocket's frames, DATA like a request body, would be counted against it.
    """
    if method != "CONNECT" or protocol is None:
        raise HandshakeError(400, "not an extended CONNECT")
    if protocol.lower() != b"websocket":
        raise HandshakeError(501, "unsupported :protocol in extended CONNECT")
    _, versions, subprotocols, offers = _handshake_fields(headers, empty_body_ok=False)
    if versions != [SUPPORTED_VERSION]:
        raise HandshakeError(
            400,
            "unsupported WebSocket version",
            [(b"sec-websocket-version", SUPPORTED_VERSION)],
        )
    return Handshake(b"", subprotocols, offers)


def _handshake_fields(
    headers: Headers, empty_body_ok: bool
) -> tuple[list[bytes], list[bytes], list[str], list[bytes]]:
    """The handshake fields of a request, the same way over HTTP/1.1 and HTTP/2: keys,
    versions, subprotocols (in order) and raw extension offers. A request body (or, without
    ``empty_body_ok``, any Content-Length) raises ``HandshakeError``: what follows the
    handshake is frames, a body would be read as one."""
    keys: list[bytes] = []
    versions: list[bytes] = []
    subprotocols: list[str] = []
    offers: list[bytes] = []
    for name, value in headers:
        if name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(t.decode("latin-1") for t in _tokens(value, lower=False))
        elif name == b"sec-websocket-extensions":
            offers.append(value)
        elif (
            name == b"content-length" and (value != b"0" or not empty_body_ok)
        ) or name == b"transfer-encoding":
            raise HandshakeError(400, "WebSocket handshake with a request body")
    return keys, versions, subprotocols, offers


# Headers of an accept that the server writes itself; an app's own copies are dropped.
_HANDSHAKE_OWN = frozenset((b"upgrade", b"connection", b"sec-websocket-accept"))


def accept_headers(subprotocol: str | None, extensions: bytes | None, extra: Headers) -> Headers:
    """The headers an accept carries over HTTP/1.1 (after Upgrade and Sec-WebSocket-Accept in
    the 101) and HTTP/2 (the 200, RFC 8441 §5): the chosen subprotocol, the negotiated
    extensions, then the app's ``extra`` headers except those the server writes itself."""
    headers: Headers = []
    if subprotocol is not None:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    if extensions is not None:
        headers.append((b"sec-websocket-extensions", extensions))
    headers += [(n, v) for n, v in extra if n.lower() not in _HANDSHAKE_OWN]
    return headers


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def truncate_reason(reason: str) -> str:
    """A close reason cut to what a close frame can carry (RFC 6455 §5.5: 125 bytes, 2 of them
    the code), between characters, not inside one."""
    data = reason.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return reason
    return data[:_MAX_REASON_BYTES].decode(errors="ignore")


def close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) close frame (RFC 6455 §5.5.1); 1005 means no code at all.

    Built here rather than by the codec so that a failing codec can hand its close frame to
    the connection without counting it as sent: the answers to messages that came before the
    error still go out first."""
    if code == CLOSE_NO_STATUS:
        return b"\x88\x00"
    payload = struct.pack("!H", code) + truncate_reason(reason).encode()
    return b"\x88" + bytes([len(payload)]) + payload


def frame_slack(max_size: int) -> int:
    """How far past ``max_size`` a frame's length may go before it is refused unread.

    A compressed frame of incompressible data is longer than the message it carries (stored
    blocks add 5 bytes per block, and blocks are as small as 2 KiB with zlib's memLevel=5:
    under 0.3 %), and a control frame (125 bytes) may come between the fragments of a message
    that is at the limit. The message itself is then checked exactly by the codec.
    """
    return max_size // 64 + 1024


def check_close_code(code: int) -> None:
    """Refuse a close code that may not be sent (RFC 6455 §7.4, the IANA registry); 1005
    means "no code": the close frame is then empty."""
    if code != CLOSE_NO_STATUS and not valid_close_code(code):
        raise ValueError(f"close code {code} cannot be sent")


def valid_close_code(code: int) -> bool:
    """A close code allowed on the wire: the registered ones, then 3000-4999 (RFC 6455 §7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _valid_key(key: bytes) -> bool:
    # §4.1: a base64-encoded 16-byte nonce, so exactly 24 characters ending in "==".
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _tokens(value: bytes, lower: bool = True) -> list[bytes]:
    items = (t.strip(b" \t") for t in value.split(b","))
    return [t.lower() if lower else t for t in items if t]


def make_codec(kind: str, handler: WSHandler, limits: WSLimits, offers: list[bytes]) -> WSCodec:
    """The codec for ``--ws`` ("websockets" or "wsproto"), negotiating ``offers`` (RFC 7692)."""
    if kind == "websockets":
        from sleipnir.wire.ws_websockets import WebsocketsCodec

        return WebsocketsCodec(handler, limits, offers)
    from sleipnir.wire.ws_wsproto import WsprotoCodec

    return WsprotoCodec(handler, limits, offers)
