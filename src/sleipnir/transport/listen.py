"""Binding the listening sockets: --host/--port (IPv4, IPv6), --uds, --fd, --bind, --reuse-port
and sockets inherited from systemd socket activation.

The supervisor binds once and hands the sockets to each worker, so binding is a plain function
of the settings, separate from serving.

Invariants:
- ``bind_all`` returns every socket or raises ``BindError`` (one line naming the address) with
  nothing left open: the sockets it had bound are closed and their unix socket files removed.
- Sockets inherited from systemd replace the configured addresses entirely; ``from_systemd``
  tells them apart so the caller can say so. Their files belong to systemd: never unlinked.
- A unix socket file is removed (``close_sockets``) only by the process that created it, and
  only while it still is a socket: a regular file at that path is never touched.
- ``parse_bind`` accepts gunicorn's spellings (HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N, an
  optional tcp:// prefix) and rejects anything else with a one-line ValueError.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sleipnir import systemd

if TYPE_CHECKING:
    from sleipnir.config import Config

UDS_MODE = 0o666  # a unix socket anyone on the host may connect to, as uvicorn does
DEFAULT_PORT = 8000  # of a bare IP address in --bind, as gunicorn
UDS_PATH_MAX = 107  # bytes in sun_path on Linux, less the terminating NUL

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")

# Which process owns what, keyed by the socket objects themselves (gone with them).
_SOCKET_FILES: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()
_FROM_SYSTEMD: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class BindError(Exception):
    """A listening socket could not be created; the message is one line."""


@dataclass(frozen=True)
class BindSpec:
    host: str
    port: int
    uds: str | None
    fd: int | None
    backlog: int
    reuse_port: bool = False  # SO_REUSEPORT, TCP only


def bind_socket(spec: BindSpec) -> socket.socket:
    try:
        if spec.fd is not None:
            sock = socket.socket(fileno=spec.fd)
        elif spec.uds is not None:
            sock = _bind_uds(spec.uds)
        else:
            sock = _bind_tcp(spec.host, spec.port, spec.reuse_port)
        sock.listen(spec.backlog)
    except OSError as exc:
        raise BindError(f"could not listen on {_where(spec)}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _where(spec: BindSpec) -> str:
    if spec.uds is not None:
        return spec.uds
    if spec.fd is not None:
        return f"fd {spec.fd}"
    host = spec.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{spec.port}"


def _bind_tcp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            option = getattr(socket, "SO_REUSEPORT", None)
            if option is None:
                raise OSError("SO_REUSEPORT is not supported on this platform")
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
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
        _SOCKET_FILES[sock] = path
        os.chmod(path, UDS_MODE)
    except OSError:
        close_sockets([sock])
        raise
    return sock


# --------------------------------------------------------------------------- --bind


def parse_bind(text: str, backlog: int, reuse_port: bool = False) -> BindSpec:
    """One --bind address as a BindSpec; ValueError (one line) when it is not one."""
    address = text.strip()

    def invalid(reason: str) -> ValueError:
        return ValueError(f"bind address {text!r}: {reason}")

    if address.startswith("unix:"):
        path = address[7:] if address.startswith("unix://") else address[5:]
        if not path:
            raise invalid("the unix socket path is empty")
        if "\0" in path:
            raise invalid("the unix socket path contains a NUL byte")
        if len(os.fsencode(path)) > UDS_PATH_MAX:
            raise invalid(f"the unix socket path is longer than {UDS_PATH_MAX} bytes")
        return BindSpec("", 0, path, None, backlog, reuse_port)
    if address.startswith("fd://"):
        number = address[5:]
        if not (number.isascii() and number.isdigit()):
            raise invalid("fd:// takes a file descriptor number, as in fd://3")
        return BindSpec("", 0, None, int(number), backlog, reuse_port)
    address = address.removeprefix("tcp://")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep:
            raise invalid("missing ']' after the IPv6 address")
        if not _is_ipv6(host):
            raise invalid(f"{host!r} is not an IPv6 address")
        if rest and not rest.startswith(":"):
            raise invalid("expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif address.count(":") > 1:
        raise invalid("put an IPv6 address in brackets, as in [::1]:8000")
    else:
        host, sep, rest = address.partition(":")
        port_text = rest if sep else None
        if not host:
            raise invalid("the host is empty (0.0.0.0 listens on every IPv4 address)")
        if "/" in host:
            raise invalid("not a HOST:PORT; a unix socket is spelled unix:PATH")
        if not _HOSTNAME_RE.fullmatch(host):
            raise invalid(f"{host!r} is not a host name or IP address")
        if port_text is None and not (_is_ipv4(host) or host == "localhost"):
            raise invalid(f"missing the port, as in {host}:{DEFAULT_PORT}")
    return BindSpec(host, _parse_port(port_text, invalid), None, None, backlog, reuse_port)


def _parse_port(text: str | None, invalid: Callable[[str], ValueError]) -> int:
    if text is None:
        return DEFAULT_PORT
    if not (text.isascii() and text.isdigit()):
        raise invalid(f"the port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise invalid(f"the port {port} is not in 0..65535")
    return port


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, host.partition("%")[0])  # fe80::1%eth0: a scope
    except OSError:
        return False
    return True


def bind_specs(config: Config) -> list[BindSpec]:
    """Where ``config`` asks to listen: each --bind address, else host/port, --uds or --fd.

    With --bind, the host/port, --uds or --fd spec is added too (first) only when it was
    changed from its default, as the --bind help says.
    """
    from sleipnir.config import SETTINGS  # here: config.py imports this module

    classic = BindSpec(
        config.host, config.port, config.uds, config.fd, config.backlog, config.reuse_port
    )
    if not config.bind:
        return [classic]
    default = {s.name: s.default for s in SETTINGS if s.name in ("host", "port", "uds", "fd")}
    explicit = any(getattr(config, name) != value for name, value in default.items())
    specs = [classic] if explicit else []
    specs += [parse_bind(text, config.backlog, config.reuse_port) for text in config.bind]
    return specs


def bind_all(config: Config) -> list[socket.socket]:
    """The sockets to serve on: inherited from systemd when it passed any, else bound here."""
    inherited = systemd.listen_fds()
    if inherited:
        for sock in inherited:
            _FROM_SYSTEMD.add(sock)
        problem = next(filter(None, map(_not_listening, inherited)), None)
        if problem is not None:
            close_sockets(inherited)
            raise BindError(problem)
        return inherited
    try:
        specs = bind_specs(config)
    except ValueError as exc:
        raise BindError(str(exc)) from None
    bound: list[socket.socket] = []
    try:
        for spec in specs:
            bound.append(bind_socket(spec))  # noqa: PERF401 (kept: the except needs `bound`)
    except BindError:
        close_sockets(bound)
        raise
    return bound


def _not_listening(sock: socket.socket) -> str | None:
    """Why an inherited socket cannot be served on, or None."""
    fd = sock.fileno()
    if sock.type != socket.SOCK_STREAM:
        return f"systemd passed fd {fd}, which is not a stream socket"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return f"systemd passed fd {fd}, which is not listening (use Accept=no)"
    return None


def from_systemd(sock: socket.socket) -> bool:
    """True for a socket that ``bind_all`` took over from systemd socket activation."""
    return sock in _FROM_SYSTEMD


def close_sockets(sockets: Iterable[socket.socket]) -> None:
    """Close ``sockets`` and remove the unix socket files that this process created."""
    for sock in sockets:
        sock.close()
        path = _SOCKET_FILES.pop(sock, None)
        if path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)


def describe(sock: socket.socket, scheme: str) -> str:
    """Where a socket listens, for the startup log line."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # the abstract namespace: a leading NUL, shown as @
            name = "@" + name[1:].decode(errors="backslashreplace")
        return f"{scheme}://unix:{name}"
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return f"{scheme}://{sock.family.name}:{name}"
    host, port = name[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
