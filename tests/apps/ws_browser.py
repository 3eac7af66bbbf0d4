"""A page whose JavaScript checks WebSocket echo from inside a real browser.

``GET /`` serves an HTML page; its script opens ``ws://<same host>/ws``, sends one text message
(non-ASCII, so UTF-8 matters) and one binary message (an ArrayBuffer of the bytes 0..255),
checks both echoes, closes with code 1000, and POSTs a JSON verdict to ``/result``. The app
echoes over ``/ws``, records what it received there and how the browser closed, stores the
verdict and sets ``done`` (a threading.Event, so a test in another thread can wait on it).
Everything else answers 404. Each :class:`BrowserCheck` instance is one independent app.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sleipnir.types import Receive, Scope, Send

TEXT = "héllo wörld ✓ 🐎 sleipnir"
BINARY = bytes(range(256))
PAGE_TIMEOUT_MS = 10_000  # the page gives up (and reports it) after this long

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sleipnir websocket check</title></head>
<body><pre id="log">running</pre>
<script>
"use strict";
const TEXT = __TEXT__;
const result = {stage: "start", text_ok: false, binary_ok: false, received: []};
let reported = false;
function report(stage, extra) {
  if (reported) return;
  reported = true;
  Object.assign(result, extra || {}, {stage: stage});
  result.ok = stage === "closed" && result.text_ok && result.binary_ok;
  document.getElementById("log").textContent = JSON.stringify(result);
  fetch("/result", {method: "POST", headers: {"content-type": "application/json"},
                    body: JSON.stringify(result)});
}
setTimeout(() => report("page timeout"), __TIMEOUT_MS__);
try {
  const binary = new Uint8Array(256);
  for (let i = 0; i < 256; i++) binary[i] = i;
  const ws = new WebSocket("ws://" + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    result.stage = "open";
    result.extensions = ws.extensions;
    result.protocol = ws.protocol;
    ws.send(TEXT);
    ws.send(binary.buffer);
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      result.received.push({type: "text", length: event.data.length});
      result.text_ok = event.data === TEXT;
    } else {
      const got = new Uint8Array(event.data);
      result.received.push({type: "binary", length: got.length});
      result.binary_ok = got.length === 256 && got.every((value, i) => value === i);
    }
    if (result.received.length === 2) ws.close(1000, "done");
  };
  ws.onerror = () => { result.error = "error event (stage " + result.stage + ")"; };
  ws.onclose = (event) => {
    report("closed", {close_code: event.code, close_reason: event.reason,
                      was_clean: event.wasClean});
  };
} catch (exc) {
  report("exception", {error: String(exc)});
}
</script></body></html>
"""


def render_page() -> bytes:
    page = PAGE.replace("__TEXT__", json.dumps(TEXT)).replace(
        "__TIMEOUT_MS__", str(PAGE_TIMEOUT_MS)
    )
    return page.encode()


class BrowserCheck:
    """The ASGI app (``http`` and ``websocket`` scopes; lifespan is left unsupported)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.ws_received: list[tuple[str, str | bytes]] = []  # ("text" | "bytes", payload)
        self.ws_close_code: int | None = None
        self.requests: list[str] = []  # "METHOD /path", in order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                if message.get("text") is not None:
                    self.ws_received.append(("text", message["text"]))
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    self.ws_received.append(("bytes", message["bytes"]))
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:  # websocket.disconnect
                self.ws_close_code = message.get("code")
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.requests.append(f"{method} {path}")
        if method == "GET" and path == "/":
            await _respond(send, 200, render_page(), b"text/html; charset=utf-8")
        elif method == "POST" and path == "/result":
            try:
                self.result = json.loads(b"".join(chunks))
            except ValueError as exc:
                self.result = {"ok": False, "error": f"unreadable result: {exc}"}
            self.done.set()
            await _respond(send, 200, b"stored", b"text/plain")
        else:
            await _respond(send, 404, b"not found", b"text/plain")


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
