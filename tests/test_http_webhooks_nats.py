"""Webhook replay protection on a real nats-server: the replay store is its own KV bucket,
provisioned for the app's webhook routes (no idempotent capability needed), shared by
every host, and a failed delivery frees its signature for the provider's retry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats_fixtures import delete_new_streams, nats_server, stream_names  # noqa: F401
from test_http_support import RawClient, Reply, request

from thaw import App, Webhook, http
from thaw.adapters.http import open_http_server
from thaw.adapters.http.webhooks import sign
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.lowlevel import open_host

pytestmark = pytest.mark.anyio
SECRET = "whsec_nats_0123456789"


@pytest.fixture
async def backbone(
    nats_server: EmbeddedServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[JetStreamBackbone]:
    monkeypatch.setenv("THAW_TEST_NATS_HOOK_SECRET", SECRET)
    connected = await JetStreamBackbone.connect(nats_server.url)
    try:
        before = await stream_names(connected.client)
        yield connected
        await delete_new_streams(nats_server, connected, before)
    finally:
        await connected.aclose()


def flaky_app(name: str, calls: list[bytes], failures: list[int]) -> App:
    app = App(name)

    @app.capability(
        http("POST", "/hooks", webhook=Webhook(secret_env="THAW_TEST_NATS_HOOK_SECRET")),
        timeout=5,
    )
    async def hook(body: bytes) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("the downstream is down")
        calls.append(body)

    return app


async def post(port: int, body: bytes, signature: str) -> Reply:
    async with RawClient.connect(port) as client:
        await client.send(request("POST", "/hooks", body, {"Webhook-Signature": signature}))
        return await client.response()


async def test_replays_are_refused_and_failures_retried_across_hosts(
    backbone: JetStreamBackbone,
) -> None:
    calls: list[bytes] = []
    failures = [1]
    app = flaky_app(f"hooks_{uuid.uuid4().hex[:8]}", calls, failures)
    body = b'{"event": "evt_1"}'
    signature = sign(SECRET.encode(), int(time.time()), body)
    async with (
        open_host(app, backbone) as first_host,
        open_host(app, backbone, provision=False) as second_host,
        open_http_server(first_host, host="127.0.0.1", port=0) as first,
        open_http_server(second_host, host="127.0.0.1", port=0) as second,
    ):
        failed = await post(first.port, body, signature)
        retried = await post(second.port, body, signature)  # the retry lands elsewhere
        replayed_here = await post(second.port, body, signature)
        replayed_there = await post(first.port, body, signature)
        other = await post(first.port, b"{}", sign(SECRET.encode(), int(time.time()), b"{}"))
    assert failed.status >= 500
    assert retried.status == 204, retried.body
    for replayed in (replayed_here, replayed_there):
        assert replayed.status == 401
        assert json.loads(replayed.body)["code"] == "signature_replayed"
    assert other.status == 204
    assert calls == [body, b"{}"]
    info = await backbone.client.jsm().stream_info(f"KV_thaw_webhooks_{app.name}")
    assert info.config.max_age is not None and info.config.max_age >= 600  # 2 * tolerance
