"""A coroutine's step, for eager requests (``transport/eager.py``); never compiled.

A coroutine that finishes raises ``StopIteration`` out of ``send``. Caught in compiled code
(docs/architecture.md, "Compiled build"), that costs a traceback entry and the exception
state's save and restore, about 3.6k instructions (callgrind); caught here, in the
interpreter, it is the cheap case. Most eager requests finish in their first step, so this
runs once for nearly every HTTP/1.1 request; the runner's later steps (``_continue``) use it
too.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

FINISHED: Any = object()  # what ``step`` returns for a coroutine that finished


def step(coro: Coroutine[Any, Any, None], thrown: BaseException | None = None) -> Any:
    """``coro.send(None)``, or ``coro.throw(thrown)``: what the coroutine yielded, or
    ``FINISHED``."""
    try:
        return coro.send(None) if thrown is None else coro.throw(thrown)
    except StopIteration:
        return FINISHED
