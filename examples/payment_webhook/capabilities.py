"""The payment_webhook app: signed intake, ledger posting from the stream, fee quotes.

Flow: the provider POSTs a signed event to ``/webhooks/payments``; ``ingest``
verifies it, publishes the raw body to ``payments.events`` (message id = event
id, so provider retries are dropped by the stream) and answers at once.
``apply_payment`` consumes the stream and posts to the ``ledger`` KV bucket with
compare-and-set. ``quote_fee`` is pure and cheap.

Secrets: ``PAYMENT_WEBHOOK_SECRET`` holds one secret, or several separated by
commas while rotating. When unset, the development secret ``DEV_SECRET`` below is
used and a warning is logged: never run like that in production.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from thaw import (
    Access,
    Age,
    App,
    Availability,
    Backoff,
    Completion,
    Context,
    Idempotency,
    KeyExists,
    Latency,
    Rejected,
    RetryLater,
    RetryPolicy,
    WrongRevision,
    http,
    stream,
    subject,
)

from . import ledger, rules, signatures
from .contracts import (
    SCHEMA_VERSION,
    Currency,
    FeeQuote,
    FeeQuoteRequest,
    LedgerEntry,
    PaymentEvent,
    Receipt,
)

log = logging.getLogger(__name__)

SECRET_ENV = "PAYMENT_WEBHOOK_SECRET"
TOLERANCE_ENV = "PAYMENT_WEBHOOK_TOLERANCE"
DEV_SECRET = "whsec_thaw_development_only"  # documented dev default, see above
EVENTS_SUBJECT = "payments.events"
EVENTS_STREAM = "PAYMENTS"
LEDGER_BUCKET = "ledger"
CAS_ATTEMPTS = 5
QUOTE_CACHE_SIZE = 1024
RECEIPT_NAMESPACE = uuid.UUID("0b9e4d7a-6c31-4f8e-b2a5-7d1c9e3f4a60")

_decode_event = msgspec.json.Decoder(PaymentEvent).decode

app = App("payment_webhook")


@dataclass(slots=True)
class _Instance:
    """Per-instance state built by ``start``: prepared HMAC keys and a small quote cache."""

    keys: tuple[hmac.HMAC, ...]
    tolerance: float
    quotes: OrderedDict[tuple[object, ...], FeeQuote] = field(default_factory=OrderedDict)

    def quote(
        self, amount: int, currency: Currency, customer: str, metadata: Mapping[str, str]
    ) -> FeeQuote:
        key = (amount, currency, customer, *sorted(metadata.items()))
        cached = self.quotes.get(key)
        if cached is not None:
            self.quotes.move_to_end(key)
            return cached
        fresh = self.quotes[key] = rules.quote(amount, currency, customer, metadata)
        if len(self.quotes) > QUOTE_CACHE_SIZE:
            self.quotes.popitem(last=False)
        return fresh


_instance: _Instance | None = None
_live = 0  # instances started and not stopped; "shared" isolation shares module state


def _state() -> _Instance:
    if _instance is None:
        raise RuntimeError(
            "payment_webhook was invoked before its on_start hook ran; "
            "the host must run app.start_hooks before serving"
        )
    return _instance


@app.on_start
async def start() -> None:
    """Prepare HMAC keys and the quote cache (no network I/O)."""
    global _instance, _live
    _live += 1
    if _instance is not None:
        return
    raw = os.environ.get(SECRET_ENV, "")
    if not raw.strip():
        log.warning("%s is not set: using the development secret", SECRET_ENV)
        raw = DEV_SECRET
    tolerance = float(os.environ.get(TOLERANCE_ENV, signatures.DEFAULT_TOLERANCE))
    keys = signatures.prepare_keys([part.strip() for part in raw.split(",")])
    _instance = _Instance(keys=keys, tolerance=tolerance)


@app.on_stop
async def stop() -> None:
    global _instance, _live
    _live = max(_live - 1, 0)
    if _live == 0 and _instance is not None:
        _instance.quotes.clear()
        _instance = None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, ignoring case (HTTP adapters may lowercase names)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def decode_event(body: bytes) -> PaymentEvent:
    try:
        event = _decode_event(body)
    except msgspec.ValidationError as exc:
        raise Rejected(
            f"the payment event does not match the contract: {exc}", code="contract_invalid"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Rejected(
            f"the body is not valid JSON: {exc}", code="payload_malformed", http_status=400
        ) from None
    _check_version(event)
    return event


def _check_version(event: PaymentEvent) -> None:
    if event.schema_version > SCHEMA_VERSION:
        raise Rejected(
            f"schema_version {event.schema_version} is newer than {SCHEMA_VERSION}, "
            "the newest this app understands; deploy a newer app first",
            code="schema_unsupported",
        )


@app.capability(
    http("POST", "/webhooks/payments"),
    timeout=2.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, maximum=1.0)),
    concurrency=256,
    max_payload=64 * 1024,
    access=Access(publishes=(EVENTS_SUBJECT,)),
    # the provider waits on this answer: 99% within 200 ms, and 99.9% not failed by us
    slo=[Latency(0.99, within=0.2), Availability(0.999)],
)
async def ingest(body: bytes, ctx: Context) -> Receipt:
    """Verify a signed payment webhook and queue it on payments.events (async-first intake)."""
    state = _state()
    signed_at = signatures.verify(
        header(ctx.event.headers, signatures.HEADER),
        body,
        state.keys,
        now=time.time(),
        tolerance=state.tolerance,
    )
    event = decode_event(body)
    ack = await ctx.publish(
        EVENTS_SUBJECT, body, msg_id=event.id, headers={"Payment-Event-Type": event.type.value}
    )
    return Receipt(
        receipt_id=str(uuid.uuid5(RECEIPT_NAMESPACE, event.id)),
        event_id=event.id,
        duplicate=ack.duplicate,
        stream=ack.stream,
        seq=ack.seq,
        signed_at=datetime.fromtimestamp(signed_at, UTC),
    )


@app.capability(
    stream(EVENTS_SUBJECT, stream=EVENTS_STREAM),
    timeout=5.0,
    retry=RetryPolicy(max_attempts=8, backoff=Backoff(initial=0.2, maximum=30.0)),
    idempotency=Idempotency(key=lambda event, payment: ledger.apply_key(payment), ttl=7 * 86400),
    concurrency=32,
    access=Access(buckets=(LEDGER_BUCKET,)),
    # nobody waits on the ledger, but it must keep up: picked up within 5 s, posted
    # (or dead-lettered) within 20 s of the webhook's arrival
    slo=[Age(0.99, within=5.0), Completion(0.99, within=20.0)],
)
async def apply_payment(payment: PaymentEvent, ctx: Context) -> LedgerEntry:
    """Post a payment event to the customer's ledger account (compare-and-set on KV)."""
    _check_version(payment)
    quote = _state().quote(payment.amount, payment.currency, payment.customer, payment.metadata)
    bucket = await ctx.kv(LEDGER_BUCKET)
    key = ledger.account_key(payment.customer, payment.currency)
    for attempt in range(1, CAS_ATTEMPTS + 1):
        current = await bucket.get(key)
        if current is None:
            account = ledger.new_account(payment.customer, payment.currency)
        else:
            account = ledger.decode_account(current.value)
        applied = ledger.find_applied(account, payment)
        if applied is not None:
            return applied  # applied before; its idempotency record was lost
        account, entry = ledger.post(account, payment, quote)
        value = ledger.encode_account(account)
        try:
            if current is None:
                await bucket.create(key, value)
            else:
                await bucket.update(key, value, last=current.revision)
        except (KeyExists, WrongRevision):
            ctx.log.info("ledger %s changed under us (try %d of %d)", key, attempt, CAS_ATTEMPTS)
            continue
        return entry
    raise RetryLater(f"ledger key {key!r} kept changing during {CAS_ATTEMPTS} compare-and-sets")


@app.capability(
    http("POST", "/fees/quote"),
    subject("fees.quote"),  # outside payments.>: a stream capturing it would answer requests
    timeout=0.5,
    retry=RetryPolicy(max_attempts=1),
    max_payload=8 * 1024,
    slo=Latency(0.999, within=0.01),
)
async def quote_fee(request: FeeQuoteRequest) -> FeeQuote:
    """The fee and net amount for a payment, without I/O."""
    customer = request.customer or ""
    return _state().quote(request.amount, request.currency, customer, request.metadata)
