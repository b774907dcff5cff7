"""examples/payment_webhook end to end on a real nats-server: HTTP intake -> stream -> ledger.

The provider's side is played over real sockets: signed webhooks are POSTed to
Thaw's HTTP server, several times each (provider retries) and concurrently; the
host consumes the stream and posts to the ledger in JetStream KV with
compare-and-set. Afterwards every payment is in the ledger exactly once and the
balances add up; refused requests published nothing.
"""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from example_loader import load_example
from nats_fixtures import nats_server, remove_app, wait_until  # noqa: F401

from thaw.adapters.http import open_http_server
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.lowlevel import (
    Host,
    list_dead_letters,
    open_host,
)

pytestmark = pytest.mark.anyio

APP, MODULES = load_example("payment_webhook")
ledger = MODULES["payment_webhook.ledger"]
rules = MODULES["payment_webhook.rules"]
signatures = MODULES["payment_webhook.signatures"]
contracts = MODULES["payment_webhook.contracts"]
SECRET = "whsec_e2e_secret"
CUSTOMERS = ("cus_E2E00001", "cus_E2E00002", "cus_E2E00003")
PAYMENTS = 24


def payment(number: int, *, event_id: str | None = None, **extra: Any) -> bytes:
    event = {
        "id": event_id or f"evt_E2E{number:05d}",
        "type": "payment.succeeded",
        "created": "2026-11-27T12:00:00Z",
        "payment_id": f"pay_E2E{number:05d}",
        "amount": 1_000 + 37 * number,
        "currency": "EUR",
        "customer": CUSTOMERS[number % len(CUSTOMERS)],
    }
    return json.dumps(event | extra).encode()


def post(port: int, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Webhook-Signature"] = signature
        connection.request("POST", "/webhooks/payments", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def signed(body: bytes, secret: str = SECRET) -> str:
    return str(signatures.sign(secret, int(time.time()), body))


class Served:
    def __init__(self, host: Host, backbone: JetStreamBackbone, port: int) -> None:
        self.host = host
        self.backbone = backbone
        self.port = port

    async def post(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        return await anyio.to_thread.run_sync(post, self.port, body, signature)

    async def stored(self) -> int:
        return (await self.backbone.stream_info("PAYMENTS")).messages

    async def settled(self) -> bool:
        consumer = self.host.plan.consumers[0]
        info = await self.backbone.client.jsm().consumer_info(
            consumer.stream, consumer.config.durable
        )
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.fixture
async def served(
    nats_server: EmbeddedServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Served]:
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", SECRET)
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        async with (
            open_host(APP, backbone, fetch_timeout=0.2, drain_timeout=5) as host,
            open_http_server(host, host="127.0.0.1", port=0) as server,
        ):
            yield Served(host, backbone, server.port)
    finally:
        await remove_app(backbone, APP)
        await backbone.aclose()


async def test_signed_webhooks_retried_concurrently_land_in_the_ledger_once(
    served: Served,
) -> None:
    # Every payment is sent three times (provider retries, concurrently) and a third of
    # them once more under a new event id (a provider that re-sends under another id).
    sends = [(n, payment(n)) for n in range(PAYMENTS) for _ in range(3)]
    sends += [(n, payment(n, event_id=f"evt_E2E{n:05d}R")) for n in range(0, PAYMENTS, 3)]
    random.Random(7).shuffle(sends)
    answers: list[tuple[int, int, dict[str, Any]]] = []

    async def send(number: int, body: bytes) -> None:
        status, answer = await served.post(body, signed(body))
        answers.append((number, status, answer))

    async with anyio.create_task_group() as group:
        for number, body in sends:
            group.start_soon(send, number, body)
    assert {status for _, status, _ in answers} == {200}, answers[:3]
    fresh = [answer for _, _, answer in answers if not answer["duplicate"]]
    assert len(fresh) == PAYMENTS + len(range(0, PAYMENTS, 3))  # retries were deduplicated
    assert await served.stored() == len(fresh)

    await wait_until(served.settled, limit=30)
    bucket = await served.backbone.kv("ledger")
    for index, customer in enumerate(CUSTOMERS):
        numbers = [n for n in range(PAYMENTS) if n % len(CUSTOMERS) == index]
        entry = await bucket.get(ledger.account_key(customer, contracts.Currency.EUR))
        assert entry is not None, customer
        account = ledger.decode_account(entry.value)
        assert account.entries == len(numbers)
        expected = sum(
            rules.quote(1_000 + 37 * n, contracts.Currency.EUR, customer, {}).net for n in numbers
        )
        assert account.balance == expected
        assert sorted(e.payment_id for e in account.recent) == sorted(
            f"pay_E2E{n:05d}" for n in numbers
        )
    assert await list_dead_letters(served.backbone, app=APP.name) == []


async def test_refused_webhooks_publish_nothing(served: Served) -> None:
    body = payment(1)
    cases = [
        (body, None, 401, "signature_missing"),
        (body, signed(body, secret="whsec_someone_else"), 401, "signature_invalid"),
        (body, signed(body).replace("t=", "t=1"), 401, None),  # a timestamp far away
        (body + b" ", signed(body), 401, "signature_invalid"),  # body changed after signing
        (payment(2, amount=-1), signed(payment(2, amount=-1)), 422, "contract_invalid"),
        (b'{"id": ', signed(b'{"id": '), 400, "payload_malformed"),
    ]
    for data, signature, status, code in cases:
        got, answer = await served.post(data, signature)
        assert got == status, (data, answer)
        assert answer["status"] == status
        if code is not None:
            assert answer["code"] == code
        assert SECRET not in json.dumps(answer)
    assert await served.stored() == 0
