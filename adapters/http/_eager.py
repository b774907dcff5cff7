"""Start a coroutine in the caller and make a task of it only if it suspends.

Most requests a connection answers never suspend (a capability that computes
and returns): for those, a task per request is pure cost (creating it, its
registration in asyncio's task set, its step in the ready queue, its result).
``start`` runs the coroutine's first step at once, in the caller (a protocol
callback), inside the context it is given; a coroutine that returns there
costs no task at all. One that suspends goes on in an ``EagerTask`` that
resumes it exactly where it stopped. This is Python 3.12's ``eager_start``,
done on 3.11, where it does not exist.

Invariants:
- While the first step runs, ``asyncio.current_task()`` is the very object
  that becomes the task if the coroutine suspends, so code that captures the
  current task before suspending and uses it after (the invoker's deadline
  watchdog, ``asyncio.timeout``, anyio cancel scopes) sees one task throughout.
  Until then it is an uninitialised ``asyncio.Task``; asking it anything (its
  name, ``cancelling()``, ``cancel()``...) first makes it a real task, which
  then finishes trivially if the coroutine does not suspend after all.
- The task goes on with the future the coroutine is blocked on, so it wakes
  when that future is done; values, exceptions (cancellation) and ``close`` go
  to the coroutine as a plain ``await`` would pass them. A task cancelled before
  its first step cancels that future and throws the cancellation into the
  coroutine, as ``Task.cancel`` does for a task waiting on a future: the
  coroutine's ``finally`` blocks run, nothing is left suspended.
- Called from inside a running task (nested: ``current_task()`` is taken), it
  falls back to ``loop.create_task``: asyncio allows one current task per loop.

The private asyncio functions used (``_enter_task``, ``_leave_task``,
``_current_tasks``) are the ones every ``Task`` step uses, in CPython 3.8-3.13.
They are used on 3.11 only: from 3.12 on, ``start`` is asyncio's own
``Task(..., eager_start=True)`` (the same behaviour, kept by CPython), and this
module touches no private name there.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any, Final

__all__ = ["EagerTask", "start"]

_Task = asyncio.Task
_Future = asyncio.Future
_OWN = sys.version_info < (3, 12)  # 3.12+: asyncio's eager_start does this (see start)
if _OWN:
    _new_task = _Task.__new__
    _enter_task = asyncio.tasks._enter_task
    _leave_task = asyncio.tasks._leave_task
    _current_tasks: dict[asyncio.AbstractEventLoop, Any] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]

_EAGER, _FIRST, _RESUMED, _FINISHED = range(4)  # where a _Continuation stands


class _Continuation(Coroutine[Any, Any, None]):
    """What an EagerTask runs: the rest of a coroutine whose first step already ran."""

    __slots__ = ("_coro", "_first", "_state")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self._coro = coro
        self._first: Any = None  # what the coroutine yielded when it suspended
        self._state = _EAGER  # the first step is still running in the caller

    def send(self, value: Any) -> Any:
        state = self._state
        if state == _RESUMED:
            return self._coro.send(value)
        if state == _FIRST:  # the task's first step: block on what the coroutine waits for
            self._state = _RESUMED
            first, self._first = self._first, None
            return first
        if state == _FINISHED:  # made a task on demand, then returned without suspending
            raise StopIteration
        raise RuntimeError("an eager task was stepped while its first step was running")

    def throw(self, typ: Any, value: Any = None, traceback: Any = None) -> Any:
        state = self._state
        if state == _FIRST:  # cancelled before its first step: as Task.cancel would
            self._state = _RESUMED
            first, self._first = self._first, None
            if isinstance(first, _Future) and not first.done():
                first.cancel()
        elif state == _FINISHED:
            raise typ if value is None else value
        if value is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, value, traceback)

    def close(self) -> None:
        if self._state != _FINISHED:
            self._state = _FINISHED
            self._first = None
            self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("an eager task's continuation is driven by its task, not awaited")

    # What asyncio (task repr, get_stack) and anyio (getcoroutinestate) read of a coroutine.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def __name__(self) -> str:  # the task's repr names the coroutine by it
        return str(getattr(self._coro, "__name__", "coroutine"))


_NO_STEP: Final[_Continuation | None] = None  # typed so a check after a call is not "unreachable"


class EagerTask(asyncio.Task[None]):
    """The task of a coroutine started by ``start``: a real task once it is needed."""

    __slots__ = ("_eager_context", "_eager_coro", "_eager_loop", "_eager_step")

    _eager_coro: Coroutine[Any, Any, None]
    _eager_loop: asyncio.AbstractEventLoop
    _eager_context: contextvars.Context
    _eager_step: _Continuation | None  # None until this is a real task

    def _eager_materialize(self) -> _Continuation:
        """Make this a real task (scheduled) that continues the coroutine."""
        assert self._eager_step is None
        coro = self._eager_coro
        step = self._eager_step = _Continuation(coro)
        if getattr(coro, "cr_frame", True) is None:  # asked after the coroutine returned
            step._state = _FINISHED
        _Task.__init__(self, step, loop=self._eager_loop, context=self._eager_context)
        return step


def _materializing(name: str) -> Any:
    method = getattr(_Task, name)

    def call(self: EagerTask, *args: Any, **kwargs: Any) -> Any:
        if self._eager_step is None:
            self._eager_materialize()
        return method(self, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


# Anything asked of the task before it is one makes it one (see the module docstring).
for _name in (
    "__repr__",
    "add_done_callback",
    "cancel",
    "cancelled",
    "cancelling",
    "done",
    "exception",
    "get_coro",
    "get_loop",
    "get_name",
    "get_stack",
    "print_stack",
    "remove_done_callback",
    "result",
    "set_name",
    "uncancel",
):
    setattr(EagerTask, _name, _materializing(_name))


def start(
    coro: Coroutine[Any, Any, None],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
) -> asyncio.Task[None] | None:
    """Run ``coro``'s first step now, inside ``context``; the task that goes on, or None.

    None: the coroutine returned without suspending (its result is dropped: it
    reports through what it does). An exception it raised before suspending
    propagates from here. Otherwise the task continuing it, scheduled on ``loop``.
    Call it from a loop callback, never from a thread.
    """
    if not _OWN:  # CPython 3.12+: its own eager start, the same contract
        started = asyncio.Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        if started.done():
            started.result()  # an exception raised before suspending propagates, as below
            return None
        return started
    if _current_tasks.get(loop) is not None:  # inside a task: one current task per loop
        return loop.create_task(coro, context=context)
    task: EagerTask = _new_task(EagerTask)
    task._eager_coro = coro
    task._eager_loop = loop
    task._eager_context = context
    task._eager_step = _NO_STEP
    _enter_task(loop, task)
    try:
        first = context.run(coro.send, None)
    except BaseException as exc:
        step = task._eager_step  # set if something made it a task meanwhile
        if step is not None:  # made a task on demand: it finishes with nothing left to do
            step._state = _FINISHED
        if type(exc) is StopIteration:
            return None
        raise
    finally:
        _leave_task(loop, task)
    step = task._eager_step
    if step is None:
        step = task._eager_materialize()
    step._first = first
    step._state = _FIRST
    return task
