"""Backbone conformance, streams and consumer provisioning: what JetStream stores and refuses.

Each ``check_*`` takes a ``BackboneHarness`` and asserts one behaviour; the
list the suite runs is ``thaw.testing.BACKBONE_CHECKS``.
"""

from __future__ import annotations

from thaw._errors import (
    BackboneError,
    ConsumerNotFound,
    DefinitionConflict,
    MessageNotFound,
    NoStreamForSubject,
    StreamNotFound,
)
from thaw.backbone._contract import ConsumerConfig, PubAck, StreamConfig
from thaw.backbone.conformance._harness import (
    ACK_WAIT,
    BackboneHarness,
    eventually,
    expect_raises,
    fetch_due,
    fetch_now,
    make_consumer,
    make_stream,
    publish_many,
    seqs,
)

__all__ = [
    "check_a_new_consumer_starts_from_the_first_stored_message",
    "check_add_consumer_creates_confirms_and_refuses_a_different_definition",
    "check_add_consumer_updates_delivery_settings_in_place",
    "check_add_stream_creates_confirms_and_refuses_a_different_definition",
    "check_delete_message_removes_it_for_readers_and_consumers",
    "check_delete_stream",
    "check_duplicate_msg_id_within_the_window_is_not_stored_again",
    "check_max_msg_size_refuses_larger_messages",
    "check_messages_older_than_max_age_expire",
    "check_missing_stream_and_consumer_are_reported",
    "check_publish_stores_in_sequence_and_get_message_reads_back",
    "check_publish_to_a_subject_no_stream_captures_fails",
    "check_streams_with_overlapping_subjects_conflict",
]


# -- streams ------------------------------------------------------------------


async def check_add_stream_creates_confirms_and_refuses_a_different_definition(
    harness: BackboneHarness,
) -> None:
    backbone = harness.backbone
    config = StreamConfig(name=f"{harness.prefix}_s", subjects=(f"{harness.prefix}.s.>",))
    info = await backbone.add_stream(config)
    assert info.config == config
    assert (info.messages, info.last_seq) == (0, 0)
    assert (await backbone.add_stream(config)).config == config
    changed = StreamConfig(name=config.name, subjects=config.subjects, max_age=60.0)
    with expect_raises(DefinitionConflict, match="max_age"):
        await backbone.add_stream(changed)
    assert (await backbone.stream_info(config.name)).config == config


async def check_streams_with_overlapping_subjects_conflict(harness: BackboneHarness) -> None:
    p = harness.prefix
    await harness.backbone.add_stream(StreamConfig(name=f"{p}_a", subjects=(f"{p}.orders.>",)))
    with expect_raises(DefinitionConflict):
        await harness.backbone.add_stream(
            StreamConfig(name=f"{p}_b", subjects=(f"{p}.orders.*.created",))
        )
    # Disjoint subjects are fine.
    await harness.backbone.add_stream(StreamConfig(name=f"{p}_c", subjects=(f"{p}.users.*",)))


