"""JetStreamBackbone: the backbone contract on a real nats-server, and JetStream-only behaviour."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import pytest
from backbone_contract import BackboneContract
from nats_fixtures import (  # noqa: F401
    JetStreamHarness,
    delete_streams,
    jetstream_harness,
    nats_server,
    wait_until,
)

from thaw import ConfigError
from thaw._errors import BucketNotFound
from thaw.adapters.nats import (
    EmbeddedServer,
    JetStreamBackbone,
    JetStreamOptions,
    ServerConfig,
    open_backbone,
    open_embedded_cluster,
    open_jetstream_backbone,
)
from thaw.adapters.nats.server import pick_free_ports
from thaw.lowlevel import (
    BackboneError,
    ConsumerConfig,
    DefinitionConflict,
    KvConfig,
    Message,
    StreamConfig,
)


class TestJetStreamBackboneContract(BackboneContract):
    """Every contract test, against the session's nats-server."""

    @pytest.fixture
    def harness(self, jetstream_harness: JetStreamHarness) -> JetStreamHarness:  # noqa: F811
        return jetstream_harness


def test_the_session_server_is_on_loopback(nats_server: EmbeddedServer) -> None:  # noqa: F811
    assert nats_server.url.startswith("nats://127.0.0.1:")


# -- JetStream-only behaviour ---------------------------------------------------------


