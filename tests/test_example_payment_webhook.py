"""examples/payment_webhook: signed intake, ledger posting with CAS, fee quotes, hostile input."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import msgspec
import pytest
from example_loader import load_example
from hypothesis import event, given
from hypothesis import strategies as st

from thaw import App, Event, Ok, Reject, Retry
from thaw.lowlevel import (
    ConsumerConfig,
    Invoker,
    KeyValue,
    KvConfig,
    StreamConfig,
    StreamWorker,
)
from thaw.testing import MemoryBackbone, TestHost

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "payment_webhook"
SECRET = "whsec_test_secret"
OLD_SECRET = "whsec_old_secret"

APP, MODULES = load_example("payment_webhook")  # from source, or a snapshot (see there)
capabilities = MODULES["payment_webhook.capabilities"]
contracts = MODULES["payment_webhook.contracts"]
ledger = MODULES["payment_webhook.ledger"]
rules = MODULES["payment_webhook.rules"]
signatures = MODULES["payment_webhook.signatures"]


def payment(**overrides: Any) -> dict[str, Any]:
    event = {
        "id": "evt_00000001",
        "type": "payment.succeeded",
        "created": "2026-01-01T12:00:00Z",
        "payment_id": "pay_00000001",
        "amount": 10_000,
        "currency": "USD",
        "customer": "cus_ABC12345",
        "metadata": {"order": "A-17"},
    }
    event.update(overrides)
    return event


def signed(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    return {"Webhook-Signature": signatures.sign(secret, stamp, body)}


async def start(app: App) -> None:
    for hook in app.start_hooks:
        await hook()


async def stop(app: App) -> None:
    for hook in reversed(app.stop_hooks):
        await hook()


async def make_backbone(backbone: MemoryBackbone | None = None) -> MemoryBackbone:
    backbone = backbone or MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="PAYMENTS", subjects=("payments.>",)))
    await backbone.add_kv(KvConfig(bucket="ledger"))
    return backbone


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", f"{SECRET}, {OLD_SECRET}")
    await start(APP)
    yield APP
    await stop(APP)


@pytest.fixture
async def backbone() -> MemoryBackbone:
    return await make_backbone()


async def ingest(invoker: Invoker, body: bytes, headers: dict[str, str], id: str = "h1") -> Any:
    return await invoker.invoke("ingest", Event(id=id, data=body, headers=headers))


async def balance(backbone: MemoryBackbone, key: str = "acct.USD.cus_ABC12345") -> int:
    entry = await (await backbone.kv("ledger")).get(key)
    assert entry is not None
    return int(ledger.decode_account(entry.value).balance)


# -- the app's shape -----------------------------------------------------------------


def test_app_is_a_package_with_three_capabilities_and_lifecycle_hooks() -> None:
    assert APP.name == "payment_webhook"
    assert set(APP.capabilities) == {"ingest", "apply_payment", "quote_fee"}
    assert len(APP.start_hooks) == 1 and len(APP.stop_hooks) == 1
    apply = APP.capabilities["apply_payment"]
    assert apply.policy.idempotency is not None and apply.policy.retry.max_attempts == 8
    assert set(rules.CURRENCIES) == set(contracts.Currency)
    assert rules.CURRENCIES[contracts.Currency.JPY].exponent == 0


@pytest.mark.anyio
async def test_capabilities_fail_loudly_before_on_start() -> None:
    assert capabilities._instance is None
    invoker = Invoker(APP)
    outcome = await invoker.invoke(
        "quote_fee", Event(id="q", data=b'{"amount":1,"currency":"USD"}')
    )
    assert isinstance(outcome, Reject)
    assert "before its on_start hook ran" in outcome.reason


# -- ingest ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_signed_webhook_is_accepted_and_published(app: App, backbone: MemoryBackbone) -> None:
    invoker = Invoker(app, backbone=backbone)
    body = msgspec.json.encode(payment())
    outcome = await ingest(invoker, body, signed(body))
    assert isinstance(outcome, Ok)
    receipt = msgspec.json.decode(outcome.data, type=contracts.Receipt)
    assert (receipt.event_id, receipt.status, receipt.stream, receipt.seq) == (
        "evt_00000001",
        "accepted",
        "PAYMENTS",
        1,
    )
    assert not receipt.duplicate
    stored = await backbone.get_message("PAYMENTS", 1)
    assert stored.subject == "payments.events"
    assert stored.data == body
    assert stored.headers["Nats-Msg-Id"] == "evt_00000001"
    assert stored.headers["Payment-Event-Type"] == "payment.succeeded"
    assert "traceparent" in stored.headers
    # the provider retries the same event: the stream drops the copy, the receipt says so
    again = await ingest(invoker, body, signed(body), id="h2")
    assert isinstance(again, Ok)
    assert msgspec.json.decode(again.data, type=contracts.Receipt).duplicate
    assert (await backbone.stream_info("PAYMENTS")).messages == 1


@pytest.mark.anyio
async def test_rotated_secret_and_lowercase_header_are_accepted(
    app: App, backbone: MemoryBackbone
) -> None:
    invoker = Invoker(app, backbone=backbone)
    body = msgspec.json.encode(payment())
    header = signed(body, secret=OLD_SECRET)["Webhook-Signature"]
    assert isinstance(await ingest(invoker, body, {"webhook-signature": header}), Ok)


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda body: {}, "signature_missing"),
        (lambda body: signed(body, secret="whsec_wrong"), "signature_invalid"),
        (lambda body: signed(body + b" "), "signature_invalid"),
        (lambda body: signed(body, at=time.time() - 3600), "signature_stale"),
        (lambda body: signed(body, at=time.time() + 3600), "signature_stale"),
        (lambda body: {"Webhook-Signature": "sha256=abc"}, "signature_malformed"),
        (lambda body: {"Webhook-Signature": "t=1,t=2,v1=" + "0" * 64}, "signature_malformed"),
        (lambda body: {"Webhook-Signature": f"t={int(time.time())}"}, "signature_malformed"),
        (lambda body: {"Webhook-Signature": "t=now,v1=" + "0" * 64}, "signature_malformed"),
        (lambda body: {"Webhook-Signature": "t=1,v1=XYZ"}, "signature_malformed"),
    ],
)
@pytest.mark.anyio
async def test_bad_signatures_are_rejected_with_clear_codes(
    app: App, backbone: MemoryBackbone, mangle: Any, code: str
) -> None:
    body = msgspec.json.encode(payment())
    outcome = await ingest(Invoker(app, backbone=backbone), body, mangle(body))
    assert isinstance(outcome, Reject)
    assert outcome.code == code
    assert "Webhook-Signature" in outcome.reason or "signature" in outcome.reason
    assert (await backbone.stream_info("PAYMENTS")).messages == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"id": "evt_00000001", ', "payload_malformed"),
        (b"\xff\xfe", "payload_malformed"),
        (msgspec.json.encode(payment(amount=-5)), "contract_invalid"),
        (msgspec.json.encode(payment(currency="XXX")), "contract_invalid"),
        (msgspec.json.encode(payment(customer="bob")), "contract_invalid"),
        (msgspec.json.encode(payment(created="2026-01-01T12:00:00")), "contract_invalid"),
        (msgspec.json.encode(payment(schema_version=3)), "schema_unsupported"),
    ],
)
@pytest.mark.anyio
async def test_bad_bodies_are_rejected_with_clear_codes(
    app: App, backbone: MemoryBackbone, body: bytes, code: str
) -> None:
    outcome = await ingest(Invoker(app, backbone=backbone), body, signed(body))
    assert isinstance(outcome, Reject)
    assert outcome.code == code, outcome.reason
    assert (await backbone.stream_info("PAYMENTS")).messages == 0


@pytest.mark.anyio
async def test_through_the_test_host_http_in_ledger_and_dead_letters_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The whole app as thaw serve runs it, in process: the route, the stream, the
    # consumer, the ledger bucket; on_start runs on the first request, on_stop on leaving.
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", SECRET)
    async with TestHost(APP) as th:
        body = msgspec.json.encode(payment())
        response = await th.http.post("/webhooks/payments", content=body, headers=signed(body))
        assert response.status == 200, response.text
        receipt = msgspec.json.decode(response.body, type=contracts.Receipt)
        assert (receipt.event_id, receipt.duplicate) == ("evt_00000001", False)
        retried = await th.http.post("/webhooks/payments", content=body, headers=signed(body))
        assert retried.json()["duplicate"] is True  # the provider's retry: dropped by the stream
        await th.settle()
        assert await balance(th.backbone) == 9680  # posted once, 3.20 fee
        (message,) = await th.published("payments.events")
        assert message.headers["Payment-Event-Type"] == "payment.succeeded"

        unsigned = await th.http.post("/webhooks/payments", content=body)
        assert (unsigned.status, unsigned.json()["code"]) == (401, "signature_missing")
        assert unsigned.headers["Content-Type"] == "application/problem+json"
        # An event that got onto the stream without the intake's checks is dead-lettered.
        await th.publish("payments.events", payment(amount=-5))
        await th.settle()
        (dead,) = await th.dead_letters()
        assert dead.headers["Thaw-Error-Code"] == "contract_invalid"
        assert await balance(th.backbone) == 9680


def test_contracts_evolve_old_and_newer_senders_still_decode() -> None:
    old = {k: v for k, v in payment().items() if k != "metadata"}  # schema 1, no livemode
    event = capabilities.decode_event(msgspec.json.encode(old))
    assert (event.schema_version, event.livemode, event.metadata) == (1, False, {})
    newer = payment(schema_version=2, livemode=True, risk_score=12)  # unknown field: ignored
    assert capabilities.decode_event(msgspec.json.encode(newer)).livemode


# -- apply_payment -----------------------------------------------------------------------


async def drive(app: App, backbone: MemoryBackbone, bodies: list[bytes]) -> StreamWorker:
    invoker = Invoker(app, backbone=backbone)
    for n, body in enumerate(bodies):
        assert isinstance(await ingest(invoker, body, signed(body), id=f"h{n}"), Ok)
    consumer = ConsumerConfig(
        durable="payment_webhook-apply_payment", filter_subject="payments.events", max_deliver=8
    )
    await backbone.add_consumer("PAYMENTS", consumer)
    worker = StreamWorker(invoker, backbone, "apply_payment", stream="PAYMENTS", consumer=consumer)
    await worker.run_until_idle()
    return worker


@pytest.mark.anyio
async def test_apply_payment_posts_once_per_payment(app: App, backbone: MemoryBackbone) -> None:
    first = msgspec.json.encode(payment())
    duplicate = msgspec.json.encode(payment(id="evt_00000002"))  # same payment, new event id
    refund = msgspec.json.encode(payment(id="evt_00000003", type="payment.refunded", amount=2500))
    worker = await drive(app, backbone, [first, duplicate, refund])
    assert worker.statistics().acked == 3
    assert worker.statistics().dead_lettered == 0
    # 100.00 USD at 2.9% + 0.30 = 3.20 fee: +96.80, then the refund returns 25.00 gross
    assert await balance(backbone) == 9680 - 2500
    kv = await backbone.kv("ledger")
    account = ledger.decode_account((await kv.get("acct.USD.cus_ABC12345")).value)
    assert [e.kind for e in account.recent] == ["credit", "debit"]
    assert account.recent[0].fee == 320 and account.recent[0].rule == "standard"


@pytest.mark.anyio
async def test_redelivery_without_idempotency_record_is_answered_from_the_ledger(
    app: App, backbone: MemoryBackbone
) -> None:
    body = msgspec.json.encode(payment())
    first = await Invoker(app, backbone=backbone).invoke("apply_payment", Event(id="a", data=body))
    # a new invoker has an empty idempotency store (another host, or a restart)
    replay = msgspec.json.encode(payment(id="evt_00000009"))
    again = await Invoker(app, backbone=backbone).invoke(
        "apply_payment", Event(id="b", data=replay)
    )
    assert isinstance(first, Ok) and isinstance(again, Ok)
    assert again.data == first.data and not again.replayed
    assert await balance(backbone) == 9680


class MeddlingKeyValue:
    """Another writer changes the key between every read and write, ``times`` times."""

    def __init__(self, inner: KeyValue, owner: MeddlingBackbone) -> None:
        self._inner = inner
        self._owner = owner
        self.bucket = inner.bucket

    async def get(self, key: str) -> Any:
        return await self._inner.get(key)

    async def _meddle(self, key: str) -> None:
        if self._owner.times > 0:
            self._owner.times -= 1
            entry = await self._inner.get(key)
            account = ledger.new_account("cus_ABC12345", contracts.Currency.USD)
            await self._inner.put(key, entry.value if entry else ledger.encode_account(account))

    async def create(self, key: str, value: bytes) -> int:
        await self._meddle(key)
        return await self._inner.create(key, value)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        await self._meddle(key)
        return await self._inner.update(key, value, last=last)


class MeddlingBackbone(MemoryBackbone):
    times = 0

    async def kv(self, bucket: str) -> Any:
        return MeddlingKeyValue(await super().kv(bucket), self)


@pytest.mark.parametrize(("times", "applied"), [(3, True), (50, False)])
@pytest.mark.anyio
async def test_cas_conflicts_are_retried_then_handed_back_as_retry(
    app: App, times: int, applied: bool
) -> None:
    backbone = await make_backbone(MeddlingBackbone())
    backbone.times = times
    invoker = Invoker(app, backbone=backbone)
    outcome = await invoker.invoke(
        "apply_payment", Event(id="e", data=msgspec.json.encode(payment()))
    )
    if applied:
        assert isinstance(outcome, Ok)
        assert await balance(backbone) == 9680
    else:
        assert isinstance(outcome, Retry)
        assert outcome.code == "retry_requested" and "compare-and-set" in outcome.reason
        assert await balance(backbone) == 0  # only the other writer's empty account


# -- quote_fee ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "fee", "rule", "display"),
    [
        ({"amount": 1000, "currency": "USD"}, 59, "standard", "0.59 USD"),
        ({"amount": 500, "currency": "USD"}, 45, "standard", "0.45 USD"),  # 14.5c rounds up
        ({"amount": 1050, "currency": "USD"}, 60, "standard", "0.60 USD"),  # 30.45c rounds down
        ({"amount": 500, "currency": "JPY"}, 55, "standard", "55 JPY"),  # 14.5 yen -> 15 + 40
        ({"amount": 12345, "currency": "JPY"}, 398, "standard", "398 JPY"),
        ({"amount": 10, "currency": "JPY"}, 10, "standard", "10 JPY"),  # never above the amount
        ({"amount": 1000, "currency": "KWD"}, 129, "standard", "0.129 KWD"),
        ({"amount": 1000, "currency": "EUR", "customer": "cus_ent_ABC123"}, 39, "enterprise", None),
        ({"amount": 1000, "currency": "EUR", "customer": "cus_int_ABC123"}, 0, "internal", None),
        (
            {"amount": 1000, "currency": "GBP", "metadata": {"channel": "POS"}},
            47,
            "in_person",
            "0.47 GBP",
        ),
        (
            {
                "amount": 1000,
                "currency": "USD",
                "metadata": {"origin_url": "https://shop.example.com/c"},
            },
            64,
            "marketplace",
            None,
        ),
        (
            {"amount": 1000, "currency": "USD", "metadata": {"origin_url": "http://[::1"}},
            59,
            "standard",
            None,
        ),
    ],
)
@pytest.mark.anyio
async def test_fee_quotes(
    app: App, request_: dict[str, Any], fee: int, rule: str, display: str | None
) -> None:
    invoker = Invoker(app)
    for _ in range(2):  # the second answer comes from the instance's quote cache
        outcome = await invoker.invoke(
            "quote_fee", Event(id="q", data=msgspec.json.encode(request_))
        )
        assert isinstance(outcome, Ok), outcome
        quote = msgspec.json.decode(outcome.data, type=contracts.FeeQuote)
        assert (quote.fee, quote.net, quote.rule) == (fee, request_["amount"] - fee, rule)
        if display is not None:
            assert quote.display_fee == display


@pytest.mark.anyio
async def test_fee_quote_refuses_amounts_above_the_currency_limit(app: App) -> None:
    data = msgspec.json.encode({"amount": 100_000_000, "currency": "USD"})
    outcome = await Invoker(app).invoke("quote_fee", Event(id="q", data=data))
    assert isinstance(outcome, Reject)
    assert outcome.code == "amount_too_large"
    assert "999999.99 USD" in outcome.reason


# -- hostile input -------------------------------------------------------------------------

INGEST_CODES = {
    "payload_too_large",
    "signature_missing",
    "signature_malformed",
    "signature_stale",
    "signature_invalid",
    "payload_malformed",
    "contract_invalid",
    "schema_unsupported",
}
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda fields: msgspec.json.encode(payment(**fields)),
        st.dictionaries(
            st.sampled_from(["id", "amount", "currency", "customer", "metadata", "created"]),
            st.none() | st.integers() | st.text(max_size=20) | st.just({"k": "v"}),
            max_size=3,
        ),
    ),
    st.just(msgspec.json.encode(payment())),
)


@given(
    body=bodies,
    header=st.one_of(
        st.none(), st.text(max_size=200), st.sampled_from(["sign", "sign-stale", "forged"])
    ),
    extra=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=3),
)
def test_ingest_answers_any_bytes_and_headers_with_an_outcome(
    body: bytes, header: str | None, extra: dict[str, str]
) -> None:
    headers = dict(extra)
    if header == "sign":
        headers["Webhook-Signature"] = signatures.sign(SECRET, int(time.time()), body)
    elif header == "forged":
        headers["Webhook-Signature"] = f"t={int(time.time())},v1={'0' * 64}"
    elif header == "sign-stale":
        headers["Webhook-Signature"] = signatures.sign(SECRET, 1, body)
    elif header is not None:
        headers["Webhook-Signature"] = header

    async def run() -> object:
        backbone = await make_backbone()
        with mock.patch.dict(os.environ, {"PAYMENT_WEBHOOK_SECRET": SECRET}):
            await start(APP)
        try:
            return await ingest(Invoker(APP, backbone=backbone), body, headers)
        finally:
            await stop(APP)

    outcome = anyio.run(run)
    assert type(outcome) in (Ok, Retry, Reject)
    event(getattr(outcome, "code", type(outcome).__name__))  # shown by --hypothesis-show-statistics
    if isinstance(outcome, Reject):
        assert outcome.code in INGEST_CODES, outcome
    if isinstance(outcome, Ok):
        assert msgspec.json.decode(outcome.data, type=contracts.Receipt).status == "accepted"
