"""Binding the listening sockets: --host/--port (IPv4, IPv6), --uds, --fd.

The supervisor (a later issue) binds once and hands the sockets to each worker, so binding is
a plain function of the settings, separate from serving.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass

UDS_MODE = 0o666  # a unix socket anyone on the host may connect to, as uvicorn does


class BindError(Exception):
    """A listening socket could not be created; the message is one line."""


@dataclass(frozen=True)
class BindSpec:
    host: str
    port: int
    uds: str | None
    fd: int | None
    backlog: int


def bind_socket(spec: BindSpec) -> socket.socket:
    try:
        if spec.fd is not None:
            sock = socket.socket(fileno=spec.fd)
        elif spec.uds is not None:
            sock = _bind_uds(spec.uds)
        else:
            sock = _bind_tcp(spec.host, spec.port)
        sock.listen(spec.backlog)
    except OSError as exc:
        where = spec.uds or (f"fd {spec.fd}" if spec.fd is not None else f"{spec.host}:{spec.port}")
        raise BindError(f"could not listen on {where}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio and uvicorn
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind_uds(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UDS_MODE)
    except OSError:
        sock.close()
        raise
    return sock


def describe(sock: socket.socket, scheme: str) -> str:
    """Where a socket listens, for the startup log line."""
    if sock.family == socket.AF_UNIX:
        return f"{scheme}://unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
