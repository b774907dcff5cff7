"""Clocks: where the runtime and the MemoryBackbone read time and wait for it.

``SystemClock`` reads ``time.monotonic``. ``FakeClock`` (exported from
``thaw.testing``) only moves when a test calls ``advance``, so AckWait
redelivery, backoff and TTLs are tested without sleeping. Times are seconds as
floats on the clock's own monotonic scale; never compare them with wall time.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock", "FakeClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Current time in seconds on this clock's monotonic scale."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when``."""
        ...


class SystemClock:
    """The process's monotonic clock."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()


class FakeClock:
    """A clock that moves only when told to; sleepers wake as it passes their time."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        heapq.heappush(self._sleepers, (when, next(self._counter), wake))
        try:
            await wake.wait()
        finally:
            wake.set()  # a cancelled sleeper no longer counts in sleepers()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (for tests that wait until a task parks)."""
        return sum(1 for _, _, wake in self._sleepers if not wake.is_set())
