"""Every trigger kind's invocations add up in /metrics: http, subject, stream, schedule, kv
and ctx.call, on the MemoryBackbone (TestHost on a FakeClock, so message ages are exact),
with the families and labels other tools code against, bounded and escaped."""

from __future__ import annotations

import re
import time

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_http_metrics import Samples, parse, value

from thaw import (
    App,
    Context,
    Event,
    Ok,
    Reject,
    Rejected,
    RetryPolicy,
    Tick,
    http,
    kv,
    schedule,
    stream,
    subject,
)
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS
from thaw.adapters.http.in_process import open_in_process_http
from thaw.adapters.http.metrics import CapabilityMetrics, ServerCounters, render
from thaw.lowlevel import Accounting, MemoryBackbone, RetryBudget, open_host
from thaw.testing import FakeClock, TestHost

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct):
    amount: int


def counted_app() -> App:
    app = App("counted")

    @app.capability(http("POST", "/orders"))
    async def place(order: Order, ctx: Context) -> dict[str, int]:
        doubled = await ctx.call("double", order)
        return {"amount": msgspec.json.decode(doubled.data)["amount"]}  # type: ignore[union-attr]

    @app.capability()
    async def double(order: Order) -> dict[str, int]:
        sum(range(20_000))  # some CPU for the first (always sampled) call to show
        return {"amount": order.amount * 2}

    @app.capability(stream("jobs.run"), retry=RetryPolicy(max_attempts=2))
    async def run(order: Order) -> None:
        if order.amount < 0:
            raise Rejected("negative", code="amount_negative")
        if order.amount == 0:
            raise RuntimeError("zero fails every attempt")

    @app.capability(schedule("* * * * *"))
    async def tick(when: Tick) -> None:
        return None

    @app.capability(subject("svc.echo"))
    async def echo(data: bytes) -> bytes:
        return data

    @app.capability(kv("settings"))
    async def watch() -> None:
        return None

    return app


async def scrape(th: TestHost) -> Samples:
    """The host's /metrics, as ``thaw serve`` answers it (for apps without http triggers
    too, which ``th.http`` does not serve)."""
    async with open_in_process_http(th.host) as client:
        response = await client.get("/metrics")
    assert response.status == 200
    _, samples = parse(response.text)
    return samples


def total(samples: Samples, capability: str, trigger: str, outcome: str, code: str = "") -> float:
    labels = {"capability": capability, "trigger": trigger, "outcome": outcome, "code": code}
    return value(samples, "thaw_invocations_total", **labels)


def calls(samples: Samples, capability: str, trigger: str) -> float:
    name = "thaw_invocation_duration_seconds_count"
    return value(samples, name, capability=capability, trigger=trigger)


async def test_every_trigger_kind_counts_once_with_its_trigger_label() -> None:
    async with TestHost(counted_app()) as th:
        for amount in (1, 2):
            assert (await th.http.post("/orders", json={"amount": amount})).status == 200
        assert (await th.request("svc.echo", b"ping")).data == b"ping"  # type: ignore[union-attr]
        for amount in (5, -1, 0):
            await th.publish("jobs.run", {"amount": amount})
        await th.settle()
        await th.advance(60)  # a tick, and the failed run's backoff passes
        bucket = await th.backbone.kv("settings")
        await bucket.put("mode", b"fast")
        await th.settle()
        await th.advance(600)  # every retry is due: the zero run gives up
        samples = await scrape(th)
    assert total(samples, "place", "http", "ok") == 2
    assert calls(samples, "place", "http") == 2
    assert total(samples, "double", "call", "ok") == 2  # ctx.call, not http
    assert calls(samples, "double", "call") == 2
    assert total(samples, "echo", "subject", "ok") == 1
    assert total(samples, "run", "stream", "ok") == 1
    assert total(samples, "run", "stream", "reject", "amount_negative") == 1
    assert total(samples, "run", "stream", "retry", "handler_error") == 1
    assert total(samples, "run", "stream", "reject", "handler_error") == 1  # gave up
    assert calls(samples, "run", "stream") == 4
    assert total(samples, "tick", "schedule", "ok") >= 1
    assert total(samples, "watch", "kv", "ok") == 1
    # No double counting: each capability has exactly the series of the kinds that reached it.
    triggers = {
        (dict(labels)["capability"], dict(labels)["trigger"])
        for (name, labels), count in samples.items()
        if name == "thaw_invocation_duration_seconds_count" and count
    }
    assert triggers == {
        ("place", "http"),
        ("double", "call"),
        ("echo", "subject"),
        ("run", "stream"),
        ("tick", "schedule"),
        ("watch", "kv"),
    }
    # Bytes: what came in and what went out, per capability.
    assert value(samples, "thaw_invocation_bytes_in_total", capability="echo") == 4
    assert value(samples, "thaw_invocation_bytes_out_total", capability="echo") == 4
    assert value(samples, "thaw_invocation_bytes_out_total", capability="double") == len(
        b'{"amount":2}'
    ) + len(b'{"amount":4}')
    assert value(samples, "thaw_invocation_cpu_seconds_total", capability="double") > 0
    for name in ("place", "double", "run", "tick", "echo", "watch"):
        assert value(samples, "thaw_invocations_in_flight", capability=name) == 0


