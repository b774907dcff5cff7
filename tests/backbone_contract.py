"""The backbone conformance suite: JetStream semantics every Backbone must show.

Subclass ``BackboneContract`` in a ``test_*.py`` module and give it a ``harness``
fixture returning a ``BackboneHarness``; every ``test_*`` method then runs
against that backbone (trio's ``check_two_way_stream`` idea). The suite is
written to run unchanged against a real nats-server too:

- names and subjects start with ``harness.prefix`` so tests never collide on a
  shared server;
- time passes only through ``harness.elapse`` (a FakeClock advance in memory, a
  real sleep against a server) and durations stay small (0.5-2 s);
- "not yet" checks fetch with ``timeout=0``; "now it is there" checks fetch with
  ``timeout=harness.grace`` (0 in memory; a server may act a little late);
- a test that needs a fetch to be parked waits for it with
  ``harness.wait_fetching`` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import pytest
from anyio.abc import TaskGroup

from thaw._errors import (
    BackboneError,
    BucketNotFound,
    ConfigError,
    ConsumerNotFound,
    DefinitionConflict,
    KeyExists,
    MessageNotFound,
    NoStreamForSubject,
    ObjectNotFound,
    StreamNotFound,
    WrongRevision,
)
from thaw.backbone._buckets import decode_object_meta, object_digest
from thaw.backbone._contract import (
    Backbone,
    ConsumerConfig,
    KvConfig,
    Message,
    ObjectStoreConfig,
    StreamConfig,
)

__all__ = ["BackboneContract", "BackboneHarness"]

ACK_WAIT = 1.0
# Real seconds after which a test that waits on other tasks fails instead of hanging
# (a FakeClock never moves by itself, so a missed wake-up would otherwise hang forever).
WATCHDOG = 15.0


class BackboneHarness(Protocol):
    @property
    def backbone(self) -> Backbone: ...

    @property
    def prefix(self) -> str:
        """Unique per test; a valid name and subject token (letters, digits, '_')."""
        ...

    @property
    def grace(self) -> float:
        """Seconds a backbone may lag behind a deadline (0 for MemoryBackbone)."""
        ...

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass on the backbone's clock, and let woken tasks run."""
        ...

    async def wait_fetching(self, stream: str, durable: str, count: int) -> None:
        """Return once ``count`` fetch calls on the consumer are parked waiting."""
        ...


@asynccontextmanager
async def watched_task_group() -> AsyncIterator[TaskGroup]:
    """A task group that fails after ``WATCHDOG`` real seconds instead of hanging."""
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as group:
            yield group


def seqs(messages: Sequence[Message]) -> list[int]:
    return [message.seq for message in messages]


def deliveries(messages: Sequence[Message]) -> list[tuple[int, int]]:
    return [(message.seq, message.num_delivered) for message in messages]


