"""TestHost: a whole app on a MemoryBackbone and a FakeClock, driven from a test.

``TestHost(app)`` (exported from ``thaw.testing``) is what ``TestClient`` is to a
FastAPI app and ``TestNatsBroker`` to a FastStream one: entering it provisions
everything the app declares (streams, consumers, KV and object buckets, the
dead-letter stream) through ``open_host``, on a fresh MemoryBackbone whose time is a
FakeClock, so schedules, retries, AckWait and TTLs move only when the test says so.

Invariants: nothing here sleeps on wall time or opens a socket (it runs in Pyodide);
``settle`` returns once every task of the loop is blocked (the way trio's
``wait_all_tasks_blocked`` works: it yields to the loop while some task can still run,
it never waits for a time), so what is left then waits for the clock or for input;
``advance`` moves the clock from one due sleeper to the next and settles after each,
so a retry due in 2 s after a tick due in 1 s runs in that order. Leaving is instant:
workers parked in a fetch are interrupted (see ``open_host``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import msgspec

from thaw._clock import FakeClock
from thaw._errors import MessageNotFound
from thaw._event import Event, Outcome
from thaw.backbone._contract import KeyValue, ObjectStore, PubAck, StoredMessage
from thaw.backbone._subjects import subject_matches
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.decisions._delivery import DEAD_LETTER_STREAM
from thaw.declarations._app import App
from thaw.host._host import Host, open_host

__all__ = ["TestHost"]

# 2026-01-01T00:00:00Z: a fixed wall time, so schedule ticks in a test are reproducible.
DEFAULT_WALL_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
_encode = msgspec.json.Encoder().encode
_ids = itertools.count(1)


def make_event(data: Any = b"", *, id: str | None = None, **fields: Any) -> Event:
    """An Event for tests; non-bytes ``data`` is JSON-encoded, ``id`` defaults to a counter."""
    payload = data if isinstance(data, bytes) else _encode(data)
    return Event(id=id or f"test-{next(_ids)}", data=payload, **fields)


class TestHost:
    """An app served in process on a MemoryBackbone and a FakeClock (``async with``)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        app: App,
        *,
        wall_start: float = DEFAULT_WALL_START,
        clock: FakeClock | None = None,
    ) -> None:
        self.app = app
        self.clock = clock or FakeClock()
        self.backbone = MemoryBackbone(clock=self.clock)
        self._wall_offset: float = wall_start - self.clock.now()
        self._stack: AsyncExitStack | None = None
        self._host: Host | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> TestHost:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._host = await stack.enter_async_context(
                open_host(self.app, self.backbone, clock=self.clock, wall_clock=self.wall_time)
            )
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        await self.settle()  # the workers are parked in their first fetch
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack, self._host = self._stack, None, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    @property
    def host(self) -> Host:
        if self._host is None:
            raise RuntimeError("TestHost is not running: use it as `async with TestHost(app)`")
        return self._host

    def wall_time(self) -> float:
        """Seconds since the epoch as this host sees them (moves with the FakeClock)."""
        return float(self.clock.now() + self._wall_offset)

    # -- driving --------------------------------------------------------------------

    async def publish(
        self, subject: str, data: Any = b"", *, headers: Mapping[str, str] | None = None
    ) -> PubAck:
        """Publish to a subject (non-bytes ``data`` as JSON); stream triggers then run."""
        payload = data if isinstance(data, bytes) else _encode(data)
        return await self.backbone.publish(subject, payload, headers=headers)

    async def invoke(self, capability: str, data: Any = b"", **fields: Any) -> Outcome:
        """Invoke one capability directly, through the host (as a request would)."""
        event: Event = make_event(data, **fields)
        return await self.host.invoke(capability, event)

    async def settle(self) -> None:
        """Return once no task can run: what is left waits for the clock or for input."""
        await _wait_all_tasks_blocked()

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock, waking sleepers in time order, then settle."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self.clock.now() + seconds
        await self.settle()
        while True:
            due = _next_wake(self.clock)
            step_to = target if due is None or due > target else due
            self.clock.advance(max(step_to - self.clock.now(), 0.0))
            await self.settle()
            if step_to >= target:
                return

    # -- looking --------------------------------------------------------------------

    async def published(self, subject_pattern: str = ">") -> list[StoredMessage]:
        """Messages the app's streams hold whose subject matches (wildcards allowed)."""
        found: list[StoredMessage] = []
        for config in self.host.plan.streams:
            found.extend(await self._messages(config.name, subject_pattern))
        return found

    async def dead_letters(self) -> list[StoredMessage]:
        """What gave up or was malformed: the dead-letter stream's messages."""
        return await self._messages(DEAD_LETTER_STREAM, ">")

    async def kv(self, bucket: str) -> KeyValue:
        return await self.backbone.kv(bucket)

    async def objects(self, bucket: str) -> ObjectStore:
        return await self.backbone.object_store(bucket)

    async def _messages(self, stream: str, pattern: str) -> list[StoredMessage]:
        info = await self.backbone.stream_info(stream)
        found = []
        for seq in range(info.first_seq, info.last_seq + 1):
            if info.messages == 0:
                break
            try:
                message = await self.backbone.get_message(stream, seq)
            except MessageNotFound:  # deleted or aged out
                continue
            if subject_matches(pattern, message.subject):
                found.append(message)
        return found


def _next_wake(clock: FakeClock) -> float | None:
    """The earliest time a task waits for on ``clock`` (the heap is FakeClock's own)."""
    times = [when for when, _, wake in clock._sleepers if not wake.is_set()]
    return min(times) if times else None


async def _wait_all_tasks_blocked() -> None:
    """Yield to the loop until every other task waits on something (trio's primitive)."""
    try:
        this = asyncio.current_task()
    except RuntimeError:
        this = None
    if this is None:  # trio: its own wait_all_tasks_blocked, through anyio
        await anyio.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0)
        # Callbacks ready to run (a wakeup, anyio delivering a cancellation) mean not yet.
        if getattr(loop, "_ready", None):
            continue
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break  # this task can still run: give it the loop
        else:
            return
