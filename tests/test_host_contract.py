"""TestHost's contract, on both backbones: the same tests on a MemoryBackbone with a
FakeClock and on a JetStreamBackbone (a real nats-server, real time).

An app with the shapes a test host must drive: a JSON route publishing to a stream, a
two-hop chain of stream capabilities ending in KV, a route with path and query
parameters, an enqueue route (202, then the status URL), a signed webhook route, a
route with a small body limit, and a stream capability that always fails. Each test
asserts what a user would: HTTP status, headers and problem bodies, then, after
``settle``, what was published, what KV holds and what was dead-lettered.

``HostContract`` holds the tests; ``TestOnMemory`` and ``TestOnJetStream`` give it
``opened``: a factory of running TestHosts for an app (its name unique per test on
the server, whose streams the harness deletes afterwards).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from nats_fixtures import JetStreamHarness, jetstream_harness, nats_server  # noqa: F401

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    Idempotency,
    Ok,
    Reject,
    Rejected,
    Retry,
    RetryPolicy,
    Webhook,
    http,
    stream,
    subject,
)
from thaw.adapters.http.webhooks import sign
from thaw.testing import TestHost

pytestmark = pytest.mark.anyio

SECRET_ENV = "THAW_CONTRACT_HOOK_SECRET"
SECRET = "contract-secret"


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


def shop(name: str) -> App:
    """The contract's app; ``name`` prefixes its subjects and names its streams."""
    app = App(name)
    orders, recorded, queued, broken = (f"{name}.{s}" for s in ("orders", "recorded", "q", "x"))

    @app.capability(http("POST", "/orders"), access=Access(publishes=(orders,)))
    async def place(order: Order, ctx: Context) -> dict[str, str]:
        await ctx.publish(orders, order, msg_id=order.order_id)
        return {"accepted": order.order_id}

    @app.capability(stream(orders), access=Access(buckets=("ledger",), publishes=(recorded,)))
    async def record(order: Order, ctx: Context) -> None:
        await (await ctx.kv("ledger")).put(order.order_id, str(order.amount).encode())
        await ctx.publish(recorded, {"order_id": order.order_id})

    @app.capability(stream(recorded), access=Access(buckets=("ledger",)))
    async def confirm(note: dict[str, str], ctx: Context) -> None:
        await (await ctx.kv("ledger")).put(f"confirmed.{note['order_id']}", b"yes")

    @app.capability(http("GET", "/orders/{order_id}"), access=Access(buckets=("ledger",)))
    async def show(ctx: Context) -> dict[str, Any]:
        entry = await (await ctx.kv("ledger")).get(ctx.params["order_id"])
        if entry is None:
            raise Rejected("no such order", code="order_unknown", http_status=404)
        return {"amount": int(entry.value), "query": dict(ctx.query)}

    @app.capability(http("POST", "/queued", enqueue=queued))
    async def queue_order(order: Order) -> None:
        raise AssertionError("an enqueue route's capability never runs for the request")

    @app.capability(stream(queued), idempotency=Idempotency())
    async def run_queued(order: Order) -> dict[str, int]:
        return {"doubled": order.amount * 2}

    @app.capability(http("POST", "/hooks", webhook=Webhook(secret_env=SECRET_ENV)))
    async def hook(body: bytes) -> dict[str, int]:
        return {"size": len(body)}

    @app.capability(http("POST", "/small", max_body=64))
    async def small(body: bytes) -> int:
        return len(body)

    @app.capability(subject(f"{name}.price"))
    async def price(order: Order) -> dict[str, int]:
        return {"total": order.amount + 30}

    @app.capability(
        stream(broken), retry=RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.05))
    )
    async def always_fails(data: bytes) -> None:
        raise RuntimeError("the provider is down")

    return app


Opened = Callable[..., AbstractAsyncContextManager[TestHost]]  # (app, **TestHost options)


