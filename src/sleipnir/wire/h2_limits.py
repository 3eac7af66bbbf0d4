"""The HTTP/2 settings and abuse bounds (``H2Limits``), apart from the codec: the server builds
them at start-up without importing h2, which is loaded with the first HTTP/2 connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class H2Limits:
    """The slice of the settings an HTTP/2 codec needs; the abuse bounds count per window."""

    max_concurrent_streams: int = (
        100  # SETTINGS_MAX_CONCURRENT_STREAMS; RFC 9113 §6.5.2 asks >= 100
    )
    # Per stream: 64 KiB, like the HTTP/1.1 read buffer (BODY_HIGH_WATER_BYTES), so a request
    # whose app does not read holds the same memory over both protocols.
    initial_window_size: int = 65535
    # Per connection (a WINDOW_UPDATE in the preface): 16 streams' worth, so parallel uploads
    # are not serialized by the 64 KiB RFC default; also the bound on unread body per connection.
    connection_window_size: int = 1 << 20
    max_frame_size: int = 16384  # the RFC minimum: the most a partial frame makes us buffer
    # SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2 counting), like H1Limits'
    # header_block_bytes; more is answered 431 (the block was decoded, HPACK state is sound).
    max_header_list_size: int = 65536
    max_header_count: int = 100  # H1Limits.header_count; more is answered 431
    # HPACK bomb: decoding stops (GOAWAY ENHANCE_YOUR_CALM) past 2x the advertised list size.
    decode_bound_factor: int = 2
    # CONTINUATION flood (CVE-2024-27316): a block is at most this many frames (a real client
    # needs max_header_list_size / max_frame_size + 1 = 5; h2's own cap is 64) and its encoded
    # bytes at most max_header_list_size (HPACK never needs more bytes than the list it
    # encodes); more is GOAWAY ENHANCE_YOUR_CALM before anything is decoded.
    max_continuation_frames: int = 32
    abuse_window_s: float = 10.0  # the counters below reset every window
    # Rapid Reset (CVE-2023-44487): RST_STREAMs received plus streams we had to refuse or
    # reset for the client's fault. A browser cancels a page's worth (tens) on navigation.
    max_resets: int = 200
    max_settings: int = 50  # SETTINGS flood (CVE-2019-9515): clients send 1 or 2
    # PING flood (CVE-2019-9512): gRPC's BDP probes are 1 per round trip while data flows;
    # its keepalive is 1 per 10 s at most. 100/s on average is generous for both.
    max_pings: int = 1000
    max_empty_data: int = 100  # empty DATA without END_STREAM (CVE-2019-9518): never needed
    enable_connect_protocol: bool = True  # RFC 8441: WebSocket over HTTP/2
