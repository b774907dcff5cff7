"""Event (what adapters hand the core) and Outcome (what the core decides).

Events are transport-neutral: an HTTP request, a JetStream message or a cron
tick all become one. Outcomes are values; adapters map them to transport
actions (ack / nak(delay) / term+dead-letter / HTTP response) through the pure
tables in ``thaw.decisions._delivery``. All are frozen msgspec Structs without GC
tracking, so creating one on the hot path costs tens of nanoseconds.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

__all__ = ["Event", "Ok", "Retry", "Reject", "Outcome"]


class Event(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One invocation request.

    ``id`` identifies the event across redeliveries (JetStream ``Nats-Msg-Id``, an
    HTTP ``Idempotency-Key``, a tick's timestamp); it is the default idempotency key.
    ``attempt`` starts at 1 and is the delivery count. ``deadline`` is absolute on the
    invoker's clock, or None for "the capability's own timeout only".
    """

    id: str
    data: bytes = b""
    subject: str = ""
    headers: dict[str, str] = {}
    attempt: int = 1
    deadline: float | None = None
    traceparent: str = ""


class Ok(msgspec.Struct, frozen=True, gc=False):
    """The function succeeded; ``data`` is its encoded result (b"" for None)."""

    data: bytes = b""
    replayed: bool = False  # True when served from the idempotency store


class Retry(msgspec.Struct, frozen=True, gc=False):
    """Try again after ``delay`` seconds; ``code`` says why (a stable error code)."""

    delay: float
    reason: str
    code: str = "handler_error"


class Reject(msgspec.Struct, frozen=True, gc=False):
    """Never retry: the event goes to the dead-letter path (or a 4xx/5xx answer).

    ``status`` is an HTTP status the function chose (``Rejected(http_status=...)``);
    None means "the one the code implies".
    """

    code: str
    reason: str
    attempts: int = 1
    status: int | None = None


Outcome: TypeAlias = Ok | Retry | Reject
