"""A host on a three-node JetStream cluster keeps processing when one node stops.

The cluster runs on loopback (``open_embedded_cluster``), streams and buckets are
created with three replicas, and the host's connection knows every node's URL.
Orders are published in two halves; a node stops while the first half is in
flight (every call slot holds a call that has posted to the ledger but is not
acked, the rest of the half waits in the stream); the second half is published
with the node down. Every order must be posted exactly once in effect: each
posting is a ``create`` keyed by the order, so a second execution is refused
instead of doubling it. Covered: a node the client does not talk to, the node it
does talk to (the client fails over), and that node dying with requests in
flight. Waits are bounded; nothing sleeps to let a
race settle.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats_fixtures import wait_until

from thaw import Access, App, Backoff, Context, Idempotency, KeyExists, RetryPolicy, stream
from thaw.adapters.nats import JetStreamBackbone, JetStreamOptions, open_embedded_cluster
from thaw.adapters.nats.cluster import EmbeddedCluster
from thaw.lowlevel import (
    BackboneError,
    Host,
    NoStreamForSubject,
    RetryBudget,
    list_dead_letters,
    open_host,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ORDERS = 60
SUBJECT = "clustered.orders"
LEDGER = "clustered_ledger"
CONCURRENCY = 8
PUBLISH_LIMIT = 30.0  # seconds one publish may keep retrying while the cluster fails over
FAILOVER_LIMIT = 30.0  # seconds for the cluster to elect new leaders and the client to reconnect


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


class Book:
    """What the function did, seen from the test; and a gate that holds calls in flight."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.posted: list[str] = []
        self.again: list[str] = []
        self.held = 0
        self.gate = anyio.Event()

    def release(self) -> None:
        self.gate.set()


def ledger_app(book: Book) -> App:
    app = App("clustered")

    @app.capability(
        stream(SUBJECT),
        idempotency=Idempotency(key=lambda event, order: order.order_id),
        concurrency=CONCURRENCY,
        timeout=30.0,  # held calls must outlast a fail-over
        retry=RetryPolicy(max_attempts=20, backoff=Backoff(initial=0.05, maximum=0.5, jitter=0)),
        access=Access(buckets=(LEDGER,)),
    )
    async def post(order: Order, ctx: Context) -> None:
        book.runs.append(order.order_id)
        ledger = await ctx.kv(LEDGER)
        amount = str(order.amount).encode()
        try:
            await ledger.create(order.order_id, amount)
        except KeyExists:
            entry = await ledger.get(order.order_id)
            assert entry is not None and entry.value == amount
            book.again.append(order.order_id)  # posted by an earlier execution: not doubled
            return
        book.posted.append(order.order_id)
        if not book.gate.is_set():  # posted, neither settled nor acked: in flight
            book.held += 1
            await book.gate.wait()

    return app


