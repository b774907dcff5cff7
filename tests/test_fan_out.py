"""Fan-out / fan-in on both backbones: ``ctx.fan_out`` and ``@app.join`` under open_host.

The same scenarios run on MemoryBackbone and on a real nats-server: a join runs once
with every child's result; failed children are reported, not lost; a redelivered
parent makes no second batch and no second child; a redelivered child is counted
once; a deadline runs the join with what reported (or dead-letters the batch);
hostile batch headers and forged join signals are dead-lettered without running.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import pytest
from nats_fixtures import delete_new_streams, nats_server, stream_names, wait_until  # noqa: F401

from thaw import App, Backoff, Batch, Context, Rejected, RetryLater, RetryPolicy, stream
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.decisions._delivery import DEAD_LETTER_STREAM
from thaw.declarations._batches import (
    BATCH_HEADER,
    BATCH_INDEX_HEADER,
    BATCH_SIZE_HEADER,
    MAX_CHILD_RESULT,
    batch_bucket_for,
    join_subject,
)
from thaw.host._host import open_host
from thaw.host._provision import plan_for
from thaw.lowlevel import Backbone
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio

_names = itertools.count()
LIMIT = 20.0  # seconds any scenario may take before it fails
WINDOW = 0.5  # seconds: a duplicate window short enough to outlive in a test
QUICK = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.01, jitter=0.0))


@pytest.fixture(params=["memory", "nats"])
async def backbone(
    request: pytest.FixtureRequest,
    nats_server: EmbeddedServer,  # noqa: F811
) -> AsyncIterator[Backbone]:
    if request.param == "memory":
        yield MemoryBackbone()
        return
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        before = await stream_names(backbone.client)
        yield backbone
        await delete_new_streams(nats_server, backbone, before)
    finally:
        await backbone.aclose()


@dataclass
class Seen:
    """What the scenario's capabilities saw."""

    parents: list[int] = field(default_factory=list)
    children: list[tuple[int, int]] = field(default_factory=list)  # (index, attempt)
    joins: list[Batch[int]] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)
    joined: anyio.Event = field(default_factory=anyio.Event)


class Part(msgspec.Struct):
    index: int
    value: int


def batch_app(
    seen: Seen,
    *,
    items: int = 5,
    fail_parent_once: bool = False,
    child: Any = None,
    timeout: float = 3600.0,
    on_timeout: str = "run",
) -> App:
    """``run`` fans ``items`` parts out to ``part``; ``report`` joins them."""
    prefix = f"fo{next(_names)}{uuid.uuid4().hex[:6]}"
    app = App(prefix)

    @app.join(timeout=timeout, on_timeout=on_timeout)  # type: ignore[arg-type]
    async def report(batch: Batch[int], ctx: Context) -> None:
        seen.joins.append(batch)
        seen.joined.set()

    @app.capability(stream(f"{prefix}.runs"), retry=QUICK)
    async def run(raw: bytes, ctx: Context) -> None:
        seen.parents.append(ctx.attempt)
        parts = [Part(i, i * 10) for i in range(items)]
        ref = await ctx.fan_out(f"{prefix}.parts", parts, join=report, context={"day": "d1"})
        seen.refs.append(ref)
        if fail_parent_once and ctx.attempt == 1:
            raise RetryLater("the parent dies after its fan-out", delay=0.01)

    async def double(part: Part, ctx: Context) -> int:
        seen.children.append((part.index, ctx.attempt))
        return part.value * 2

    app.capability(stream(f"{prefix}.parts"), retry=QUICK, name="part")(child or double)
    return app


async def run_batch(backbone: Backbone, app: App, seen: Seen, *, settle: bool = False) -> None:
    """Start one run and wait for its join; ``settle``: then until every consumer of the
    app has nothing left to deliver or acknowledge (a second join would have run)."""
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        await backbone.publish(f"{app.name}.runs", b"go", msg_id=f"{app.name}-run-1")
        with anyio.fail_after(LIMIT):
            await seen.joined.wait()
        if settle:
            await wait_until(lambda: quiet(backbone, app), limit=LIMIT)


