"""Ledger arithmetic: pure functions from (account, event, fee quote) to a new account.

One KV key per customer and currency holds a ``LedgerAccount``. The capability
reads it, calls ``post`` and writes it back with compare-and-set. Each account
keeps its last ``MAX_RECENT`` entries, so an event applied already (a redelivery
whose stored idempotency result was lost) is answered from the account instead
of being applied twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

from .contracts import (
    Currency,
    EntryKind,
    EventType,
    FeeQuote,
    LedgerAccount,
    LedgerEntry,
    PaymentEvent,
)

MAX_RECENT = 32
ENTRY_NAMESPACE = uuid.UUID("5f0c6a3e-8d1b-4c52-9a7e-2f4d1b6c8e90")

_decode_account = msgspec.json.Decoder(LedgerAccount).decode
encode_account = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Posting:
    kind: EntryKind
    sign: int  # +1 credits the balance, -1 debits it, 0 leaves it
    charges_fee: bool


# How each event type moves money: a refund returns the gross amount, fees are kept.
POSTINGS: dict[EventType, Posting] = {
    EventType.PAYMENT_SUCCEEDED: Posting(EntryKind.CREDIT, +1, charges_fee=True),
    EventType.PAYMENT_REFUNDED: Posting(EntryKind.DEBIT, -1, charges_fee=False),
    EventType.PAYMENT_FAILED: Posting(EntryKind.NOOP, 0, charges_fee=False),
}
if set(POSTINGS) != set(EventType):  # a new event type must say how it posts
    raise RuntimeError(f"no posting for {set(EventType) - set(POSTINGS)}")


def apply_key(event: PaymentEvent) -> str:
    """What makes an event unique for the ledger: the payment and what happened to it."""
    return f"{event.payment_id}.{event.type.value}"


def account_key(customer: str, currency: Currency) -> str:
    return f"acct.{currency.value}.{customer}"


def entry_id(event: PaymentEvent) -> str:
    return str(uuid.uuid5(ENTRY_NAMESPACE, apply_key(event)))


def new_account(customer: str, currency: Currency) -> LedgerAccount:
    return LedgerAccount(customer=customer, currency=currency)


def decode_account(value: bytes) -> LedgerAccount:
    return _decode_account(value)


def find_applied(account: LedgerAccount, event: PaymentEvent) -> LedgerEntry | None:
    wanted = entry_id(event)
    return next((entry for entry in account.recent if entry.entry_id == wanted), None)


def post(
    account: LedgerAccount, event: PaymentEvent, quote: FeeQuote
) -> tuple[LedgerAccount, LedgerEntry]:
    """The account after ``event``, and the entry that records it."""
    posting = POSTINGS[event.type]
    fee = quote.fee if posting.charges_fee else 0
    net = posting.sign * (event.amount - fee)
    balance = account.balance + net
    entry = LedgerEntry(
        entry_id=entry_id(event),
        event_id=event.id,
        payment_id=event.payment_id,
        customer=event.customer,
        currency=event.currency,
        kind=posting.kind,
        gross=event.amount,
        fee=fee,
        net=net,
        balance_after=balance,
        rule=quote.rule if posting.charges_fee else "none",
    )
    updated = msgspec.structs.replace(
        account,
        balance=balance,
        entries=account.entries + 1,
        recent=(*account.recent, entry)[-MAX_RECENT:],
    )
    return updated, entry
