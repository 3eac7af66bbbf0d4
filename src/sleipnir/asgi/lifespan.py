"""The ASGI lifespan protocol (asgiref specs/lifespan.rst).

Invariants:
- The app runs in one task for the life of the server; startup and shutdown each wait for the
  app's answer, its exit, or ``timeout_s``, whichever comes first.
- ``mode="auto"``: an app that raises or returns before answering startup is taken to not
  support lifespan, and serving goes on. ``mode="on"``: that is a startup failure.
- ``*.failed`` messages are failures in both modes; failures raise ``LifespanFailure``.
- Once startup is complete, an app that returns has nothing left to shut down: shutdown is
  complete (as uvicorn). An exception from it is logged with its traceback when it happens,
  and shutdown then fails.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sleipnir.types import ASGIApp, Message

logger = logging.getLogger("sleipnir.error")


class LifespanFailure(Exception):
    """Startup or shutdown failed; the message is one line for the operator."""


class Lifespan:
    """Drives one app through lifespan startup and shutdown."""

    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any], timeout_s: float) -> None:
        self._app = app
        self._mode = mode
        self._state = state
        self._timeout_s = timeout_s
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answer: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._phase = "startup"
        self.supported = mode != "off"
        self._app_error: BaseException | None = None
        self._started = False  # the app answered startup.complete: it speaks lifespan

    async def startup(self) -> None:
        if not self.supported:
            return
        logger.info("Waiting for application startup.")
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        answer = await self._exchange({"type": "lifespan.startup"})
        if answer is None:
            return
        logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None:
            return
        self._phase = "shutdown"
        logger.info("Waiting for application shutdown.")
        await self._exchange({"type": "lifespan.shutdown"})  # None: returned, nothing to do
        logger.info("Application shutdown complete.")

    async def _exchange(self, message: Message) -> Message | None:
        """Send one event and wait for its answer; None means the app returned without one
        (at startup in auto mode: lifespan unsupported; after startup: nothing to shut down)."""
        assert self._task is not None
        self._answer = asyncio.get_running_loop().create_future()
        await self._inbox.put(message)
        waiting: list[asyncio.Future[Any]] = [self._answer, self._task]
        done, _ = await asyncio.wait(
            waiting,
            timeout=self._timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._answer in done:
            answer: Message = self._answer.result()
            if answer["type"].endswith(".failed"):
                text = answer.get("message") or "no message given"
                raise LifespanFailure(f"Application {self._phase} failed: {text}")
            return answer
        if not done:
            raise LifespanFailure(f"Application {self._phase} timed out after {self._timeout_s}s")
        self._app_exited()
        return None

    def _app_exited(self) -> None:
        error = self._app_error
        if self._phase == "startup" and self._mode == "auto":
            self.supported = False
            if error is not None:
                logger.info("ASGI 'lifespan' protocol appears unsupported.")
            return
        if error is not None:
            raise LifespanFailure(f"Application {self._phase} failed: {error!r}") from error
        if self._started:
            return
        raise LifespanFailure(f"Application returned during lifespan {self._phase}")

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            self._app_error = exc
            if self._mode == "on" or self._started:
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        expected = f"lifespan.{self._phase}."
        mtype = message.get("type", "")
        if not mtype.startswith(expected) or mtype[len(expected) :] not in ("complete", "failed"):
            raise RuntimeError(f"unexpected ASGI lifespan message {mtype!r}")
        if mtype == "lifespan.startup.complete":
            self._started = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(message)

    async def close(self) -> None:
        """Cancel the lifespan task if it is still running (after shutdown)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
