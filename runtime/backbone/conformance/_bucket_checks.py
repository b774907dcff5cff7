"""Backbone conformance, key/value buckets and object stores, and their change streams.

Each ``check_*`` takes a ``BackboneHarness``; buckets are named
``<prefix>_kv`` and ``<prefix>_obj``.
"""

from __future__ import annotations

import msgspec

from thaw._errors import (
    BackboneError,
    BucketNotFound,
    ConfigError,
    DefinitionConflict,
    KeyExists,
    ObjectNotFound,
    WrongRevision,
)
from thaw.backbone._buckets import decode_object_meta, object_digest
from thaw.backbone._contract import ConsumerConfig, KvConfig, ObjectStoreConfig
from thaw.backbone.conformance._harness import BackboneHarness, eventually, expect_raises, fetch_due

__all__ = [
    "check_a_publish_to_a_bucket_subject_is_a_kv_write",
    "check_add_kv_creates_confirms_and_refuses_a_different_definition",
    "check_kv_changes_are_messages_on_the_bucket_stream",
    "check_kv_create_update_and_compare_and_set",
    "check_kv_delete_leaves_a_tombstone_and_create_works_again",
    "check_kv_limits_and_key_rules",
    "check_kv_keys_under_a_prefix",
    "check_kv_keys_refuses_hostile_prefixes",
    "check_kv_get_many_returns_live_values_only",
    "check_kv_get_many_refuses_hostile_input",
    "check_kv_revisions_increase_across_keys_and_keys_are_sorted",
    "check_kv_values_expire_after_the_ttl",
    "check_object_puts_are_meta_messages_on_the_store_stream",
    "check_object_put_headers_ride_in_the_meta_message",
    "check_object_store_put_get_info_list_delete",
    "check_object_store_refuses_bad_names_and_missing_buckets",
]


# -- key/value ------------------------------------------------------------------


async def check_add_kv_creates_confirms_and_refuses_a_different_definition(
    harness: BackboneHarness,
) -> None:
    config = KvConfig(bucket=f"{harness.prefix}_kv")
    bucket = await harness.backbone.add_kv(config)
    assert bucket.bucket == config.bucket
    await harness.backbone.add_kv(config)
    with expect_raises(DefinitionConflict, match="ttl"):
        await harness.backbone.add_kv(KvConfig(bucket=config.bucket, ttl=5.0))
    assert (await harness.backbone.kv(config.bucket)).bucket == config.bucket
    with expect_raises(BucketNotFound):
        await harness.backbone.kv(f"{harness.prefix}_nope")


async def check_kv_create_update_and_compare_and_set(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    assert await bucket.get("claim.a") is None
    first = await bucket.create("claim.a", b"mine")
    with expect_raises(KeyExists):
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
    with expect_raises(WrongRevision, match=rf"expected {first}\b.*{second}"):
        await bucket.update("claim.a", b"late", last=first)
    with expect_raises(WrongRevision):
        await bucket.update("claim.never", b"x", last=1)
    third = await bucket.put("claim.a", b"forced")
    assert third > second
    entry = await bucket.get("claim.a")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"forced", third)


async def check_kv_delete_leaves_a_tombstone_and_create_works_again(
    harness: BackboneHarness,
) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    revision = await bucket.put("k", b"v")
    with expect_raises(WrongRevision):
        await bucket.delete("k", last=revision + 100)
    await bucket.delete("k", last=revision)
    assert await bucket.get("k") is None
    assert await bucket.keys() == []
    with expect_raises(WrongRevision):
        await bucket.update("k", b"v2", last=revision)  # the tombstone is newer
    recreated = await bucket.create("k", b"again")
    assert recreated > revision + 1  # the tombstone took a revision too
    entry = await bucket.get("k")
    assert entry is not None
    assert entry.value == b"again"
    await bucket.delete("k")
    await bucket.delete("k")  # deleting a deleted key is harmless


