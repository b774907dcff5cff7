"""Async-first intake end to end: enqueue routes, 202 + status URL, the stream run, the result."""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest
from test_http_support import WAIT, RawClient, Reply, request

from thaw import App, ConfigError, Idempotency, http, stream
from thaw.adapters.http import HttpConfig, HttpService, open_http_server
from thaw.adapters.http.intake import status_id
from thaw.lowlevel import Invoker, open_host
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct):
    sku: str
    quantity: int


class Receipt(msgspec.Struct):
    sku: str
    total: int


def intake_app(release: anyio.Event) -> App:
    app = App("intake")

    @app.capability(
        http("POST", "/orders", enqueue="shop.orders"),
        stream("shop.orders"),
        idempotency=Idempotency(),
    )
    async def place(order: Order) -> Receipt:
        await release.wait()
        return Receipt(order.sku, order.quantity * 5)

    return app


async def _poll(client: RawClient, url: str) -> Reply:
    """GET the status URL until it is no longer pending (bounded by the caller's fail_after)."""
    while True:
        await client.send(request("GET", url))
        reply = await client.response()
        if reply.status != 202:
            return reply
        await anyio.sleep(0.01)  # the stream worker runs on its own schedule: poll


async def test_enqueue_answers_202_and_the_status_url_serves_the_result() -> None:
    release = anyio.Event()
    backbone = MemoryBackbone()
    app = intake_app(release)
    async with (
        open_host(app, backbone) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        headers = {"Idempotency-Key": "order/1", "traceparent": traceparent}
        body = b'{"sku": "A-1", "quantity": 3}'
        await client.send(request("POST", "/orders", body, headers))
        accepted = await client.response()
        assert accepted.status == 202, accepted.body
        document = json.loads(accepted.body)
        assert document == {"id": "order/1", "status_url": "/_thaw/status/order%2F1"}
        assert accepted.headers["location"] == document["status_url"]
        await client.send(request("GET", document["status_url"]))
        pending = await client.response()
        assert (pending.status, json.loads(pending.body)) == (202, {"status": "pending"})
        await client.send(request("POST", "/orders", body, headers))  # a retry of the client
        again = await client.response()
        assert (again.status, json.loads(again.body)) == (202, document)
        release.set()
        with anyio.fail_after(WAIT):
            done = await _poll(client, document["status_url"])
        assert done.status == 200
        assert json.loads(done.body) == {"sku": "A-1", "total": 15}


async def test_enqueue_validates_against_the_contract_before_publishing() -> None:
    release = anyio.Event()
    release.set()
    async with (
        open_host(intake_app(release), MemoryBackbone()) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/orders", b'{"sku": "A-1", "quantity": "many"}'))
        invalid = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": '))
        malformed = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": "\xff\xfe", "quantity": 1}'))
        bad_utf8 = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": "B", "quantity": 1}'))
        generated = await client.response()
        await client.send(request("DELETE", "/_thaw/status/x"))
        wrong_method = await client.response()
        await client.send(request("GET", "/_thaw/status/"))
        no_id = await client.response()
    assert invalid.status == 422
    problem = json.loads(invalid.body)
    assert problem["code"] == "contract_invalid"
    assert problem["detail"].endswith("- at `$.quantity`")
    assert (malformed.status, json.loads(malformed.body)["code"]) == (400, "payload_malformed")
    assert (bad_utf8.status, json.loads(bad_utf8.body)["code"]) == (400, "payload_malformed")
    assert generated.status == 202
    generated_id = json.loads(generated.body)["id"]
    assert generated_id.startswith("~")
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "GET, HEAD")
    assert no_id.status == 404


async def test_an_enqueue_route_needs_an_idempotent_consumer() -> None:
    app = App("no_consumer")

    @app.capability(http("POST", "/jobs", enqueue="jobs.new"))
    async def job(order: Order) -> None:
        return None

    with pytest.raises(ConfigError, match=r"no capability consumes it; add stream\('jobs.new'\)"):
        HttpService(Invoker(app), config=HttpConfig(), backbone=MemoryBackbone())

    app2 = App("not_idempotent")

    @app2.capability(http("POST", "/jobs", enqueue="jobs.new"), stream("jobs.new"))
    async def job2(order: Order) -> None:
        return None

    with pytest.raises(ConfigError, match=r"idempotency=Idempotency\(\) with the default key"):
        HttpService(Invoker(app2), config=HttpConfig(), backbone=MemoryBackbone())


async def test_without_a_backbone_an_enqueue_route_says_what_it_needs() -> None:
    release = anyio.Event()
    async with (
        open_http_server(Invoker(intake_app(release))) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/orders", b'{"sku": "A", "quantity": 1}'))
        reply = await client.response()
    assert reply.status == 501
    assert "serve a Host" in json.loads(reply.body)["detail"]


def test_status_ids_are_percent_decoded_and_never_span_segments() -> None:
    assert status_id("/_thaw/status/a%2Fb") == "a/b"
    assert status_id("/_thaw/status/a/b") == ""
    assert status_id("/_thaw/status/%ff") == ""
    assert status_id("/elsewhere") is None