async def test_message_age_counts_every_delivery_and_completion_every_message_once() -> None:
    async with TestHost(counted_app()) as th:
        for amount in (5, -1, 0):
            await th.publish("jobs.run", {"amount": amount})
        await th.settle()
        await th.advance(600)  # the zero run's retry comes after its backoff, then gives up
        samples = await scrape(th)
    age = "thaw_message_age_seconds"
    done = "thaw_message_completion_seconds"
    run = {"capability": "run"}
    assert value(samples, f"{age}_count", **run) == 4  # three first deliveries, one retry
    assert value(samples, f"{done}_count", **run) == 3  # ack, dead letter, dead letter
    # On the FakeClock the first deliveries start at once; the retry waited its backoff.
    assert value(samples, f"{age}_bucket", **run, le=repr(AGE_BOUNDS[0])) == 3
    assert value(samples, f"{age}_sum", **run) > 0
    assert value(samples, f"{done}_sum", **run) == value(samples, f"{age}_sum", **run)
    # Capabilities without message triggers have no age series.
    assert (f"{age}_count", frozenset({("capability", "place")})) not in samples


async def test_the_retry_budget_refusals_and_dead_letters_show() -> None:
    app = App("budgeted")

    @app.capability(stream("work.do"), retry=RetryPolicy(max_attempts=5))
    async def fail() -> None:
        raise RuntimeError("always")

    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, burst=1.0, clock=clock)
    async with (
        open_host(app, backbone, clock=clock, budget=budget, fetch_timeout=0.05) as host,
        open_in_process_http(host) as client,
    ):
        for n in range(3):
            await backbone.publish("work.do", str(n).encode())
        worker = host.workers["fail"]
        with anyio.fail_after(10):
            while True:
                if worker.statistics().naked == 3:
                    break
                await anyio.sleep(0.01)  # the worker's progress has no event to wait on
        response = await client.get("/metrics")
        _, samples = parse(response.text)
    assert value(samples, "thaw_retry_budget_refusals_total") == 2  # one token, three retries
    assert total(samples, "fail", "stream", "retry", "handler_error") == 3


async def test_function_codes_stay_bounded_whatever_the_function_raises() -> None:
    app = App("codes")

    @app.capability(stream("codes.in"), retry=RetryPolicy(max_attempts=1))
    async def coded(order: Order) -> None:
        raise Rejected("no", code=f"code_{order.amount}")

    async with TestHost(app) as th:
        for amount in range(60):
            await th.publish("codes.in", {"amount": amount})
        await th.settle()
        samples = await scrape(th)
    codes = {
        dict(labels)["code"]
        for (name, labels) in samples
        if name == "thaw_invocations_total" and dict(labels)["capability"] == "coded"
    }
    assert len(codes) <= 32 + 2  # the capability's own, "other" and ok's ""
    other = total(samples, "coded", "stream", "reject", "other")
    own = sum(
        total(samples, "coded", "stream", "reject", c) for c in codes if c.startswith("code_")
    )
    assert own + other == 60


async def test_an_app_without_http_triggers_still_answers_metrics() -> None:
    app = App("quiet")

    @app.capability(stream("quiet.in"))
    async def absorb() -> None:
        return None

    async with TestHost(app) as th:
        await th.publish("quiet.in", b"")
        await th.settle()
        samples = await scrape(th)
        async with open_in_process_http(th.host) as client:
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 200
    assert total(samples, "absorb", "stream", "ok") == 1