async def check_kv_revisions_increase_across_keys_and_keys_are_sorted(
    harness: BackboneHarness,
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


async def check_kv_values_expire_after_the_ttl(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv", ttl=2.0))
    revision = await bucket.create("lease", b"holder-1")
    await harness.elapse(1.0)  # half the TTL: a slow look still comes well before it ends
    entry = await bucket.get("lease")
    assert entry is not None
    assert entry.revision == revision
    await harness.elapse(1.0)

    async def expired() -> bool:  # a server sweeps expired values a little late
        return await bucket.get("lease") is None

    await eventually(expired)
    assert await bucket.keys() == []
    assert await bucket.create("lease", b"holder-2") > revision


async def check_kv_limits_and_key_rules(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(
        KvConfig(bucket=f"{harness.prefix}_kv", max_value_size=16)
    )
    await bucket.put("small", b"x" * 16)
    with expect_raises(BackboneError):
        await bucket.put("big", b"x" * 17)
    for key in ("", "with space", ".leading", "trailing.", "a..b", "star*"):
        with expect_raises(ConfigError):
            await bucket.put(key, b"x")


async def check_kv_keys_under_a_prefix(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    for key in ("done.b1.c1", "done.b1.c2.x", "done.b1", "done.b10.c1", "done.b2.c1", "other"):
        await bucket.put(key, b"1")
    await bucket.put("done.b1.gone", b"1")
    await bucket.delete("done.b1.gone")
    assert await bucket.keys(prefix="done.b1") == ["done.b1.c1", "done.b1.c2.x"]
    assert await bucket.keys(prefix="done.b1.") == ["done.b1.c1", "done.b1.c2.x"]
    assert await bucket.keys(prefix="done") == [
        "done.b1",
        "done.b1.c1",
        "done.b1.c2.x",
        "done.b10.c1",
        "done.b2.c1",
    ]
    assert await bucket.keys(prefix="nothing.here") == []
    assert await bucket.keys(prefix="other") == []  # the key itself is not under itself
    assert len(await bucket.keys()) == 6


async def check_kv_keys_refuses_hostile_prefixes(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    await bucket.put("a.b", b"1")
    hostile: tuple[object, ...] = (
        "",
        "*",
        ">",
        "a.*",
        "a.>",
        "a b",
        ".a",
        "a..b",
        "ä",
        "a\x00",
        "x" * 1025,
        7,
        b"a",
    )
    for bad in hostile:
        with expect_raises(ConfigError, match="prefix"):
            await bucket.keys(prefix=bad)  # type: ignore[arg-type]
    assert await bucket.keys(prefix="a") == ["a.b"]


async def check_kv_get_many_returns_live_values_only(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    revisions = {
        f"part.{index}": await bucket.put(f"part.{index}", b"v%d" % index) for index in range(150)
    }
    await bucket.delete("part.7")
    wanted = [f"part.{index}" for index in range(150)] + ["part.7", "missing", "part.3"]
    got = await bucket.get_many(wanted)
    assert sorted(got) == sorted(key for key in revisions if key != "part.7")
    entry = got["part.42"]
    assert (entry.bucket, entry.key, entry.value, entry.revision, entry.operation) == (
        bucket.bucket,
        "part.42",
        b"v42",
        revisions["part.42"],
        "PUT",
    )
    assert await bucket.get_many([]) == {}
    assert await bucket.get_many(iter(["missing"])) == {}
    many = [f"k.{index}" for index in range(1100)]  # past JetStream's 1024 per batch get
    for key in many[::100] + many[-3:]:
        await bucket.put(key, key.encode())
    got = await bucket.get_many(many)
    assert sorted(got) == sorted(many[::100] + many[-3:])
    assert all(entry.value == key.encode() for key, entry in got.items())


async def check_kv_get_many_refuses_hostile_input(harness: BackboneHarness) -> None:
    bucket = await harness.backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_kv"))
    await bucket.put("a", b"1")
    for bad in ("a", b"a", 7, ["a", None], ["a", ""], ["a*"], ["ä"], [["a"]]):
        with expect_raises(ConfigError):
            await bucket.get_many(bad)  # type: ignore[arg-type]
    with expect_raises(ConfigError, match="limit"):
        await bucket.get_many(f"k{index}" for index in range(10_001))
    assert list(await bucket.get_many(["a"])) == ["a"]


# -- kv change streams ----------------------------------------------------------


async def check_kv_changes_are_messages_on_the_bucket_stream(harness: BackboneHarness) -> None:
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
    got = await fetch_due(harness, f"KV_{name}", "changes", 2)
    summary = [(m.subject, m.seq, m.data, m.headers.get("KV-Operation", "PUT")) for m in got]
    # Delivered from the start of the bucket; "users.ann" keeps only its latest record.
    assert summary == [
        (f"$KV.{name}.users.bob", second, b"v2", "PUT"),
        (f"$KV.{name}.users.ann", second + 1, b"", "DEL"),
    ]
    assert first < second
    for message in got:
        await message.ack()


async def check_a_publish_to_a_bucket_subject_is_a_kv_write(harness: BackboneHarness) -> None:
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


async def check_object_store_put_get_info_list_delete(harness: BackboneHarness) -> None:
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
    with expect_raises(ObjectNotFound):
        await store.get("a")
    with expect_raises(ObjectNotFound):
        await store.info("a")
    with expect_raises(ObjectNotFound):
        await store.delete("a")


async def check_object_store_refuses_bad_names_and_missing_buckets(
    harness: BackboneHarness,
) -> None:
    backbone, name = harness.backbone, f"{harness.prefix}_obj"
    with expect_raises(BucketNotFound):
        await backbone.object_store(name)
    for bad in ("", "a.b", "with space", "a/b"):
        with expect_raises(ConfigError):
            await backbone.add_object_store(ObjectStoreConfig(bucket=bad))
    store = await backbone.add_object_store(ObjectStoreConfig(bucket=name))
    for hostile in ("", "x" * 1025, "tab\there", "nul\x00", "\ud800"):
        with expect_raises(ConfigError):
            await store.put(hostile, b"data")
        with expect_raises(ConfigError):
            await store.get(hostile)
    with expect_raises(ConfigError):
        await store.put("text", "not bytes")  # type: ignore[arg-type]
    assert await store.list() == []


async def check_object_puts_are_meta_messages_on_the_store_stream(harness: BackboneHarness) -> None:
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
    got = await fetch_due(harness, f"OBJ_{name}", "uploads", 3)
    metas = [decode_object_meta(m.data) for m in got]
    assert [(m.name, m.size, bool(m.deleted)) for m in metas if m is not None] == [
        ("before consumer", 1, False),
        ("after/ü", 2, False),
        ("gone", 0, True),
    ]
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    for message in got:
        await message.ack()


async def check_object_put_headers_ride_in_the_meta_message(harness: BackboneHarness) -> None:
    """``put(..., headers=)`` (the writer's trace context) lands in the info's ``headers``
    as NATS lays them out (name -> list of values); a put without them has none."""
    backbone, name = harness.backbone, f"{harness.prefix}_objh"
    store = await backbone.add_object_store(ObjectStoreConfig(bucket=name))
    await backbone.add_consumer(
        f"OBJ_{name}",
        ConsumerConfig(durable="metas", filter_subject=f"$O.{name}.M.>", ack_wait=5.0),
    )
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await store.put("traced", b"1", headers={"traceparent": parent, "tracestate": "k=v"})
    await store.put("plain", b"2")
    got = await fetch_due(harness, f"OBJ_{name}", "metas", 2)
    infos = [msgspec.json.decode(m.data) for m in got]
    assert [info["name"] for info in infos] == ["traced", "plain"]
    assert infos[0]["headers"] == {"traceparent": [parent], "tracestate": ["k=v"]}
    assert not infos[1].get("headers")
    assert await store.get("traced") == b"1"  # the headers change nothing of the data
    for message in got:
        await message.ack()