async def check_publish_stores_in_sequence_and_get_message_reads_back(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
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
    with expect_raises(BackboneError):
        await harness.backbone.get_message(stream, 3)


async def check_delete_message_removes_it_for_readers_and_consumers(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    durable = await make_consumer(harness, stream)
    await publish_many(harness, f"{root}.x", 3)
    await harness.backbone.delete_message(stream, 2)
    with expect_raises(MessageNotFound):
        await harness.backbone.get_message(stream, 2)
    with expect_raises(MessageNotFound):
        await harness.backbone.delete_message(stream, 2)
    assert (await harness.backbone.stream_info(stream)).messages == 2
    delivered = await fetch_due(harness, stream, durable, 2)
    assert [m.data for m in delivered] == [b"m0", b"m2"]
    await harness.backbone.delete_message(stream, 1)
    assert (await harness.backbone.get_message(stream, 3)).data == b"m2"


async def check_publish_to_a_subject_no_stream_captures_fails(harness: BackboneHarness) -> None:
    _, root = await make_stream(harness)
    with expect_raises(NoStreamForSubject):
        await harness.backbone.publish(f"{harness.prefix}.elsewhere", b"x")
    with expect_raises(NoStreamForSubject):
        await harness.backbone.publish(root, b"x")  # '>' needs at least one more token


async def check_duplicate_msg_id_within_the_window_is_not_stored_again(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness, duplicate_window=2.0)
    first = await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1")
    await harness.backbone.publish(f"{root}.a", b"other", msg_id="order-2")
    await harness.elapse(1.0)  # half the window: a slow publish still lands inside it
    again = await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1")
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert (await harness.backbone.stream_info(stream)).messages == 2
    await harness.elapse(1.0)
    later: list[PubAck] = []

    async def stored_again() -> bool:  # a duplicate is not stored, so asking again is harmless
        later.append(await harness.backbone.publish(f"{root}.a", b"x", msg_id="order-1"))
        return not later[-1].duplicate

    await eventually(stored_again)
    assert (later[-1].seq, later[-1].duplicate) == (3, False)
    assert all(ack.seq == first.seq for ack in later[:-1])


async def check_max_msg_size_refuses_larger_messages(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness, max_msg_size=64)
    await harness.backbone.publish(f"{root}.a", b"x" * 32)
    with expect_raises(BackboneError):
        await harness.backbone.publish(f"{root}.a", b"x" * 65)
    assert (await harness.backbone.stream_info(stream)).messages == 1


async def check_messages_older_than_max_age_expire(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness, max_age=2.0)
    await harness.backbone.publish(f"{root}.a", b"old")
    await harness.elapse(1.0)
    await harness.backbone.publish(f"{root}.a", b"young")
    await harness.elapse(1.0)

    async def old_gone() -> bool:  # a server sweeps expired messages a little late
        return (await harness.backbone.stream_info(stream)).messages == 1

    await eventually(old_gone)
    info = await harness.backbone.stream_info(stream)
    assert (info.messages, info.first_seq, info.last_seq) == (1, 2, 2)
    with expect_raises(BackboneError):
        await harness.backbone.get_message(stream, 1)


async def check_delete_stream(harness: BackboneHarness) -> None:
    stream, root = await make_stream(harness)
    await make_consumer(harness, stream)
    await harness.backbone.delete_stream(stream)
    with expect_raises(StreamNotFound):
        await harness.backbone.stream_info(stream)
    with expect_raises(NoStreamForSubject):
        await harness.backbone.publish(f"{root}.a", b"x")
    with expect_raises(StreamNotFound):
        await harness.backbone.delete_stream(stream)


# -- consumers: provisioning ------------------------------------------------------


async def check_add_consumer_creates_confirms_and_refuses_a_different_definition(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    config = ConsumerConfig(durable="worker", filter_subject=f"{root}.*", ack_wait=ACK_WAIT)
    info = await harness.backbone.add_consumer(stream, config)
    assert (info.stream, info.config) == (stream, config)
    assert (await harness.backbone.add_consumer(stream, config)).config == config
    with expect_raises(DefinitionConflict, match="filter_subject"):
        await harness.backbone.add_consumer(
            stream, ConsumerConfig(durable="worker", filter_subject=f"{root}.a", ack_wait=ACK_WAIT)
        )


async def check_add_consumer_updates_delivery_settings_in_place(
    harness: BackboneHarness,
) -> None:
    """A host with other AckWait, attempts or MaxAckPending keeps the durable and its messages."""
    stream, root = await make_stream(harness)
    config = ConsumerConfig(durable="worker", filter_subject=f"{root}.*", ack_wait=ACK_WAIT)
    await harness.backbone.add_consumer(stream, config)
    await harness.backbone.publish(f"{root}.a", b"kept")
    newer = ConsumerConfig(
        durable="worker",
        filter_subject=f"{root}.*",
        ack_wait=ACK_WAIT * 2,
        max_deliver=-1,
        max_ack_pending=7,
    )
    info = await harness.backbone.add_consumer(stream, newer)
    assert info.config == newer
    assert (await harness.backbone.consumer_info(stream, "worker")).config == newer
    [message] = await harness.backbone.fetch(stream, "worker", batch=1, timeout=1.0)
    assert message.data == b"kept"
    await message.ack()


async def check_a_new_consumer_starts_from_the_first_stored_message(
    harness: BackboneHarness,
) -> None:
    stream, root = await make_stream(harness)
    await publish_many(harness, f"{root}.a", 2)
    early = await make_consumer(harness, stream, durable="early")
    assert seqs(await fetch_now(harness, stream, early)) == [1, 2]
    late = await make_consumer(harness, stream, durable="late")
    info = await harness.backbone.consumer_info(stream, late)
    assert (info.num_pending, info.num_ack_pending) == (2, 0)
    assert seqs(await fetch_now(harness, stream, late)) == [1, 2]


async def check_missing_stream_and_consumer_are_reported(harness: BackboneHarness) -> None:
    missing = f"{harness.prefix}_missing"
    with expect_raises(StreamNotFound):
        await harness.backbone.add_consumer(missing, ConsumerConfig(durable="worker"))
    with expect_raises(StreamNotFound):
        await harness.backbone.stream_info(missing)
    stream, _ = await make_stream(harness)
    with expect_raises(ConsumerNotFound):
        await harness.backbone.consumer_info(stream, "nobody")
    with expect_raises(ConsumerNotFound):
        await harness.backbone.fetch(stream, "nobody", batch=1, timeout=0)