def test_accounting_refuses_unknown_triggers_and_bad_sampling() -> None:
    from thaw import ConfigError

    accounting = Accounting()
    with pytest.raises(ConfigError, match="trigger 'carrier_pigeon'"):
        accounting.series("x", "carrier_pigeon")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="cpu_sample_every"):
            Accounting(cpu_sample_every=bad)  # type: ignore[arg-type]


def test_every_histogram_uses_the_shared_bounds() -> None:
    metrics = CapabilityMetrics("c")
    metrics.declared = frozenset({"stream"})
    metrics.observe(Ok(b"{}"), 0.0003)
    text = render(
        [metrics], ServerCounters(), connections_open=0, connections_total=0, requests_in_flight=0
    ).decode()
    for family, bounds in (
        ("thaw_invocation_duration_seconds", LATENCY_BOUNDS),
        ("thaw_message_age_seconds", AGE_BOUNDS),
        ("thaw_message_completion_seconds", AGE_BOUNDS),
    ):
        found = re.findall(rf'^{family}_bucket{{[^}}]*le="([^"]+)"}}', text, re.M)
        assert found[:-1] == [repr(b) for b in bounds] and found[-1] == "+Inf", family


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(min_size=1, max_size=40),
    codes=st.lists(st.text(max_size=80), max_size=50),
)
def test_hostile_names_and_codes_are_escaped_and_bounded(name: str, codes: list[str]) -> None:
    metrics = CapabilityMetrics(name)
    for code in codes:
        metrics.observe(Reject(code, "no"), 0.001, trigger="stream")
    text = render(
        [metrics], ServerCounters(), connections_open=0, connections_total=0, requests_in_flight=0
    ).decode()
    _, samples = parse(text)  # the strict parser: every line is a valid sample
    seen = {
        dict(labels)["code"]
        for (family, labels) in samples
        if family == "thaw_invocations_total" and dict(labels)["capability"] == name
    }
    assert len(seen) <= 32 + 2
    assert all(code == "" or re.fullmatch(r"[a-z][a-z0-9_]{0,63}", code) for code in seen)
    rejected = sum(
        count
        for (family, labels), count in samples.items()
        if family == "thaw_invocations_total" and dict(labels).get("outcome") == "reject"
    )
    assert rejected == len(codes)


def test_a_jetstream_delivery_knows_its_age_from_the_ack_subject() -> None:
    import time

    from thaw.lowlevel import DeliveredMessage

    stamp = time.time_ns() - 2_500_000_000  # published 2.5 s ago
    short = f"$JS.ACK.ORDERS.work.1.7.7.{stamp}.0"
    long = f"$JS.ACK.hub.ACCHASH.ORDERS.work.1.7.7.{stamp}.0.token"
    for reply in (short, long):
        age = DeliveredMessage("orders.x", reply, b"", None).age()
        assert age is not None and 2.4 < age < 2.5 + 60  # bounded by this test's run time
    for stamp_token in ("0", "x1", "-5"):
        bad = f"$JS.ACK.ORDERS.work.1.7.7.{stamp_token}.0"
        assert DeliveredMessage("orders.x", bad, b"", None).age() is None


waiting = App("waiting")


@waiting.capability(subject("svc.wait"))
async def wait_a_while(payload: bytes) -> bytes:
    await anyio.sleep(0.05)  # waits: the CPU the loop spends meanwhile is not its own
    return payload


@pytest.mark.anyio
async def test_a_waiting_invocation_does_not_count_the_cpu_of_what_runs_meanwhile() -> None:
    """CPU is read around an invocation's own steps, so a concurrent busy task's CPU is
    not counted in a capability that only waits (it was, with a clock read around the
    whole call: thaw cost found 436 s of invocation CPU in 15.8 s of process CPU)."""
    accounting = Accounting(cpu_sample_every=1)  # every call measured
    burnt: list[float] = []

    async def burn() -> None:
        start = time.thread_time()
        until = time.monotonic() + 0.04
        while time.monotonic() < until:  # CPU on the loop while the capability waits
            pass
        burnt.append(time.thread_time() - start)

    async with open_host(waiting, MemoryBackbone(), accounting=accounting) as host:
        async with anyio.create_task_group() as tasks:
            event = Event(id="w1", data=b"x", subject="svc.wait")
            tasks.start_soon(host.invoke, "wait_a_while", event)
            await anyio.lowlevel.checkpoint()  # the invocation is waiting now
            tasks.start_soon(burn)
        account = accounting.account("wait_a_while")
    assert burnt and burnt[0] > 0
    assert account.cpu_seconds < burnt[0] / 2, (account.cpu_seconds, burnt)