async def quiet(backbone: Backbone, app: App) -> bool:
    """Nothing left to deliver or acknowledge, but the batch's deadline signal, which
    waits (delivered, not acknowledged) for the join's timeout."""
    for consumer in plan_for(app).consumers:
        info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
        waiting = 1 if consumer.capability == "report" else 0
        if info.num_pending or info.num_ack_pending > waiting:
            return False
    return True


async def dead_letters(backbone: Backbone, app: App) -> list[Any]:
    info = await backbone.stream_info(DEAD_LETTER_STREAM)
    found = []
    for seq in range(info.first_seq, info.last_seq + 1):
        try:
            message = await backbone.get_message(DEAD_LETTER_STREAM, seq)
        except Exception:  # deleted or aged out
            continue
        if message.subject.startswith(f"thaw.dlq.{app.name}."):
            found.append(message)
    return found


async def test_the_join_runs_once_with_every_childs_result(backbone: Backbone) -> None:
    seen = Seen()
    app = batch_app(seen)
    await run_batch(backbone, app, seen, settle=True)
    assert len(seen.joins) == 1
    batch = seen.joins[0]
    assert (batch.size, batch.complete, batch.timed_out) == (5, True, False)
    assert batch.results == {i: i * 20 for i in range(5)}
    assert (batch.failed, batch.missing, batch.context) == ({}, [], {"day": "d1"})
    assert batch.id == seen.refs[0].id and batch.id.startswith(app.name + ".")
    assert sorted(i for i, _ in seen.children) == list(range(5))


async def test_a_failed_child_is_reported_to_the_join(backbone: Backbone) -> None:
    seen = Seen()

    async def picky(part: Part, ctx: Context) -> int:
        seen.children.append((part.index, ctx.attempt))
        if part.index == 3:
            raise Rejected("part 3 does not balance", code="unbalanced")
        return part.value

    app = batch_app(seen, child=picky)
    await run_batch(backbone, app, seen)
    batch = seen.joins[0]
    assert batch.complete and batch.failed == {3: "unbalanced"}
    assert batch.results == {0: 0, 1: 10, 2: 20, 4: 40}
    letters = await dead_letters(backbone, app)
    assert [m.headers.get("Thaw-Error-Code") for m in letters] == ["unbalanced"]


async def test_a_redelivered_parent_makes_no_second_batch(backbone: Backbone) -> None:
    seen = Seen()
    app = batch_app(seen, fail_parent_once=True)
    await run_batch(backbone, app, seen, settle=True)
    assert seen.parents == [1, 2]
    assert [ref.created for ref in seen.refs] == [True, False]
    assert seen.refs[0].id == seen.refs[1].id
    assert sorted(i for i, _ in seen.children) == list(range(5))  # the copies were dropped
    assert len(seen.joins) == 1 and seen.joins[0].complete


async def test_a_child_that_retries_is_counted_once(backbone: Backbone) -> None:
    seen = Seen()

    async def flaky(part: Part, ctx: Context) -> int:
        seen.children.append((part.index, ctx.attempt))
        if ctx.attempt == 1 and part.index % 2 == 0:
            raise RetryLater("not yet", delay=0.01)
        return part.index

    app = batch_app(seen, child=flaky)
    await run_batch(backbone, app, seen, settle=True)
    assert len(seen.joins) == 1
    assert seen.joins[0].results == {i: i for i in range(5)}
    assert sorted(seen.children) == sorted([(i, 1) for i in range(5)] + [(i, 2) for i in (0, 2, 4)])


async def test_an_empty_fan_out_joins_at_once(backbone: Backbone) -> None:
    seen = Seen()
    app = batch_app(seen, items=0)
    await run_batch(backbone, app, seen)
    batch = seen.joins[0]
    assert (batch.size, batch.complete, batch.results) == (0, True, {})


