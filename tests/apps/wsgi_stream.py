"""A WSGI app that streams both ways: each request line is answered as soon as it is read.

The response is a generator that reads ``wsgi.input`` line by line while it yields, so a
client can send a line, read its echo, and only then send the next one. It ends with the
number of body bytes read and a few environ values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    stream = environ["wsgi.input"]
    total = 0
    for line in stream:
        total += len(line)
        yield b"echo " + line
    summary = [
        str(total),
        environ["REQUEST_METHOD"],
        environ["SCRIPT_NAME"] + environ["PATH_INFO"],
        environ["SERVER_PROTOCOL"],
        environ["wsgi.url_scheme"],
        environ["REMOTE_ADDR"],
    ]
    yield ("end " + " ".join(summary) + "\n").encode()
