"""The JetStream test harness leaves the session server as it found it."""

from __future__ import annotations

import uuid

import pytest
from nats_fixtures import delete_new_streams, nats_server, stream_names  # noqa: F401

from thaw import Access, App, Idempotency, stream
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.lowlevel import DEAD_LETTER_STREAM, apply_plan, plan_for

pytestmark = pytest.mark.anyio


async def test_every_stream_a_test_created_is_deleted_whatever_its_name(
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    app = App(f"{prefix}cleanup")

    @app.capability(
        stream(f"{prefix}.jobs"),
        idempotency=Idempotency(),
        access=Access(buckets=(f"{prefix}state",)),
    )
    async def work(data: bytes) -> None:
        pass

    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        before = await stream_names(backbone.client)
        await apply_plan(plan_for(app), backbone)
        created = await stream_names(backbone.client) - before
        assert created == {
            f"{prefix}cleanup".upper(),  # the app's stream, upper-cased
            f"KV_thaw_idempotency_{prefix}cleanup",  # its own idempotency bucket
            f"KV_{prefix}state",
        } | ({DEAD_LETTER_STREAM} - before)  # shared: removed by the test that created it
        await delete_new_streams(nats_server, backbone, before)
        assert await stream_names(backbone.client) == before
    finally:
        await backbone.aclose()