async def test_the_deadline_runs_the_join_with_what_reported(backbone: Backbone) -> None:
    seen = Seen()

    async def stuck(part: Part, ctx: Context) -> int:
        seen.children.append((part.index, ctx.attempt))
        if part.index == 1:
            raise RetryLater("the provider is down", delay=30.0)  # outlives the deadline
        return part.index

    app = batch_app(seen, child=stuck, timeout=0.5)
    await run_batch(backbone, app, seen)
    batch = seen.joins[0]
    assert (batch.complete, batch.timed_out, batch.missing) == (False, True, [1])
    assert batch.results == {0: 0, 2: 2, 3: 3, 4: 4}


async def test_a_deadline_can_dead_letter_the_batch(backbone: Backbone) -> None:
    seen = Seen()

    async def stuck(part: Part, ctx: Context) -> int:
        if part.index == 0:
            raise RetryLater("the provider is down", delay=30.0)
        return part.index

    app = batch_app(seen, child=stuck, timeout=0.3, on_timeout="dead_letter")
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        await backbone.publish(f"{app.name}.runs", b"go")

        async def dead_lettered() -> bool:
            letters = await dead_letters(backbone, app)
            return any(m.headers.get("Thaw-Error-Code") == "batch_timed_out" for m in letters)

        await wait_until(dead_lettered, limit=LIMIT)
    assert seen.joins == []
    (letter,) = await dead_letters(backbone, app)
    assert "1 of 5 children missing" in letter.headers.get("Thaw-Error-Message", "")


async def test_hostile_batch_headers_are_dead_lettered_unrun(backbone: Backbone) -> None:
    seen = Seen()
    app = batch_app(seen)
    batch = f"{app.name}.{'0' * 24}"
    hostile = [
        {BATCH_HEADER: "not a batch", BATCH_INDEX_HEADER: "0", BATCH_SIZE_HEADER: "1"},
        {BATCH_HEADER: batch, BATCH_INDEX_HEADER: "5", BATCH_SIZE_HEADER: "2"},
        {BATCH_HEADER: batch, BATCH_INDEX_HEADER: "-1", BATCH_SIZE_HEADER: "2"},
        {BATCH_HEADER: batch, BATCH_INDEX_HEADER: "0", BATCH_SIZE_HEADER: "99999999"},
        {BATCH_HEADER: batch, BATCH_INDEX_HEADER: "0", BATCH_SIZE_HEADER: "2"},  # no such batch
    ]
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        for headers in hostile:
            await backbone.publish(
                f"{app.name}.parts", b'{"index": 0, "value": 1}', headers=headers
            )
        await backbone.publish(join_subject(app.name, "report"), b'{"batch": 7}')
        await backbone.publish(
            join_subject(app.name, "report"), msgspec.json.encode({"batch": batch, "kind": "join"})
        )

        async def all_dead() -> bool:
            return len(await dead_letters(backbone, app)) == len(hostile) + 2

        await wait_until(all_dead, limit=LIMIT)
    letters = await dead_letters(backbone, app)
    assert {m.headers.get("Thaw-Error-Code") for m in letters} == {"batch_invalid"}
    assert seen.children == [] and seen.joins == []


async def test_a_forged_join_signal_does_not_close_an_open_batch(backbone: Backbone) -> None:
    seen = Seen()
    release = anyio.Event()

    async def slow(part: Part, ctx: Context) -> int:
        await release.wait()
        return part.index

    app = batch_app(seen, child=slow)
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        await backbone.publish(f"{app.name}.runs", b"go")

        async def started() -> bool:
            return bool(seen.refs)

        await wait_until(started, limit=LIMIT)
        forged = msgspec.json.encode({"batch": seen.refs[0].id, "kind": "join"})
        await backbone.publish(join_subject(app.name, "report"), forged, msg_id="forged")

        async def refused() -> bool:
            return len(await dead_letters(backbone, app)) == 1

        await wait_until(refused, limit=LIMIT)
        assert seen.joins == []
        release.set()
        with anyio.fail_after(LIMIT):
            await seen.joined.wait()
    assert seen.joins[0].complete and seen.joins[0].results == {i: i for i in range(5)}


