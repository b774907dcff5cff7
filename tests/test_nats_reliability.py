"""Reliability of a host on JetStream, against a real nats-server.

Two hosts racing on the same events, poison messages and dead-letter replay, a
server restart under a running host, output dedupe on redelivery, and trace
context across a hop. Waits are bounded (``wait_until`` / ``anyio.fail_after``);
nothing sleeps to let a race settle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import pytest
from _host_process import CONCURRENCY, Payment, ledger_app, ledger_bucket, marks_bucket, subject_of
from nats_fixtures import (  # noqa: F401
    JetStreamHarness,
    end_process,
    jetstream_harness,
    nats_server,
    remove_app,
    wait_ready,
    wait_until,
)

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    Idempotency,
    KeyExists,
    RetryLater,
    RetryPolicy,
    stream,
)
from thaw.adapters.nats import (
    EmbeddedServer,
    JetStreamBackbone,
    ServerConfig,
    open_jetstream_backbone,
)
from thaw.host._dead_letters import replay_dead_letter
from thaw.lowlevel import (
    BackboneError,
    Host,
    RetryBudget,
    StoredMessage,
    apply_plan,
    list_dead_letters,
    open_host,
    plan_for,
)

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.01, maximum=0.05, jitter=0))


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


@asynccontextmanager
async def serving(app: App, *backbones: JetStreamBackbone) -> AsyncIterator[list[Host]]:
    """One host per backbone connection; afterwards the app's streams and buckets go."""
    hosts: list[Host] = []
    try:
        async with AsyncExitStack() as stack:
            for backbone in backbones:
                host = open_host(
                    app,
                    backbone,
                    fetch_timeout=0.2,
                    drain_timeout=5.0,
                    budget=RetryBudget(burst=1000.0, min_per_second=1000.0),
                )
                hosts.append(await stack.enter_async_context(host))
            yield hosts
    finally:
        await remove_app(backbones[0], app)


