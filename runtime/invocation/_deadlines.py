"""Deadline enforcement without a timer per call.

Measured on the invocation path: ``anyio.fail_after`` costs ~11 µs per call,
``asyncio.timeout`` ~7 µs, a bare ``CancelScope`` ~3.7 µs, while decode + call +
encode of a small contract costs ~0.13 µs. So the invoker does this instead:

1. It steps the function's coroutine once by hand (``coro.send(None)``). Most
   small handlers finish without ever suspending; a coroutine that never
   suspends cannot be cancelled anyway, so it needs no timer at all.
2. Only a coroutine that suspends is "watched": one ``AsyncioWatchdog`` per
   event loop keeps a heap of deadlines and a single ``call_at`` for the
   earliest. When a deadline passes it cancels the task (``task.cancel``) and
   marks the watch as fired; the invoker turns that into ``DeadlineExceeded``
   and calls ``task.uncancel()``, exactly the protocol ``asyncio.timeout`` uses,
   so an outer cancellation (host shutdown) is never swallowed.
3. ``resume(coro, first_yield)`` continues the hand-stepped coroutine under the
   running task, so anyio cancel scopes and task groups inside the function
   belong to the same task as before.

On event loops other than asyncio (trio via anyio) the invoker falls back to an
anyio ``CancelScope`` per call; it is slower and still correct.
"""

from __future__ import annotations

import asyncio
import heapq
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["AsyncioWatchdog", "Watch", "resume", "DEADLINE_CANCEL_MESSAGE"]

DEADLINE_CANCEL_MESSAGE = "thaw: capability deadline exceeded"
_INF = float("inf")


class Watch:
    __slots__ = ("_owner", "done", "fired", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[Any], owner: AsyncioWatchdog) -> None:
        self.when = when
        self.task = task
        self.fired = False
        self.done = False
        self._owner = owner

    def disarm(self) -> None:
        if not self.done:
            self.done = True
            self._owner._done += 1


class AsyncioWatchdog:
    """All watched deadlines of one event loop, behind a single timer."""

    __slots__ = ("_armed_at", "_done", "_handle", "_heap", "_loop", "_sequence")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # (when, sequence, watch): tuples compare in C, a Watch.__lt__ would not.
        self._heap: list[tuple[float, int, Watch]] = []
        self._sequence = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = _INF
        self._done = 0  # disarmed entries still in the heap (removed lazily)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def watch(self, task: asyncio.Task[Any], delay: float) -> Watch:
        """Cancel ``task`` after ``delay`` seconds unless the watch is disarmed first."""
        when = self._loop.time() + delay
        entry = Watch(when, task, self)
        self._sequence += 1
        heapq.heappush(self._heap, (when, self._sequence, entry))
        if when < self._armed_at:
            self._arm(when)
        if self._done > 1024 and self._done * 2 > len(self._heap):
            self._compact()
        return entry

    def pending(self) -> int:
        """Watches not yet disarmed (for tests and statistics)."""
        return len(self._heap) - self._done

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)
        self._armed_at = when

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if not item[2].done]
        heapq.heapify(self._heap)
        self._done = 0

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = _INF
        now = self._loop.time()
        heap = self._heap
        while heap and (heap[0][2].done or heap[0][0] <= now):
            entry = heapq.heappop(heap)[2]
            if entry.done:
                self._done -= 1
                continue
            entry.fired = True
            entry.done = True  # popped, so not counted in _done
            entry.task.cancel(DEADLINE_CANCEL_MESSAGE)
        if heap:
            self._arm(heap[0][0])


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], first_yield: Any) -> Generator[Any, Any, Any]:
    """Continue driving ``coro``, which already yielded ``first_yield``, inside this task.

    Equivalent to the rest of ``await coro``: values sent by the event loop go in,
    exceptions thrown in (cancellation) go in, whatever the coroutine yields goes
    out to the loop, and its return value is ours.
    """
    yielded = first_yield
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
