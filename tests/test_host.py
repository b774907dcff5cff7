"""Provisioning from capability specs, access allow-lists, and the host on MemoryBackbone."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from thaw import Access, App, Context, Event, Idempotency, Ok, Reject, RetryPolicy, stream
from thaw._errors import ConfigError, DefinitionConflict
from thaw.host._host import open_host
from thaw.host._provision import apply_plan, idempotency_bucket_for, plan_for
from thaw.lowlevel import DEAD_LETTER_STREAM, StreamConfig
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


def shop(effects: list[str]) -> App:
    app = App("shop")

    @app.capability(
        stream("shop.orders.created"),
        retry=RetryPolicy(max_attempts=4),
        idempotency=Idempotency(key=lambda event, order: order.order_id),
        concurrency=8,
        access=Access(publishes=("shop.invoices.>",), buckets=("totals",)),
    )
    async def invoice(order: Order, ctx: Context) -> dict[str, int]:
        totals = await ctx.kv("totals")
        entry = await totals.get("sum")
        current = int(entry.value) if entry else 0
        if entry is None:
            await totals.create("sum", str(current + order.amount).encode())
        else:
            await totals.update("sum", str(current + order.amount).encode(), last=entry.revision)
        effects.append(order.order_id)  # committed: a lost CAS race raised before this line
        await ctx.publish(f"shop.invoices.{order.order_id}", {"amount": order.amount})
        return {"total": current + order.amount}

    @app.capability(stream("shop.audit", stream="AUDIT", durable="auditor"))
    async def audit(raw: bytes) -> None:
        return None

    return app


def test_plan_derives_streams_consumers_and_buckets() -> None:
    plan = plan_for(shop([]))
    streams = {s.name: s for s in plan.streams}
    assert streams["SHOP"].subjects == ("shop.orders.created", "shop.invoices.>")
    assert streams["AUDIT"].subjects == ("shop.audit",)
    assert DEAD_LETTER_STREAM in streams
    consumers = {c.capability: c for c in plan.consumers}
    invoice = consumers["invoice"]
    assert (invoice.stream, invoice.config.durable) == ("SHOP", "shop-invoice")
    assert invoice.config.filter_subject == "shop.orders.created"
    # The worker counts the 4 attempts; the server never gives a message up on its own.
    assert invoice.config.max_deliver == -1
    assert invoice.config.max_ack_pending == 16  # concurrency 8, and room for a dead host's 8
    assert consumers["audit"].config.durable == "auditor"
    assert {b.bucket for b in plan.buckets} == {"totals", "thaw_idempotency_shop"}
    assert any("consumer SHOP/shop-invoice" in line for line in plan.describe())


def test_covered_subjects_are_not_repeated() -> None:
    app = App("covered")

    @app.capability(stream("a.b"), access=Access(publishes=("a.>", "a.c")))
    async def f() -> None:
        return None

    assert next(s for s in plan_for(app).streams if s.name == "COVERED").subjects == ("a.>",)


async def test_apply_is_idempotent_and_conflicts_are_reported() -> None:
    backbone = MemoryBackbone()
    plan = plan_for(shop([]))
    await apply_plan(plan, backbone)
    await apply_plan(plan, backbone)  # confirming identical definitions is fine
    other = MemoryBackbone()
    await other.add_stream(StreamConfig(name="SHOP", subjects=("shop.other",)))
    with pytest.raises(DefinitionConflict, match="subjects"):
        await apply_plan(plan, other)


async def test_access_denies_undeclared_subjects_and_buckets() -> None:
    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="ALL", subjects=("x.>",)))
    app = App("locked")

    @app.capability(access=Access(publishes=("x.allowed",), buckets=()))
    async def sneaky(ctx: Context) -> None:
        await ctx.publish("x.forbidden", b"")

    @app.capability(access=Access(publishes=("x.allowed",)))
    async def bucketeer(ctx: Context) -> None:
        await ctx.kv("secrets")

    from thaw.lowlevel import Invoker

    invoker = Invoker(app, backbone=backbone)
    outcome = await invoker.invoke("sneaky", Event(id="1"))
    assert isinstance(outcome, Reject)
    assert outcome.code == "access_denied"
    assert "x.forbidden" in outcome.reason
    outcome = await invoker.invoke("bucketeer", Event(id="1"))
    assert isinstance(outcome, Reject)
    assert "secrets" in outcome.reason


def test_access_validation() -> None:
    with pytest.raises(ConfigError):
        Access(publishes="a.b")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Access(publishes=("bad subject",))
    with pytest.raises(ConfigError):
        Access(buckets=("no.dots",))


async def test_host_consumes_streams_end_to_end_and_drains() -> None:
    effects: list[str] = []
    backbone = MemoryBackbone()
    app = shop(effects)
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=5) as host:
        for order_id, amount in (("o1", 5), ("o2", 7), ("o1", 5)):  # o1 twice: idempotent
            await backbone.publish(
                "shop.orders.created",
                msgspec.json.encode({"order_id": order_id, "amount": amount}),
                msg_id=f"{order_id}-{amount}-{len(effects)}-{anyio.current_time()}",
            )
        with anyio.fail_after(10):
            while host.statistics().workers["invoice"].acked < 3:
                await anyio.wait_all_tasks_blocked()
                await anyio.lowlevel.checkpoint()
        assert await host.invoke("audit", Event(id="x", data=b"{}")) == Ok(b"")
    assert effects == ["o1", "o2"]
    totals = await backbone.kv("totals")
    entry = await totals.get("sum")
    assert entry is not None
    assert entry.value == b"12"
    invoices = await backbone.stream_info("SHOP")
    assert invoices.messages == 5  # three orders and two invoices
    assert (await backbone.kv(idempotency_bucket_for(app))) is not None


async def test_two_hosts_compete_for_one_durable_consumer() -> None:
    backbone = MemoryBackbone()
    effects: list[str] = []
    app_one, app_two = shop(effects), shop(effects)
    async with (
        open_host(app_one, backbone, fetch_timeout=0.05) as one,
        open_host(app_two, backbone, fetch_timeout=0.05) as two,
    ):
        for i in range(40):
            await backbone.publish(
                "shop.orders.created",
                msgspec.json.encode({"order_id": f"o{i}", "amount": 1}),
                msg_id=f"m{i}",
            )
        with anyio.fail_after(10):
            while (
                one.statistics().workers["invoice"].acked
                + two.statistics().workers["invoice"].acked
                < 40
            ):
                await anyio.wait_all_tasks_blocked()
                await anyio.lowlevel.checkpoint()
    assert sorted(effects) == sorted(f"o{i}" for i in range(40))  # each committed once
    entry = await (await backbone.kv("totals")).get("sum")
    assert entry is not None
    assert entry.value == b"40"
    assert one.statistics().workers["invoice"].acked > 0  # both hosts took work
    assert two.statistics().workers["invoice"].acked > 0
