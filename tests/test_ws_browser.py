"""WebSocket echo from a real browser: headless Chromium against sleipnir on 127.0.0.1.

sleipnir serves tests/apps/ws_browser.py on port 0; Chromium (Debian's ``chromium``, started
here as a subprocess and killed at the end) loads its page, whose JavaScript opens a WebSocket
to the same server, sends a text and a binary message, checks the echoes, closes, and POSTs its
verdict to ``/result``. The test waits for that verdict on a threading.Event (bounded) and
checks it together with what the app itself saw. Skipped when Chromium is not installed
(scripts/test installs it with apt when it can).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.ws_browser import BINARY, TEXT, BrowserCheck
from conftest import run_server, wait_for

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Headless, as root in a container, on a machine with no way out: no sandbox (root), no GPU,
# no QUIC, and none of the background traffic to Google that would fail here (and slow start-up).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
)
RESULT_TIMEOUT_S = 25.0  # Chromium start-up + page load + the page's own 10 s limit, with room
STOP_TIMEOUT_S = 5.0  # per signal; all of it stays under pytest-timeout (60 s)


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "chromium is not installed (Debian package 'chromium'; scripts/test installs it with "
        "apt-get when it runs as root), so the browser WebSocket test cannot run"
    )


@contextlib.contextmanager
def headless_chromium(binary: str, url: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Chromium showing ``url``, with a fresh profile under ``workdir`` and its output in
    ``workdir/chromium.log``; its whole process group is stopped on exit."""
    profile = workdir / "chromium-profile"
    profile.mkdir()
    with open(workdir / "chromium.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the renderers go with it
        )
    try:
        yield proc
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group ``proc`` leads, SIGKILL if it is still there after a while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError(f"chromium (pid {proc.pid}) did not stop")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_page_in_browser(chromium: str, base_url: str, app: BrowserCheck, workdir: Path) -> None:
    """Open ``base_url``/ in Chromium and wait for the page to POST its verdict to ``app``."""
    with headless_chromium(chromium, f"{base_url}/", workdir) as proc:
        try:
            wait_for(
                lambda: app.done.is_set() or proc.poll() is not None,
                RESULT_TIMEOUT_S,
                "the page's result",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; requests the app saw: {app.requests}; chromium log:\n"
                + log_tail(workdir / "chromium.log")
            ) from None
        if not app.done.is_set():
            raise AssertionError(
                f"chromium exited with {proc.returncode} before the page reported; "
                f"requests the app saw: {app.requests}; log:\n" + log_tail(workdir / "chromium.log")
            )


def check_verdict(app: BrowserCheck) -> None:
    result = app.result
    assert result is not None
    assert result.get("ok") is True, f"the page reported a failure: {result}"
    assert result["text_ok"] and result["binary_ok"], result
    assert result["close_code"] == 1000 and result["was_clean"] is True, result
    # Chromium offers permessage-deflate; sleipnir (like uvicorn) accepts it by default.
    assert "permessage-deflate" in result["extensions"], result
    # What the app received: the text as str, the ArrayBuffer as bytes, in order.
    assert app.ws_received == [("text", TEXT), ("bytes", BINARY)]
    # The browser's close reaches the app as websocket.disconnect (maybe just after the POST).
    wait_for(lambda: app.ws_close_code is not None, 5.0, "websocket.disconnect in the app")
    assert app.ws_close_code == 1000


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_browser_websocket_echo(ws: str, tmp_path: Path) -> None:
    chromium = find_chromium()
    app = BrowserCheck()
    with run_server(app, ws=ws) as server:
        run_page_in_browser(chromium, server.url, app, tmp_path)
        check_verdict(app)
