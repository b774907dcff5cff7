"""Backbone conformance, delivery: acks, naks, AckWait, backoff, limits, waiting fetches.

Each ``check_*`` takes a ``BackboneHarness``. "Not yet" looks fetch with
``timeout=0`` and come well before the deadline they test; "now it is there"
looks wait for the messages with ``fetch_due``, boundedly.
"""

from __future__ import annotations

import anyio

from thaw._errors import ConfigError
from thaw.backbone._contract import ConsumerConfig, Message
from thaw.backbone.conformance._harness import (
    ACK_WAIT,
    WATCHDOG,
    BackboneHarness,
    deliveries,
    expect_raises,
    fetch_due,
    fetch_now,
    make_consumer,
    make_stream,
    publish_many,
    seqs,
    watched_task_group,
)

__all__ = [
    "check_a_delivery_says_how_many_messages_the_consumer_still_holds",
    "check_acked_messages_are_not_redelivered_and_acks_are_idempotent",
    "check_an_ack_that_frees_a_slot_wakes_a_waiting_fetch",
    "check_backoff_sets_the_wait_after_each_delivery",
    "check_competing_fetchers_never_share_a_message",
    "check_fetch_returns_up_to_batch_in_order_then_nothing",
    "check_filter_subject_with_wildcards",
    "check_in_progress_restarts_the_ack_wait",
    "check_max_ack_pending_holds_back_new_messages",
    "check_max_deliver_stops_redelivery",
    "check_nak_with_delay_redelivers_after_the_delay",
    "check_nak_without_delay_redelivers_at_once",
    "check_one_publish_wakes_exactly_one_of_two_waiting_fetchers",
    "check_redeliveries_come_before_new_messages_in_sequence_order",
    "check_term_stops_redelivery",
    "check_unacked_messages_are_redelivered_after_ack_wait",
    "check_waiting_fetch_wakes_on_publish",
    "check_waiting_fetch_wakes_on_redelivery_and_on_timeout",
]


# -- consumers: delivery ------------------------------------------------------


async def check_fetch_returns_up_to_batch_in_order_then_nothing(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    assert await fetch_now(harness, stream, durable) == []
    await harness.backbone.publish(f"{root}.a", b"hello", msg_id="m-1")
    await publish_many(harness, f"{root}.b", 4)
    first = await fetch_now(harness, stream, durable, batch=3)
    assert deliveries(first) == [(1, 1), (2, 1), (3, 1)]
    message = first[0]
    assert (message.stream, message.subject, message.data) == (stream, f"{root}.a", b"hello")
    assert message.msg_id == "m-1"
    assert message.headers["Nats-Msg-Id"] == "m-1"
    assert first[1].msg_id is None
    assert seqs(await fetch_now(harness, stream, durable, batch=3)) == [4, 5]
    assert await fetch_now(harness, stream, durable) == []
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 5, 0)


async def check_a_delivery_says_how_many_messages_the_consumer_still_holds(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, filter_subject=f"{root}.a")
    await publish_many(harness, f"{root}.a", 5)
    await publish_many(harness, f"{root}.b", 3)  # not for this consumer
    first = await fetch_now(harness, stream, durable, batch=2)
    assert [m.pending for m in first][-1] == 3
    rest = await fetch_now(harness, stream, durable, batch=10)
    assert seqs(rest) == [3, 4, 5]
    assert rest[-1].pending == 0


async def check_acked_messages_are_not_redelivered_and_acks_are_idempotent(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await publish_many(harness, f"{root}.a", 3)
    messages = await fetch_now(harness, stream, durable)
    for message in messages:
        await message.ack()
    await messages[0].ack()  # a second ack is harmless
    await messages[0].nak()  # so is a nak after the ack
    await harness.elapse(ACK_WAIT * 2)
    assert await fetch_now(harness, stream, durable) == []
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def check_nak_without_delay_redelivers_at_once(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await harness.backbone.publish(f"{root}.a", b"x")
    (message,) = await fetch_now(harness, stream, durable)
    await message.nak()
    again = await fetch_due(harness, stream, durable, 1)
    assert deliveries(again) == [(1, 2)]
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_ack_pending, info.num_redelivered) == (1, 1)


async def check_nak_with_delay_redelivers_after_the_delay(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, ack_wait=3.0)
    await harness.backbone.publish(f"{root}.a", b"x")
    (message,) = await fetch_now(harness, stream, durable)
    await message.nak(delay=2.0)
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(0.5)  # well before the delay ends, however slow the look
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(1.5)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 2)]


