"""``kv`` and ``objects`` triggers and object stores on a real nats-server."""

from __future__ import annotations

import pytest
from change_triggers_contract import ChangeEnv, ChangeTriggerContract, Seen, uploads_app
from nats_fixtures import JetStreamHarness, jetstream_harness, nats_server  # noqa: F401

from thaw import ObjectNotFound
from thaw.backbone._buckets import object_digest
from thaw.lowlevel import ObjectStoreConfig, open_host

pytestmark = pytest.mark.anyio


class TestJetStreamChangeTriggers(ChangeTriggerContract):
    @pytest.fixture
    def env(self, jetstream_harness: JetStreamHarness) -> ChangeEnv:  # noqa: F811
        return ChangeEnv(jetstream_harness.backbone, jetstream_harness.prefix)


async def test_a_large_object_spans_several_chunks_and_triggers_once(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    env = ChangeEnv(jetstream_harness.backbone, jetstream_harness.prefix)
    seen = Seen()
    app = uploads_app(env.prefix, seen)
    data = bytes(range(251)) * 2000  # ~490 KiB: four 128 KiB chunks
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        store = await env.backbone.object_store(f"{env.prefix}_files")
        info = await store.put("big/archive 1.tar", data)
        await seen.wait_for(1)
    assert (info.size, info.chunks, info.digest) == (len(data), 4, object_digest(data))
    ((change, read),) = seen.items
    assert (change.name, change.size, change.digest) == (
        "big/archive 1.tar",
        len(data),
        info.digest,
    )
    assert read == data


async def test_objects_written_by_nats_py_directly_are_read_and_listed(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, bucket = jetstream_harness.backbone, f"{jetstream_harness.prefix}_files"
    store = await backbone.add_object_store(ObjectStoreConfig(bucket=bucket))
    native = await backbone.client.jetstream().object_store(bucket)
    await native.put("from nats-py", b"hello")
    assert await store.get("from nats-py") == b"hello"
    assert [i.name for i in await store.list()] == ["from nats-py"]
    await store.delete("from nats-py")
    with pytest.raises(ObjectNotFound):
        await store.info("from nats-py")
    assert await store.list() == []