@pytest.mark.anyio
async def test_an_existing_stream_with_other_subjects_is_a_conflict_naming_them(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.a.>",)))
    with pytest.raises(DefinitionConflict) as caught:
        await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.b.>",)))
    message = str(caught.value)
    assert f"subjects (existing ('{p}.a.>',), requested ('{p}.b.>',))" in message
    assert "duplicate_window" not in message
    info = await backbone.stream_info(f"{p}_s")
    assert info.config.subjects == (f"{p}.a.>",)  # nothing was changed


@pytest.mark.anyio
async def test_an_overlapping_stream_names_the_stream_it_overlaps(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_a", subjects=(f"{p}.orders.>",)))
    with pytest.raises(DefinitionConflict, match=rf"overlaps a subject of stream '{p}_a'"):
        await backbone.add_stream(StreamConfig(name=f"{p}_b", subjects=(f"{p}.orders.*",)))


@pytest.mark.anyio
async def test_an_existing_consumer_changes_only_its_delivery_settings(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.s.>",)))
    config = ConsumerConfig(durable="w", filter_subject=f"{p}.s.a", ack_wait=5.0, max_deliver=4)
    assert (await backbone.add_consumer(f"{p}_s", config)).config == config
    filtered = msgspec.structs.replace(config, filter_subject=f"{p}.s.b")
    with pytest.raises(DefinitionConflict, match=r"filter_subject"):
        await backbone.add_consumer(f"{p}_s", filtered)
    assert (await backbone.consumer_info(f"{p}_s", "w")).config == config
    newer = msgspec.structs.replace(config, ack_wait=6.0, max_deliver=-1)
    assert (await backbone.add_consumer(f"{p}_s", newer)).config == newer
    assert (await backbone.consumer_info(f"{p}_s", "w")).config == newer
    # With a backoff list JetStream stores backoff[0] as the AckWait (the backoff rules
    # every wait anyway), and confirming the same definition again is no conflict.
    backoff = ConsumerConfig(durable="b", ack_wait=30.0, backoff=(1.0, 2.0), max_deliver=4)
    stored = (await backbone.add_consumer(f"{p}_s", backoff)).config
    assert stored == msgspec.structs.replace(backoff, ack_wait=1.0)
    await backbone.add_consumer(f"{p}_s", backoff)


@pytest.mark.anyio
async def test_duplicate_window_follows_jetstream_rules(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    """0 is the server default (JetStream cannot switch dedupe off); the window fits max_age."""
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    default = StreamConfig(name=f"{p}_d", subjects=(f"{p}.d.>",), duplicate_window=0)
    assert (await backbone.add_stream(default)).config.duplicate_window == 120.0
    await backbone.add_stream(default)  # confirming it again is no conflict
    first = await backbone.publish(f"{p}.d.x", b"x", msg_id="one")
    assert (await backbone.publish(f"{p}.d.x", b"x", msg_id="one")).seq == first.seq
    short = StreamConfig(name=f"{p}_m", subjects=(f"{p}.m.>",), max_age=30.0)
    assert (await backbone.add_stream(short)).config.duplicate_window == 30.0
    await backbone.add_stream(short)
    with pytest.raises(ConfigError, match="duplicate_window"):
        await backbone.add_stream(
            StreamConfig(name=f"{p}_t", subjects=(f"{p}.t.>",), duplicate_window=0.01)
        )


@pytest.mark.anyio
async def test_a_cancelled_fetch_leaves_no_request_behind(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.s.>",)))
    await backbone.add_consumer(f"{p}_s", ConsumerConfig(durable="w", ack_wait=30.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: backbone.fetch(f"{p}_s", "w", timeout=30.0))
            await jetstream_harness.wait_fetching(f"{p}_s", "w", 1)
            group.cancel_scope.cancel()
        await backbone.publish(f"{p}.s.a", b"x")
        # The abandoned request's inbox is gone, so the server gave the message to nobody.
        (message,) = await backbone.fetch(f"{p}_s", "w", timeout=jetstream_harness.grace)
    assert (message.seq, message.num_delivered) == (1, 1)
    assert f"{p}_s#1" in repr(message)
    with pytest.raises(TypeError):
        message.headers["x"] = "y"  # type: ignore[index]


@pytest.mark.anyio
async def test_aclose_fails_a_waiting_fetch_and_later_calls(
    nats_server: EmbeddedServer,  # noqa: F811
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    p = jetstream_harness.prefix
    await jetstream_harness.backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.s.>",)))
    await jetstream_harness.backbone.add_consumer(f"{p}_s", ConsumerConfig(durable="w"))
    backbone = await JetStreamBackbone.connect(nats_server.url)
    outcome: list[BaseException] = []

    async def fetcher() -> None:
        try:
            await backbone.fetch(f"{p}_s", "w", timeout=30.0)
        except BackboneError as error:
            outcome.append(error)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(fetcher)
                await jetstream_harness.wait_fetching(f"{p}_s", "w", 1)
                await backbone.aclose()
        assert "closed" in str(outcome[0])
        await backbone.aclose()  # idempotent
        with pytest.raises(BackboneError, match="closed"):
            await backbone.publish(f"{p}.s.a", b"x")
    finally:
        await backbone.aclose()


@pytest.mark.anyio
async def test_connecting_to_nothing_fails_fast_without_secrets_in_the_message() -> None:
    port = pick_free_ports(1)[0]
    options = JetStreamOptions(connect_timeout=0.5, connect_attempts=1, reconnect_wait=0.05)
    with anyio.fail_after(10), pytest.raises(BackboneError) as caught:
        await JetStreamBackbone.connect(f"nats://alice:s3cret@127.0.0.1:{port}", options=options)
    assert "s3cret" not in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in repr(JetStreamOptions(password="s3cret", token="t0ken"))


async def _fetch_losing_the_server(
    backbone: JetStreamBackbone, stream: str, lose: Callable[[], None]
) -> list[list[Message]]:
    """Park a 30 s fetch on the ``idle`` consumer, then ``lose`` the server: what it got."""
    waited: list[list[Message]] = []

    async def fetch() -> None:
        waited.append(await backbone.fetch(stream, "idle", batch=5, timeout=30.0))

    with anyio.fail_after(10):  # a fetch waiting on a lost connection returns at once
        async with anyio.create_task_group() as group:
            group.start_soon(fetch)
            await JetStreamHarness(backbone, "").wait_fetching(stream, "idle", 1)
            await anyio.to_thread.run_sync(lose)
    return waited


@pytest.mark.anyio
async def test_a_consumer_survives_a_server_restart(tmp_path: Path) -> None:
    """Stop the server, start a new one on the same store and port: the backbone resumes."""
    store = str(tmp_path / "store")
    first = EmbeddedServer(ServerConfig(store_dir=store))
    await anyio.to_thread.run_sync(first.start)
    second: EmbeddedServer | None = None
    try:
        async with open_jetstream_backbone(first.url) as backbone:
            await backbone.add_stream(StreamConfig(name="orders", subjects=("orders.>",)))
            config = ConsumerConfig(durable="worker", ack_wait=1.0)
            await backbone.add_consumer("orders", config)
            for index in range(3):
                await backbone.publish("orders.new", f"m{index}".encode(), msg_id=f"id-{index}")
            acked, unacked = await backbone.fetch("orders", "worker", batch=2)
            await acked.ack()

            async def ack_counted() -> bool:  # acks are fire-and-forget publishes
                return (await backbone.consumer_info("orders", "worker")).num_ack_pending == 1

            await wait_until(ack_counted)
            idle = ConsumerConfig(durable="idle", filter_subject="orders.idle")
            await backbone.add_consumer("orders", idle)
            assert await _fetch_losing_the_server(backbone, "orders", first.stop) == [[]]
            second = EmbeddedServer(ServerConfig(store_dir=store, port=first.port))
            await anyio.to_thread.run_sync(second.start)

            # No reconnect call: the backbone's connection finds the new server by itself.
            with anyio.fail_after(30):
                late = await backbone.publish("orders.new", b"m3", msg_id="id-3")
                again = await backbone.publish("orders.new", b"m0", msg_id="id-0")
                seen: dict[int, int] = {}
                while len(seen) < 3:
                    for message in await backbone.fetch("orders", "worker", batch=5, timeout=2):
                        seen[message.seq] = message.num_delivered
                        await message.ack()
            assert late.seq == 4
            assert (again.seq, again.duplicate) == (1, True)  # dedupe state survived too
            assert seen == {unacked.seq: 2, 3: 1, 4: 1}
            info = await backbone.consumer_info("orders", "worker")
            assert info.config == config
            assert info.num_pending == 0

            async def all_acked() -> bool:
                return (await backbone.consumer_info("orders", "worker")).num_ack_pending == 0

            await wait_until(all_acked)
    finally:
        first.stop()
        if second is not None:
            await anyio.to_thread.run_sync(second.stop)


@pytest.mark.anyio
async def test_the_factory_without_a_url_runs_an_embedded_server_in_the_state_dir(
    tmp_path: Path,
) -> None:
    state = str(tmp_path / ".thaw")
    async with open_backbone(None, state_dir=state) as backbone:
        await backbone.add_stream(StreamConfig(name="orders", subjects=("orders.>",)))
        await backbone.publish("orders.new", b"kept")
    assert (tmp_path / ".thaw" / "nats" / "jetstream").is_dir()
    async with open_backbone(None, state_dir=state) as backbone:  # a new server, same data
        assert (await backbone.get_message("orders", 1)).data == b"kept"


@pytest.mark.anyio
async def test_the_factory_connects_to_a_url_and_refuses_unknown_options(
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    async with open_backbone(nats_server.url, request_timeout=2.0) as backbone:
        assert isinstance(backbone, JetStreamBackbone)
        assert backbone.options.request_timeout == 2.0
    with pytest.raises(ConfigError, match="passwrd"):
        async with open_backbone(nats_server.url, passwrd="x"):
            pass


@pytest.mark.anyio
async def test_on_a_cluster_streams_and_buckets_are_replicated_and_usable_at_once() -> None:
    async with open_embedded_cluster(3) as cluster:
        options = JetStreamOptions(replicas=3)
        async with open_jetstream_backbone(cluster.urls, options=options) as backbone:
            await backbone.add_stream(StreamConfig(name="orders", subjects=("orders.>",)))
            # Right after creation the stream's interest may not have reached this node;
            # publish rides that out instead of reporting "no stream".
            assert (await backbone.publish("orders.new", b"x", msg_id="a")).seq == 1
            bucket = await backbone.add_kv(KvConfig(bucket="ledger"))
            revision = await bucket.create("account.1", b"100")
            entry = await bucket.get("account.1")
            assert entry is not None and entry.revision == revision
            jsm = backbone.client.jsm()
            for name in ("orders", "KV_ledger"):
                assert (await jsm.stream_info(name)).config.num_replicas == 3


@pytest.mark.anyio
async def test_on_a_cluster_listing_keys_rides_out_a_consumer_not_yet_led() -> None:
    """keys() makes a fresh consumer per call; on a cluster its first pull can meet
    "503 no responders" before the consumer has a leader. That is waited out, not an
    error (it failed `thaw revisions` about once in a hundred calls)."""
    async with open_embedded_cluster(3) as cluster:
        options = JetStreamOptions(replicas=3)
        async with open_jetstream_backbone(cluster.urls[0], options=options) as backbone:
            bucket = await backbone.add_kv(KvConfig(bucket="hosts", ttl=30.0))
            for i in range(5):
                await bucket.put(f"h{i}", b"x")
            for n in range(300):
                assert await bucket.keys() == [f"h{i}" for i in range(5)]
                await bucket.put(f"h{n % 5}", b"y")


def test_the_package_exports_what_it_documents() -> None:
    import thaw.adapters.nats

    assert sorted(thaw.adapters.nats.__all__) == [
        "ClusterSettings",
        "EmbeddedCluster",
        "EmbeddedServer",
        "JetStreamBackbone",
        "JetStreamOptions",
        "NatsServerFailed",
        "NatsServerNotFound",
        "ServerConfig",
        "find_nats_server",
        "open_backbone",
        "open_embedded_cluster",
        "open_embedded_server",
        "open_jetstream_backbone",
    ]


@pytest.mark.anyio
async def test_buckets_use_the_standard_kv_layout_other_clients_read(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    bucket = await backbone.add_kv(KvConfig(bucket=f"{p}_kv", ttl=60.0))
    revision = await bucket.put("order.1", b"paid")
    await bucket.put("order.2", b"new")
    await bucket.delete("order.2")
    theirs = await backbone.client.jetstream().key_value(f"{p}_kv")  # nats-py's own KV
    entry = await theirs.get("order.1")
    assert (entry.value, entry.revision) == (b"paid", revision)
    assert await theirs.keys() == ["order.1"]
    await theirs.put("order.3", b"from another client")
    ours = await backbone.kv(f"{p}_kv")
    assert await ours.keys() == ["order.1", "order.3"]
    assert (await backbone.add_kv(KvConfig(bucket=f"{p}_kv", ttl=60.0))).bucket == f"{p}_kv"


@pytest.mark.anyio
async def test_listing_keys_while_they_expire_and_change_never_fails(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    """keys() ends on what the server still holds, not on the count it saw at the start.

    Records that expire (a TTL) while the listing runs used to leave it waiting for
    deliveries that never came ("stopped delivering keys"). A writer adds a key every
    millisecond or so, each living one second, so some expire during every listing.
    """
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    bucket = await backbone.add_kv(KvConfig(bucket=f"{p}_ttl", ttl=1.0))
    written: set[str] = set()
    listings = 0

    async def write(stop: anyio.Event) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            key = f"k{i:06}"
            written.add(key)
            await bucket.put(key, b"v")
            if i % 4 == 0:
                await anyio.sleep(0.001)

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(write, stop)
        with anyio.fail_after(30):
            expiring = 0  # listings since the first key expired
            while expiring < 60:
                listed = await bucket.keys()
                listings += 1
                assert listed == sorted(listed) and set(listed) <= written
                if listed and listed[0] != "k000000":
                    expiring += 1
        stop.set()
    assert listings > 60


@pytest.mark.anyio
async def test_after_a_server_crash_waiting_fetches_return_and_consuming_resumes(
    tmp_path: Path,
) -> None:
    """kill -9: no goodbye from the server; the backbone notices, reconnects, resumes."""
    store = str(tmp_path / "store")
    first = EmbeddedServer(ServerConfig(store_dir=store))
    await anyio.to_thread.run_sync(first.start)
    second: EmbeddedServer | None = None
    try:
        async with open_jetstream_backbone(first.url) as backbone:
            await backbone.add_stream(StreamConfig(name="jobs", subjects=("jobs.>",)))
            await backbone.add_consumer("jobs", ConsumerConfig(durable="worker", ack_wait=1.0))
            await backbone.add_consumer(
                "jobs", ConsumerConfig(durable="idle", filter_subject="jobs.idle")
            )
            for index in range(2):
                await backbone.publish("jobs.new", f"m{index}".encode())
            waited = await _fetch_losing_the_server(backbone, "jobs", first.kill)
            assert waited == [[]]  # the lost request ended the fetch, well before 30 s

            second = EmbeddedServer(ServerConfig(store_dir=store, port=first.port))
            await anyio.to_thread.run_sync(second.start)
            with anyio.fail_after(30):
                await backbone.publish("jobs.new", b"m2")
                seen: set[int] = set()
                while seen != {1, 2, 3}:
                    for message in await backbone.fetch("jobs", "worker", batch=5, timeout=2):
                        seen.add(message.seq)
                        await message.ack()
    finally:
        first.stop()
        if second is not None:
            await anyio.to_thread.run_sync(second.stop)


@pytest.mark.anyio
async def test_get_many_refuses_a_key_too_long_for_a_subject_as_get_does(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    bucket = await jetstream_harness.backbone.add_kv(
        KvConfig(bucket=f"{jetstream_harness.prefix}_kv")
    )
    await bucket.put("short", b"1")
    long_key = "k" * 4000
    with pytest.raises(ConfigError, match="characters"):
        await bucket.get(long_key)
    with pytest.raises(ConfigError, match="characters"):
        await bucket.get_many(["short", long_key])
    assert list(await bucket.get_many(["short"])) == ["short"]


@pytest.mark.anyio
async def test_a_bucket_whose_direct_gets_have_no_responder_is_read_from_its_leader(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    """A new bucket in a cluster answers direct gets only once its replicas have
    subscribed; until then "no responders" must not read as "the bucket is gone"."""
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    kv = await backbone.add_kv(KvConfig(bucket=f"{p}_b"))
    await kv.put("k", b"v")
    jsm = backbone.client.jsm()
    info = await jsm.stream_info(f"KV_{p}_b")
    info.config.allow_direct = False  # the server stops answering direct gets on it
    await jsm.update_stream(info.config)
    with anyio.fail_after(10):
        entry = await kv.get("k")
        assert entry is not None and entry.value == b"v"
        assert await kv.get("missing") is None
        assert set(await kv.get_many(["k", "missing"])) == {"k"}
        await jsm.delete_stream(f"KV_{p}_b")
        with pytest.raises(BucketNotFound, match="no longer exists"):
            await kv.get("k")