async def _settled(backbone: JetStreamBackbone, host: Host, capability: str) -> bool:
    consumer = next(c for c in host.plan.consumers if c.capability == capability)
    info = await backbone.client.jsm().consumer_info(consumer.stream, consumer.config.durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _stored(backbone: JetStreamBackbone, stream_name: str) -> list[StoredMessage]:
    info = await backbone.stream_info(stream_name)
    return [await backbone.get_message(stream_name, seq) for seq in range(1, info.last_seq + 1)]


# -- (a) two hosts racing -------------------------------------------------------------------


async def test_two_hosts_racing_on_the_same_orders_run_each_side_effect_once(
    jetstream_harness: JetStreamHarness,  # noqa: F811
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    """Every order arrives twice (two messages, one idempotency key) and two hosts compete
    for them: the ledger gets one entry per order and the function body commits once."""
    prefix = jetstream_harness.prefix
    app = App(f"{prefix}race")
    committed: list[str] = []
    doubled: list[str] = []

    @app.capability(
        stream(f"{prefix}.orders"),
        idempotency=Idempotency(key=lambda event, order: order.order_id),
        concurrency=16,
        retry=FAST_RETRY,
        access=Access(buckets=(f"{prefix}ledger",)),
    )
    async def book(order: Order, ctx: Context) -> dict[str, int]:
        ledger = await ctx.kv(f"{prefix}ledger")
        try:
            await ledger.create(order.order_id, str(order.amount).encode())
        except KeyExists:
            doubled.append(order.order_id)  # the side effect ran a second time
            raise
        committed.append(order.order_id)
        return {"amount": order.amount}

    orders = [Order(f"o{index}", index + 1) for index in range(40)]
    second = await JetStreamBackbone.connect(nats_server.url)
    try:
        async with serving(app, jetstream_harness.backbone, second) as hosts:
            publisher = jetstream_harness.backbone
            for copy in ("a", "b"):
                for order in orders:
                    data = msgspec.json.encode(order)
                    await publisher.publish(
                        f"{prefix}.orders", data, msg_id=f"{order.order_id}-{copy}"
                    )

            async def all_done() -> bool:
                return len(committed) >= len(orders) and await _settled(publisher, hosts[0], "book")

            await wait_until(all_done, limit=20)
            ledger = await publisher.kv(f"{prefix}ledger")
            total = 0
            for order in orders:
                entry = await ledger.get(order.order_id)
                assert entry is not None
                total += int(entry.value)
            acked = sum(host.statistics().workers["book"].acked for host in hosts)
    finally:
        await second.aclose()
    assert sorted(committed) == sorted(order.order_id for order in orders)
    assert doubled == []
    assert total == sum(order.amount for order in orders)
    assert acked == 2 * len(orders)  # the duplicates were answered with the stored result


# -- (b) poison message, dead letter, replay ------------------------------------------------


async def test_a_poison_message_is_dead_lettered_with_headers_and_replayed_later(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    prefix = jetstream_harness.prefix
    backbone = jetstream_harness.backbone
    app = App(f"{prefix}poison")
    broken = {"p1"}
    attempts: dict[str, int] = {}
    done: list[str] = []

    @app.capability(stream(f"{prefix}.jobs"), retry=FAST_RETRY, concurrency=4)
    async def work(order: Order) -> None:
        attempts[order.order_id] = attempts.get(order.order_id, 0) + 1
        if order.order_id in broken:
            raise RuntimeError("the downstream is down")
        done.append(order.order_id)

    async with serving(app, backbone):
        poison = await backbone.publish(
            f"{prefix}.jobs", msgspec.json.encode(Order("p1", 1)), msg_id="job-p1"
        )
        for index in range(5):  # other messages flow meanwhile
            data = msgspec.json.encode(Order(f"g{index}", index))
            await backbone.publish(f"{prefix}.jobs", data, msg_id=f"job-g{index}")

        async def dead_lettered() -> bool:
            return len(await list_dead_letters(backbone, app=app.name)) == 1

        await wait_until(dead_lettered)
        await wait_until(lambda: _true_when(len(done) == 5))
        [record] = await list_dead_letters(backbone, app=app.name)
        assert attempts["p1"] == 3
        assert record.headers["Thaw-Attempts"] == "3"
        assert record.headers["Thaw-Error-Code"] == "handler_error"
        assert "Thaw-Error-Message" in record.headers
        assert "Traceback" not in record.headers["Thaw-Error-Message"]
        assert record.headers["Thaw-Original-Subject"] == f"{prefix}.jobs"
        assert record.headers["Thaw-Original-Stream"] == poison.stream
        assert record.headers["Thaw-Original-Seq"] == str(poison.seq)
        assert (record.headers["Thaw-App"], record.headers["Thaw-Capability"]) == (
            app.name,
            "work",
        )
        assert msgspec.json.decode(record.data, type=Order) == Order("p1", 1)

        broken.clear()  # the downstream is back
        await replay_dead_letter(backbone, record.seq)
        await wait_until(lambda: _true_when("p1" in done))
        assert attempts["p1"] == 4
        assert await list_dead_letters(backbone, app=app.name) == []


async def _true_when(condition: bool) -> bool:
    return condition


# -- (c) server restart ---------------------------------------------------------------------


async def _publish_surely(backbone: JetStreamBackbone, subject: str, order: Order) -> None:
    """Publish until the stream acknowledges (a client's job across a restart); the
    message id makes a repeat of a publish whose ack was lost harmless."""
    data = msgspec.json.encode(order)
    with anyio.fail_after(30):
        while True:
            try:
                await backbone.publish(subject, data, msg_id=order.order_id)
                return
            except BackboneError:
                await anyio.sleep(0.1)  # reconnecting, or the stream is not back yet


async def test_a_host_keeps_consuming_across_a_server_restart_under_load(tmp_path: Path) -> None:
    """The server restarts while every call slot holds a call that posted to the ledger
    but is not acked, more messages wait in the stream, and publishing goes on: nothing
    is lost, nothing is posted twice, nothing is dead-lettered."""
    server = EmbeddedServer(ServerConfig(store_dir=str(tmp_path / "store")))
    await anyio.to_thread.run_sync(server.start)
    app = App("restarts")
    slots, waiting = 4, 8
    posted: list[str] = []
    again: list[str] = []
    held: list[str] = []
    gate = anyio.Event()

    @app.capability(
        stream("restarts.jobs"),
        idempotency=Idempotency(key=lambda event, order: order.order_id),
        concurrency=slots,
        retry=FAST_RETRY,
        access=Access(buckets=("restarts_ledger",)),
    )
    async def work(order: Order, ctx: Context) -> None:
        ledger = await ctx.kv("restarts_ledger")
        try:
            await ledger.create(order.order_id, str(order.amount).encode())
        except KeyExists:
            again.append(order.order_id)  # an earlier execution posted it: not doubled
            return
        posted.append(order.order_id)
        if not gate.is_set():
            held.append(order.order_id)
            await gate.wait()

    before = [Order(f"before{index}", index) for index in range(slots + waiting)]
    during = [Order(f"during{index}", index) for index in range(10)]
    after = [Order(f"after{index}", index) for index in range(5)]
    try:
        async with (
            open_jetstream_backbone(server.url) as backbone,
            serving(app, backbone) as [host],
        ):
            [consumer] = host.plan.consumers
            for order in before:
                await _publish_surely(backbone, "restarts.jobs", order)
            await wait_until(lambda: _true_when(len(held) == slots))
            info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
            assert (info.num_ack_pending, info.num_pending) == (slots, waiting)  # under load

            async def publish_during() -> None:
                for order in during:
                    await _publish_surely(backbone, "restarts.jobs", order)

            async with anyio.create_task_group() as group:
                group.start_soon(publish_during)
                await anyio.to_thread.run_sync(server.restart)
            gate.set()  # the calls in flight across the restart finish now
            for order in after:
                await _publish_surely(backbone, "restarts.jobs", order)

            expected = {order.order_id for order in before + during + after}

            async def all_done() -> bool:
                return set(posted) == expected and await _settled(backbone, host, "work")

            await wait_until(all_done, limit=30)
            assert await list_dead_letters(backbone, app=app.name) == []
            ledger = await backbone.kv("restarts_ledger")
            assert sorted(await ledger.keys()) == sorted(expected)
        assert sorted(posted) == sorted(expected)  # each posted exactly once
        assert set(again) <= set(held)  # only calls caught by the restart may run again
    finally:
        await anyio.to_thread.run_sync(server.stop)


# -- (d) output dedupe, (e) trace context ---------------------------------------------------


def relay_app(prefix: str, traces: list[str]) -> App:
    """Publishes one output per input, then fails its first attempt after publishing."""
    app = App(f"{prefix}relay")

    @app.capability(
        stream(f"{prefix}.in"),
        retry=FAST_RETRY,
        access=Access(publishes=(f"{prefix}.out",)),
    )
    async def relay(order: Order, ctx: Context) -> None:
        traces.append(ctx.trace.traceparent)
        await ctx.publish(f"{prefix}.out", {"order_id": order.order_id})
        if ctx.attempt == 1:
            raise RetryLater("crash after the publish, before the ack")

    return app


async def _relay_once(
    harness: JetStreamHarness, headers: dict[str, str]
) -> tuple[list[str], list[StoredMessage]]:
    prefix, backbone = harness.prefix, harness.backbone
    traces: list[str] = []
    app = relay_app(prefix, traces)
    async with serving(app, backbone) as [host]:
        data = msgspec.json.encode(Order("r1", 1))
        ack = await backbone.publish(f"{prefix}.in", data, headers=headers, msg_id="in-r1")
        await wait_until(lambda: _true_when(len(traces) == 2))
        await wait_until(lambda: _settled(backbone, host, "relay"))
        stored = await _stored(backbone, ack.stream)
    return traces, [message for message in stored if message.subject == f"{prefix}.out"]


async def test_a_redelivered_input_does_not_duplicate_its_outputs(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    traces, outputs = await _relay_once(jetstream_harness, {})
    assert len(traces) == 2  # the function ran twice and published twice
    [output] = outputs  # the stream kept one copy
    assert output.headers["Nats-Msg-Id"].startswith("in-r1/relay/")
    assert json.loads(output.data) == {"order_id": "r1"}


async def test_traceparent_goes_from_the_input_into_ctx_trace_and_out_on_publishes(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    incoming = f"00-{trace_id}-{span_id}-01"
    traces, [output] = await _relay_once(jetstream_harness, {"traceparent": incoming})
    assert traces == [incoming, incoming]
    outgoing = output.headers["traceparent"]
    assert outgoing.startswith(f"00-{trace_id}-") and outgoing.endswith("-01")
    assert outgoing.split("-")[2] != span_id  # a child span, not the parent's


# -- (f) kill -9 a host in the middle of a batch ---------------------------------------------

HOST_SCRIPT = Path(__file__).resolve().parent / "_host_process.py"
ROOT = HOST_SCRIPT.parent.parent
KILL_ACK_WAIT = 2.0  # AckWait of the test's consumer: a killed host's messages come back soon


def _start_host(url: str, prefix: str, log: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, str(HOST_SCRIPT), url, prefix, "--ack-wait", str(KILL_ACK_WAIT)]
    with open(log, "a") as stderr:
        return subprocess.Popen(
            [*command, *extra], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )


async def test_a_host_killed_mid_batch_loses_nothing_and_doubles_no_ledger_entry(
    jetstream_harness: JetStreamHarness,  # noqa: F811
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """kill -9 while calls have posted to the ledger but neither acked nor stored their
    result; a new host processes the rest, and re-runs exactly the interrupted calls,
    which find their posting and do not double it."""
    prefix, backbone = jetstream_harness.prefix, jetstream_harness.backbone
    count, stall_after = 48, 8
    app = ledger_app(prefix)
    plan = plan_for(app, ack_wait=KILL_ACK_WAIT)
    await apply_plan(plan, backbone)
    [consumer] = plan.consumers
    payments = {f"p{index:03d}": 100 + index for index in range(count)}
    for payment_id, amount in payments.items():
        data = msgspec.json.encode(Payment(payment_id, amount))
        await backbone.publish(subject_of(prefix), data, msg_id=payment_id)
    ledger = await backbone.kv(ledger_bucket(prefix))
    marks = await backbone.kv(marks_bucket(prefix))

    async def pending() -> tuple[int, int]:
        info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
        return info.num_pending, info.num_ack_pending

    async def marked(kind: str) -> list[str]:
        return [key.split(".")[1] for key in await marks.keys() if key.startswith(f"{kind}.")]

    log = tmp_path / "hosts.log"
    first = _start_host(nats_server.url, prefix, log, "--stall-after", str(stall_after))
    second: subprocess.Popen[str] | None = None
    try:
        await anyio.to_thread.run_sync(wait_ready, first, log)

        async def stalled_and_the_rest_acked() -> bool:
            # Every slot holds a call that posted and hangs; all earlier calls were acked.
            stalls = await marked("stall")
            return len(stalls) == CONCURRENCY and (await pending())[1] == CONCURRENCY

        await wait_until(stalled_and_the_rest_acked, limit=30)
        first.kill()  # SIGKILL, by PID
        await anyio.to_thread.run_sync(first.wait, 10)
        interrupted = set(await marked("stall"))
        posted_at_kill = set(await ledger.keys())
        assert interrupted <= posted_at_kill
        assert stall_after + CONCURRENCY <= len(posted_at_kill) < count  # in mid-batch

        second = _start_host(nats_server.url, prefix, log)
        await anyio.to_thread.run_sync(wait_ready, second, log)

        async def all_settled() -> bool:
            return len(await ledger.keys()) == count and await pending() == (0, 0)

        await wait_until(all_settled, limit=60)
        second.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(second.wait, 30) == 0, log.read_text()[-2000:]
    finally:
        for process in (first, second):
            if process is not None:
                await anyio.to_thread.run_sync(end_process, process)

    for payment_id, amount in payments.items():  # one posting each, the right amount
        entry = await ledger.get(payment_id)
        assert entry is not None and entry.value == str(amount).encode(), payment_id
    runs = Counter(await marked("run"))
    assert set(runs) == set(payments)
    rerun = {payment_id for payment_id, times in runs.items() if times > 1}
    assert rerun == interrupted  # finished calls never ran again, interrupted ones did
    assert set(await marked("again")) == interrupted  # ... and found their posting
    assert await list_dead_letters(backbone, app=app.name) == []
