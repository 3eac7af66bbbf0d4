"""Answers every request with a JSON description of what the app saw (scope and process).

Used by the end-to-end tests to check what the server put in the scope (client, scheme,
root_path, ...) and how it runs the app (event loop, environment variables).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from sleipnir.types import Receive, Scope, Send

ENV_VAR = "SLEIPNIR_TEST_GREETING"


def describe(scope: Scope) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    return {
        "type": scope["type"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "root_path": scope["root_path"],
        "query_string": scope["query_string"].decode("latin-1"),
        "client": scope["client"],
        "server": scope["server"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "asgi": scope["asgi"],
        "extensions": sorted(scope.get("extensions") or {}),
        "loop": type(loop).__module__,
        "greeting": os.environ.get(ENV_VAR),
    }


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan: "unsupported" in auto mode, quietly
    while (await receive()).get("more_body"):
        pass
    body = json.dumps(describe(scope)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
