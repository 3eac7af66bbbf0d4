"""Eager requests: a connection runs its requests' apps without a task each.

``H1Protocol`` and ``H2Protocol`` (its streams are the requests) inherit ``EagerRequests``;
docs/architecture.md ("Eager requests") says why and what an app can tell. In short:

- A request started while a read is parsed (``_add_ready``: HTTP/1.1 has one at a time, an
  HTTP/2 read may start many) takes the first step of its coroutine once the read is parsed
  (``_drive``), in its own context, with the connection's runner task as the current task.
  Most finish there.
- One that suspends is handed to the runner (``_run``), which goes on with it through a
  trampoline (``_continue``), then with the requests its response let start.
- A request that must start while the runner is busy gets a task of its own
  (``_spawn_ready``), as every request does with a custom task factory or on Python 3.10.
- A runner an app cancelled serves no further request (``_retire_runner``); one cancelled
  before its first step hands its request on from its done callback (``_runner_ended``).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import trait

from sleipnir.asgi.http_cycle import HTTPCycle
from sleipnir.transport.stepping import FINISHED, step

if TYPE_CHECKING:
    from sleipnir.transport.state import ServerState

# A fixed task name: left unnamed, every task formats "Task-<n>" when it is created.
TASK_NAME: Final = "sleipnir.request"

# Eager requests run without a task each (EagerRequests._drive). A read carrying a long pipeline
# runs this many of them, then lets the loop serve other connections before the rest.
EAGER_BATCH: Final = 64


def create_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, None],
    context: contextvars.Context,
    plain: bool,
) -> asyncio.Task[None]:
    """A request's task in ``context``: a plain task, or the loop's (honouring the app's task
    factory)."""
    if sys.version_info >= (3, 11):
        if plain:
            return asyncio.Task(coro, loop=loop, name=TASK_NAME, context=context)
        return loop.create_task(coro, context=context)
    if plain:  # pragma: no cover - Python 3.10
        return context.run(asyncio.Task, coro, loop=loop, name=TASK_NAME)
    return context.run(loop.create_task, coro)  # pragma: no cover - Python 3.10


def request_context(state: ServerState, base: contextvars.Context) -> contextvars.Context:
    """A request's (or an HTTP/2 stream's) context: a copy of its connection's starting
    context ``base`` (never of the context of the request before it, whose variables must not
    leak into it), or an empty one with --reset-contextvars."""
    return contextvars.Context() if state.reset_contextvars else base.copy()


def _raise(exc: BaseException) -> None:
    raise exc


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


@trait  # a mixin of H1Protocol and H2Protocol: a compiled build allows one base class and traits
class EagerRequests:
    """The runner of one connection; the connection sets the attributes below."""

    _loop: asyncio.AbstractEventLoop
    _state: ServerState
    _context: contextvars.Context  # the connection's starting context
    _closing: bool
    _eager: bool
    _parsing: bool  # in data_received
    _stepping: bool  # a request coroutine is taking a step this connection drives
    # Started, to run once the current parse or step is over: the first, and any after it (an
    # HTTP/2 read may start many streams). Not one list: HTTP/1.1 has one at a time, and a list
    # emptied and filled again for every request reallocates twice (about 400 instructions).
    _ready: HTTPCycle | None
    _more_ready: list[HTTPCycle] | None
    _runner: asyncio.Task[None] | None  # current task of the eager requests
    _runner_busy: bool  # it goes on with a request that suspended
    _runner_waiter: asyncio.Future[None] | None  # set while it waits for one
    # (the runner it is for, the cycle, its coroutine, its context, what the coroutine yielded)
    _handoff: (
        tuple[asyncio.Task[None], HTTPCycle, Coroutine[Any, Any, None], contextvars.Context, Any]
        | None
    )

    def _init_eager(self, plain_tasks: bool) -> None:
        """From ``connection_made``: run eagerly unless the loop has a task factory (or on
        3.10: the runner relies on ``Task.cancelling()``). The runner is made by the first
        request (a connection that turns out to be HTTP/2 never needs one)."""
        self._parsing = False
        self._stepping = False
        self._ready = None
        self._more_ready = None
        self._runner = None
        self._runner_busy = False
        self._runner_waiter = None
        self._handoff = None
        self._eager = plain_tasks and sys.version_info >= (3, 11)

    def _add_ready(self, cycle: HTTPCycle) -> None:
        """``cycle`` started: it runs after those started before it, once the current parse or
        step is over (``_drive``, or the runner)."""
        if self._ready is None:
            self._ready = cycle
        elif self._more_ready is None:
            self._more_ready = [cycle]
        else:
            self._more_ready.append(cycle)

    def _can_add_ready(self) -> bool:
        """A request starting now can run eagerly (``_add_ready``): the connection runs them
        (no task factory, 3.11+), and a read is being parsed with the runner free, or a step
        the connection drives is under way (then the runner goes on with it). Else it needs a
        task of its own."""
        return self._eager and (self._stepping or (self._parsing and not self._runner_busy))

    def _take_ready(self) -> HTTPCycle:
        """The first started request (there is one), out of the queue."""
        cycle = self._ready
        assert cycle is not None
        more = self._more_ready
        if more is None:
            self._ready = None
        else:
            self._ready = more.pop(0)
            if not more:
                self._more_ready = None
        return cycle

    def _gather_writes(self) -> None:
        """Gather the connection's writes until the end of this loop iteration."""
        raise NotImplementedError

    def _drive(self) -> None:
        """Run the requests the last read started (HTTP/2: its new streams), and each one a
        response lets start (HTTP/1.1, pipelined), without a task each: the first step of a
        coroutine runs here, with the connection's runner as the current task; the first one
        that suspends goes on in the runner, and the requests after it get tasks."""
        runner = self._runner
        if runner is None:  # the first request, or the last runner was retired or stopped
            if self._closing:
                self._spawn_ready()
                return
            runner = self._new_runner()
        loop = self._loop
        try:
            _enter_task(loop, runner)
        except RuntimeError:  # called from inside a task (not from the loop): never eager
            self._spawn_ready()
            return
        # The responses are written once this loop iteration has read every connection that
        # had data, as when each request was a task: writing each one as soon as it is made
        # wakes the client for every response (about 3 us more kernel time per request at 64
        # connections, measured with perf).
        self._gather_writes()
        fresh = self._state.reset_contextvars
        base = self._context
        cancelling = runner.cancelling  # type: ignore[attr-defined]  # 3.11+, as self._eager
        try:
            served = 0
            while self._ready is not None:
                if cancelling():  # an app cancelled the runner (and went on): not reused
                    self._retire_runner(runner)
                    return
                if served == EAGER_BATCH:  # a long pipeline: let other connections in
                    loop.call_soon(self._drive)
                    return
                served += 1
                cycle = self._take_ready()
                # request_context(), inlined on the hot path (about 1k instructions a request)
                context = contextvars.Context() if fresh else base.copy()
                step = self._first_step(cycle, context)
                if step is None:
                    continue
                # It suspended: the runner goes on with it (once it has started, if it has not).
                cycle.task = runner
                self._state.tasks.add(runner)
                self._handoff = (runner, cycle, step[0], context, step[1])
                self._runner_busy = True
                waiter = self._runner_waiter
                if waiter is not None and not waiter.done():  # else the app cancelled it
                    waiter.set_result(None)
                self._spawn_ready()  # its response let the next request start, but it goes on
                return
        finally:
            _leave_task(loop, runner)

    def _first_step(
        self, cycle: HTTPCycle, context: contextvars.Context
    ) -> tuple[Coroutine[Any, Any, None], Any] | None:
        """Run ``cycle``'s coroutine in ``context`` until it first suspends: None if it
        finished, else the coroutine and what it yielded (for the runner to go on with)."""
        coro = cycle.run()
        self._stepping = True
        try:
            yielded = context.run(step, coro)  # (not coro.send: transport/stepping.py says why)
            if yielded is FINISHED:
                return None
        except asyncio.CancelledError:
            return None  # the app raised it itself: a task would end quietly too
        except (KeyboardInterrupt, SystemExit) as exc:
            # Raised from a task, these leave the event loop (gunicorn's worker timeout raises
            # SystemExit in the app); raised from a read callback, the loop would only close
            # this connection. So they are raised again from a loop callback, as a task would.
            self._loop.call_soon(_raise, exc)
            return None
        finally:
            self._stepping = False
        return coro, yielded

    def _spawn_ready(self) -> None:
        """The started requests cannot run eagerly: give each a task of its own."""
        while self._ready is not None:
            cycle = self._take_ready()
            context = request_context(self._state, self._context)
            cycle.task = task = create_task(self._loop, cycle.run(), context, True)
            self._state.tasks.add(task)

    def _new_runner(self) -> asyncio.Task[None]:
        runner = self._runner = create_task(self._loop, self._run(), contextvars.Context(), True)
        runner.add_done_callback(self._runner_ended)
        return runner

    def _runner_ended(self, runner: asyncio.Task[None]) -> None:
        """A runner ended without retiring itself: cancelled (by the app of an eager request)
        before its first step, so it never took that request if it suspended. A task of its own
        goes on with it, delivering the cancellation."""
        if self._runner is runner:
            self._runner = None
            self._runner_busy = False
        handoff = self._handoff
        if handoff is not None and handoff[0] is runner:
            self._handoff = None
            _, cycle, coro, context, yielded = handoff
            resume = _awaited(self._continue(coro, context, yielded, asyncio.CancelledError()))
            # (not in ``context``: _continue enters it for each step, as the runner does)
            cycle.task = task = create_task(self._loop, resume, contextvars.Context(), True)
            self._state.tasks.discard(runner)
            self._state.tasks.add(task)

    async def _run(self) -> None:
        """The runner task: the current task of the connection's eager requests. It goes on
        with a request coroutine that suspended in its eager step, then with the requests its
        response let start, until the connection no longer needs it. A runner some app
        cancelled is replaced (its count of cancellation requests would otherwise reach the
        next request: asyncio.timeout and TaskGroup read it)."""
        runner = self._runner
        assert runner is not None
        cancelling = runner.cancelling  # type: ignore[attr-defined]  # 3.11+, as self._eager
        loop = self._loop
        try:
            while True:
                thrown: BaseException | None = None
                handoff = self._handoff
                if handoff is None or handoff[0] is not runner:
                    if self._runner is not runner:
                        return  # retired or stopped, and nothing left for it
                    waiter = self._runner_waiter = loop.create_future()
                    try:
                        await waiter
                    except asyncio.CancelledError as exc:
                        thrown = exc  # cancelled during an eager step, by the app it ran
                    finally:
                        if self._runner_waiter is waiter:
                            self._runner_waiter = None
                    handoff = self._handoff
                    if handoff is None or handoff[0] is not runner:
                        if thrown is not None:
                            self._retire_runner(runner)
                        continue
                self._handoff = None
                await self._continue(*handoff[2:], thrown)
                while self._ready is not None and not cancelling():
                    cycle = self._take_ready()  # pipelined requests, as _drive runs them
                    context = request_context(self._state, self._context)
                    step = self._first_step(cycle, context)
                    if step is None:
                        continue
                    cycle.task = runner
                    self._state.tasks.add(runner)
                    self._spawn_ready()
                    await self._continue(step[0], context, step[1], None)
                self._runner_busy = False
                if cancelling():
                    self._retire_runner(runner)
        except BaseException:
            self._retire_runner(runner)
            raise

    def _retire_runner(self, runner: asyncio.Task[None]) -> None:
        """``runner`` serves no more requests; the next read's request makes a new one."""
        if self._runner is runner:
            self._runner = None
            self._runner_busy = False
        self._spawn_ready()

    @types.coroutine
    def _continue(
        self,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
        yielded: Any,
        thrown: BaseException | None,
    ) -> Generator[Any, None, None]:
        """Step ``coro``, suspended at ``yielded`` (or to be thrown ``thrown`` first), to its
        end inside the runner, each step in the request's ``context``: the runner sees the
        futures the app awaits as its own (it wakes when they are done), and a cancellation
        of the runner reaches the app."""
        while True:
            if thrown is None:
                try:
                    yield yielded  # a task resumes its coroutine with None, or throws into it
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:
                    thrown = exc
            self._stepping = True
            try:
                yielded = context.run(step, coro, thrown)
            finally:
                self._stepping = False
            if yielded is FINISHED:
                return
            thrown = None
            self._spawn_ready()  # its response let the next request start, but it goes on

    def _stop_runner(self) -> None:
        """The connection is done with HTTP/1.1: the runner ends once it has gone on with a
        request handed to it (even one it has not started on yet)."""
        self._runner = None
        waiter = self._runner_waiter
        self._runner_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