async def check_unacked_messages_are_redelivered_after_ack_wait(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await harness.backbone.publish(f"{root}.a", b"x")
    assert deliveries(await fetch_now(harness, stream, durable)) == [(1, 1)]
    await harness.elapse(ACK_WAIT / 2)
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(ACK_WAIT / 2)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 2)]
    await harness.elapse(ACK_WAIT)
    redelivered = await fetch_due(harness, stream, durable, 1)
    assert deliveries(redelivered) == [(1, 3)]
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_ack_pending, info.num_redelivered) == (1, 1)
    await redelivered[0].ack()
    await harness.elapse(ACK_WAIT)
    assert await fetch_now(harness, stream, durable) == []


async def check_backoff_sets_the_wait_after_each_delivery(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, ack_wait=0.5, backoff=(0.5, 1.0), max_deliver=5)
    await harness.backbone.publish(f"{root}.a", b"x")
    assert deliveries(await fetch_now(harness, stream, durable)) == [(1, 1)]
    await harness.elapse(0.5)  # backoff[0] after the first delivery
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 2)]
    await harness.elapse(0.5)  # backoff[1] = 1.0 after the second: not yet
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(0.5)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 3)]
    await harness.elapse(0.5)  # the last backoff repeats
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(0.5)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 4)]


async def check_in_progress_restarts_the_ack_wait(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    # Each look comes 0.25 s past the deadline it proves gone and 0.75 s before the
    # renewed one, so a late timer or a slow look on a server cannot cross it.
    durable = await make_consumer(harness, stream, ack_wait=2.0)
    await harness.backbone.publish(f"{root}.a", b"x")
    (message,) = await fetch_now(harness, stream, durable)
    await harness.elapse(1.0)
    await message.in_progress()
    await harness.elapse(1.25)  # past the original deadline (2.0)
    assert await fetch_now(harness, stream, durable) == []
    await message.in_progress()
    await harness.elapse(1.25)  # past the first renewed one (3.0)
    assert await fetch_now(harness, stream, durable) == []
    await harness.elapse(0.75)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(1, 2)]


