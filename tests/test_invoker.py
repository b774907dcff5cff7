"""The invoker: Event in, Outcome out, for every way a call can go."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import msgspec
import pytest

from thaw import (
    App,
    Backoff,
    Context,
    Event,
    Ok,
    Reject,
    Rejected,
    Retry,
    RetryLater,
    RetryPolicy,
)
from thaw.invocation._invoker import Invoker
from thaw.testing import FakeClock

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


def event(data: bytes = b'{"order_id":"A1","amount":5}', **fields: Any) -> Event:
    return Event(id=fields.pop("id", "e-1"), data=data, **fields)


def make_invoker(app: App, **options: Any) -> Invoker:
    options.setdefault("rand", lambda: 0.0)  # no jitter: delays are exact
    return Invoker(app, **options)


async def test_ok_encodes_the_result() -> None:
    app = App("t")

    @app.capability()
    async def total(order: Order) -> dict[str, int]:
        return {"total": order.amount * 2}

    outcome = await make_invoker(app).invoke("total", event())
    assert outcome == Ok(b'{"total":10}')


async def test_all_four_function_shapes() -> None:
    app = App("t")
    seen: list[str] = []

    @app.capability()
    async def none() -> str:
        return "none"

    @app.capability()
    async def payload(order: Order) -> str:
        return order.order_id

    @app.capability()
    async def context(ctx: Context) -> int:
        return ctx.attempt

    @app.capability()
    async def both(order: Order, ctx: Context) -> str:
        seen.append(ctx.capability)
        return f"{order.order_id}@{ctx.attempt}"

    invoker = make_invoker(app)
    assert await invoker.invoke("none", event()) == Ok(b'"none"')
    assert await invoker.invoke("payload", event()) == Ok(b'"A1"')
    assert await invoker.invoke("context", event(attempt=3)) == Ok(b"3")
    assert await invoker.invoke("both", event(attempt=2)) == Ok(b'"A1@2"')
    assert seen == ["both"]


async def test_none_result_is_an_empty_body_and_bytes_pass_through() -> None:
    app = App("t")

    @app.capability()
    async def nothing(order: Order) -> None:
        return None

    @app.capability()
    async def echo(raw: bytes) -> bytes:
        return raw[::-1]

    invoker = make_invoker(app)
    assert await invoker.invoke("nothing", event()) == Ok(b"")
    assert await invoker.invoke("echo", event(b"\x00\xffabc")) == Ok(b"cba\xff\x00")


async def test_contract_mismatch_is_a_reject_naming_the_field() -> None:
    app = App("t")

    @app.capability()
    async def total(order: Order) -> int:
        raise AssertionError("must not be called")

    outcome = await make_invoker(app).invoke("total", event(b'{"order_id":"A1","amount":"5"}'))
    assert isinstance(outcome, Reject)
    assert outcome.code == "contract_invalid"
    assert "$.amount" in outcome.reason
    missing = await make_invoker(app).invoke("total", event(b'{"order_id":"A1"}'))
    assert isinstance(missing, Reject)
    assert missing.code == "contract_invalid"
    assert "amount" in missing.reason


async def test_malformed_json_is_a_reject() -> None:
    app = App("t")

    @app.capability()
    async def total(order: Order) -> int:
        return 1

    outcome = await make_invoker(app).invoke("total", event(b'{"order_id": '))
    assert isinstance(outcome, Reject)
    assert outcome.code == "payload_malformed"
    assert "not valid JSON" in outcome.reason


async def test_oversized_payload_is_rejected_before_decoding() -> None:
    app = App("t")

    sizes: list[int] = []

    @app.capability(max_payload=16)
    async def small(raw: bytes) -> None:
        sizes.append(len(raw))

    outcome = await make_invoker(app).invoke("small", event(b"x" * 17))
    assert isinstance(outcome, Reject)
    assert outcome.code == "payload_too_large"
    assert "17 bytes" in outcome.reason
    assert sizes == []
    assert await make_invoker(app).invoke("small", event(b"x" * 16)) == Ok(b"")
    assert sizes == [16]


async def test_unknown_capability_is_a_reject_listing_known_ones() -> None:
    app = App("t")

    @app.capability()
    async def known() -> None:
        return None

    outcome = await make_invoker(app).invoke("unknown", event())
    assert isinstance(outcome, Reject)
    assert outcome.code == "capability_unknown"
    assert "known" in outcome.reason


async def test_exception_becomes_retry_with_backoff_then_reject_when_exhausted() -> None:
    app = App("t")

    @app.capability(retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=1.0, jitter=0.0)))
    async def flaky(order: Order) -> None:
        raise ConnectionError("db down")

    invoker = make_invoker(app)
    first = await invoker.invoke("flaky", event(attempt=1))
    second = await invoker.invoke("flaky", event(attempt=2))
    last = await invoker.invoke("flaky", event(attempt=3))
    assert first == Retry(1.0, "ConnectionError: db down", "handler_error")
    assert second == Retry(2.0, "ConnectionError: db down", "handler_error")
    assert isinstance(last, Reject)
    assert last.code == "handler_error"
    assert last.attempts == 3
    assert "gave up after 3 attempts" in last.reason


async def test_jitter_draw_is_applied() -> None:
    app = App("t")

    @app.capability(retry=RetryPolicy(backoff=Backoff(initial=2.0, jitter=0.5)))
    async def flaky() -> None:
        raise RuntimeError("x")

    outcome = await Invoker(app, rand=lambda: 0.5).invoke("flaky", event())
    assert isinstance(outcome, Retry)
    assert outcome.delay == pytest.approx(1.5)


async def test_rejected_is_never_retried_and_keeps_its_code() -> None:
    app = App("t")

    @app.capability()
    async def charge(order: Order) -> None:
        raise Rejected("card declined", code="card_declined")

    outcome = await make_invoker(app).invoke("charge", event(attempt=1))
    assert outcome == Reject("card_declined", "card declined", 1)


async def test_retry_later_sets_the_delay() -> None:
    app = App("t")

    @app.capability()
    async def wait() -> None:
        raise RetryLater("rate limited upstream", delay=7.5)

    outcome = await make_invoker(app).invoke("wait", event())
    assert outcome == Retry(7.5, "rate limited upstream", "retry_requested")


async def test_timeout_cancels_a_suspended_call() -> None:
    app = App("t")
    cancelled = anyio.Event()
    never = anyio.Event()

    @app.capability(timeout=0.05)
    async def hang() -> None:
        try:
            await never.wait()
        finally:
            cancelled.set()

    invoker = make_invoker(app)
    outcome = await invoker.invoke("hang", event())
    assert isinstance(outcome, Retry)
    assert outcome.code == "deadline_exceeded"
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancellation was taken back
    assert invoker.statistics().deadline_watches == 0
    assert invoker.statistics().in_flight == {"hang": 0}


async def test_event_deadline_earlier_than_timeout_wins() -> None:
    app = App("t")
    never = anyio.Event()

    @app.capability(timeout=60)
    async def hang() -> None:
        await never.wait()

    clock = FakeClock()
    # An ignored event deadline would run into the 60 s timeout: fail long before it.
    with anyio.fail_after(10):
        outcome = await make_invoker(app, clock=clock).invoke(
            "hang", event(deadline=clock.now() + 0.05)
        )
    assert isinstance(outcome, Retry)
    assert outcome.code == "deadline_exceeded"


async def test_event_arriving_past_its_deadline_is_not_run() -> None:
    app = App("t")
    calls: list[int] = []

    @app.capability()
    async def work() -> None:
        calls.append(1)

    clock = FakeClock()
    outcome = await make_invoker(app, clock=clock).invoke("work", event(deadline=clock.now()))
    assert isinstance(outcome, Retry)
    assert outcome.code == "deadline_exceeded"
    assert calls == []


async def test_outer_cancellation_is_never_swallowed() -> None:
    app = App("t")
    started = anyio.Event()
    never = anyio.Event()

    @app.capability(timeout=60)
    async def hang() -> None:
        started.set()
        await never.wait()

    invoker = make_invoker(app)
    results: list[object] = []
    async with anyio.create_task_group() as group:

        async def call() -> None:
            results.append(await invoker.invoke("hang", event()))

        group.start_soon(call)
        await started.wait()
        group.cancel_scope.cancel()
    assert results == []  # cancelled, not turned into an Outcome
    assert invoker.statistics().in_flight == {"hang": 0}


async def test_deadline_racing_outer_cancellation_still_propagates() -> None:
    # Both cancellations reach the task before the function resumes: the outer scope's
    # (asked for just before the call, delivered at the function's first wait) and the
    # capability's deadline (the fake clock is past it before the watch is set, so it
    # fires in the same turn of the loop). The deadline's is taken back, the outer one
    # goes on: no Outcome, nothing after the call runs.
    app = App("t")
    clock = FakeClock()
    never = anyio.Event()
    cancels_seen: list[int] = []

    @app.capability(timeout=0.01)
    async def hang() -> None:
        clock.advance(1)
        try:
            await never.wait()
        except BaseException:
            task = asyncio.current_task()
            assert task is not None
            cancels_seen.append(task.cancelling())
            raise

    invoker = make_invoker(app, clock=clock)
    after_the_call: list[object] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        after_the_call.append(await invoker.invoke("hang", event()))
    assert cancels_seen == [2]  # the outer cancellation and the deadline, both pending
    assert after_the_call == []  # cancelled, not turned into a deadline Outcome
    assert scope.cancel_called and scope.cancelled_caught
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # nothing left pending
    assert invoker.statistics().deadline_watches == 0
    assert invoker.statistics().in_flight == {"hang": 0}


async def test_cancel_scopes_and_task_groups_inside_functions_work() -> None:
    app = App("t")

    @app.capability(timeout=5)
    async def nested() -> list[int]:
        out: list[int] = []
        with anyio.fail_after(2):
            async with anyio.create_task_group() as group:
                for i in range(3):

                    async def child(i: int = i) -> None:
                        await anyio.lowlevel.checkpoint()
                        out.append(i)

                    group.start_soon(child)
        with anyio.move_on_after(0.01):
            await anyio.Event().wait()
        return sorted(out)

    assert await make_invoker(app).invoke("nested", event()) == Ok(b"[0,1,2]")


async def test_function_that_swallows_the_deadline_returns_its_result() -> None:
    app = App("t")
    never = anyio.Event()

    @app.capability(timeout=0.02)
    async def stubborn() -> str:
        try:
            await never.wait()
        except asyncio.CancelledError:
            return "cleaned up"
        return "unreachable"

    outcome = await make_invoker(app).invoke("stubborn", event())
    assert outcome == Ok(b'"cleaned up"')
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_unencodable_result_is_a_reject() -> None:
    app = App("t")

    @app.capability()
    async def bad() -> Any:
        return object()

    outcome = await make_invoker(app).invoke("bad", event())
    assert isinstance(outcome, Reject)
    assert outcome.code == "result_invalid"


async def test_concurrency_limit_sheds_load_with_overloaded() -> None:
    app = App("t")
    release = anyio.Event()
    started = anyio.Event()

    @app.capability(concurrency=1, timeout=5)
    async def single() -> str:
        started.set()
        await release.wait()
        return "done"

    invoker = make_invoker(app)
    results: list[object] = []
    async with anyio.create_task_group() as group:

        async def first() -> None:
            results.append(await invoker.invoke("single", event()))

        group.start_soon(first)
        await started.wait()
        second = await invoker.invoke("single", event())
        assert isinstance(second, Retry)
        assert second.code == "overloaded"
        release.set()
    assert results == [Ok(b'"done"')]
    assert await invoker.invoke("single", event()) == Ok(b'"done"')


async def test_many_concurrent_suspending_calls_each_get_their_own_result() -> None:
    app = App("t")

    @app.capability(timeout=5)
    async def slow_echo(order: Order) -> int:
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        return order.amount

    invoker = make_invoker(app)
    results: dict[int, object] = {}
    async with anyio.create_task_group() as group:
        for i in range(200):

            async def call(i: int = i) -> None:
                data = msgspec.json.encode({"order_id": "x", "amount": i})
                results[i] = await invoker.invoke("slow_echo", event(data))

            group.start_soon(call)
    assert results == {i: Ok(str(i).encode()) for i in range(200)}
    assert invoker.statistics().deadline_watches == 0


async def test_statistics_count_calls() -> None:
    app = App("t")

    @app.capability()
    async def ping() -> None:
        return None

    invoker = make_invoker(app)
    for _ in range(3):
        await invoker.invoke("ping", event())
    assert invoker.statistics().calls == {"ping": 3}


async def test_invalid_utf8_inside_a_string_is_malformed_not_a_crash() -> None:
    app = App("t")

    @app.capability()
    async def total(order: Order) -> int:
        return 1

    outcome = await make_invoker(app).invoke("total", event(b'{"order_id":"\xff","amount":1}'))
    assert isinstance(outcome, Reject)
    assert outcome.code == "payload_malformed"


async def test_rejected_with_its_own_http_status_keeps_it() -> None:
    app = App("t")

    @app.capability()
    async def gone() -> None:
        raise Rejected("this order was archived", code="order_archived", http_status=410)

    outcome = await make_invoker(app).invoke("gone", event())
    assert outcome == Reject("order_archived", "this order was archived", 1, 410)
    from thaw.lowlevel import answer_outcome

    assert answer_outcome(outcome).status == 410


# -- the idempotency store failing ----------------------------------------------------------


class FailingStore:
    """A MemoryIdempotencyStore whose chosen operations raise BackboneError."""

    def __init__(self, *failing: str) -> None:
        from thaw.testing import MemoryIdempotencyStore

        self._store = MemoryIdempotencyStore()
        self._failing = set(failing)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in self._failing:

            async def fail(*args: object, **kwargs: object) -> None:
                from thaw.lowlevel import BackboneError

                raise BackboneError(f"{name}: JetStream did not answer in time (a test)")

            return fail
        return getattr(self._store, name)


def counting_app(calls: list[str], *, fail: bool = False) -> App:
    from thaw import Idempotency

    app = App("stores")

    @app.capability(idempotency=Idempotency())
    async def once() -> str:
        calls.append("ran")
        if fail:
            raise RetryLater("the downstream is busy")
        return "done"

    return app


async def test_an_unreachable_store_retries_before_the_function_runs() -> None:
    calls: list[str] = []
    invoker = Invoker(counting_app(calls), idempotency_store=FailingStore("claim"))  # type: ignore[arg-type]
    outcome = await invoker.invoke("once", Event(id="e1"))
    assert isinstance(outcome, Retry)
    assert outcome.code == "backbone_error"
    assert calls == []


@pytest.mark.parametrize("failing", ["complete", "release"])
async def test_a_store_failing_after_the_call_keeps_its_outcome(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    app = counting_app(calls, fail=failing == "release")  # release follows a failure
    invoker = Invoker(app, idempotency_store=FailingStore(failing))  # type: ignore[arg-type]
    outcome = await invoker.invoke("once", Event(id="e2"))
    if failing == "complete":
        assert outcome == Ok(b'"done"')  # acked: running it again would repeat the effect
    else:
        assert isinstance(outcome, Retry) and outcome.code == "retry_requested"
    assert any("could not settle idempotency key" in r.message for r in caplog.records)
    assert calls == ["ran"]


# -- Outcomes are decided by the runtime, never handed back by a function ------------------


def outcome_app(calls: list[str]) -> App:
    from thaw import Idempotency

    app = App("outcomes")
    sent: Any = {"ok": Ok(b"1"), "retry": Retry(1.0, "later"), "reject": Reject("no", "why")}

    @app.capability(retry=RetryPolicy(max_attempts=5))
    async def returns(kind: str) -> Any:
        calls.append(kind)
        return sent[kind]

    @app.capability(retry=RetryPolicy(max_attempts=5))
    async def raises(kind: str) -> None:
        calls.append(kind)
        raise sent[kind]

    @app.capability(idempotency=Idempotency())
    async def once(kind: str) -> Any:
        calls.append(kind)
        return sent[kind]

    return app


@pytest.mark.parametrize("kind", ["ok", "retry", "reject"])
async def test_a_returned_outcome_is_result_invalid_naming_the_mistake(kind: str) -> None:
    invoker = Invoker(outcome_app([]))
    outcome = await invoker.invoke("returns", Event(id="1", data=f'"{kind}"'.encode()))
    assert isinstance(outcome, Reject)
    assert outcome.code == "result_invalid"
    assert "'returns'" in outcome.reason
    assert "raise thaw errors (Rejected, RetryLater, ...)" in outcome.reason
    assert "Outcomes (Ok, Retry, Reject) are what the runtime decides" in outcome.reason


@pytest.mark.parametrize("kind", ["ok", "retry", "reject"])
async def test_a_raised_outcome_is_config_invalid_and_never_retried(kind: str) -> None:
    calls: list[str] = []
    invoker = Invoker(outcome_app(calls))
    outcome = await invoker.invoke("raises", Event(id="1", data=f'"{kind}"'.encode()))
    assert isinstance(outcome, Reject)  # not a Retry, though 4 attempts are left
    assert (outcome.code, outcome.attempts) == ("config_invalid", 1)
    assert "'raises'" in outcome.reason
    assert "not an exception" in outcome.reason
    assert "Outcomes (Ok, Retry, Reject) are what the runtime decides" in outcome.reason
    assert calls == [kind]


async def test_a_returned_outcome_is_not_stored_as_an_idempotent_result() -> None:
    calls: list[str] = []
    invoker = Invoker(outcome_app(calls))
    for _ in range(2):
        outcome = await invoker.invoke("once", Event(id="same", data=b'"reject"'))
        assert isinstance(outcome, Reject)
        assert outcome.code == "result_invalid"
    assert calls == ["reject", "reject"]  # released, not completed: no replayed Ok


def test_a_function_annotated_to_return_an_outcome_is_refused_at_declaration() -> None:
    from thaw import ConfigError

    app = App("annotated")
    with pytest.raises(ConfigError, match=r"capability 'decide' .* return Ok \| Retry \| Reject"):

        @app.capability()
        async def decide() -> Ok | Retry | Reject:  # what thaw.Outcome stands for
            return Ok(b"")

    with pytest.raises(ConfigError, match=r"capability 'refuse' .* return Reject: functions"):

        @app.capability()
        async def refuse() -> Reject | None:
            return None

    assert app.capabilities == {}