class BackboneContract:
    """The suite; subclasses provide the ``harness`` fixture."""

    # -- helpers ------------------------------------------------------------------

    async def make_stream(
        self, harness: BackboneHarness, *, name: str = "orders", **options: object
    ) -> tuple[str, str]:
        """Create ``<prefix>_<name>`` on ``<prefix>.<name>.>``; return (stream, subject root)."""
        stream = f"{harness.prefix}_{name}"
        root = f"{harness.prefix}.{name}"
        config = StreamConfig(name=stream, subjects=(f"{root}.>",), **options)  # type: ignore[arg-type]
        await harness.backbone.add_stream(config)
        return stream, root

    async def make_consumer(
        self, harness: BackboneHarness, stream: str, *, durable: str = "worker", **options: object
    ) -> str:
        options.setdefault("ack_wait", ACK_WAIT)
        config = ConsumerConfig(durable=durable, **options)  # type: ignore[arg-type]
        await harness.backbone.add_consumer(stream, config)
        return durable

    async def publish_many(self, harness: BackboneHarness, subject: str, count: int) -> None:
        for index in range(count):
            await harness.backbone.publish(subject, f"m{index}".encode())

    async def fetch_now(
        self, harness: BackboneHarness, stream: str, durable: str, batch: int = 10
    ) -> list[Message]:
        return await harness.backbone.fetch(stream, durable, batch=batch, timeout=0)

    async def fetch_due(
        self, harness: BackboneHarness, stream: str, durable: str, batch: int = 10
    ) -> list[Message]:
        return await harness.backbone.fetch(stream, durable, batch=batch, timeout=harness.grace)

    # -- streams ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_add_stream_creates_confirms_and_refuses_a_different_definition(
        self, harness: BackboneHarness
    ) -> None:
        backbone = harness.backbone
        config = StreamConfig(name=f"{harness.prefix}_s", subjects=(f"{harness.prefix}.s.>",))
        info = await backbone.add_stream(config)
        assert info.config == config
        assert (info.messages, info.last_seq) == (0, 0)
        assert (await backbone.add_stream(config)).config == config
        changed = StreamConfig(name=config.name, subjects=config.subjects, max_age=60.0)
        with pytest.raises(DefinitionConflict, match="max_age"):
            await backbone.add_stream(changed)
        assert (await backbone.stream_info(config.name)).config == config

    @pytest.mark.anyio
    async def test_streams_with_overlapping_subjects_conflict(
        self, harness: BackboneHarness
    ) -> None:
        p = harness.prefix
        await harness.backbone.add_stream(StreamConfig(name=f"{p}_a", subjects=(f"{p}.orders.>",)))
        with pytest.raises(DefinitionConflict):
            await harness.backbone.add_stream(
                StreamConfig(name=f"{p}_b", subjects=(f"{p}.orders.*.created",))
            )
        # Disjoint subjects are fine.
        await harness.backbone.add_stream(StreamConfig(name=f"{p}_c", subjects=(f"{p}.users.*",)))

    @pytest.mark.anyio
    async def test_publish_stores_in_sequence_and_get_message_reads_back(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        first = await harness.backbone.publish(f"{root}.eu", b"one", headers={"x-trace": "t1"})
        second = await harness.backbone.publish(f"{root}.us", b"two", msg_id="id-2")
        assert (first.stream, first.seq, first.duplicate) == (stream, 1, False)
        assert (second.seq, second.duplicate) == (2, False)
        info = await harness.backbone.stream_info(stream)
        assert (info.messages, info.first_seq, info.last_seq) == (2, 1, 2)
        stored = await harness.backbone.get_message(stream, 1)
        assert (stored.subject, stored.data, stored.headers.get("x-trace")) == (
            f"{root}.eu",
            b"one",
            "t1",
        )
        assert (await harness.backbone.get_message(stream, 2)).headers["Nats-Msg-Id"] == "id-2"
        with pytest.raises(BackboneError):
            await harness.backbone.get_message(stream, 3)

    @pytest.mark.anyio
    async def test_delete_message_removes_it_for_readers_and_consumers(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await self.publish_many(harness, f"{root}.x", 3)
        await harness.backbone.delete_message(stream, 2)
        with pytest.raises(MessageNotFound):
            await harness.backbone.get_message(stream, 2)
        with pytest.raises(MessageNotFound):
            await harness.backbone.delete_message(stream, 2)
        assert (await harness.backbone.stream_info(stream)).messages == 2
        delivered = await self.fetch_due(harness, stream, durable)
        assert [m.data for m in delivered] == [b"m0", b"m2"]
        await harness.backbone.delete_message(stream, 1)
        assert (await harness.backbone.get_message(stream, 3)).data == b"m2"

    @pytest.mark.anyio
    async def test_publish_to_a_subject_no_stream_captures_fails(
        self, harness: BackboneHarness
    ) -> None:
        _, root = await self.make_stream(harness)
        with pytest.raises(NoStreamForSubject):
            await harness.backbone.publish(f"{harness.prefix}.elsewhere", b"x")
        with pytest.raises(NoStreamForSubject):
            await harness.backbone.publish(root, b"x")  # '>' needs at least one more token

    @pytest.mark.anyio
    async def test_duplicate_msg_id_within_the_window_is_not_stored_again(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness, duplicate_window=1.0)
        first = await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1")
        await harness.backbone.publish(f"{root}.a", b"other", msg_id="order-2")
        await harness.elapse(0.5)
        again = await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1")
        assert (again.seq, again.duplicate) == (first.seq, True)
        assert (await harness.backbone.stream_info(stream)).messages == 2
        await harness.elapse(1.0 + harness.grace)
        later = await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1")
        assert (later.seq, later.duplicate) == (3, False)

    @pytest.mark.anyio
    async def test_max_msg_size_refuses_larger_messages(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness, max_msg_size=64)
        await harness.backbone.publish(f"{root}.a", b"x" * 32)
        with pytest.raises(BackboneError):
            await harness.backbone.publish(f"{root}.a", b"x" * 65)
        assert (await harness.backbone.stream_info(stream)).messages == 1

    @pytest.mark.anyio
    async def test_messages_older_than_max_age_expire(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness, max_age=1.0)
        await harness.backbone.publish(f"{root}.a", b"old")
        await harness.elapse(0.5)
        await harness.backbone.publish(f"{root}.a", b"young")
        await harness.elapse(0.5 + harness.grace)
        info = await harness.backbone.stream_info(stream)
        assert (info.messages, info.first_seq, info.last_seq) == (1, 2, 2)
        with pytest.raises(BackboneError):
            await harness.backbone.get_message(stream, 1)

    @pytest.mark.anyio
    async def test_delete_stream(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        await self.make_consumer(harness, stream)
        await harness.backbone.delete_stream(stream)
        with pytest.raises(StreamNotFound):
            await harness.backbone.stream_info(stream)
        with pytest.raises(NoStreamForSubject):
            await harness.backbone.publish(f"{root}.a", b"x")
        with pytest.raises(StreamNotFound):
            await harness.backbone.delete_stream(stream)

    # -- consumers: provisioning ------------------------------------------------------

    @pytest.mark.anyio
    async def test_add_consumer_creates_confirms_and_refuses_a_different_definition(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        config = ConsumerConfig(durable="worker", filter_subject=f"{root}.*", ack_wait=ACK_WAIT)
        info = await harness.backbone.add_consumer(stream, config)
        assert (info.stream, info.config) == (stream, config)
        assert (await harness.backbone.add_consumer(stream, config)).config == config
        with pytest.raises(DefinitionConflict, match="max_deliver"):
            await harness.backbone.add_consumer(
                stream, ConsumerConfig(durable="worker", filter_subject=f"{root}.*", max_deliver=3)
            )

    @pytest.mark.anyio
    async def test_a_new_consumer_starts_from_the_first_stored_message(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        await self.publish_many(harness, f"{root}.a", 2)
        early = await self.make_consumer(harness, stream, durable="early")
        assert seqs(await self.fetch_now(harness, stream, early)) == [1, 2]
        late = await self.make_consumer(harness, stream, durable="late")
        info = await harness.backbone.consumer_info(stream, late)
        assert (info.num_pending, info.num_ack_pending) == (2, 0)
        assert seqs(await self.fetch_now(harness, stream, late)) == [1, 2]

    @pytest.mark.anyio
    async def test_missing_stream_and_consumer_are_reported(self, harness: BackboneHarness) -> None:
        missing = f"{harness.prefix}_missing"
        with pytest.raises(StreamNotFound):
            await harness.backbone.add_consumer(missing, ConsumerConfig(durable="worker"))
        with pytest.raises(StreamNotFound):
            await harness.backbone.stream_info(missing)
        stream, _ = await self.make_stream(harness)
        with pytest.raises(ConsumerNotFound):
            await harness.backbone.consumer_info(stream, "nobody")
        with pytest.raises(ConsumerNotFound):
            await harness.backbone.fetch(stream, "nobody", batch=1, timeout=0)

    # -- consumers: delivery ------------------------------------------------------

    @pytest.mark.anyio
    async def test_fetch_returns_up_to_batch_in_order_then_nothing(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.backbone.publish(f"{root}.a", b"hello", msg_id="m-1")
        await self.publish_many(harness, f"{root}.b", 4)
        first = await self.fetch_now(harness, stream, durable, batch=3)
        assert deliveries(first) == [(1, 1), (2, 1), (3, 1)]
        message = first[0]
        assert (message.stream, message.subject, message.data) == (stream, f"{root}.a", b"hello")
        assert message.msg_id == "m-1"
        assert message.headers["Nats-Msg-Id"] == "m-1"
        assert first[1].msg_id is None
        assert seqs(await self.fetch_now(harness, stream, durable, batch=3)) == [4, 5]
        assert await self.fetch_now(harness, stream, durable) == []
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 5, 0)

    @pytest.mark.anyio
    async def test_a_delivery_says_how_many_messages_the_consumer_still_holds(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream, filter_subject=f"{root}.a")
        await self.publish_many(harness, f"{root}.a", 5)
        await self.publish_many(harness, f"{root}.b", 3)  # not for this consumer
        first = await self.fetch_now(harness, stream, durable, batch=2)
        assert [m.pending for m in first][-1] == 3
        rest = await self.fetch_now(harness, stream, durable, batch=10)
        assert seqs(rest) == [3, 4, 5]
        assert rest[-1].pending == 0

    @pytest.mark.anyio
    async def test_acked_messages_are_not_redelivered_and_acks_are_idempotent(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await self.publish_many(harness, f"{root}.a", 3)
        messages = await self.fetch_now(harness, stream, durable)
        for message in messages:
            await message.ack()
        await messages[0].ack()  # a second ack is harmless
        await messages[0].nak()  # so is a nak after the ack
        await harness.elapse(ACK_WAIT * 2)
        assert await self.fetch_now(harness, stream, durable) == []
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)

    @pytest.mark.anyio
    async def test_nak_without_delay_redelivers_at_once(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await harness.backbone.publish(f"{root}.a", b"x")
        (message,) = await self.fetch_now(harness, stream, durable)
        await message.nak()
        again = await self.fetch_due(harness, stream, durable)
        assert deliveries(again) == [(1, 2)]
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_ack_pending, info.num_redelivered) == (1, 1)

    @pytest.mark.anyio
    async def test_nak_with_delay_redelivers_after_the_delay(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream, ack_wait=2.0)
        await harness.backbone.publish(f"{root}.a", b"x")
        (message,) = await self.fetch_now(harness, stream, durable)
        await message.nak(delay=1.0)
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(0.5)
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(0.5)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 2)]

    @pytest.mark.anyio
    async def test_unacked_messages_are_redelivered_after_ack_wait(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await harness.backbone.publish(f"{root}.a", b"x")
        assert deliveries(await self.fetch_now(harness, stream, durable)) == [(1, 1)]
        await harness.elapse(ACK_WAIT / 2)
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(ACK_WAIT / 2)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 2)]
        await harness.elapse(ACK_WAIT)
        redelivered = await self.fetch_due(harness, stream, durable)
        assert deliveries(redelivered) == [(1, 3)]
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_ack_pending, info.num_redelivered) == (1, 1)
        await redelivered[0].ack()
        await harness.elapse(ACK_WAIT)
        assert await self.fetch_now(harness, stream, durable) == []

    @pytest.mark.anyio
    async def test_backoff_sets_the_wait_after_each_delivery(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(
            harness, stream, ack_wait=0.5, backoff=(0.5, 1.0), max_deliver=5
        )
        await harness.backbone.publish(f"{root}.a", b"x")
        assert deliveries(await self.fetch_now(harness, stream, durable)) == [(1, 1)]
        await harness.elapse(0.5)  # backoff[0] after the first delivery
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 2)]
        await harness.elapse(0.5)  # backoff[1] = 1.0 after the second: not yet
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(0.5)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 3)]
        await harness.elapse(0.5)  # the last backoff repeats
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(0.5)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 4)]

    @pytest.mark.anyio
    async def test_in_progress_restarts_the_ack_wait(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await harness.backbone.publish(f"{root}.a", b"x")
        (message,) = await self.fetch_now(harness, stream, durable)
        await harness.elapse(ACK_WAIT / 2)
        await message.in_progress()
        await harness.elapse(ACK_WAIT * 3 / 4)  # past the original deadline
        assert await self.fetch_now(harness, stream, durable) == []
        await message.in_progress()
        await harness.elapse(ACK_WAIT * 3 / 4)
        assert await self.fetch_now(harness, stream, durable) == []
        await harness.elapse(ACK_WAIT / 4)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(1, 2)]

    @pytest.mark.anyio
    async def test_max_deliver_stops_redelivery(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream, max_deliver=2)
        await harness.backbone.publish(f"{root}.a", b"x")
        (first,) = await self.fetch_now(harness, stream, durable)
        await first.nak()
        (second,) = await self.fetch_due(harness, stream, durable)
        assert second.num_delivered == 2
        await second.nak()
        assert await self.fetch_now(harness, stream, durable) == []
        # A timed-out last delivery is not redelivered either.
        await harness.backbone.publish(f"{root}.a", b"y")
        assert deliveries(await self.fetch_now(harness, stream, durable)) == [(2, 1)]
        await harness.elapse(ACK_WAIT)
        assert deliveries(await self.fetch_due(harness, stream, durable)) == [(2, 2)]
        await harness.elapse(ACK_WAIT * 2)
        assert await self.fetch_now(harness, stream, durable) == []
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)

    @pytest.mark.anyio
    async def test_term_stops_redelivery(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await harness.backbone.publish(f"{root}.a", b"x")
        (message,) = await self.fetch_now(harness, stream, durable)
        await message.term("malformed")
        await message.ack()  # ack after term is harmless
        await harness.elapse(ACK_WAIT * 2)
        assert await self.fetch_now(harness, stream, durable) == []
        assert (await harness.backbone.consumer_info(stream, durable)).num_ack_pending == 0

    @pytest.mark.anyio
    async def test_redeliveries_come_before_new_messages_in_sequence_order(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await self.publish_many(harness, f"{root}.a", 3)
        first, second = await self.fetch_now(harness, stream, durable, batch=2)
        await second.nak()
        await first.nak()
        await self.publish_many(harness, f"{root}.a", 1)
        got = await self.fetch_due(harness, stream, durable, batch=4)
        assert deliveries(got) == [(1, 2), (2, 2), (3, 1), (4, 1)]

    @pytest.mark.anyio
    async def test_max_ack_pending_holds_back_new_messages(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream, max_ack_pending=2)
        await self.publish_many(harness, f"{root}.a", 4)
        first = await self.fetch_now(harness, stream, durable, batch=2)
        assert seqs(first) == [1, 2]
        assert await self.fetch_now(harness, stream, durable, batch=2) == []
        info = await harness.backbone.consumer_info(stream, durable)
        assert (info.num_pending, info.num_ack_pending) == (2, 2)
        # Redeliveries are not held back: they are already pending.
        await harness.elapse(ACK_WAIT)
        assert deliveries(await self.fetch_due(harness, stream, durable, batch=2)) == [
            (1, 2),
            (2, 2),
        ]
        await first[0].ack()
        assert seqs(await self.fetch_due(harness, stream, durable, batch=2)) == [3]

    @pytest.mark.anyio
    async def test_an_ack_that_frees_a_slot_wakes_a_waiting_fetch(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream, max_ack_pending=1, ack_wait=30.0)
        await self.publish_many(harness, f"{root}.a", 2)
        (first,) = await self.fetch_now(harness, stream, durable, batch=1)
        results: list[list[Message]] = []

        async def fetcher() -> None:
            results.append(await harness.backbone.fetch(stream, durable, batch=1, timeout=10.0))

        async with watched_task_group() as group:
            group.start_soon(fetcher)
            await harness.wait_fetching(stream, durable, 1)
            await first.ack()
        assert deliveries(results[0]) == [(2, 1)]

    @pytest.mark.anyio
    async def test_filter_subject_with_wildcards(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        created = await self.make_consumer(
            harness, stream, durable="created", filter_subject=f"{root}.*.created"
        )
        europe = await self.make_consumer(
            harness, stream, durable="europe", filter_subject=f"{root}.eu.>"
        )
        for subject in ("eu.created", "eu.paid", "us.created", "us.created.late", "eu.x.y"):
            await harness.backbone.publish(f"{root}.{subject}", subject.encode())
        assert (await harness.backbone.consumer_info(stream, created)).num_pending == 2
        assert seqs(await self.fetch_now(harness, stream, created)) == [1, 3]
        assert seqs(await self.fetch_now(harness, stream, europe)) == [1, 2, 5]
        with pytest.raises(ConfigError):
            await harness.backbone.add_consumer(
                stream, ConsumerConfig(durable="outside", filter_subject=f"{harness.prefix}.x.>")
            )

    # -- consumers: concurrency and waiting -------------------------------------------

    @pytest.mark.anyio
    async def test_competing_fetchers_never_share_a_message(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await self.publish_many(harness, f"{root}.a", 6)
        results: list[list[Message]] = []

        async def fetcher() -> None:
            results.append(await self.fetch_due(harness, stream, durable, batch=4))

        async with watched_task_group() as group:
            group.start_soon(fetcher)
            group.start_soon(fetcher)
        got = [seq for batch in results for seq in seqs(batch)]
        assert sorted(got) == [1, 2, 3, 4, 5, 6]
        # After AckWait each message is redelivered to exactly one of them again.
        results.clear()
        await harness.elapse(ACK_WAIT)
        async with watched_task_group() as group:
            group.start_soon(fetcher)
            group.start_soon(fetcher)
        again = [(m.seq, m.num_delivered) for batch in results for m in batch]
        assert sorted(again) == [(seq, 2) for seq in range(1, 7)]

    @pytest.mark.anyio
    async def test_one_publish_wakes_exactly_one_of_two_waiting_fetchers(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        results: list[list[Message]] = []

        async def fetcher() -> None:
            results.append(await harness.backbone.fetch(stream, durable, batch=5, timeout=1.0))

        async with watched_task_group() as group:
            group.start_soon(fetcher)
            group.start_soon(fetcher)
            await harness.wait_fetching(stream, durable, 2)
            await harness.backbone.publish(f"{root}.a", b"wake")
            await harness.elapse(1.0 + harness.grace)
        assert sorted(len(batch) for batch in results) == [0, 1]

    @pytest.mark.anyio
    async def test_waiting_fetch_wakes_on_publish(self, harness: BackboneHarness) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        results: list[list[Message]] = []

        async def fetcher() -> None:
            results.append(await harness.backbone.fetch(stream, durable, batch=3, timeout=30.0))

        async with watched_task_group() as group:
            group.start_soon(fetcher)
            await harness.wait_fetching(stream, durable, 1)
            await harness.backbone.publish(f"{root}.a", b"wake")
        assert [m.data for m in results[0]] == [b"wake"]

    @pytest.mark.anyio
    async def test_waiting_fetch_wakes_on_redelivery_and_on_timeout(
        self, harness: BackboneHarness
    ) -> None:
        stream, root = await self.make_stream(harness)
        durable = await self.make_consumer(harness, stream)
        await harness.backbone.publish(f"{root}.a", b"x")
        assert len(await self.fetch_now(harness, stream, durable)) == 1
        results: list[list[Message]] = []

        async def fetcher(timeout: float) -> None:
            results.append(await harness.backbone.fetch(stream, durable, timeout=timeout))

        async with watched_task_group() as group:
            group.start_soon(fetcher, 30.0)
            await harness.wait_fetching(stream, durable, 1)
            await harness.elapse(ACK_WAIT)
        assert deliveries(results.pop()) == [(1, 2)]
        async with watched_task_group() as group:
            group.start_soon(fetcher, 0.5)
            await harness.wait_fetching(stream, durable, 1)
            await harness.elapse(0.5)
        assert results == [[]]

    # -- key/value ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_add_kv_creates_confirms_and_refuses_a_different_definition(
        self, harness: BackboneHarness
    ) -> None:
        config = KvConfig(bucket=f"{harness.prefix}_kv")
        bucket = await harness.backbone.add_kv(config)
        assert bucket.bucket == config.bucket
        await harness.backbone.add_kv(config)
        with pytest.raises(DefinitionConflict, match="ttl"):
            await harness.backbone.add_kv(KvConfig(bucket=config.bucket, ttl=5.0))
        assert (await harness.backbone.kv(config.bucket)).bucket == config.bucket
        with pytest.raises(BucketNotFound):
            await harness.backbone.kv(f"{harness.prefix}_nope")

    @pytest.mark.anyio
    async def test_kv_create_update_and_compare_and_set(self, harness: BackboneHarness) -> None:
        bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
        assert await bucket.get("claim.a") is None
        first = await bucket.create("claim.a", b"mine")
        with pytest.raises(KeyExists):
            await bucket.create("claim.a", b"theirs")
        entry = await bucket.get("claim.a")
        assert entry is not None
        assert (entry.key, entry.value, entry.revision, entry.operation) == (
            "claim.a",
            b"mine",
            first,
            "PUT",
        )
        second = await bucket.update("claim.a", b"done", last=first)
        assert second > first
        with pytest.raises(WrongRevision, match=rf"expected {first}\b.*{second}"):
            await bucket.update("claim.a", b"late", last=first)
        with pytest.raises(WrongRevision):
            await bucket.update("claim.never", b"x", last=1)
        third = await bucket.put("claim.a", b"forced")
        assert third > second
        entry = await bucket.get("claim.a")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"forced", third)

    @pytest.mark.anyio
    async def test_kv_delete_leaves_a_tombstone_and_create_works_again(
        self, harness: BackboneHarness
    ) -> None:
        bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
        revision = await bucket.put("k", b"v")
        with pytest.raises(WrongRevision):
            await bucket.delete("k", last=revision + 100)
        await bucket.delete("k", last=revision)
        assert await bucket.get("k") is None
        assert await bucket.keys() == []
        with pytest.raises(WrongRevision):
            await bucket.update("k", b"v2", last=revision)  # the tombstone is newer
        recreated = await bucket.create("k", b"again")
        assert recreated > revision + 1  # the tombstone took a revision too
        entry = await bucket.get("k")
        assert entry is not None
        assert entry.value == b"again"
        await bucket.delete("k")
        await bucket.delete("k")  # deleting a deleted key is harmless

    @pytest.mark.anyio
    async def test_kv_revisions_increase_across_keys_and_keys_are_sorted(
        self, harness: BackboneHarness
    ) -> None:
        bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
        revisions = [
            await bucket.put("b", b"1"),
            await bucket.put("a", b"1"),
            await bucket.create("c.d", b"1"),
            await bucket.put("b", b"2"),
        ]
        assert revisions == [1, 2, 3, 4]
        await bucket.delete("a")
        assert await bucket.keys() == ["b", "c.d"]
        assert await bucket.put("a", b"back") == 6

    @pytest.mark.anyio
    async def test_kv_values_expire_after_the_ttl(self, harness: BackboneHarness) -> None:
        bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv", ttl=1.0))
        revision = await bucket.create("lease", b"holder-1")
        await harness.elapse(0.5)
        entry = await bucket.get("lease")
        assert entry is not None
        assert entry.revision == revision
        await harness.elapse(0.5 + harness.grace)
        assert await bucket.get("lease") is None
        assert await bucket.keys() == []
        assert await bucket.create("lease", b"holder-2") > revision

    @pytest.mark.anyio
    async def test_kv_limits_and_key_rules(self, harness: BackboneHarness) -> None:
        bucket = await harness.backbone.add_kv(
            KvConfig(bucket=f"{harness.prefix}_kv", max_value_size=16)
        )
        await bucket.put("small", b"x" * 16)
        with pytest.raises(BackboneError):
            await bucket.put("big", b"x" * 17)
        for key in ("", "with space", ".leading", "trailing.", "a..b", "star*"):
            with pytest.raises(ConfigError):
                await bucket.put(key, b"x")

    # -- kv change streams ----------------------------------------------------------

    @pytest.mark.anyio
    async def test_kv_changes_are_messages_on_the_bucket_stream(
        self, harness: BackboneHarness
    ) -> None:
        backbone, name = harness.backbone, f"{harness.prefix}_kv"
        bucket = await backbone.add_kv(KvConfig(bucket=name))
        first = await bucket.put("users.ann", b"v1")
        await backbone.add_consumer(
            f"KV_{name}",
            ConsumerConfig(durable="changes", filter_subject=f"$KV.{name}.users.>", ack_wait=5.0),
        )
        await bucket.put("orders.1", b"other")  # outside the filter
        second = await bucket.put("users.bob", b"v2")
        await bucket.delete("users.ann")
        got = await backbone.fetch(f"KV_{name}", "changes", batch=10, timeout=harness.grace)
        summary = [(m.subject, m.seq, m.data, m.headers.get("KV-Operation", "PUT")) for m in got]
        # Delivered from the start of the bucket; "users.ann" keeps only its latest record.
        assert summary == [
            (f"$KV.{name}.users.bob", second, b"v2", "PUT"),
            (f"$KV.{name}.users.ann", second + 1, b"", "DEL"),
        ]
        assert first < second
        for message in got:
            await message.ack()

    @pytest.mark.anyio
    async def test_a_publish_to_a_bucket_subject_is_a_kv_write(
        self, harness: BackboneHarness
    ) -> None:
        backbone, name = harness.backbone, f"{harness.prefix}_kv"
        bucket = await backbone.add_kv(KvConfig(bucket=name))
        ack = await backbone.publish(f"$KV.{name}.replayed", b"again")  # e.g. a DLQ replay
        entry = await bucket.get("replayed")
        assert entry is not None
        assert (entry.value, entry.revision, ack.stream) == (b"again", ack.seq, f"KV_{name}")
        await backbone.publish(f"$KV.{name}.replayed", b"", headers={"KV-Operation": "DEL"})
        assert await bucket.get("replayed") is None
        assert await bucket.put("next", b"1") == ack.seq + 2

    # -- object stores ----------------------------------------------------------------

    @pytest.mark.anyio
    async def test_object_store_put_get_info_list_delete(self, harness: BackboneHarness) -> None:
        backbone, name = harness.backbone, f"{harness.prefix}_obj"
        store = await backbone.add_object_store(ObjectStoreConfig(bucket=name))
        assert store.bucket == name
        assert (await backbone.add_object_store(ObjectStoreConfig(bucket=name))).bucket == name
        data = bytes(range(256)) * 5
        info = await store.put("reports/2026 März.csv", data)
        assert (info.bucket, info.name, info.size, info.deleted) == (
            name,
            "reports/2026 März.csv",
            len(data),
            False,
        )
        assert info.digest == object_digest(data)
        assert await store.get("reports/2026 März.csv") == data
        assert (await store.info("reports/2026 März.csv")).digest == info.digest
        await store.put("a", b"")
        assert await store.get("a") == b""
        again = await (await backbone.object_store(name)).put("a", b"second")
        assert again.size == 6
        assert [i.name for i in await store.list()] == ["a", "reports/2026 März.csv"]
        await store.delete("a")
        assert [i.name for i in await store.list()] == ["reports/2026 März.csv"]
        with pytest.raises(ObjectNotFound):
            await store.get("a")
        with pytest.raises(ObjectNotFound):
            await store.info("a")
        with pytest.raises(ObjectNotFound):
            await store.delete("a")

    @pytest.mark.anyio
    async def test_object_store_refuses_bad_names_and_missing_buckets(
        self, harness: BackboneHarness
    ) -> None:
        backbone, name = harness.backbone, f"{harness.prefix}_obj"
        with pytest.raises(BucketNotFound):
            await backbone.object_store(name)
        for bad in ("", "a.b", "with space", "a/b"):
            with pytest.raises(ConfigError):
                await backbone.add_object_store(ObjectStoreConfig(bucket=bad))
        store = await backbone.add_object_store(ObjectStoreConfig(bucket=name))
        for hostile in ("", "x" * 1025, "tab\there", "nul\x00", "\ud800"):
            with pytest.raises(ConfigError):
                await store.put(hostile, b"data")
            with pytest.raises(ConfigError):
                await store.get(hostile)
        with pytest.raises(ConfigError):
            await store.put("text", "not bytes")  # type: ignore[arg-type]
        assert await store.list() == []

    @pytest.mark.anyio
    async def test_object_puts_are_meta_messages_on_the_store_stream(
        self, harness: BackboneHarness
    ) -> None:
        backbone, name = harness.backbone, f"{harness.prefix}_obj"
        store = await backbone.add_object_store(ObjectStoreConfig(bucket=name))
        await store.put("before consumer", b"1")
        await backbone.add_consumer(
            f"OBJ_{name}",
            ConsumerConfig(durable="uploads", filter_subject=f"$O.{name}.M.>", ack_wait=5.0),
        )
        await store.put("after/ü", b"22")
        await store.put("gone", b"333")
        await store.delete("gone")
        got = await backbone.fetch(f"OBJ_{name}", "uploads", batch=10, timeout=harness.grace)
        metas = [decode_object_meta(m.data) for m in got]
        assert [(m.name, m.size, bool(m.deleted)) for m in metas if m is not None] == [
            ("before consumer", 1, False),
            ("after/ü", 2, False),
            ("gone", 0, True),
        ]
        assert [m.seq for m in got] == sorted(m.seq for m in got)
        for message in got:
            await message.ack()
