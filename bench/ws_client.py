#!/usr/bin/env python3
"""WebSocket echo load client for the ws-echo workload of bench/run.py.

Opens --conns connections to ws://HOST:PORT/PATH, checks each opening handshake (101 and the
right Sec-WebSocket-Accept), then every connection does round trips back to back, one message
in flight: send a masked text (or --binary) frame of --size bytes, wait for its echo, repeat.
The first echo on each connection is compared with what was sent; after that, frames are only
parsed and counted, so the client stays cheap. After --warmup seconds it counts the round trips
completed in the next --duration seconds and prints one JSON line:

    {"msgs": ..., "wall_s": ..., "msgs_per_s": ..., "p50_ms": ..., "p99_ms": ...,
     "client_cpu_s": ..., "server_cpu_s": ..., "connected": ..., "errors": ..., "error": "..."}

server_cpu_s is the utime + stime of --server-pids over the same window (from /proc), so
messages per server-CPU-second need no other clock. Frames are built by hand (one pre-masked
frame per connection, reused) instead of with the websockets library, which costs two to three
times more CPU per message: with it the client, not the server, becomes the limit. Standard
library only; uses uvloop when it is installed (--loop asyncio to opt out). Every wait is
bounded.

    python ws_client.py --port 8000 --conns 32 --size 64 --duration 5 --server-pids 1234
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (masked, as RFC 6455 requires of clients)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class Stats:
    def __init__(self, conns: int) -> None:
        self.conns = conns
        self.echoes = 0
        self.connected = 0
        self.measuring = False
        self.stopping = False
        self.latencies: list[float] = []  # seconds, only while measuring
        self.errors: list[str] = []
        self.all_ready = asyncio.Event()  # every connection upgraded, or one failed

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.all_ready.set()


class EchoConnection(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str, payload: bytes, binary: bool, st: Stats):
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.payload = payload
        self.frame = masked_frame(OP_BINARY if binary else OP_TEXT, payload)
        self.st = st
        self.buf = b""
        self.upgraded = False
        self.verified = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def _fail(self, message: str) -> None:
        self.st.fail(message)
        if self.transport is not None:
            self.transport.close()

    def _send(self) -> None:
        assert self.transport is not None
        if self.st.stopping:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def _handshake(self, buf: bytes) -> bytes | None:
        """The bytes after the response head, or None until the head is complete."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self._fail("response head too large")
            return None
        head = buf[:end].split(b"\r\n")
        if not head[0].startswith(b"HTTP/1.1 101"):
            self._fail(f"no upgrade: {head[0].decode('latin-1')[:80]!r}")
            return None
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"sec-websocket-accept") != self.accept:
            self._fail("wrong or missing Sec-WebSocket-Accept")
            return None
        self.upgraded = True
        self.st.connected += 1
        if self.st.connected == self.st.conns:
            self.st.all_ready.set()
        self._send()
        return buf[end + 4 :]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            rest = self._handshake(buf)
            if rest is None:  # head incomplete (or refused: then the transport is closing)
                self.buf = buf
                return
            buf = rest
        pos, n, echoes = 0, len(buf), 0
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, at = b1 & 0x7F, pos + 2
            if length == 126:
                if n - at < 2:
                    break
                (length,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif length == 127:
                if n - at < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, at)
                at += 8
            if b1 & 0x80:  # a masked server frame breaks RFC 6455; skip the key anyway
                at += 4
            if n - at < length:
                break
            opcode, final = b0 & 0x0F, b0 & 0x80
            if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                if final:
                    echoes += 1
                if not self.verified:
                    self.verified = True
                    if not final or bytes(buf[at : at + length]) != self.payload:
                        self._fail("the first echo differs from the message sent")
                        return
            elif opcode == OP_PING:
                assert self.transport is not None
                self.transport.write(masked_frame(0xA, bytes(buf[at : at + length])))
            elif opcode == OP_CLOSE:
                if not self.st.stopping:
                    self._fail(f"server closed: {bytes(buf[at : at + length])[:60]!r}")
                return
            pos = at + length
        self.buf = buf[pos:]
        if echoes:
            st = self.st
            st.echoes += echoes
            if st.measuring:
                st.latencies.append(time.perf_counter() - self.sent_at)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.st.stopping and not self.st.errors:
            self.st.fail(f"connection lost: {exc!r}")
        if not self.closed.done():
            self.closed.set_result(None)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = round(q / 100 * (len(sorted_values) - 1))
    return sorted_values[min(len(sorted_values) - 1, max(0, k))]


def proc_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), clock ticks; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def proc_cpu_s(pids: Sequence[int]) -> float:
    return sum(proc_ticks(pid) for pid in pids) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    st = Stats(args.conns)
    payload = b"x" * args.size
    protocols: list[EchoConnection] = []
    try:
        for _ in range(args.conns):
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: EchoConnection(
                        args.host, args.port, args.path, payload, args.binary, st
                    ),
                    args.host,
                    args.port,
                ),
                CONNECT_TIMEOUT_S,
            )
            protocols.append(proto)
        await asyncio.wait_for(st.all_ready.wait(), CONNECT_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as exc:
        st.fail(f"connect: {exc!r}")
    out: dict[str, Any] = {"conns": args.conns, "size": args.size}
    if not st.errors:
        await asyncio.sleep(args.warmup)
        n0, cpu0, srv0 = st.echoes, self_cpu_s(), proc_cpu_s(args.server_pids)
        t0 = time.perf_counter()
        st.measuring = True
        await asyncio.sleep(args.duration)
        st.measuring = False
        wall = time.perf_counter() - t0
        n1, cpu1, srv1 = st.echoes, self_cpu_s(), proc_cpu_s(args.server_pids)
        lat = sorted(st.latencies)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        out.update(
            msgs=n1 - n0,
            wall_s=round(wall, 3),
            msgs_per_s=round((n1 - n0) / wall, 1),
            p50_ms=None if p50 is None else round(p50 * 1000, 3),
            p99_ms=None if p99 is None else round(p99 * 1000, 3),
            client_cpu_s=round(cpu1 - cpu0, 3),
            server_cpu_s=round(srv1 - srv0, 3) if args.server_pids else None,
        )
    st.stopping = True
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()
    if protocols:
        await asyncio.wait([p.closed for p in protocols], timeout=STOP_TIMEOUT_S)
    out.update(connected=st.connected, errors=len(st.errors))
    if st.errors:
        out["error"] = st.errors[0][:300]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--size", type=int, default=64, help="message size in bytes")
    ap.add_argument("--binary", action="store_true", help="binary frames (default: text)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before the measurement")
    ap.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    ap.add_argument("--server-pids", default="", help="comma-separated PIDs to charge CPU to")
    args = ap.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 600 or args.conns < 1:
        ap.error("need 0 < --duration <= 600, 0 <= --warmup <= 600 and --conns >= 1")
    args.server_pids = [int(p) for p in args.server_pids.split(",") if p.strip()]
    return args


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loop = new_loop(args.loop)
    try:
        limit = CONNECT_TIMEOUT_S * 2 + args.warmup + args.duration + STOP_TIMEOUT_S + 10
        out = loop.run_until_complete(asyncio.wait_for(run(args), limit))
    finally:
        loop.close()
    print(json.dumps(out), flush=True)
    return 1 if out.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
