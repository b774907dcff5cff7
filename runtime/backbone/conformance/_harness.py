"""What the conformance checks stand on: the harness a backbone author provides, and helpers.

``BackboneHarness`` is the one thing a backbone brings to the suite: the backbone,
a unique name prefix, how time passes (a FakeClock advance in memory, a real
sleep against a server) and how to tell that a fetch is parked. The helpers
here use only that, plain ``assert`` and anyio, never pytest: the core ships
them, and the core imports no test framework.

Invariants: every wait is bounded (``WATCHDOG`` real seconds) so a missed
wake-up fails instead of hanging; a check that waits for something to arrive
waits on the condition (``fetch_due``, ``eventually``), never for a fixed time.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from thaw.backbone._contract import Backbone, ConsumerConfig, Message, StreamConfig

__all__ = [
    "ACK_WAIT",
    "BackboneHarness",
    "Raised",
    "WATCHDOG",
    "deliveries",
    "eventually",
    "expect_raises",
    "fetch_due",
    "fetch_now",
    "make_consumer",
    "make_stream",
    "publish_many",
    "seqs",
    "watched_task_group",
]

ACK_WAIT = 1.0
# Real seconds after which a check that waits on other tasks or on a server fails
# instead of hanging (a FakeClock never moves by itself).
WATCHDOG = 15.0
_POLL = 0.01  # seconds between looks at a condition nothing signals


class BackboneHarness(Protocol):
    """What a backbone under test provides (see ``thaw.testing.check_backbone``)."""

    @property
    def backbone(self) -> Backbone: ...

    @property
    def prefix(self) -> str:
        """Unique per check; a valid name and subject token (letters, digits, '_')."""
        ...

    @property
    def grace(self) -> float:
        """Seconds a backbone may lag behind a deadline (0 for MemoryBackbone)."""
        ...

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass on the backbone's clock, and let woken tasks run."""
        ...

    async def wait_fetching(self, stream: str, durable: str, count: int) -> None:
        """Return once ``count`` fetch calls on the consumer are parked waiting."""
        ...


class Raised:
    """What ``expect_raises`` caught: ``value`` is the exception."""

    value: BaseException


@contextmanager
def expect_raises(kind: type[BaseException], *, match: str | None = None) -> Iterator[Raised]:
    """Assert the block raises ``kind`` (with ``match`` found in its message)."""
    raised = Raised()
    try:
        yield raised
    except kind as exc:
        if match is not None and not re.search(match, str(exc)):
            raise AssertionError(f"{exc!r} does not match {match!r}") from exc
        raised.value = exc
    else:
        raise AssertionError(f"expected {kind.__name__}, nothing was raised")


@asynccontextmanager
async def watched_task_group() -> AsyncIterator[TaskGroup]:
    """A task group that fails after ``WATCHDOG`` real seconds instead of hanging."""
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as group:
            yield group


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (server state has no local event), boundedly."""
    with anyio.fail_after(WATCHDOG):
        while True:
            if await check():
                return
            await anyio.sleep(_POLL)


def seqs(messages: Sequence[Message]) -> list[int]:
    return [message.seq for message in messages]


def deliveries(messages: Sequence[Message]) -> list[tuple[int, int]]:
    return [(message.seq, message.num_delivered) for message in messages]


async def make_stream(
    harness: BackboneHarness, *, name: str = "orders", **options: object
) -> tuple[str, str]:
    """Create ``<prefix>_<name>`` on ``<prefix>.<name>.>``; return (stream, subject root)."""
    stream = f"{harness.prefix}_{name}"
    root = f"{harness.prefix}.{name}"
    config = StreamConfig(name=stream, subjects=(f"{root}.>",), **options)  # type: ignore[arg-type]
    await harness.backbone.add_stream(config)
    return stream, root


async def make_consumer(
    harness: BackboneHarness, stream: str, *, durable: str = "worker", **options: object
) -> str:
    options.setdefault("ack_wait", ACK_WAIT)
    config = ConsumerConfig(durable=durable, **options)  # type: ignore[arg-type]
    await harness.backbone.add_consumer(stream, config)
    return durable


async def publish_many(harness: BackboneHarness, subject: str, count: int) -> None:
    for index in range(count):
        await harness.backbone.publish(subject, f"m{index}".encode())


async def fetch_now(
    harness: BackboneHarness, stream: str, durable: str, batch: int = 10
) -> list[Message]:
    """What the consumer holds for delivery right now ("not yet" checks expect [])."""
    return await harness.backbone.fetch(stream, durable, batch=batch, timeout=0)


async def fetch_due(
    harness: BackboneHarness, stream: str, durable: str, count: int, batch: int = 10
) -> list[Message]:
    """Fetch until ``count`` messages came (a server may deliver a little late), boundedly.

    More than ``count`` in one fetch are all returned, so a check still sees extras.
    """
    got: list[Message] = []
    with anyio.fail_after(WATCHDOG):
        while True:
            got += await harness.backbone.fetch(
                stream, durable, batch=batch - len(got), timeout=harness.grace
            )
            if len(got) >= count:
                return got
            await anyio.lowlevel.checkpoint()
