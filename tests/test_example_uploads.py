"""examples/uploads: uploads are indexed by an objects trigger and counted by a kv trigger."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from example_loader import load_example

from thaw.lowlevel import ObjectStoreConfig, list_dead_letters, open_host, plan_for
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


async def wait_until(check, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(limit):
        while True:
            if await check():
                return
            await anyio.sleep(0.01)  # state lives in the backbone: ask again, boundedly


def test_the_plan_provisions_the_store_the_bucket_and_two_consumers() -> None:
    app, _ = load_example("uploads")
    plan = plan_for(app)
    assert [o.bucket for o in plan.object_stores] == ["uploads"]
    assert [b.bucket for b in plan.buckets] == ["upload_index"]
    assert sorted((c.stream, c.config.filter_subject) for c in plan.consumers) == [
        ("KV_upload_index", "$KV.upload_index.files.>"),
        ("OBJ_uploads", "$O.uploads.M.>"),
        ("THAW_REPLAY", "thaw.replay.uploads.count_rows"),  # their dead letters' replays
        ("THAW_REPLAY", "thaw.replay.uploads.index_upload"),
    ]


async def test_uploads_are_indexed_and_counted_including_those_made_before_start() -> None:
    app, modules = load_example("uploads")
    example = modules["uploads.app"]
    backbone = MemoryBackbone()
    store = await backbone.add_object_store(ObjectStoreConfig(bucket="uploads"))
    await store.put("early report.csv", b"a,b\n1,2\n3,4\n")  # before any host ran
    async with open_host(app, backbone, fetch_timeout=0.05):
        await store.put("2026/März/ümlaut.csv", b"x\n1\n")
        await store.put("photo.jpg", b"\xff\xd8\xff not text")
        index = await backbone.kv("upload_index")

        async def counted() -> bool:
            entry = await index.get("stats.rows")
            return entry is not None and entry.value == b"3"

        await wait_until(counted)

        async def rejected() -> bool:
            return bool(await list_dead_letters(backbone, app="uploads"))

        await wait_until(rejected)
    entry = await index.get(example.index_key("2026/März/ümlaut.csv"))
    assert entry is not None
    record = msgspec.json.decode(entry.value, type=example.IndexRecord)
    assert (record.name, record.rows, record.size) == ("2026/März/ümlaut.csv", 1, 4)
    (dead,) = await list_dead_letters(backbone, app="uploads")
    assert (dead.capability, dead.code, dead.attempts) == ("index_upload", "not_text", 1)
