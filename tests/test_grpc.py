"""gRPC acceptance: the real grpcio client calls a hand-written ASGI gRPC app over cleartext
HTTP/2 (prior knowledge). gRPC needs what plain HTTP does not: trailers (``grpc-status``) on
a response whose body is a length-prefixed message, and ``te: trailers`` honoured. Payloads are
raw bytes (identity serializers), so no protobuf is involved."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import pytest

from conftest import RunningServer, run_server
from sleipnir.types import Receive, Scope, Send

CALL_TIMEOUT_S = 10.0


def frame(payload: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(payload)) + payload


def unframe(data: bytes) -> bytes:
    compressed, length = struct.unpack(">BI", data[:5])
    assert compressed == 0 and len(data) == 5 + length, data
    return data[5:]


seen: list[dict[str, object]] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    seen.append(
        {
            "path": scope["path"],
            "te": headers.get(b"te"),
            "content-type": headers.get(b"content-type"),
            "http_version": scope["http_version"],
            "trailers": "http.response.trailers" in scope["extensions"],
        }
    )
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/grpc"), (b"trailer", b"grpc-status")],
        "trailers": True,
    }
    if scope["path"] == "/echo.Echo/Say":
        request = unframe(bytes(body))
        await send(start)
        await send({"type": "http.response.body", "body": frame(b"echo: " + request)})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})
    elif scope["path"] == "/echo.Echo/Fail":
        await send(start)
        await send({"type": "http.response.body", "body": b""})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"5"), (b"grpc-message", b"no such thing")],
            }
        )
    else:  # gRPC's UNIMPLEMENTED, sent in two trailers messages
        await send(start)
        await send({"type": "http.response.body", "body": b""})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"12")],
                "more_trailers": True,
            }
        )
        await send(
            {"type": "http.response.trailers", "headers": [(b"grpc-message", b"unknown method")]}
        )


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with run_server(app) as srv:
        yield srv


def _identity(data: bytes) -> bytes:
    return data


def _call(srv: RunningServer, method: str, payload: bytes) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        result = stub(payload, timeout=CALL_TIMEOUT_S)
        assert isinstance(result, bytes)
        return result


def test_unary_call(server: RunningServer) -> None:
    seen.clear()
    assert _call(server, "/echo.Echo/Say", b"hello") == b"echo: hello"
    [request] = seen
    assert request["http_version"] == "2"
    assert request["te"] == b"trailers"
    assert request["content-type"] in (b"application/grpc", b"application/grpc+proto")
    assert request["trailers"] is True


def test_many_calls_on_one_channel(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = channel.unary_unary(
            "/echo.Echo/Say", request_serializer=_identity, response_deserializer=_identity
        )
        for i in range(20):
            payload = (b"%d" % i) * (i * 500)  # up to ~20 KB, past one DATA frame
            assert stub(payload, timeout=CALL_TIMEOUT_S) == b"echo: " + payload


def test_error_status_in_trailers(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, "/echo.Echo/Fail", b"x")
    error = info.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing"


def test_status_split_over_two_trailers_messages(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, "/echo.Echo/Nope", b"x")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == "unknown method"
