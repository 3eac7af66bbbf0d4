"""systemd integration, standard library only: socket activation (sd_listen_fds(3)) and
readiness, status and watchdog notifications (sd_notify(3)).

Invariants:
- Nothing here raises because of the environment: a wrong LISTEN_PID or garbage values give no
  sockets, an unusable NOTIFY_SOCKET gives no Notifier, a failed send is logged at debug level.
- The variables are removed from the environment when asked (the default), so processes we
  start neither take the sockets over nor notify in our name (systemd's NotifyAccess=main).
- Inherited sockets are non-blocking and close-on-exec, like every socket Python creates.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["LISTEN_FDS_START", "Notifier", "listen_fds"]

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first inherited descriptor
SEND_TIMEOUT_S = 1.0  # a notification never stalls the event loop longer than this

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _debug(message: str, *args: Any) -> None:
    import logging  # only on this rare path: importing this module stays cheap

    logging.getLogger("sleipnir.error").debug(message, *args)


def _positive_int(text: str | None) -> int | None:
    """``text`` as a positive decimal integer, else None."""
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value > 0 else None


def listen_fds(
    environ: MutableMapping[str, str] = os.environ, unset: bool = True
) -> list[socket.socket]:
    """The sockets systemd passed to this process (LISTEN_FDS), in order; [] when none.

    Like sd_listen_fds(3): only when LISTEN_PID is our pid, and the variables are unset (when
    ``unset``) whether or not they were usable. A descriptor that is not a socket is skipped;
    one that is not open means the variables lie, and nothing is taken.
    """
    pid, count = _positive_int(environ.get("LISTEN_PID")), _positive_int(environ.get("LISTEN_FDS"))
    if unset:
        for name in _LISTEN_VARIABLES:
            environ.pop(name, None)
    if pid != os.getpid() or count is None:
        return []
    sockets: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            _debug("LISTEN_FDS=%d, but fd %d: %s", count, fd, exc)
            for sock in sockets:
                sock.detach()  # leave the descriptors as they were
            return []
        try:
            sock = socket.socket(fileno=fd)  # family, type and protocol asked from the kernel
        except OSError as exc:
            _debug("LISTEN_FDS: fd %d is not a socket: %s", fd, exc)
            continue
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


class Notifier:
    """Sends sd_notify(3) messages to systemd's NOTIFY_SOCKET (an AF_UNIX datagram socket)."""

    def __init__(self, address: str | bytes, watchdog_usec: int | None = None) -> None:
        self.address = address  # a path, or bytes starting with NUL: the abstract namespace
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(
        cls, environ: MutableMapping[str, str] = os.environ, unset: bool = True
    ) -> Notifier | None:
        """The Notifier that NOTIFY_SOCKET asks for, or None; removes the variables (and
        WATCHDOG_USEC, WATCHDOG_PID) from ``environ`` when ``unset``."""
        text = environ.get("NOTIFY_SOCKET", "")
        usec = _positive_int(environ.get("WATCHDOG_USEC"))
        watchdog_pid = environ.get("WATCHDOG_PID")
        if unset:
            for name in _NOTIFY_VARIABLES:
                environ.pop(name, None)
        address: str | bytes
        if text.startswith("@") and len(text) > 1:
            address = b"\0" + os.fsencode(text[1:])
        elif text.startswith("/"):
            address = text
        else:
            if text:  # vsock:... (systemd 253) and relative paths are not supported
                _debug("NOTIFY_SOCKET=%r is not supported; not notifying systemd", text)
            return None
        if watchdog_pid is not None and _positive_int(watchdog_pid) != os.getpid():
            usec = None  # the watchdog is meant for another process
        return cls(address, usec)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two watchdog() calls (half of WATCHDOG_USEC), or None: no watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def ready(self) -> bool:
        return self.send("READY=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload requires; send ready()
        when the reload is done."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def status(self, text: str) -> bool:
        """STATUS=text, shown by systemctl status (newlines would start new assignments)."""
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def send(self, message: str) -> bool:
        """Send newline-separated assignments; False (logged at debug level) when it failed.

        A socket per message, as sd_notify(3) does: nothing to close, nothing shared with a
        forked child, and messages are rare (the watchdog's every few seconds at most).
        """
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            _debug("could not notify systemd (%r): %s", message, exc)
            return False
        return True

    def __repr__(self) -> str:
        return f"Notifier({self.address!r}, watchdog_usec={self.watchdog_usec!r})"