class HostContract:
    """The tests; a subclass gives ``opened`` and ``name``."""

    @pytest.fixture
    def name(self) -> str:
        return f"c{uuid.uuid4().hex[:10]}"

    @pytest.fixture(autouse=True)
    def webhook_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(SECRET_ENV, SECRET)

    async def test_a_posted_order_runs_through_the_chain_once_settled(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            response = await th.http.post("/orders", json={"order_id": "o-1", "amount": 1999})
            assert response.status == 200, response.text
            assert response.json() == {"accepted": "o-1"}
            assert response.headers["Content-Type"] == "application/json"
            await th.settle()
            ledger = await th.kv("ledger")
            entry, confirmed = await ledger.get("o-1"), await ledger.get("confirmed.o-1")
            assert entry is not None and entry.value == b"1999"
            assert confirmed is not None and confirmed.value == b"yes"
            subjects = [m.subject for m in await th.published(f"{name}.>")]
            assert subjects == [f"{name}.orders", f"{name}.recorded"]
            assert await th.dead_letters() == []

    async def test_path_and_query_parameters_reach_the_capability(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            await (await th.kv("ledger")).put("o=2", b"5")
            response = await th.http.get("/orders/o%3D2", params={"view": "full"})
            assert response.status == 200, response.text
            assert response.json() == {"amount": 5, "query": {"view": "full"}}
            missing = await th.http.get("/orders/nope")
            assert missing.status == 404
            assert missing.headers["content-type"] == "application/problem+json"
            assert missing.json()["code"] == "order_unknown"

    async def test_routing_and_contract_errors_are_the_servers_problem_bodies(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            unknown = await th.http.get("/nowhere")
            assert (unknown.status, unknown.json()["code"]) == (404, "route_not_found")
            wrong = await th.http.delete("/orders")
            assert wrong.status == 405
            assert "POST" in wrong.headers["allow"]
            invalid = await th.http.post("/orders", json={"order_id": "o-3"})
            assert (invalid.status, invalid.json()["code"]) == (422, "contract_invalid")
            malformed = await th.http.post("/orders", content=b"{not json")
            assert (malformed.status, malformed.json()["code"]) == (400, "payload_malformed")
            assert (await th.http.get("/healthz")).status == 200

    async def test_a_body_past_the_routes_limit_is_413(self, opened: Opened, name: str) -> None:
        async with opened(shop(name)) as th:
            fits = await th.http.post("/small", content=b"x" * 64)
            assert (fits.status, fits.json()) == (200, 64)
            over = await th.http.post("/small", content=b"x" * 65)
            assert (over.status, over.json()["code"]) == (413, "payload_too_large")

    async def test_an_enqueue_route_answers_202_and_its_status_url_the_result(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            response = await th.http.post(
                "/queued", json={"order_id": "q-1", "amount": 21}, headers={"Idempotency-Key": "k1"}
            )
            assert response.status == 202, response.text
            accepted = response.json()
            assert accepted["id"] == "k1"
            assert response.headers["Location"] == accepted["status_url"]
            await th.settle()
            done = await th.http.get(accepted["status_url"])
            assert (done.status, done.json()) == (200, {"doubled": 42})
            assert [m.subject for m in await th.published(f"{name}.q")] == [f"{name}.q"]
            reused = await th.http.post(
                "/queued", json={"order_id": "q-2", "amount": 5}, headers={"Idempotency-Key": "k1"}
            )  # another body under the key: refused, not dropped by the duplicate window
            assert (reused.status, reused.json()["code"]) == (422, "idempotency_key_reused")
            assert [m.subject for m in await th.published(f"{name}.q")] == [f"{name}.q"]

    async def test_webhook_signatures_are_verified_before_the_capability(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            body = b'{"event":"paid"}'
            signature = sign(SECRET.encode(), int(th.wall_time()), body)
            good = await th.http.post(
                "/hooks", content=body, headers={"webhook-signature": signature}
            )
            assert (good.status, good.json()) == (200, {"size": len(body)})
            again = await th.http.post(
                "/hooks", content=body, headers={"Webhook-Signature": signature}
            )
            assert (again.status, again.json()["code"]) == (401, "signature_replayed")
            unsigned = await th.http.post("/hooks", content=body)
            assert (unsigned.status, unsigned.json()["code"]) == (401, "signature_missing")

    async def test_a_failing_message_is_retried_then_dead_lettered(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            await th.publish(f"{name}.x", b"payload")
            await th.advance(1.0)  # the one retry's backoff (0.05 s) passes
            (dead,) = await th.dead_letters()
            assert dead.data == b"payload"
            assert dead.subject == f"thaw.dlq.{name}.always_fails"
            assert any("handler_error" in value for value in dead.headers.values())

    async def test_a_subject_trigger_answers_requests(self, opened: Opened, name: str) -> None:
        async with opened(shop(name)) as th:
            answer = await th.request(f"{name}.price", {"order_id": "p-1", "amount": 70})
            assert answer == Ok(b'{"total":100}')
            refused = await th.request(f"{name}.price", {"order_id": "p-2"})
            assert isinstance(refused, Reject) and refused.code == "contract_invalid"
            nobody = await th.request(f"{name}.nobody", b"", timeout=1.0)
            assert isinstance(nobody, Retry) and nobody.code == "no_responders"

    async def test_invoke_runs_a_capability_through_the_host(
        self, opened: Opened, name: str
    ) -> None:
        async with opened(shop(name)) as th:
            outcome = await th.invoke("run_queued", {"order_id": "i-1", "amount": 4})
            assert outcome == Ok(b'{"doubled":8}')


class TestOnMemory(HostContract):
    @pytest.fixture
    def opened(self) -> Opened:
        return TestHost


class TestOnJetStream(HostContract):
    @pytest.fixture
    def opened(self, jetstream_harness: JetStreamHarness) -> Opened:  # noqa: F811
        backbone = jetstream_harness.backbone

        @asynccontextmanager
        async def on_jetstream(app: App, **options: Any) -> AsyncIterator[TestHost]:
            options.setdefault("settle_timeout", 20.0)
            async with TestHost(app, backbone=backbone, **options) as th:
                yield th

        return on_jetstream

    async def test_settle_waits_out_a_retrys_backoff_on_a_real_clock(
        self, opened: Opened, name: str
    ) -> None:
        # A nak'd message waiting for its redelivery is still work left (on a FakeClock
        # it waits for the clock instead: tests/test_test_host.py).
        app = App(name)

        @app.capability(
            stream(f"{name}.slow"), retry=RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.5))
        )
        async def fails_slowly(data: bytes) -> None:
            raise RuntimeError("still down")

        async with opened(app) as th:
            await th.publish(f"{name}.slow", b"z")
            await th.settle()
            assert [d.data for d in await th.dead_letters()] == [b"z"]

    async def test_settle_gives_up_naming_the_busy_consumer(
        self, opened: Opened, name: str
    ) -> None:
        release = anyio.Event()
        app = App(name)

        @app.capability(stream(f"{name}.stuck"))
        async def stuck(data: bytes) -> None:
            await release.wait()

        async with opened(app, settle_timeout=0.3) as th:
            await th.publish(f"{name}.stuck", b"z")
            with pytest.raises(TimeoutError, match=r"of 'stuck': 0 pending, 1 awaiting an ack"):
                await th.settle()
            release.set()
            await th.settle()
