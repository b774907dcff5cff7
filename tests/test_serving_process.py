"""``isolation="process"`` through a host: every trigger reaches a forked instance; a crash
answers Retry (``instance_crashed``), the instance is replaced and the host lives on."""

from __future__ import annotations

import os
from collections.abc import Callable

import anyio
import pytest

from thaw import App, Event, Ok, Retry, stream
from thaw.adapters.process.pool import process_pool_factory
from thaw.host._host import open_host
from thaw.testing import FakeClock, MemoryBackbone

pytestmark = pytest.mark.anyio

WAIT = 20.0
state = {"calls": 0}


def isolated_app(results: list[str]) -> App:
    app = App("isolated", idle_timeout=30)

    @app.capability(isolation="process")
    async def pid() -> int:
        state["calls"] += 1  # in the child: never seen by the parent
        return os.getpid()

    @app.capability(isolation="process", retry=None)
    async def crash() -> None:
        os._exit(7)

    @app.capability()
    async def here() -> int:
        return os.getpid()

    @app.capability(stream("isolated.in"), isolation="process")
    async def consume(raw: bytes) -> None:
        # The parent sees the answer only: report through the outcome path.
        if raw == b"die":
            os._exit(9)

    return app


async def wait_until(condition: Callable[[], bool]) -> None:
    """Bounded: statistics and logs have no event to await, so look every few ms."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 - nothing to await but the condition
            await anyio.sleep(0.01)


async def test_process_capabilities_run_in_a_child_and_shared_ones_here() -> None:
    async with open_host(
        isolated_app([]), MemoryBackbone(), process_pools=process_pool_factory()
    ) as host:
        first = await host.invoke("pid", Event(id="a", data=b""))
        second = await host.invoke("pid", Event(id="b", data=b""))
        here = await host.invoke("here", Event(id="c", data=b""))
        assert isinstance(first, Ok) and isinstance(second, Ok) and isinstance(here, Ok)
        assert int(first.data) == int(second.data) != os.getpid()  # one warm child
        assert int(here.data) == os.getpid()
        assert state["calls"] == 0  # module state changed in the child stays there
        stats = host.statistics().revisions
        assert stats is not None
        assert {p.isolation for p in stats.pools} == {"shared", "process"}
        assert [s.capability for s in stats.cold_starts if s.isolation == "process"] == ["pid"]


async def test_a_crashing_instance_answers_retry_and_is_replaced() -> None:
    async with open_host(
        isolated_app([]), MemoryBackbone(), process_pools=process_pool_factory()
    ) as host:
        before = await host.invoke("pid", Event(id="a", data=b""))
        assert isinstance(before, Ok)
        crashed = await host.invoke("crash", Event(id="b", data=b""))
        assert isinstance(crashed, Retry) and crashed.code == "instance_crashed"
        assert "exit status 7" in crashed.reason
        after = await host.invoke("pid", Event(id="c", data=b""))
        assert isinstance(after, Ok) and int(after.data) != int(before.data)
        here = await host.invoke("here", Event(id="d", data=b""))
        assert isinstance(here, Ok)  # the host lives on


async def test_a_stream_message_whose_instance_crashes_is_redelivered_to_a_new_one() -> None:
    backbone = MemoryBackbone()
    async with open_host(
        isolated_app([]), backbone, process_pools=process_pool_factory(), ack_wait=1
    ) as host:
        await backbone.publish("isolated.in", b"die")
        await backbone.publish("isolated.in", b"fine")
        worker = host.workers["consume"]
        # The crash is a Retry: nak'd and redelivered, crashing again until its attempts
        # are spent and it is dead-lettered; the other message is acked by a new child.
        await wait_until(lambda: worker.statistics().acked == 1)
        await wait_until(lambda: worker.statistics().dead_lettered == 1)
        assert worker.statistics().naked >= 1


async def test_an_idle_process_instance_is_stopped_and_forked_again() -> None:
    clock = FakeClock()
    async with open_host(
        isolated_app([]), MemoryBackbone(), process_pools=process_pool_factory(), clock=clock
    ) as host:
        first = await host.invoke("pid", Event(id="a", data=b""))
        assert isinstance(first, Ok)
        await wait_until(lambda: clock.sleepers() > 0)
        clock.advance(31)
        stats = host.router.statistics

        await wait_until(lambda: not any(p.live for p in stats().pools if p.isolation == "process"))
        again = await host.invoke("pid", Event(id="b", data=b""))
        assert isinstance(again, Ok) and int(again.data) != int(first.data)
