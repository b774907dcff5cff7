"""Idempotency: the store protocol and the invoker running side effects once per key."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from thaw import App, Event, Idempotency, Ok, Reject, Retry, RetryPolicy
from thaw.invocation._invoker import Invoker
from thaw.testing import FakeClock, MemoryIdempotencyStore

pytestmark = pytest.mark.anyio


class Payment(msgspec.Struct, frozen=True):
    payment_id: str
    amount: int


async def test_claim_then_complete_then_done() -> None:
    store = MemoryIdempotencyStore(clock=FakeClock())
    claim = await store.claim("k", hold=10, ttl=100)
    assert claim.state == "claimed"
    assert (await store.claim("k", hold=10, ttl=100)).state == "busy"
    await store.complete("k", claim.token, b"result", ttl=100)
    done = await store.claim("k", hold=10, ttl=100)
    assert (done.state, done.result) == ("done", b"result")


async def test_release_frees_the_key() -> None:
    store = MemoryIdempotencyStore(clock=FakeClock())
    claim = await store.claim("k", hold=10, ttl=100)
    await store.release("k", claim.token)
    assert (await store.claim("k", hold=10, ttl=100)).state == "claimed"


async def test_claim_lapses_after_hold_and_stale_token_cannot_complete() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    stale = await store.claim("k", hold=10, ttl=100)
    clock.advance(10)
    fresh = await store.claim("k", hold=10, ttl=100)
    assert fresh.state == "claimed"
    await store.complete("k", stale.token, b"late", ttl=100)  # ignored: no longer owner
    await store.release("k", stale.token)  # ignored too
    assert (await store.claim("k", hold=10, ttl=100)).state == "busy"
    await store.complete("k", fresh.token, b"fresh", ttl=100)
    assert (await store.claim("k", hold=10, ttl=100)).result == b"fresh"


async def test_results_expire_after_ttl() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    claim = await store.claim("k", hold=10, ttl=50)
    await store.complete("k", claim.token, b"r", ttl=50)
    clock.advance(49.9)
    assert (await store.claim("k", hold=10, ttl=50)).state == "done"
    clock.advance(0.2)
    assert (await store.claim("k", hold=10, ttl=50)).state == "claimed"


async def test_wait_settled_wakes_on_complete() -> None:
    store = MemoryIdempotencyStore(clock=FakeClock())
    claim = await store.claim("k", hold=10, ttl=100)
    woke = anyio.Event()
    async with anyio.create_task_group() as group:

        async def waiter() -> None:
            await store.wait_settled("k", timeout=30)
            woke.set()

        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        await store.complete("k", claim.token, b"r", ttl=100)
        with anyio.fail_after(5):  # woken by the completion, long before its 30 s timeout
            await woke.wait()
    assert woke.is_set()


async def test_store_stays_bounded() -> None:
    store = MemoryIdempotencyStore(clock=FakeClock(), max_entries=100)
    for i in range(1000):
        claim = await store.claim(f"k{i}", hold=10, ttl=1000)
        await store.complete(f"k{i}", claim.token, b"r", ttl=1000)
    assert len(store) <= 100
    assert (await store.claim("k999", hold=10, ttl=1000)).state == "done"  # newest kept


def payment_app(
    calls: list[str], *, gate: anyio.Event | None = None, fail_first: bool = False
) -> App:
    app = App("pay")

    @app.capability(
        timeout=5,
        retry=RetryPolicy(max_attempts=3),
        idempotency=Idempotency(key=lambda event, payment: payment.payment_id),
    )
    async def charge(payment: Payment) -> dict[str, Any]:
        calls.append(payment.payment_id)
        if gate is not None:
            await gate.wait()
        if fail_first and len(calls) == 1:
            raise ConnectionError("ledger unavailable")
        return {"charged": payment.amount, "run": len(calls)}

    return app


def payment(payment_id: str = "p-1", amount: int = 10, *, event_id: str = "e") -> Event:
    data = msgspec.json.encode({"payment_id": payment_id, "amount": amount})
    return Event(id=event_id, data=data)


async def test_duplicate_returns_stored_result_without_running_again() -> None:
    calls: list[str] = []
    invoker = Invoker(payment_app(calls))
    first = await invoker.invoke("charge", payment(event_id="e1"))
    again = await invoker.invoke("charge", payment(event_id="e2"))  # same payment id
    assert first == Ok(b'{"charged":10,"run":1}')
    assert again == Ok(b'{"charged":10,"run":1}', replayed=True)
    assert calls == ["p-1"]


async def test_concurrent_duplicates_wait_for_the_first_and_run_once() -> None:
    calls: list[str] = []
    gate = anyio.Event()
    invoker = Invoker(payment_app(calls, gate=gate))
    results: list[object] = []
    async with anyio.create_task_group() as group:
        for i in range(5):

            async def call(i: int = i) -> None:
                results.append(await invoker.invoke("charge", payment(event_id=f"e{i}")))

            group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert calls == ["p-1"]  # the others are waiting, not running
        gate.set()
    assert calls == ["p-1"]
    assert all(isinstance(r, Ok) and r.data == b'{"charged":10,"run":1}' for r in results)
    assert sum(1 for r in results if isinstance(r, Ok) and not r.replayed) == 1


async def test_failure_releases_the_claim_so_a_retry_runs() -> None:
    calls: list[str] = []
    invoker = Invoker(payment_app(calls, fail_first=True), rand=lambda: 0.0)
    first = await invoker.invoke("charge", payment())
    assert isinstance(first, Retry)
    second = await invoker.invoke("charge", Event(id="e", data=payment().data, attempt=2))
    assert second == Ok(b'{"charged":10,"run":2}')
    assert calls == ["p-1", "p-1"]


async def test_duplicate_that_outlives_its_deadline_asks_for_retry() -> None:
    calls: list[str] = []
    gate = anyio.Event()
    app = App("pay")

    @app.capability(timeout=60, idempotency=Idempotency())
    async def slow() -> str:
        calls.append("run")
        await gate.wait()
        return "first"

    invoker = Invoker(app)
    outcomes: list[object] = []
    async with anyio.create_task_group() as group:

        async def first() -> None:
            outcomes.append(await invoker.invoke("slow", Event(id="same")))

        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        deadline = invoker.clock.now() + 0.05
        # The duplicate waits for the first run until its own deadline, not the
        # capability's 60 s timeout: bounded well below that, so ignoring it fails fast.
        with anyio.fail_after(10):
            second = await invoker.invoke("slow", Event(id="same", deadline=deadline))
        gate.set()
    assert isinstance(second, Retry)
    assert second.code == "duplicate_in_progress"
    assert calls == ["run"]
    assert outcomes == [Ok(b'"first"')]


async def test_idempotency_key_errors_are_outcomes() -> None:
    app = App("pay")

    @app.capability(idempotency=Idempotency(key=lambda event, p: ""))
    async def empty_key(p: Payment) -> None:
        return None

    @app.capability(idempotency=Idempotency(key=lambda event, p: 1 / 0))
    async def raising_key(p: Payment) -> None:
        return None

    invoker = Invoker(app, rand=lambda: 0.0)
    outcome = await invoker.invoke("empty_key", payment())
    assert isinstance(outcome, Reject)
    assert outcome.code == "idempotency_key_invalid"
    outcome = await invoker.invoke("raising_key", payment())
    assert isinstance(outcome, Retry)
    assert "ZeroDivisionError" in outcome.reason


async def test_keys_are_scoped_per_capability() -> None:
    app = App("pay")
    calls: list[str] = []

    @app.capability(idempotency=Idempotency())
    async def one() -> None:
        calls.append("one")

    @app.capability(idempotency=Idempotency())
    async def two() -> None:
        calls.append("two")

    invoker = Invoker(app)
    await invoker.invoke("one", Event(id="same"))
    await invoker.invoke("two", Event(id="same"))
    assert calls == ["one", "two"]


async def test_peek_reads_without_claiming() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    assert await store.peek("k") is None
    claim = await store.claim("k", hold=10, ttl=100)
    peeked = await store.peek("k")
    assert peeked is not None
    assert peeked.state == "busy"
    await store.complete("k", claim.token, b"r", ttl=100)
    done = await store.peek("k")
    assert done is not None
    assert (done.state, done.result) == ("done", b"r")
    assert (await store.claim("k", hold=10, ttl=100)).state == "done"  # peek took nothing
    clock.advance(101)
    assert await store.peek("k") is None
