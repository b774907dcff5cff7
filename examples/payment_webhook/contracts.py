"""Wire contracts: what the payment provider sends and what this app answers.

Schema evolution follows msgspec's rules: every Struct carries ``schema_version``;
a field added later gets a default (old senders still decode), fields are never
renamed or retyped, and unknown fields are ignored (newer senders still decode).
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated

import msgspec

SCHEMA_VERSION = 2  # the newest version this code understands

EVENT_ID = re.compile(r"evt_[A-Za-z0-9]{8,64}")
PAYMENT_ID = re.compile(r"pay_[A-Za-z0-9]{8,64}")
CUSTOMER_ID = re.compile(r"cus_[a-z]{0,8}_?[A-Za-z0-9]{6,32}")

EventId = Annotated[str, msgspec.Meta(pattern=f"^{EVENT_ID.pattern}$")]
PaymentId = Annotated[str, msgspec.Meta(pattern=f"^{PAYMENT_ID.pattern}$")]
CustomerId = Annotated[str, msgspec.Meta(pattern=f"^{CUSTOMER_ID.pattern}$")]
MinorUnits = Annotated[int, msgspec.Meta(gt=0, le=10**12)]
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^[a-z0-9_]+$")]
MetadataValue = Annotated[str, msgspec.Meta(max_length=500)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=20)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class EventType(enum.StrEnum):
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_REFUNDED = "payment.refunded"
    PAYMENT_FAILED = "payment.failed"


class Currency(enum.StrEnum):
    USD = "USD"
    EUR = "EUR"
    GBP = "GBP"
    CHF = "CHF"
    JPY = "JPY"
    KWD = "KWD"


class EntryKind(enum.StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    NOOP = "noop"


class PaymentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook delivery. ``id`` is per delivery attempt group, ``payment_id`` per payment."""

    schema_version: int = 1
    id: EventId
    type: EventType
    created: AwareDatetime
    payment_id: PaymentId
    amount: MinorUnits  # in the currency's minor units (cents; yen for JPY)
    currency: Currency
    customer: CustomerId
    metadata: Metadata = {}
    livemode: bool = False  # added in schema 2


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to the provider: the event is durably queued (async-first intake)."""

    schema_version: int = 1
    receipt_id: str
    event_id: str
    status: str = "accepted"
    duplicate: bool = False  # the stream had already stored this event id
    stream: str
    seq: int
    signed_at: AwareDatetime


class FeeQuoteRequest(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = 1
    amount: MinorUnits
    currency: Currency
    customer: CustomerId | None = None
    metadata: Metadata = {}


class FeeQuote(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = 1
    amount: int
    fee: int
    net: int
    currency: Currency
    rule: str
    display_fee: str  # "0.59 USD", "80 JPY"


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = 1
    entry_id: str
    event_id: str
    payment_id: str
    customer: str
    currency: Currency
    kind: EntryKind
    gross: int
    fee: int
    net: int  # signed change of the balance
    balance_after: int
    rule: str


class LedgerAccount(msgspec.Struct, frozen=True, kw_only=True):
    """The value stored under one KV key: a balance plus the entries applied lately."""

    schema_version: int = 1
    customer: str
    currency: Currency
    balance: int = 0
    entries: int = 0
    recent: tuple[LedgerEntry, ...] = ()  # bounded; replays are answered from here
