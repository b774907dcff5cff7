"""TestHost: a whole app on a MemoryBackbone and a FakeClock, driven from a test.

A realistic app: a stream capability writing KV, a schedule, a capability that always
fails and ends in the dead-letter stream; everything asserted on outcomes, and that
leaving is instant is read from the FakeClock (it never moves while leaving).
"""

from __future__ import annotations

import anyio
import msgspec
import pytest

from thaw import Access, App, Context, Ok, RetryPolicy, schedule, stream
from thaw.testing import FakeClock, TestHost, invoke

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


app = App("shop")


@app.capability(stream("shop.orders"), access=Access(buckets=("ledger",)))
async def record_order(order: Order, ctx: Context) -> None:
    ledger = await ctx.kv("ledger")
    await ledger.put(order.order_id, str(order.amount).encode())


@app.capability(schedule("* * * * *"), access=Access(buckets=("ledger",)))
async def count_ticks(ctx: Context) -> None:
    ledger = await ctx.kv("ledger")
    entry = await ledger.get("ticks")
    ticks = int(entry.value) + 1 if entry is not None else 1
    await ledger.put("ticks", str(ticks).encode())


@app.capability(stream("shop.broken"), retry=RetryPolicy(max_attempts=3))
async def always_fails(data: bytes) -> None:
    raise RuntimeError("the provider is down")


async def test_a_published_order_lands_in_kv_once_settled() -> None:
    async with TestHost(app) as th:
        await th.publish("shop.orders", {"order_id": "o-1", "amount": 1999})
        await th.settle()
        entry = await (await th.kv("ledger")).get("o-1")
        assert entry is not None and entry.value == b"1999"
        assert [m.subject for m in await th.published("shop.>")] == ["shop.orders"]
        assert await th.dead_letters() == []


async def test_advancing_time_fires_each_schedule_tick() -> None:
    async with TestHost(app) as th:
        ledger = await th.kv("ledger")
        assert await ledger.get("ticks") is None
        await th.advance(60)
        first = await ledger.get("ticks")
        assert first is not None and first.value == b"1"
        await th.advance(120)
        later = await ledger.get("ticks")
        assert later is not None and later.value == b"3"


async def test_a_failing_capability_retries_then_is_dead_lettered() -> None:
    async with TestHost(app) as th:
        await th.publish("shop.broken", b"x")
        await th.settle()
        assert await th.dead_letters() == []  # the first attempt failed; a retry is due
        await th.advance(600)  # every backoff passes
        (dead,) = await th.dead_letters()
        assert dead.data == b"x"
        assert any("handler_error" in value for value in dead.headers.values())


async def test_leaving_is_instant_on_the_fake_clock() -> None:
    clock = FakeClock()
    entered, left = anyio.Event(), anyio.Event()
    readings: list[float] = []

    async def run_host() -> None:
        async with TestHost(app, clock=clock) as th:
            await th.publish("shop.orders", {"order_id": "o-2", "amount": 5})
            await th.settle()
            readings.append(clock.now())
            entered.set()
        readings.append(clock.now())
        left.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run_host)
        await entered.wait()
        # Once every task is blocked, leaving has either finished or is waiting for a
        # time (the drain timeout it used to sit out: 10 s per test); no wall clock read.
        await TestHost(app).settle()
        finished = left.is_set()
        group.cancel_scope.cancel()
    assert finished, "leaving waited for a timeout instead of ending the parked fetches"
    assert readings[0] == readings[1]


async def test_invoke_provisions_the_buckets_the_app_declares() -> None:
    outcome = await invoke(app, "record_order", {"order_id": "o-3", "amount": 7})
    assert outcome == Ok(b"null") or type(outcome) is Ok


async def test_advance_refuses_going_backwards() -> None:
    async with TestHost(app) as th:
        with pytest.raises(ValueError, match="backwards"):
            await th.advance(-1)


async def test_using_it_outside_the_context_is_a_clear_error() -> None:
    th = TestHost(app)
    with pytest.raises(RuntimeError, match="async with"):
        await th.invoke("record_order", {"order_id": "o", "amount": 1})
