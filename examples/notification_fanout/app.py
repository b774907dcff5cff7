"""Notification fan-out: one capability per step of the pipeline.

``route`` consumes domain events (``domain.events``), applies the rules table and
publishes one notice per channel (``notify.email|push|sms``); each channel is its
own capability with its own concurrency and retry policy, because providers differ:
email is slow and tolerant (6 attempts, backoff up to a minute), push is fast (3
attempts), SMS is expensive and rate-limited (concurrency 2, 2 attempts, bad numbers
rejected at once). Every step is idempotent per event and channel, so redeliveries
and duplicate domain events never notify twice. Providers are simulated in memory
(``SENT``); ``FAIL_NEXT`` lets tests make a provider fail.
"""

from __future__ import annotations

import re
from collections import defaultdict

import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    Idempotency,
    Rejected,
    RetryLater,
    RetryPolicy,
    stream,
)

app = App("notifications")


class DomainEvent(msgspec.Struct, frozen=True):
    id: str
    type: str
    user: str
    data: dict[str, str] = {}
    schema_version: int = 1


class Notice(msgspec.Struct, frozen=True):
    event_id: str
    channel: str
    to: str
    text: str
    schema_version: int = 1


# Rules: which channels an event type reaches, and the message template.
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "order.shipped": (("email", "push"), "Your order {order} is on its way"),
    "payment.failed": (("email", "sms"), "Payment for {order} failed: please update your card"),
    "login.new_device": (("push",), "New sign-in from {device}"),
}
# Where each user is reachable (a real app reads this from a store).
CONTACTS: dict[str, dict[str, str]] = {
    "u1": {"email": "ada@example.com", "push": "device-ada", "sms": "+33123456789"},
    "u2": {"email": "linus@example.com", "push": "device-linus", "sms": "not-a-number"},
}
_PHONE = re.compile(r"\+[1-9][0-9]{7,14}\Z")

SENT: dict[str, list[Notice]] = defaultdict(list)
FAIL_NEXT: dict[str, int] = defaultdict(int)  # channel -> how many sends fail first


def _once_per_channel(event: object, notice: Notice) -> str:
    return f"{notice.event_id}.{notice.channel}"


@app.capability(
    stream("domain.events"),
    timeout=2.0,
    retry=RetryPolicy(max_attempts=5),
    idempotency=Idempotency(key=lambda event, domain: domain.id),
    concurrency=64,
    access=Access(publishes=("notify.>",)),
)
async def route(event: DomainEvent, ctx: Context) -> dict[str, list[str]]:
    """Apply the rules: publish one notice per channel the event type reaches."""
    rule = RULES.get(event.type)
    if rule is None:
        raise Rejected(f"no rule for event type {event.type!r}", code="event_type_unknown")
    channels, template = rule
    contacts = CONTACTS.get(event.user, {})
    try:
        text = template.format(**event.data)
    except KeyError as missing:
        raise Rejected(f"event data lacks {missing}", code="event_data_missing") from None
    sent = []
    for channel in channels:
        if channel in contacts:
            notice = Notice(event.id, channel, contacts[channel], text)
            await ctx.publish(f"notify.{channel}", notice)
            sent.append(channel)
    return {"channels": sent}


async def _deliver(notice: Notice) -> dict[str, str]:
    if FAIL_NEXT[notice.channel] > 0:
        FAIL_NEXT[notice.channel] -= 1
        raise RetryLater(f"{notice.channel} provider unavailable", delay=0.05)
    SENT[notice.channel].append(notice)
    return {"channel": notice.channel, "to": notice.to}


@app.capability(
    stream("notify.email"),
    timeout=10.0,
    retry=RetryPolicy(max_attempts=6, backoff=Backoff(initial=1.0, maximum=60.0)),
    idempotency=Idempotency(key=_once_per_channel),
    concurrency=8,
)
async def email(notice: Notice) -> dict[str, str]:
    """Send an email (slow provider, tolerant retries)."""
    return await _deliver(notice)


@app.capability(
    stream("notify.push"),
    timeout=2.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.2, maximum=5.0)),
    idempotency=Idempotency(key=_once_per_channel),
    concurrency=32,
)
async def push(notice: Notice) -> dict[str, str]:
    """Send a push notification (fast, few retries: stale pushes are useless)."""
    return await _deliver(notice)


@app.capability(
    stream("notify.sms"),
    timeout=5.0,
    retry=RetryPolicy(max_attempts=2, backoff=Backoff(initial=2.0)),
    idempotency=Idempotency(key=_once_per_channel),
    concurrency=2,
)
async def sms(notice: Notice) -> dict[str, str]:
    """Send an SMS (expensive, rate-limited; an invalid number is rejected for good)."""
    if not _PHONE.match(notice.to):
        raise Rejected(f"{notice.to!r} is not an E.164 phone number", code="phone_invalid")
    return await _deliver(notice)
