"""No message vanishes when a host dies holding it: claims fenced by delivery, attempts
counted by the worker, keys bound to payloads, results too large to store.

Both idempotency stores (in memory, and on a KV bucket of MemoryBackbone) keep the same
protocol; the worker tests kill a host the way a crash does: a delivery is fetched and
claimed and then nothing ever settles it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec
import pytest

from thaw import App, Event, Idempotency, Ok, Reject, Rejected, RetryPolicy, stream
from thaw.backbone._contract import ConsumerConfig, StreamConfig
from thaw.host._dead_letters import replay_dead_letter
from thaw.host._provision import apply_plan, max_ack_pending_for, plan_for
from thaw.host._worker import StreamWorker, ensure_dead_letter_stream
from thaw.invocation._idempotency import IdempotencyStore
from thaw.invocation._invoker import Invoker
from thaw.invocation._kv_idempotency import KvIdempotencyStore
from thaw.testing import FakeClock, MemoryBackbone, MemoryIdempotencyStore

pytestmark = pytest.mark.anyio


def memory_store(clock: FakeClock) -> IdempotencyStore:
    return MemoryIdempotencyStore(clock=clock, max_result=1024)


def kv_store(clock: FakeClock) -> IdempotencyStore:
    backbone = MemoryBackbone(clock=clock)
    return KvIdempotencyStore(backbone, wall_clock=clock.now, max_result=1024)


async def provisioned(store: IdempotencyStore) -> IdempotencyStore:
    if isinstance(store, KvIdempotencyStore):
        await store.provision(ttl=1000)
    return store


STORES = pytest.mark.parametrize("make", [memory_store, kv_store], ids=["memory", "kv"])


@STORES
async def test_a_redelivery_takes_over_its_dead_predecessors_claim(
    make: Callable[[FakeClock], IdempotencyStore],
) -> None:
    store = await provisioned(make(FakeClock()))
    dead = await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=1)
    assert dead.state == "claimed"
    again = await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=2)
    assert again.state == "claimed"  # at once, not after the 60 s hold
    await store.complete("k", dead.token, b"stale", ttl=100)  # the old token owns nothing
    await store.complete("k", again.token, b"fresh", ttl=100)
    done = await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=3)
    assert (done.state, done.result) == ("done", b"fresh")


@STORES
async def test_other_events_and_earlier_deliveries_still_wait(
    make: Callable[[FakeClock], IdempotencyStore],
) -> None:
    store = await provisioned(make(FakeClock()))
    await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=2)
    assert (await store.claim("k", hold=60, ttl=100, holder="evt-2", attempt=5)).state == "busy"
    assert (await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=2)).state == "busy"
    assert (await store.claim("k", hold=60, ttl=100, holder="evt-1", attempt=1)).state == "busy"
    assert (await store.claim("k", hold=60, ttl=100)).state == "busy"  # no holder: no takeover


@STORES
async def test_a_key_is_bound_to_its_payload(make: Callable[[FakeClock], IdempotencyStore]) -> None:
    store = await provisioned(make(FakeClock()))
    first = await store.claim("k", hold=60, ttl=100, digest=b"a" * 16)
    assert (await store.claim("k", hold=60, ttl=100, digest=b"b" * 16)).state == "conflict"
    await store.complete("k", first.token, b"r", ttl=100, digest=b"a" * 16)
    assert (await store.claim("k", hold=60, ttl=100, digest=b"b" * 16)).state == "conflict"
    same = await store.claim("k", hold=60, ttl=100, digest=b"a" * 16)
    assert (same.state, same.result) == ("done", b"r")
    assert (await store.claim("k", hold=60, ttl=100)).state == "done"  # unbound caller


@STORES
async def test_a_result_too_large_to_store_is_done_but_not_replayable(
    make: Callable[[FakeClock], IdempotencyStore],
) -> None:
    store = await provisioned(make(FakeClock()))
    claim = await store.claim("k", hold=60, ttl=100)
    await store.complete("k", claim.token, b"x" * 1025, ttl=100)
    again = await store.claim("k", hold=60, ttl=100)
    assert (again.state, again.replayable, again.result) == ("done", False, b"")
    peeked = await store.peek("k")
    assert peeked is not None and not peeked.replayable


class Job(msgspec.Struct, frozen=True):
    name: str


def counting_app(runs: list[str], *, attempts: int = 3, result: bytes = b"") -> App:
    app = App("jobs")

    @app.capability(
        retry=RetryPolicy(max_attempts=attempts),
        idempotency=Idempotency(),
        timeout=30,
    )
    async def work(job: Job) -> str:
        runs.append(job.name)
        return job.name + result.decode()

    return app


async def test_same_event_id_with_another_payload_is_refused_not_answered() -> None:
    runs: list[str] = []
    invoker = Invoker(counting_app(runs))
    work = invoker.capability("work")
    assert isinstance(await work(Event(id="key-1", data=b'{"name":"a"}')), Ok)
    other = await work(Event(id="key-1", data=b'{"name":"b"}'))
    assert isinstance(other, Reject) and other.code == "idempotency_key_reused"
    replay = await work(Event(id="key-1", data=b'{"name":"a"}'))
    assert isinstance(replay, Ok) and replay.replayed and replay.data == b'"a"'
    assert runs == ["a"]


async def test_a_result_too_large_to_store_never_runs_the_side_effect_twice() -> None:
    runs: list[str] = []
    big = b"y" * (600 * 1024)  # over the store's 512 KiB
    invoker = Invoker(counting_app(runs, result=big))
    work = invoker.capability("work")
    first = await work(Event(id="big-1", data=b'{"name":"a"}'))
    assert isinstance(first, Ok) and len(first.data) > 600 * 1024
    for attempt in (2, 3):
        again = await work(Event(id="big-1", data=b'{"name":"a"}', attempt=attempt))
        assert isinstance(again, Reject) and again.code == "result_not_replayable"
    assert runs == ["a"]


async def stream_with_one_job(backbone: MemoryBackbone, consumer: ConsumerConfig) -> None:
    await backbone.add_stream(StreamConfig(name="JOBS", subjects=("jobs.>",)))
    await ensure_dead_letter_stream(backbone)
    await backbone.add_consumer("JOBS", consumer)
    await backbone.publish("jobs.new", b'{"name":"a"}', msg_id="job-1")


async def die_holding(backbone: MemoryBackbone, invoker: Invoker, clock: FakeClock) -> None:
    """A host fetches the job, claims its key, and is killed: nothing settles either."""
    (delivery,) = await backbone.fetch("JOBS", "work", batch=1)
    store = invoker.idempotency_store
    claim = await store.claim(
        "jobs.work.job-1", hold=35, ttl=100, holder="job-1", attempt=delivery.num_delivered
    )
    assert claim.state == "claimed"
    clock.advance(2)  # AckWait passes: the server redelivers


async def dead_letters(backbone: MemoryBackbone) -> list[dict[str, str]]:
    await backbone.add_consumer("THAW_DLQ", ConsumerConfig(durable="look"))
    return [dict(m.headers) for m in await backbone.fetch("THAW_DLQ", "look", batch=10)]


async def test_the_redelivery_after_a_crash_runs_at_once_and_is_acked() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    runs: list[str] = []
    invoker = Invoker(counting_app(runs), backbone=backbone, clock=clock)
    consumer = ConsumerConfig(durable="work", ack_wait=1.0, max_deliver=-1)
    await stream_with_one_job(backbone, consumer)
    await die_holding(backbone, invoker, clock)
    worker = StreamWorker(invoker, backbone, "work", stream="JOBS", consumer=consumer)
    with anyio.fail_after(5):  # the claim's 35 s hold is not waited out
        await worker.run_until_idle()
    assert runs == ["a"]
    assert worker.statistics().acked == 1


async def test_a_message_whose_last_delivery_died_is_dead_lettered_not_dropped() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    runs: list[str] = []
    invoker = Invoker(counting_app(runs, attempts=2), backbone=backbone, clock=clock)
    consumer = ConsumerConfig(durable="work", ack_wait=1.0, max_deliver=-1)
    await stream_with_one_job(backbone, consumer)
    for _ in range(2):  # both attempts die with their hosts
        await die_holding(backbone, invoker, clock)
    worker = StreamWorker(invoker, backbone, "work", stream="JOBS", consumer=consumer)
    with anyio.fail_after(5):
        await worker.run_until_idle()
    assert runs == []  # not run a third time
    assert worker.statistics().dead_lettered == 1
    (letter,) = await dead_letters(backbone)
    assert letter["Thaw-Error-Code"] == "deliveries_exhausted"
    assert letter["Thaw-Attempts"] == "3"


async def test_a_late_delivery_of_finished_work_is_acked_from_the_store() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    runs: list[str] = []
    invoker = Invoker(counting_app(runs, attempts=1), backbone=backbone, clock=clock)
    consumer = ConsumerConfig(durable="work", ack_wait=1.0, max_deliver=-1)
    await stream_with_one_job(backbone, consumer)
    (delivery,) = await backbone.fetch("JOBS", "work", batch=1)
    event = Event(id="job-1", data=delivery.data)
    assert isinstance(await invoker.capability("work")(event), Ok)  # ran, then the host died
    clock.advance(2)
    worker = StreamWorker(invoker, backbone, "work", stream="JOBS", consumer=consumer)
    with anyio.fail_after(5):
        await worker.run_until_idle()
    assert runs == ["a"]
    assert (worker.statistics().acked, worker.statistics().dead_lettered) == (1, 0)


def test_max_ack_pending_leaves_room_for_a_dead_predecessor() -> None:
    assert max_ack_pending_for(64) == 128
    assert max_ack_pending_for(None) == 1000


async def test_a_restarted_host_gets_new_work_while_its_predecessors_messages_wait() -> None:
    """The killed host held as many messages as it runs at once; they wait out AckWait,
    and the host that replaces it runs the rest of the backlog meanwhile."""
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    runs: list[str] = []
    app = App("jobs")

    @app.capability(stream("jobs.new", stream="JOBS"), concurrency=2)
    async def work(job: Job) -> None:
        runs.append(job.name)

    plan = plan_for(app)
    await apply_plan(plan, backbone)
    [consumer] = plan.consumers
    for n in range(6):
        await backbone.publish("jobs.new", msgspec.json.encode(Job(f"j{n}")))
    held = await backbone.fetch("JOBS", consumer.config.durable, batch=2)  # then kill -9
    assert len(held) == 2
    worker = StreamWorker(
        Invoker(app, backbone=backbone, clock=clock),
        backbone,
        "work",
        stream="JOBS",
        consumer=consumer.config,
    )
    with anyio.fail_after(5):
        await worker.run_until_idle()  # no clock advance: AckWait has not passed
    assert sorted(runs) == [f"j{n}" for n in range(2, 6)]


async def test_a_dead_letter_too_large_for_the_backbone_is_written_without_its_body() -> None:
    """A message that fit its stream no longer fits with Thaw's headers: it is still
    dead-lettered (pointing at the original) instead of failing on every delivery."""
    backbone = MemoryBackbone(max_payload=4096)
    app = App("big")

    @app.capability(stream("big.in", stream="BIG"))
    async def refuse(data: bytes) -> None:
        raise Rejected("never", code="refused")

    plan = plan_for(app)
    await apply_plan(plan, backbone)
    body = b"x" * (4096 - 500)  # fits with its own headers and a replay's, not a DLQ's
    await backbone.publish("big.in", body, headers={"X-Note": "n" * 300})
    [consumer] = plan.consumers
    worker = StreamWorker(
        Invoker(app, backbone=backbone), backbone, "refuse", stream="BIG", consumer=consumer.config
    )
    with anyio.fail_after(5):
        await worker.run_until_idle()
    assert worker.statistics().dead_lettered == 1
    await backbone.add_consumer("THAW_DLQ", ConsumerConfig(durable="look"))
    [letter] = await backbone.fetch("THAW_DLQ", "look", batch=10)
    assert letter.data == b""
    assert letter.headers["Thaw-Body-Omitted"] == str(len(body))
    assert letter.headers["Thaw-Error-Code"] == "refused"
    assert letter.headers["Thaw-Original-Stream"] == "BIG"
    assert "X-Note" not in letter.headers
    await letter.ack()
    # The replay takes the body and headers from the original, which its stream keeps.
    await replay_dead_letter(backbone, letter.seq)
    again = await backbone.fetch("BIG", consumer.config.durable, batch=10)
    assert [(len(m.data), m.headers.get("X-Note")) for m in again] == [(len(body), "n" * 300)]
