"""``kv`` and ``objects`` triggers on MemoryBackbone: the shared scenarios, plans, access."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from change_triggers_contract import ChangeEnv, ChangeTriggerContract

from thaw import (
    Access,
    App,
    ConfigError,
    Context,
    KvChange,
    ObjectChange,
    ObjectNotFound,
    Reject,
    kv,
    objects,
    stream,
)
from thaw.declarations._changes import shaper_for
from thaw.host._provision import apply_plan, plan_for
from thaw.lowlevel import KvConfig, ObjectStoreConfig, StoredMessage
from thaw.testing import MemoryBackbone, invoke

_prefixes = itertools.count()


class TestMemoryChangeTriggers(ChangeTriggerContract):
    @pytest.fixture
    def env(self) -> ChangeEnv:
        return ChangeEnv(MemoryBackbone(), f"m{next(_prefixes)}")


# -- triggers and plans ----------------------------------------------------------------


def test_trigger_values_are_validated() -> None:
    assert objects("uploads").deletes is False
    assert objects("uploads", deletes=True).deletes is True
    with pytest.raises(ConfigError):
        objects("uploads", deletes="yes")  # type: ignore[arg-type]
    for bad in ("", "has.dot", "a b", "x" * 300):
        with pytest.raises(ConfigError):
            objects(bad)
        with pytest.raises(ConfigError):
            kv(bad)
    with pytest.raises(ConfigError):
        kv("cfg", key="bad key")
    with pytest.raises(ConfigError):
        Access(objects="uploads")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Access(objects=("no.dots",))


def change_app() -> App:
    app = App("files")

    @app.capability(objects("uploads"), kv("cfg", key="users.*"), kv("cfg", key="teams.>"))
    async def react(change: bytes) -> None:
        return None

    @app.capability(stream("files.audit"), access=Access(objects=("reports",)))
    async def audit(raw: bytes) -> None:
        return None

    return app


def test_plan_adds_buckets_stores_and_consumers_on_their_streams() -> None:
    plan = plan_for(change_app())
    consumers = [(c.stream, c.config.durable, c.config.filter_subject) for c in plan.consumers]
    assert consumers == [
        ("OBJ_uploads", "files-react", "$O.uploads.M.>"),
        ("KV_cfg", "files-react", "$KV.cfg.users.*"),
        ("KV_cfg", "files-react-2", "$KV.cfg.teams.>"),  # two triggers on one stream
        ("FILES", "files-audit", "files.audit"),
        ("THAW_REPLAY", "files-react-replay", "thaw.replay.files.react"),  # dlq replays
    ]
    assert [b.bucket for b in plan.buckets] == ["cfg"]
    assert [o.bucket for o in plan.object_stores] == ["uploads", "reports"]
    assert "object store uploads" in plan.describe()


@pytest.mark.anyio
async def test_provisioning_twice_confirms_and_starts_workers_for_every_consumer() -> None:
    from thaw.lowlevel import open_host

    backbone = MemoryBackbone()
    app = change_app()
    await apply_plan(plan_for(app), backbone)
    await apply_plan(plan_for(app), backbone)
    info = await backbone.consumer_info("KV_cfg", "files-react-2")
    assert info.config.filter_subject == "$KV.cfg.teams.>"
    async with open_host(app, backbone, fetch_timeout=0.05) as host:
        assert sorted(host.workers) == [
            "audit",
            "react",
            "react/KV_cfg/files-react",
            "react/KV_cfg/files-react-2",
            "react/THAW_REPLAY/files-react-replay",
        ]
    stats = backbone.statistics()
    # streams FILES, DLQ and THAW_REPLAY; buckets cfg and thaw_keys (the event-id key)
    assert (stats.streams, stats.buckets, stats.object_stores) == (3, 2, 2)


# -- shapers ----------------------------------------------------------------------------


class _Delivery:
    def __init__(self, message: StoredMessage) -> None:
        self._message = message
        self.subject = message.subject
        self.data = message.data
        self.headers = message.headers
        self.seq = message.seq


def test_shapers_turn_deliveries_into_inputs_and_pass_garbage_through() -> None:
    shape_kv = shaper_for(kv("cfg"))
    assert shape_kv is not None
    put = StoredMessage(stream="KV_cfg", seq=7, subject="$KV.cfg.a.b", data=b"v")
    gone = StoredMessage(
        stream="KV_cfg", seq=8, subject="$KV.cfg.a.b", data=b"", headers={"KV-Operation": "PURGE"}
    )
    decode = msgspec.json.Decoder(KvChange).decode
    assert decode(shape_kv(_Delivery(put))) == KvChange(  # type: ignore[arg-type]
        bucket="cfg", key="a.b", operation="PUT", revision=7, value=b"v"
    )
    assert decode(shape_kv(_Delivery(gone))).operation == "PURGE"  # type: ignore[arg-type]
    stray = StoredMessage(stream="KV_cfg", seq=9, subject="elsewhere", data=b"raw")
    assert shape_kv(_Delivery(stray)) == b"raw"  # type: ignore[arg-type]
    shape_objects = shaper_for(objects("up"))
    assert shape_objects is not None
    deleted = StoredMessage(
        stream="OBJ_up", seq=3, subject="$O.up.M.eA==", data=b'{"name":"x","deleted":true}'
    )
    assert shape_objects(_Delivery(deleted)) is None  # type: ignore[arg-type]
    nulls = StoredMessage(
        stream="OBJ_up",
        seq=4,
        subject="$O.up.M.eA==",
        data=b'{"name":"x","bucket":"up","size":null,"digest":null,"mtime":null}',
    )
    change = msgspec.json.decode(shape_objects(_Delivery(nulls)), type=ObjectChange)  # type: ignore[arg-type]
    assert (change.name, change.size, change.digest, change.revision) == ("x", 0, "", 4)
    assert shaper_for(stream("a.b")) is None


# -- access, missing objects, memory-only behaviour ---------------------------------------


@pytest.mark.anyio
async def test_access_denies_object_stores_that_are_not_listed() -> None:
    backbone = MemoryBackbone()
    await backbone.add_object_store(ObjectStoreConfig(bucket="mine"))
    await backbone.add_object_store(ObjectStoreConfig(bucket="theirs"))
    app = App("acl")

    @app.capability(access=Access(objects=("mine",)))
    async def peek(bucket: str, ctx: Context) -> int:
        return len(await (await ctx.objects(bucket)).list())

    assert (await invoke(app, "peek", "mine", backbone=backbone)).data == b"0"
    denied = await invoke(app, "peek", "theirs", backbone=backbone)
    assert isinstance(denied, Reject)
    assert denied.code == "access_denied"
    assert "Access(objects=...)" in denied.reason


@pytest.mark.anyio
async def test_a_missing_object_is_a_clear_error_for_functions() -> None:
    backbone = MemoryBackbone()
    store = await backbone.add_object_store(ObjectStoreConfig(bucket="docs"))
    with pytest.raises(ObjectNotFound, match="no object named 'nope'") as caught:
        await store.get("nope")
    assert (caught.value.code, caught.value.retryable) == ("object_not_found", False)


@pytest.mark.anyio
async def test_deleting_a_bucket_stream_deletes_the_bucket_as_on_jetstream() -> None:
    from thaw._errors import BucketNotFound

    backbone = MemoryBackbone()
    await backbone.add_kv(KvConfig(bucket="cfg"))
    await backbone.add_object_store(ObjectStoreConfig(bucket="docs"))
    await backbone.delete_stream("KV_cfg")
    await backbone.delete_stream("OBJ_docs")
    with pytest.raises(BucketNotFound):
        await backbone.kv("cfg")
    with pytest.raises(BucketNotFound):
        await backbone.object_store("docs")


@pytest.mark.anyio
async def test_a_bucket_stream_keeps_one_message_per_key() -> None:
    backbone = MemoryBackbone()
    bucket = await backbone.add_kv(KvConfig(bucket="cfg"))
    for n in range(1000):
        await bucket.put("hot", str(n).encode())
    await bucket.put("cold", b"x")
    info = await backbone.stream_info("KV_cfg")
    assert (info.messages, info.first_seq, info.last_seq) == (2, 1000, 1001)
