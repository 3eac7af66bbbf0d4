"""Flow control both ways: a slow app pauses reading, a slow client pauses the app's send.

What the server holds is read through app-side hooks: ``receive`` is the cycle's bound method,
so ``receive.__self__`` is the ``HTTPCycle`` (``buffered``: unread body bytes; ``stream``: the
connection, whose transport tells whether it reads and how much it has buffered to write).
Kernel socket buffers on loopback can hold megabytes (tcp_rmem autotunes up to 32 MiB here),
so the proofs look at the server, not at whether the client's sendall blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from typing import Any

import pytest

from conftest import run_server, wait_for
from rawhttp import RawConnection, request
from sleipnir.asgi.http_cycle import BODY_HIGH_WATER_BYTES, HTTPCycle
from sleipnir.types import Receive, Scope, Send

UPLOAD = 8 * 1024 * 1024
DOWNLOAD = 32 * 1024 * 1024
PIECE = 64 * 1024
# Unread bytes the server may hold: the high-water mark plus what one read can bring in.
READ_BOUND = BODY_HIGH_WATER_BYTES + 512 * 1024
WRITE_BOUND = 1024 * 1024


def cycle_of(receive: Any) -> HTTPCycle:
    cycle = receive.__self__
    assert isinstance(cycle, HTTPCycle)
    return cycle


async def wait_gate(gate: threading.Event, timeout: float = 10.0) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, gate.wait, timeout)


def upload_body(framing: str) -> tuple[bytes, bytes]:
    """(head + body bytes to send, the body's payload)."""
    payload = b"".join(i.to_bytes(4, "big") * (PIECE // 4) for i in range(UPLOAD // PIECE))
    if framing == "content-length":
        return request("POST", "/", f"Content-Length: {UPLOAD}", body=payload), payload
    pieces = (b"%x\r\n%s\r\n" % (PIECE, payload[i : i + PIECE]) for i in range(0, UPLOAD, PIECE))
    body = b"".join(pieces) + b"0\r\n\r\n"
    return request("POST", "/", "Transfer-Encoding: chunked", body=body), payload


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_app_pauses_reading_of_a_big_upload(parser: str, framing: str) -> None:
    cycles: list[HTTPCycle] = []
    started, release = threading.Event(), threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        cycles.append(cycle_of(receive))
        started.set()
        await wait_gate(release)  # the app is busy: it does not read yet
        digest, total, largest, more = hashlib.sha256(), 0, 0, True
        while more:
            message = await receive()
            body = message["body"]
            digest.update(body)
            total += len(body)
            largest = max(largest, len(body))  # all that was buffered comes in one message
            more = message["more_body"]
        result = {"total": total, "sha256": digest.hexdigest(), "largest": largest}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(result).encode()})

    data, payload = upload_body(framing)
    errors: list[BaseException] = []
    with run_server(app, http=parser, lifespan="off") as srv, srv.connect() as sock:

        def sender() -> None:
            try:
                sock.sendall(data)
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        try:
            assert started.wait(5)
            [cycle] = cycles
            stream: Any = cycle.stream
            transport = stream.transport
            wait_for(lambda: not transport.is_reading(), 5, "the server to pause reading")
            held = cycle.buffered
            assert BODY_HIGH_WATER_BYTES < held <= READ_BOUND
            assert not transport.is_reading() and cycle.buffered == held  # still paused
        finally:
            release.set()
        conn = RawConnection(sock, timeout=10)
        response = conn.read_response()
        thread.join(10)
        assert not thread.is_alive() and not errors
    result = json.loads(response.body)
    assert response.status == 200
    assert result["total"] == UPLOAD
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    assert result["largest"] <= READ_BOUND


def test_slow_client_makes_the_apps_send_wait(parser: str) -> None:
    streams: list[Any] = []
    sent = [0]
    largest_buffer = [0]
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        stream: Any = cycle_of(receive).stream
        streams.append(stream)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(DOWNLOAD // PIECE):
            piece = i.to_bytes(4, "big") * (PIECE // 4)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent[0] += PIECE
            size = stream.transport.get_write_buffer_size()
            largest_buffer[0] = max(largest_buffer[0], size)
        await send({"type": "http.response.body", "body": b""})
        done.set()

    with run_server(app, http=parser, lifespan="off") as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # A small fixed receive buffer (no autotuning): the client cannot absorb much.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(10)
            sock.connect((srv.host, srv.port))
            conn = RawConnection(sock, timeout=10)
            conn.send(request("GET", "/"))
            wait_for(lambda: streams and streams[0].write_paused, 5, "write backpressure")
            # The app is stopped in send(): far from done, the rest is not buffered anywhere.
            assert not done.is_set() and sent[0] < DOWNLOAD // 2
            response = conn.read_response()
        assert done.wait(5)
    expected = b"".join(i.to_bytes(4, "big") * (PIECE // 4) for i in range(DOWNLOAD // PIECE))
    assert response.status == 200 and response.framing == "chunked"
    assert len(response.body) == DOWNLOAD and response.body == expected
    assert sent[0] == DOWNLOAD
    assert largest_buffer[0] <= WRITE_BOUND


def test_deferred_flushes_run_together_in_order_and_survive_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The connections' gathered writes are flushed by one callback (transport/flow.py): in
    # the order asked for, each once, one that raises logged without keeping the others, and
    # one asked for while they run left for the next round.
    from sleipnir.transport.flow import DeferredFlushes

    ran: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        flushes = DeferredFlushes(loop)

        def fail() -> None:
            ran.append("fail")
            raise RuntimeError("boom")

        def again() -> None:
            ran.append("a")
            flushes.defer(lambda: ran.append("later"))

        flushes.defer(again)
        flushes.defer(fail)
        flushes.defer(lambda: ran.append("b"))
        assert ran == []
        await asyncio.sleep(0)  # the loop runs the ready callbacks: the flushes' one
        assert ran == ["a", "fail", "b"]
        await asyncio.sleep(0)
        assert ran == ["a", "fail", "b", "later"]

    asyncio.run(main())
    assert "boom" in caplog.text
