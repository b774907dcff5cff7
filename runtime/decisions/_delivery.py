"""Pure decisions: what a transport does with an Outcome.

Adapters perform these actions; they never decide them. Keeping the table
here (like h11's state table) makes every branch a one-line unit test.

Stream deliveries:  Ok -> ack;  Retry -> nak(delay), or dead-letter when this was
the last delivery the consumer allows;  Reject -> dead-letter (publish to the
dead-letter stream with the headers below, then term).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeAlias

import msgspec

from thaw._event import Ok, Outcome, Reject, Retry
from thaw._headers import (
    DEAD_LETTER_APP,
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_CAPABILITY,
    DEAD_LETTER_CODE,
    DEAD_LETTER_MESSAGE,
    DEAD_LETTER_ORIGINAL_SEQ,
    DEAD_LETTER_ORIGINAL_STREAM,
    DEAD_LETTER_ORIGINAL_SUBJECT,
    DEAD_LETTER_REVISION,
    EVENT_ID_HEADER,
    TRACEPARENT_HEADER,
)
from thaw.decisions._redaction import redact_headers, scrub_secrets

__all__ = [
    "Ack",
    "Nak",
    "DeadLetter",
    "StreamAction",
    "decide_stream",
    "dead_letter_subject",
    "dead_letter_headers",
    "DEAD_LETTER_STREAM",
    "DEAD_LETTER_SUBJECTS",
]

DEAD_LETTER_STREAM = "THAW_DLQ"
DEAD_LETTER_SUBJECTS = ("thaw.dlq.>",)


class Ack(msgspec.Struct, frozen=True):
    pass


class Nak(msgspec.Struct, frozen=True):
    delay: float


class DeadLetter(msgspec.Struct, frozen=True):
    code: str
    reason: str


StreamAction: TypeAlias = Ack | Nak | DeadLetter
_ACK = Ack()


def decide_stream(outcome: Outcome, *, delivery_count: int, max_deliver: int) -> StreamAction:
    """The action for a JetStream-style delivery; ``max_deliver`` <= 0 means unlimited."""
    if type(outcome) is Ok:
        return _ACK
    if type(outcome) is Retry:
        if 0 < max_deliver <= delivery_count:
            return DeadLetter(
                outcome.code,
                f"delivery {delivery_count} of at most {max_deliver} failed: {outcome.reason}",
            )
        return Nak(max(outcome.delay, 0.0))
    assert type(outcome) is Reject
    return DeadLetter(outcome.code, outcome.reason)


def dead_letter_subject(app: str, capability: str) -> str:
    return f"thaw.dlq.{app}.{capability}"


def dead_letter_headers(
    action: DeadLetter,
    *,
    app: str,
    capability: str,
    subject: str,
    stream: str,
    seq: int,
    attempts: int,
    revision: str = "",
    traceparent: str = "",
    event_id: str = "",
    original: Mapping[str, str] | None = None,
    redact: Iterable[str] | None = None,
) -> dict[str, str]:
    """Headers that say why a message was dead-lettered and where it came from.

    The ``original`` message's own headers are kept (a replay gives them back to the
    function), except ``Nats-*`` ones: a message id, an expected last sequence or a
    rollup would act on the dead-letter stream instead (``Nats-Msg-Id`` is set apart).
    Credentials are not kept (``thaw.decisions._redaction``): the values of secret
    headers (the built-in names plus ``redact``, None: the host's list) are replaced,
    and credentials in the other values and in the reason are scrubbed.
    """
    headers = redact_headers(
        {
            key: value
            for key, value in (original or {}).items()
            if not key.lower().startswith(("nats-", "thaw-"))
        },
        redact,
    )
    headers |= {
        DEAD_LETTER_CODE: action.code,
        DEAD_LETTER_MESSAGE: _header_safe(scrub_secrets(" ".join(action.reason.split()))),
        DEAD_LETTER_ATTEMPTS: str(attempts),
        DEAD_LETTER_ORIGINAL_SUBJECT: subject,
        DEAD_LETTER_ORIGINAL_STREAM: stream,
        DEAD_LETTER_ORIGINAL_SEQ: str(seq),
        DEAD_LETTER_APP: app,
        DEAD_LETTER_CAPABILITY: capability,
    }
    if event_id:
        headers[EVENT_ID_HEADER] = event_id  # a replay keeps the idempotency identity
    if revision:
        headers[DEAD_LETTER_REVISION] = revision
    if traceparent:
        headers[TRACEPARENT_HEADER] = traceparent
    return headers


def _header_safe(text: str) -> str:
    # NATS headers are line-based: no CR/LF, and keep them short.
    flat = " ".join(text.split())
    return flat if len(flat) <= 1024 else flat[:1021] + "..."