async def test_a_result_too_large_for_the_batch_is_reported_as_failed(
    backbone: Backbone,
) -> None:
    seen = Seen()

    async def wordy(part: Part, ctx: Context) -> str:
        return "x" * (MAX_CHILD_RESULT + 1) if part.index == 2 else "ok"

    app = App(f"big{uuid.uuid4().hex[:8]}")
    joined: list[Batch[str]] = []

    @app.join()
    async def collect(batch: Batch[str]) -> None:
        joined.append(batch)
        seen.joined.set()

    @app.capability(stream(f"{app.name}.runs"))
    async def run(raw: bytes, ctx: Context) -> None:
        await ctx.fan_out(f"{app.name}.parts", [Part(i, 0) for i in range(3)], join=collect)

    app.capability(stream(f"{app.name}.parts"), name="part")(wordy)
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        await backbone.publish(f"{app.name}.runs", b"go")
        with anyio.fail_after(LIMIT):
            await seen.joined.wait()
    assert joined[0].results == {0: "ok", 1: "ok"}
    assert joined[0].failed == {2: "result_too_large"}
    assert await (await backbone.kv(batch_bucket_for(app.name))).get("nothing") is None


async def test_two_hosts_record_a_wide_batch_without_losing_a_child(backbone: Backbone) -> None:
    """200 children over two hosts, many at a time on each: the record's compare-and-set
    races between the hosts (and group commits within each) lose no bit."""
    seen = Seen()
    app = batch_app(seen, items=200)
    async with (
        open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0),
        open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0),
    ):
        await backbone.publish(f"{app.name}.runs", b"go")
        with anyio.fail_after(LIMIT):
            await seen.joined.wait()
        await wait_until(lambda: quiet(backbone, app), limit=LIMIT)
    assert len(seen.joins) == 1
    assert seen.joins[0].results == {i: i * 20 for i in range(200)}
    assert sorted(i for i, _ in seen.children) == list(range(200))


async def test_a_child_replayed_after_the_join_does_not_run_it_again(backbone: Backbone) -> None:
    seen = Seen()
    app = batch_app(seen)
    plan = plan_for(app)  # a short duplicate window: the replay comes after it
    plan = msgspec.structs.replace(
        plan,
        streams=[msgspec.structs.replace(s, duplicate_window=WINDOW) for s in plan.streams],
    )
    async with open_host(app, backbone, plan=plan, fetch_timeout=0.05, drain_timeout=2.0):
        await backbone.publish(f"{app.name}.runs", b"go")
        with anyio.fail_after(LIMIT):
            await seen.joined.wait()
        await anyio.sleep(WINDOW * 2)  # the duplicate window must pass: time is the subject
        # As `thaw dlq replay` would: the child's own headers, a new message id, so the
        # join signal it sends again is no longer dropped as a duplicate.
        headers = {
            BATCH_HEADER: seen.refs[0].id,
            BATCH_INDEX_HEADER: "0",
            BATCH_SIZE_HEADER: "5",
        }
        await backbone.publish(
            f"{app.name}.parts", msgspec.json.encode(Part(0, 0)), headers=headers, msg_id="replay"
        )
        await wait_until(lambda: quiet(backbone, app), limit=LIMIT)
        await wait_until(lambda: _ran_twice(seen), limit=LIMIT)
    assert len(seen.joins) == 1
    assert seen.joins[0].results[0] == 0


async def _ran_twice(seen: Seen) -> bool:
    return [i for i, _ in seen.children].count(0) == 2
