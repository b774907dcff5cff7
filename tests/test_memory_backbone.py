"""MemoryBackbone: the backbone contract on a FakeClock, plus what only memory can show."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest
from backbone_contract import BackboneContract
from hypothesis import given
from hypothesis import strategies as st

from thaw._clock import FakeClock, SystemClock
from thaw._errors import (
    BackboneError,
    ConfigError,
    DefinitionConflict,
    StreamNotFound,
)
from thaw.backbone._contract import Backbone, ConsumerConfig, KvConfig, Message, StreamConfig
from thaw.backbone.memory._backbone import MemoryBackbone, MemoryBackboneStatistics
from thaw.testing import BACKBONE_CHECKS, BackboneHarness, check_backbone

_PATIENCE = 10_000  # checkpoints to wait for a condition before calling it a hang


@dataclass
class MemoryHarness:
    backbone: MemoryBackbone
    clock: FakeClock
    prefix: str = "t"
    grace: float = 0.0

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for _ in range(5):  # let woken fetchers run before the test looks
            await anyio.lowlevel.checkpoint()

    async def wait_fetching(self, stream: str, durable: str, count: int) -> None:
        # One backbone per test, so the process-wide count is this consumer's.
        for _ in range(_PATIENCE):
            if self.backbone.statistics().waiting_fetches >= count:
                return
            await anyio.lowlevel.checkpoint()
        raise AssertionError(f"{count} fetch(es) on {stream}/{durable} never started waiting")


_prefixes = itertools.count()


@pytest.fixture
async def harness() -> MemoryHarness:
    clock = FakeClock()
    return MemoryHarness(MemoryBackbone(clock=clock), clock, prefix=f"t{next(_prefixes)}")


class TestMemoryBackboneContract(BackboneContract):
    """Every contract test, on MemoryBackbone with a FakeClock."""


@asynccontextmanager
async def _open_harness() -> AsyncIterator[MemoryHarness]:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    try:
        yield MemoryHarness(backbone, clock, prefix=f"t{next(_prefixes)}")
    finally:
        await backbone.aclose()


@pytest.mark.anyio
async def test_check_backbone_runs_the_shipped_suite_without_pytest() -> None:
    """The way a third party runs it: one call, a fresh harness per check."""
    opened: list[None] = []

    @asynccontextmanager
    async def counted() -> AsyncIterator[MemoryHarness]:
        opened.append(None)
        async with _open_harness() as harness:
            yield harness

    await check_backbone(counted)
    assert len(opened) == len(BACKBONE_CHECKS) >= 41


@pytest.mark.anyio
async def test_check_backbone_names_every_failing_check() -> None:
    async def check_passes(harness: BackboneHarness) -> None:
        pass

    async def check_wrong(harness: BackboneHarness) -> None:
        assert harness.prefix == "something else"

    async def check_broken(harness: BackboneHarness) -> None:
        await harness.backbone.stream_info("missing")

    checks = [check_passes, check_wrong, check_broken]
    with pytest.raises(AssertionError, match="2 of 3 checks failed: check_wrong, check_broken"):
        await check_backbone(_open_harness, checks=checks)


# -- memory-only behaviour ----------------------------------------------------------


def test_satisfies_the_backbone_protocol_and_builds_outside_an_event_loop() -> None:
    backbone: Backbone = MemoryBackbone()  # no running loop needed to construct
    assert isinstance(backbone, MemoryBackbone)
    assert isinstance(backbone.clock, SystemClock)


@pytest.mark.anyio
async def test_system_clock_fetch_times_out_for_real() -> None:
    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    await backbone.add_consumer("s", ConsumerConfig(durable="w"))
    assert await backbone.fetch("s", "w", timeout=0.01) == []
    await backbone.publish("s.a", b"x")
    assert [m.data for m in await backbone.fetch("s", "w", timeout=5)] == [b"x"]


@pytest.mark.anyio
async def test_statistics_count_what_exists() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    await backbone.add_consumer("s", ConsumerConfig(durable="a"))
    await backbone.add_consumer("s", ConsumerConfig(durable="b"))
    await backbone.add_kv(KvConfig(bucket="kv"))
    assert backbone.statistics() == MemoryBackboneStatistics(
        streams=1, consumers=2, buckets=1, waiting_fetches=0
    )


async def _stream_s_with_consumer_w() -> MemoryHarness:
    clock = FakeClock()
    harness = MemoryHarness(MemoryBackbone(clock=clock), clock)
    await harness.backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    await harness.backbone.add_consumer("s", ConsumerConfig(durable="w"))
    return harness


async def _fetch_into(backbone: MemoryBackbone, outcome: list[object]) -> None:
    """Fetch from s/w with a long timeout; record the messages or the BackboneError."""
    try:
        outcome.append(await backbone.fetch("s", "w", timeout=60.0))
    except BackboneError as error:
        outcome.append(error)


@pytest.mark.anyio
async def test_cancelled_fetch_stops_waiting() -> None:
    harness = await _stream_s_with_consumer_w()
    backbone = harness.backbone
    async with anyio.create_task_group() as group:
        group.start_soon(_fetch_into, backbone, [])
        await harness.wait_fetching("s", "w", 1)
        group.cancel_scope.cancel()
    assert backbone.statistics().waiting_fetches == 0


@pytest.mark.anyio
async def test_deleting_the_stream_fails_a_waiting_fetch() -> None:
    harness = await _stream_s_with_consumer_w()
    backbone = harness.backbone
    outcome: list[object] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_fetch_into, backbone, outcome)
        await harness.wait_fetching("s", "w", 1)
        await backbone.delete_stream("s")
    (error,) = outcome
    assert isinstance(error, StreamNotFound)


@pytest.mark.anyio
async def test_aclose_fails_waiting_fetches_and_later_calls() -> None:
    harness = await _stream_s_with_consumer_w()
    backbone = harness.backbone
    bucket = await backbone.add_kv(KvConfig(bucket="kv"))
    outcome: list[object] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_fetch_into, backbone, outcome)
        await harness.wait_fetching("s", "w", 1)
        await backbone.aclose()
    (error,) = outcome
    assert isinstance(error, BackboneError)
    assert "closed" in str(error)
    await backbone.aclose()  # idempotent
    with pytest.raises(BackboneError, match="closed"):
        await backbone.publish("s.a", b"x")
    with pytest.raises(BackboneError, match="closed"):
        await bucket.get("k")


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (StreamConfig(name="a.b", subjects=("x",)), "'.'"),
        (StreamConfig(name="", subjects=("x",)), "non-empty"),
        (StreamConfig(name="s", subjects=()), "no subjects"),
        (StreamConfig(name="s", subjects=("x.>", "x.y")), "overlapping"),
        (StreamConfig(name="s", subjects=("x..y",)), "empty"),
        (StreamConfig(name="s", subjects=("x",), max_msg_size=0), "max_msg_size"),
        (StreamConfig(name="s", subjects=("x",), max_age=-1), "max_age"),
    ],
)
@pytest.mark.anyio
async def test_bad_stream_definitions_are_config_errors(
    config: StreamConfig, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        await MemoryBackbone(clock=FakeClock()).add_stream(config)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (ConsumerConfig(durable="a b"), "' '"),
        (ConsumerConfig(durable="w", filter_subject="s.*.>.x"), "last token"),
        (ConsumerConfig(durable="w", ack_wait=0), "ack_wait"),
        (ConsumerConfig(durable="w", max_deliver=0), "max_deliver"),
        (ConsumerConfig(durable="w", backoff=(1.0, 2.0), max_deliver=2), "greater than"),
        (ConsumerConfig(durable="w", backoff=(0.0,)), "backoff"),
        (ConsumerConfig(durable="w", max_ack_pending=0), "max_ack_pending"),
    ],
)
@pytest.mark.anyio
async def test_bad_consumer_definitions_are_config_errors(
    config: ConsumerConfig, fragment: str
) -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    with pytest.raises(ConfigError, match=fragment):
        await backbone.add_consumer("s", config)


@pytest.mark.anyio
async def test_bad_publish_fetch_and_bucket_arguments_are_config_errors() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    await backbone.add_consumer("s", ConsumerConfig(durable="w"))
    with pytest.raises(ConfigError, match=r"'s\.\*'"):
        await backbone.publish("s.*", b"x")
    with pytest.raises(ConfigError, match="batch"):
        await backbone.fetch("s", "w", batch=0)
    with pytest.raises(ConfigError, match="timeout"):
        await backbone.fetch("s", "w", timeout=-1)
    with pytest.raises(ConfigError, match="bucket"):
        await backbone.add_kv(KvConfig(bucket="a.b"))
    with pytest.raises(ConfigError, match="ttl"):
        await backbone.add_kv(KvConfig(bucket="kv", ttl=-1))


@pytest.mark.anyio
async def test_conflict_messages_name_the_fields_and_values() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    with pytest.raises(DefinitionConflict) as caught:
        await backbone.add_stream(StreamConfig(name="s", subjects=("s.*",), max_age=5.0))
    message = str(caught.value)
    assert "subjects (existing ('s.>',), requested ('s.*',))" in message
    assert "max_age (existing 0.0, requested 5.0)" in message
    assert "duplicate_window" not in message
    with pytest.raises(DefinitionConflict, match=r"'s\.\*' overlaps subject 's\.>' of stream"):
        await backbone.add_stream(StreamConfig(name="t", subjects=("s.*",)))


@pytest.mark.anyio
async def test_nats_msg_id_header_dedupes_like_the_msg_id_argument() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    first = await backbone.publish("s.a", b"x", msg_id="one")
    again = await backbone.publish("s.a", b"x", headers={"Nats-Msg-Id": "one"})
    assert (again.seq, again.duplicate) == (first.seq, True)


@pytest.mark.anyio
async def test_zero_duplicate_window_disables_dedupe() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",), duplicate_window=0))
    await backbone.publish("s.a", b"x", msg_id="one")
    assert (await backbone.publish("s.a", b"x", msg_id="one")).seq == 2


@pytest.mark.anyio
async def test_headers_count_towards_max_msg_size() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",), max_msg_size=40))
    await backbone.publish("s.a", b"x" * 40)
    with pytest.raises(BackboneError, match="max_msg_size"):
        await backbone.publish("s.a", b"x" * 20, msg_id="a-fairly-long-id")


@pytest.mark.anyio
async def test_delivered_headers_are_read_only_and_stored_ones_untouched() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    await backbone.add_consumer("s", ConsumerConfig(durable="w"))
    headers = {"a": "1"}
    await backbone.publish("s.a", b"x", headers=headers)
    headers["a"] = "changed"
    (message,) = await backbone.fetch("s", "w")
    assert message.headers == {"a": "1"}
    assert isinstance(message.headers, Mapping)
    with pytest.raises(TypeError):
        message.headers["a"] = "2"  # type: ignore[index]
    assert "s#1" in repr(message)


@pytest.mark.anyio
async def test_pending_message_that_expires_from_the_stream_is_forgotten() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",), max_age=1.0))
    await backbone.add_consumer("s", ConsumerConfig(durable="w", ack_wait=5.0))
    await backbone.publish("s.a", b"x")
    (message,) = await backbone.fetch("s", "w")
    clock.advance(1.0)
    info = await backbone.consumer_info("s", "w")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    await message.nak()
    assert await backbone.fetch("s", "w") == []


@pytest.mark.anyio
async def test_competing_writers_on_one_key_exactly_one_wins() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    bucket = await backbone.add_kv(KvConfig(bucket="claims"))
    winners: list[str] = []

    async def claim(name: str) -> None:
        try:
            await bucket.create("event-1", name.encode())
        except BackboneError:
            return
        winners.append(name)

    async with anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(claim, f"worker-{index}")
    assert len(winners) == 1
    entry = await bucket.get("event-1")
    assert entry is not None
    assert entry.value == winners[0].encode()


# -- a property test: random consumer workloads keep JetStream's invariants ------------


@dataclass
class _Model:
    """What the test knows from the outside, to check each delivery against."""

    max_deliver: int
    max_ack_pending: int
    published: int = 0
    delivered: dict[int, int] = field(default_factory=dict)  # seq -> deliveries seen
    finished: set[int] = field(default_factory=set)  # acked or termed
    outstanding: list[Message] = field(default_factory=list)


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 3)),
        st.tuples(st.just("fetch"), st.integers(1, 4)),
        st.tuples(
            st.sampled_from(["ack", "nak", "nak_later", "term", "progress"]), st.integers(0, 9)
        ),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 3.0])),
    ),
    max_size=40,
)


async def _run_workload(
    operations: list[tuple[str, float]], max_deliver: int, max_ack_pending: int
) -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    await backbone.add_stream(StreamConfig(name="s", subjects=("s.>",)))
    config = ConsumerConfig(
        durable="w", ack_wait=1.0, max_deliver=max_deliver, max_ack_pending=max_ack_pending
    )
    await backbone.add_consumer("s", config)
    model = _Model(max_deliver, max_ack_pending)

    async def fetch(batch: int) -> None:
        got = await backbone.fetch("s", "w", batch=batch)
        assert len(got) <= batch
        assert len({m.seq for m in got}) == len(got)
        redelivered = [m.seq for m in got if m.num_delivered > 1]
        fresh = [m.seq for m in got if m.num_delivered == 1]
        assert [m.seq for m in got] == sorted(redelivered) + sorted(fresh)
        first_fresh = max(model.delivered, default=0) + 1
        assert fresh == list(range(first_fresh, first_fresh + len(fresh)))  # none skipped
        for message in got:
            assert message.seq not in model.finished
            assert message.num_delivered == model.delivered.get(message.seq, 0) + 1
            assert max_deliver == -1 or message.num_delivered <= max_deliver
            model.delivered[message.seq] = message.num_delivered
        info = await backbone.consumer_info("s", "w")
        assert max_ack_pending == -1 or info.num_ack_pending <= max_ack_pending
        model.outstanding.extend(got)

    for action, argument in operations:
        if action == "publish":
            for _ in range(int(argument)):
                await backbone.publish("s.x", b"")
                model.published += 1
        elif action == "fetch":
            await fetch(int(argument))
        elif action == "advance":
            clock.advance(argument)
        elif model.outstanding:
            message = model.outstanding[int(argument) % len(model.outstanding)]
            if action in ("ack", "term"):
                await (message.ack() if action == "ack" else message.term())
                model.finished.add(message.seq)
            elif action == "nak":
                await message.nak()
            elif action == "nak_later":
                await message.nak(delay=0.5)
            else:
                await message.in_progress()

    # Drain: acking everything that comes, every message ends finished or exhausted.
    for _ in range(200):
        clock.advance(3.0)
        got = await backbone.fetch("s", "w", batch=10)
        for message in got:
            assert message.seq not in model.finished
            await message.ack()
            model.finished.add(message.seq)
        info = await backbone.consumer_info("s", "w")
        if not got and info.num_pending == 0 and info.num_ack_pending == 0:
            break
    else:
        raise AssertionError("the consumer never drained")
    for seq in range(1, model.published + 1):
        exhausted = max_deliver != -1 and model.delivered.get(seq, 0) >= max_deliver
        assert seq in model.finished or exhausted, f"seq {seq} was lost"


@given(
    operations=_operations,
    max_deliver=st.sampled_from([-1, 1, 2, 3]),
    max_ack_pending=st.sampled_from([-1, 1, 3]),
)
def test_random_consumer_workloads_keep_the_delivery_invariants(
    operations: list[tuple[str, float]], max_deliver: int, max_ack_pending: int
) -> None:
    anyio.run(_run_workload, operations, max_deliver, max_ack_pending, backend="asyncio")
