"""Context: publish with derived message ids, KV access, trace, deadline, logging."""

from __future__ import annotations

import logging

import pytest

from thaw import App, Context, Event, Ok, Reject, Retry
from thaw.invocation._invoker import Invoker
from thaw.lowlevel import KvConfig, StreamConfig, parse_traceparent
from thaw.testing import FakeClock, MemoryBackbone

pytestmark = pytest.mark.anyio
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_publish_derives_message_ids_so_redelivery_is_deduplicated() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    await backbone.add_stream(StreamConfig(name="OUT", subjects=("out.>",)))
    app = App("ctx")

    @app.capability()
    async def fanout(ctx: Context) -> list[int]:
        first = await ctx.publish("out.a", {"n": 1})
        second = await ctx.publish("out.b", b"raw")
        return [first.seq, second.seq]

    invoker = Invoker(app, backbone=backbone, clock=clock)
    first = await invoker.invoke("fanout", Event(id="in-1", traceparent=TRACE))
    redelivered = await invoker.invoke("fanout", Event(id="in-1", attempt=2))
    assert first == Ok(b"[1,2]")
    assert redelivered == Ok(b"[1,2]")  # duplicates: same sequences, nothing new stored
    info = await backbone.stream_info("OUT")
    assert info.messages == 2
    stored = await backbone.get_message("OUT", 1)
    assert stored.headers["Nats-Msg-Id"] == "in-1/fanout/1"
    assert stored.data == b'{"n":1}'
    child = parse_traceparent(stored.headers["traceparent"])
    assert child is not None
    assert child.trace_id == "0af7651916cd43dd8448eb211c80319c"  # same trace
    assert child.span_id != "b7ad6b7169203331"  # new span


async def test_explicit_message_id_and_headers() -> None:
    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="OUT", subjects=("out.>",)))
    app = App("ctx")

    @app.capability()
    async def send(ctx: Context) -> None:
        await ctx.publish("out.x", b"1", msg_id="fixed", headers={"Kind": "test"})

    await Invoker(app, backbone=backbone).invoke("send", Event(id="e"))
    stored = await backbone.get_message("OUT", 1)
    assert stored.headers["Nats-Msg-Id"] == "fixed"
    assert stored.headers["Kind"] == "test"


async def test_kv_access_through_the_context() -> None:
    backbone = MemoryBackbone()
    await backbone.add_kv(KvConfig(bucket="ledger"))
    app = App("ctx")

    @app.capability()
    async def credit(amount: int, ctx: Context) -> int:
        ledger = await ctx.kv("ledger")
        entry = await ledger.get("balance")
        balance = int(entry.value) if entry else 0
        if entry is None:
            await ledger.create("balance", str(balance + amount).encode())
        else:
            await ledger.update("balance", str(balance + amount).encode(), last=entry.revision)
        return balance + amount

    invoker = Invoker(app, backbone=backbone)
    assert await invoker.invoke("credit", Event(id="1", data=b"5")) == Ok(b"5")
    assert await invoker.invoke("credit", Event(id="2", data=b"7")) == Ok(b"12")


async def test_missing_bucket_is_a_retryable_backbone_error() -> None:
    app = App("ctx")

    @app.capability()
    async def use(ctx: Context) -> None:
        await ctx.kv("nope")

    outcome = await Invoker(app, backbone=MemoryBackbone(), rand=lambda: 0).invoke(
        "use", Event(id="1")
    )
    assert isinstance(outcome, Retry)
    assert outcome.code == "bucket_not_found"


async def test_publish_without_backbone_is_a_clear_config_reject() -> None:
    app = App("ctx")

    @app.capability()
    async def send(ctx: Context) -> None:
        await ctx.publish("x", b"")

    outcome = await Invoker(app).invoke("send", Event(id="1"))
    assert isinstance(outcome, Reject)
    assert outcome.code == "config_invalid"
    assert "no backbone" in outcome.reason


async def test_deadline_attempt_and_remaining() -> None:
    clock = FakeClock()
    app = App("ctx")
    seen: list[tuple[int, float, float]] = []

    @app.capability(timeout=3)
    async def look(ctx: Context) -> None:
        seen.append((ctx.attempt, ctx.deadline - clock.now(), ctx.remaining()))

    await Invoker(app, clock=clock).invoke("look", Event(id="1", attempt=4))
    assert seen == [(4, 3.0, 3.0)]


async def test_new_trace_when_none_or_invalid(caplog: pytest.LogCaptureFixture) -> None:
    app = App("ctx")
    traces: list[str] = []

    @app.capability()
    async def trace(ctx: Context) -> None:
        traces.append(ctx.trace.trace_id)
        ctx.log.info("hello")

    invoker = Invoker(app)
    with caplog.at_level(logging.INFO, logger="thaw.app.ctx"):
        await invoker.invoke("trace", Event(id="1", traceparent="garbage"))
        await invoker.invoke("trace", Event(id="2", traceparent=TRACE))
    assert len(traces[0]) == 32 and traces[0] != "0" * 32
    assert traces[1] == "0af7651916cd43dd8448eb211c80319c"
    assert f"[{traces[1]} trace] hello" in caplog.text