ORDER_LIST = [Order(f"o{index:03d}", index + 1) for index in range(ORDERS)]
FIRST_HALF, SECOND_HALF = ORDER_LIST[: ORDERS // 2], ORDER_LIST[ORDERS // 2 :]


async def publish_surely(backbone: JetStreamBackbone, order: Order) -> None:
    """Publish until the stream acknowledges; the message id makes a repeat harmless."""
    data = msgspec.json.encode(order)
    with anyio.fail_after(PUBLISH_LIMIT):
        while True:
            try:
                await backbone.publish(SUBJECT, data, msg_id=order.order_id)
                return
            except NoStreamForSubject:
                raise
            except BackboneError:
                await anyio.sleep(0.1)  # no leader yet or reconnecting: send again


async def settled(backbone: JetStreamBackbone, host: Host) -> bool:
    [consumer] = host.plan.consumers
    try:
        info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
    except BackboneError:
        return False  # the consumer's leader is being elected
    return info.num_pending == 0 and info.num_ack_pending == 0


def connected_node(cluster: EmbeddedCluster, backbone: JetStreamBackbone) -> int:
    url = backbone.client.connected_url
    assert url is not None
    return cluster.node_serving(url.geturl())


async def led_without(backbone: JetStreamBackbone, host: Host, server_name: str) -> bool:
    """Whether every stream and the consumer of ``host`` has a leader other than ``server_name``."""
    if not backbone.client.is_connected:
        return False
    jsm = backbone.client.jsm()
    names = [s.name for s in host.plan.streams] + [f"KV_{b.bucket}" for b in host.plan.buckets]
    [consumer] = host.plan.consumers
    try:
        leaders = [(await jsm.stream_info(name)).cluster for name in names]
        info = await jsm.consumer_info(consumer.stream, consumer.config.durable)
        leaders.append(info.cluster)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
        return False
    return all(c is not None and c.leader not in (None, server_name) for c in leaders)


Clustered = tuple[EmbeddedCluster, JetStreamBackbone, Host]


@asynccontextmanager
async def clustered_host(
    book: Book,
) -> AsyncIterator[tuple[EmbeddedCluster, JetStreamBackbone, Host]]:
    """A cluster, a connection to all its nodes (R3 streams and buckets), a host on it."""
    async with open_embedded_cluster(3) as cluster:
        options = JetStreamOptions(replicas=3, request_timeout=2.0)
        backbone = await JetStreamBackbone.connect(cluster.urls, options=options)
        try:
            async with open_host(
                ledger_app(book),
                backbone,
                fetch_timeout=0.2,
                drain_timeout=5.0,
                budget=RetryBudget(burst=1000.0, min_per_second=1000.0),
            ) as host:
                jsm = backbone.client.jsm()
                for name in (host.plan.consumers[0].stream, f"KV_{LEDGER}"):
                    assert (await jsm.stream_info(name)).config.num_replicas == 3
                yield cluster, backbone, host
        finally:
            await backbone.aclose()


async def publish_first_half_and_hold(backbone: JetStreamBackbone, book: Book) -> None:
    for order in FIRST_HALF:
        await publish_surely(backbone, order)

    async def slots_held() -> bool:
        return book.held == CONCURRENCY

    await wait_until(slots_held, limit=30)


async def finish_and_check(
    cluster: EmbeddedCluster, backbone: JetStreamBackbone, host: Host, book: Book, stopped: int
) -> None:
    """Publish the second half with the node down, wait for everything, check the ledger."""
    for order in SECOND_HALF:
        await publish_surely(backbone, order)

    async def all_processed() -> bool:
        done = len(book.posted) + len(book.again) >= ORDERS
        return done and await settled(backbone, host)

    await wait_until(all_processed, limit=60)
    assert connected_node(cluster, backbone) != stopped  # failed over if it had to
    ledger = await backbone.kv(LEDGER)
    for order in ORDER_LIST:
        entry = await ledger.get(order.order_id)
        assert entry is not None and entry.value == str(order.amount).encode()
    letters: list[object] = []

    async def dead_letters_listed() -> bool:  # the DLQ stream may still be electing a leader
        try:
            letters[:] = await list_dead_letters(backbone, app=host.app.name)
        except BackboneError:
            return False
        return True

    await wait_until(dead_letters_listed, limit=FAILOVER_LIMIT)
    assert letters == []
    posted = Counter(book.posted)
    assert set(posted) == {order.order_id for order in ORDER_LIST}  # nothing lost
    assert max(posted.values()) == 1  # and every posting written once
    assert set(book.again) <= set(posted)


@pytest.mark.parametrize("victim", ["another node", "the connected node"])
async def test_processing_continues_when_one_node_of_three_stops(victim: str) -> None:
    book = Book()
    async with clustered_host(book) as (cluster, backbone, host):
        await publish_first_half_and_hold(backbone, book)
        connected = connected_node(cluster, backbone)
        index = connected if victim == "the connected node" else (connected + 1) % 3
        await anyio.to_thread.run_sync(cluster.stop_node, index)
        assert len(cluster.urls) == 2
        name = cluster.nodes[index].config.server_name
        assert name is not None

        async def failed_over() -> bool:
            return await led_without(backbone, host, name)

        await wait_until(failed_over, limit=FAILOVER_LIMIT)
        book.release()  # the calls in flight at the stop finish now, on the new leaders
        await finish_and_check(cluster, backbone, host, book, index)


async def test_the_connected_node_dying_with_requests_in_flight_does_not_crash_the_host() -> None:
    """Calls settle (idempotency records written) into a frozen node, which is then killed."""
    book = Book()
    async with clustered_host(book) as (cluster, backbone, host):
        await publish_first_half_and_hold(backbone, book)
        index = connected_node(cluster, backbone)
        node = cluster.nodes[index]
        assert node.pid is not None
        client = backbone.client
        os.kill(node.pid, signal.SIGSTOP)  # ours, by PID: it reads nothing from now on
        sent = client.stats["out_msgs"]
        book.release()  # each held call now stores its result: one KV request each

        async def requests_on_the_wire() -> bool:
            return client.stats["out_msgs"] >= sent + CONCURRENCY and client.pending_data_size == 0

        await wait_until(requests_on_the_wire)
        await anyio.to_thread.run_sync(cluster.kill_node, index)  # they never get an answer
        await finish_and_check(cluster, backbone, host, book, index)