async def check_max_deliver_stops_redelivery(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, max_deliver=2)
    await harness.backbone.publish(f"{root}.a", b"x")
    (first,) = await fetch_now(harness, stream, durable)
    await first.nak()
    (second,) = await fetch_due(harness, stream, durable, 1)
    assert second.num_delivered == 2
    await second.nak()
    assert await fetch_now(harness, stream, durable) == []
    # A timed-out last delivery is not redelivered either.
    await harness.backbone.publish(f"{root}.a", b"y")
    assert deliveries(await fetch_now(harness, stream, durable)) == [(2, 1)]
    await harness.elapse(ACK_WAIT)
    assert deliveries(await fetch_due(harness, stream, durable, 1)) == [(2, 2)]
    await harness.elapse(ACK_WAIT * 2)
    assert await fetch_now(harness, stream, durable) == []
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def check_term_stops_redelivery(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await harness.backbone.publish(f"{root}.a", b"x")
    (message,) = await fetch_now(harness, stream, durable)
    await message.term("malformed")
    await message.ack()  # ack after term is harmless
    await harness.elapse(ACK_WAIT * 2)
    assert await fetch_now(harness, stream, durable) == []
    assert (await harness.backbone.consumer_info(stream, durable)).num_ack_pending == 0


async def check_redeliveries_come_before_new_messages_in_sequence_order(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await publish_many(harness, f"{root}.a", 3)
    first, second = await fetch_now(harness, stream, durable, batch=2)
    await second.nak()
    await first.nak()
    await publish_many(harness, f"{root}.a", 1)
    got = await fetch_due(harness, stream, durable, 4, batch=4)
    assert deliveries(got) == [(1, 2), (2, 2), (3, 1), (4, 1)]


async def check_max_ack_pending_holds_back_new_messages(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, max_ack_pending=2)
    await publish_many(harness, f"{root}.a", 4)
    first = await fetch_now(harness, stream, durable, batch=2)
    assert seqs(first) == [1, 2]
    assert await fetch_now(harness, stream, durable, batch=2) == []
    info = await harness.backbone.consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending) == (2, 2)
    # Redeliveries are not held back: they are already pending.
    await harness.elapse(ACK_WAIT)
    assert deliveries(await fetch_due(harness, stream, durable, 2, batch=2)) == [
        (1, 2),
        (2, 2),
    ]
    await first[0].ack()
    assert seqs(await fetch_due(harness, stream, durable, 1, batch=2)) == [3]


async def check_an_ack_that_frees_a_slot_wakes_a_waiting_fetch(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream, max_ack_pending=1, ack_wait=30.0)
    await publish_many(harness, f"{root}.a", 2)
    (first,) = await fetch_now(harness, stream, durable, batch=1)
    results: list[list[Message]] = []

    async def fetcher() -> None:
        results.append(await harness.backbone.fetch(stream, durable, batch=1, timeout=10.0))

    async with watched_task_group() as group:
        group.start_soon(fetcher)
        await harness.wait_fetching(stream, durable, 1)
        await first.ack()
    assert deliveries(results[0]) == [(2, 1)]


async def check_filter_subject_with_wildcards(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    created = await make_consumer(
        harness, stream, durable="created", filter_subject=f"{root}.*.created"
    )
    europe = await make_consumer(harness, stream, durable="europe", filter_subject=f"{root}.eu.>")
    for subject in ("eu.created", "eu.paid", "us.created", "us.created.late", "eu.x.y"):
        await harness.backbone.publish(f"{root}.{subject}", subject.encode())
    assert (await harness.backbone.consumer_info(stream, created)).num_pending == 2
    assert seqs(await fetch_now(harness, stream, created)) == [1, 3]
    assert seqs(await fetch_now(harness, stream, europe)) == [1, 2, 5]
    with expect_raises(ConfigError):
        await harness.backbone.add_consumer(
            stream, ConsumerConfig(durable="outside", filter_subject=f"{harness.prefix}.x.>")
        )


# -- consumers: concurrency and waiting -------------------------------------------


async def check_competing_fetchers_never_share_a_message(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await publish_many(harness, f"{root}.a", 6)
    results: list[list[Message]] = []

    async def fetcher() -> None:
        results.append(
            await harness.backbone.fetch(stream, durable, batch=4, timeout=harness.grace)
        )

    async def fetch_in_pairs_until(count: int) -> None:
        # A server may hand the six out over several pulls; a shared one would show twice.
        with anyio.fail_after(WATCHDOG):
            while sum(len(batch) for batch in results) < count:
                async with anyio.create_task_group() as group:
                    group.start_soon(fetcher)
                    group.start_soon(fetcher)

    await fetch_in_pairs_until(6)
    got = [seq for batch in results for seq in seqs(batch)]
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    # After AckWait each message is redelivered to exactly one of them again.
    results.clear()
    await harness.elapse(ACK_WAIT)
    await fetch_in_pairs_until(6)
    again = [(m.seq, m.num_delivered) for batch in results for m in batch]
    assert sorted(again) == [(seq, 2) for seq in range(1, 7)]


async def check_one_publish_wakes_exactly_one_of_two_waiting_fetchers(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    # A long AckWait and fetch timeout: nothing but the publish can end a fetch, so
    # the one still waiting once the other returned is cancelled, not timed out.
    durable = await make_consumer(harness, stream, ack_wait=30.0)
    results: list[list[Message]] = []
    returned = anyio.Event()

    async def fetcher() -> None:
        results.append(await harness.backbone.fetch(stream, durable, batch=5, timeout=30.0))
        returned.set()

    async with watched_task_group() as group:
        group.start_soon(fetcher)
        group.start_soon(fetcher)
        await harness.wait_fetching(stream, durable, 2)
        await harness.backbone.publish(f"{root}.a", b"wake")
        await returned.wait()
        await harness.wait_fetching(stream, durable, 1)  # the other is still parked
        group.cancel_scope.cancel()
    assert [[m.data for m in batch] for batch in results] == [[b"wake"]]


async def check_waiting_fetch_wakes_on_publish(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    results: list[list[Message]] = []

    async def fetcher() -> None:
        results.append(await harness.backbone.fetch(stream, durable, batch=3, timeout=30.0))

    async with watched_task_group() as group:
        group.start_soon(fetcher)
        await harness.wait_fetching(stream, durable, 1)
        await harness.backbone.publish(f"{root}.a", b"wake")
    assert [m.data for m in results[0]] == [b"wake"]


async def check_waiting_fetch_wakes_on_redelivery_and_on_timeout(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await harness.backbone.publish(f"{root}.a", b"x")
    assert len(await fetch_now(harness, stream, durable)) == 1
    results: list[list[Message]] = []

    async def fetcher(timeout: float) -> None:
        results.append(await harness.backbone.fetch(stream, durable, timeout=timeout))

    async with watched_task_group() as group:
        group.start_soon(fetcher, 30.0)
        await harness.wait_fetching(stream, durable, 1)
        await harness.elapse(ACK_WAIT)
    (redelivered,) = results.pop()
    assert (redelivered.seq, redelivered.num_delivered) == (1, 2)
    await redelivered.ack()  # now nothing can arrive, however late the fetch times out
    async with watched_task_group() as group:
        group.start_soon(fetcher, 0.5)
        await harness.wait_fetching(stream, durable, 1)
        await harness.elapse(0.5)
    assert results == [[]]
