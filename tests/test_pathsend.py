"""The ASGI pathsend extension (``http.response.pathsend``), end to end over both parsers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import run_server
from sleipnir.asgi.http_cycle import PATHSEND_CHUNK_BYTES
from sleipnir.types import Receive, Scope, Send


def file_app(path: str, *, content_length: bool) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-type", b"application/octet-stream")]
        if content_length:
            headers.append((b"content-length", str(os.path.getsize(path)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": path})

    return app


@pytest.mark.parametrize("size", [0, 13, PATHSEND_CHUNK_BYTES, 3 * PATHSEND_CHUNK_BYTES + 7])
@pytest.mark.parametrize("content_length", [True, False])
def test_file_is_the_body(parser: str, tmp_path: Path, size: int, content_length: bool) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    app = file_app(str(path), content_length=content_length)
    with run_server(app, http=parser) as srv, httpx.Client() as client:
        response = client.get(srv.url)
        again = client.get(srv.url)  # the connection stays usable
    assert response.status_code == 200
    assert response.content == data
    assert again.content == data
    if size <= PATHSEND_CHUNK_BYTES:
        # One piece: sent with a Content-Length (ours or the app's), never chunked.
        assert response.headers["content-length"] == str(size)
    elif not content_length:
        assert response.headers["transfer-encoding"] == "chunked"


def test_head_sends_no_body(parser: str, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    with run_server(file_app(str(path), content_length=True), http=parser) as srv:
        response = httpx.head(srv.url)
    assert response.status_code == 200
    assert response.headers["content-length"] == "5"
    assert response.content == b""


@pytest.mark.parametrize("path", ["relative.txt", "/no/such/file"])
def test_bad_path_is_an_app_error(parser: str, path: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_server(file_app(path, content_length=False), http=parser) as srv:
        response = httpx.get(srv.url)
    assert response.status_code == 500
    assert any(r.levelname == "ERROR" for r in caplog.records)


def test_pathsend_after_a_body_message_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"x")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with run_server(app) as srv, pytest.raises(httpx.RemoteProtocolError):
        httpx.get(srv.url)  # the response was started: the connection closes mid-body
