"""Raw-socket HTTP/1.1 client helpers: send exact bytes, read strictly framed responses.

The reader is strict on purpose, so that tests notice framing mistakes: a status line must be
``HTTP/1.1 NNN reason``, field lines ``name: value`` with CRLF, and a body is framed as
RFC 9112 §6.3 says (no body for HEAD, 1xx, 204, 304; else chunked, else Content-Length, else
until the server closes). Every read is bounded by the socket timeout, so a missing byte
fails the test instead of hanging it.

    with srv.connect() as sock:
        [first, second] = send_and_read(sock, GET + GET, count=2)

    conn = RawConnection(sock)            # keeps unread bytes between calls
    conn.send(request)
    response = conn.read_response(method="HEAD")
    assert conn.closed_by_server()
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9]) ([\t !-~\x80-\xff]*)")
_FIELD_RE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t !-~\x80-\xff]*?)[ \t]*")


if TYPE_CHECKING:
    from conftest import RunningServer


def request(
    method: str = "GET",
    target: str = "/",
    *fields: str,
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "example.com",
) -> bytes:
    """Serialize a request; ``fields`` are "Name: value" strings, Host is added unless None."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += fields
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_body(*chunks: bytes, trailers: Sequence[str] = ()) -> bytes:
    """A chunked body: each non-empty chunk, the last chunk, optional trailer fields."""
    data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return data + b"0\r\n" + b"".join(t.encode() + b"\r\n" for t in trailers) + b"\r\n"


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased, order and duplicates kept
    body: bytes = b""
    framing: str = "none"  # "none", "length", "chunked" or "close"
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        """The only value of a field (asserts there is at most one), or None."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} repeated: {found}"
        return found[0] if found else None

    def values(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n == key]

    @property
    def informational(self) -> bool:
        return self.status < 200


class RawConnection:
    """A client socket with a read buffer, reading responses one at a time."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.buffer = bytearray()
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at EOF (a reset counts as EOF)."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                assert b"\n" not in line and b"\r" not in line, f"bare CR/LF in {line!r}"
                return line
            if not self._fill():
                raise AssertionError(f"connection closed mid-line: {bytes(self.buffer)!r}")

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise AssertionError(f"connection closed with {size - len(self.buffer)} missing")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _fields(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        fields: list[tuple[bytes, bytes]] = []
        raw = b""
        while True:
            line = self._line()
            raw += line + b"\r\n"
            if not line:
                return fields, raw
            match = _FIELD_RE.fullmatch(line)
            assert match, f"malformed field line {line!r}"
            fields.append((match.group(1).lower(), match.group(2)))

    def read_response(self, method: str = "GET") -> Response:
        """Read one response (a 1xx counts as one) to a request made with ``method``."""
        status_line = self._line()
        match = _STATUS_RE.fullmatch(status_line)
        assert match, f"malformed status line {status_line!r}"
        headers, raw = self._fields()
        resp = Response(int(match.group(1)), match.group(2), headers)
        resp.raw_head = status_line + b"\r\n" + raw
        lengths = resp.values("content-length")
        codings = resp.values("transfer-encoding")
        assert not (lengths and codings), "both Content-Length and Transfer-Encoding"
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return resp
        if codings:
            assert codings == ["chunked"], f"unexpected transfer-coding {codings}"
            resp.framing = "chunked"
            resp.body, resp.trailers = self._chunked()
        elif lengths:
            assert len(lengths) == 1 and lengths[0].isdigit(), f"bad Content-Length {lengths}"
            resp.framing = "length"
            resp.body = self._exactly(int(lengths[0]))
        else:
            resp.framing = "close"
            while self._fill():
                pass
            resp.body = bytes(self.buffer)
            self.buffer.clear()
        return resp

    def _chunked(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        body = bytearray()
        while True:
            line = self._line()
            assert re.fullmatch(rb"[0-9a-fA-F]+", line), f"bad chunk-size line {line!r}"
            size = int(line, 16)
            if size == 0:
                trailers, _ = self._fields()
                return bytes(body), trailers
            body += self._exactly(size)
            assert self._exactly(2) == b"\r\n", "chunk data not followed by CRLF"

    def read_responses(self, count: int, methods: Sequence[str] = ()) -> list[Response]:
        """Read responses until ``count`` final ones (1xx are returned too, not counted).
        ``methods[i]`` is the method of the i-th request (default GET)."""
        out: list[Response] = []
        finals = 0
        while finals < count:
            method = methods[finals] if finals < len(methods) else "GET"
            resp = self.read_response(method)
            out.append(resp)
            finals += not resp.informational
        return out

    def closed_by_server(self) -> bool:
        """Read to EOF: True when the server closed without sending anything more."""
        while self._fill():
            pass
        return not self.buffer

    def pending(self) -> bytes:
        """Whatever the server has sent and is not read yet, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                    break
                self.buffer += data
        except (BlockingIOError, ConnectionResetError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        return bytes(self.buffer)


def send_and_read(
    sock: socket.socket,
    data: bytes,
    count: int = 1,
    methods: Sequence[str] = (),
    timeout: float = 5.0,
) -> list[Response]:
    """Send ``data`` and read ``count`` final responses (plus any 1xx before them)."""
    conn = RawConnection(sock, timeout)
    conn.send(data)
    return conn.read_responses(count, methods)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; a socket timeout fails the test."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until what arrived ends with ``marker`` (a response may come in pieces)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(marker):
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def exchange(srv: RunningServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with srv.connect(timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)
