"""Core request/reply: what a ``subject`` trigger answers, and how a requester reads it.

A capability behind a ``subject`` trigger answers a request with its Outcome in
the NATS micro convention: ``Ok`` -> the encoded result and no error headers;
``Reject``/``Retry`` -> a problem-details body plus ``Nats-Service-Error`` (a
message safe to show), ``Nats-Service-Error-Code`` (Thaw's stable code) and
``Thaw-Status`` (the HTTP-like status). ``service_reply`` builds that and
``outcome_of_reply`` reads it back, so ``ctx.request`` (a capability calling
another app's capability over NATS) gets the same Outcome an in-process
``ctx.call`` would. Both are pure.

Backbones that can carry requests implement ``Requester``; JetStreamBackbone
sends core NATS requests, MemoryBackbone routes them to in-process responders
(``Responder``), so the same app runs embedded, in tests and at the edge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable

import msgspec

from thaw._event import Ok, Outcome, Reject, Retry
from thaw._headers import ERROR_CODE_HEADER, ERROR_HEADER, RETRY_AFTER_HEADER, STATUS_HEADER
from thaw.decisions._http import Problem, answer_outcome

__all__ = [
    "Reply",
    "Requester",
    "Responder",
    "outcome_of_reply",
    "service_reply",
]

REMOTE_ERROR = "remote_error"  # the code of an error reply that names none of ours
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_REASON = 512
_MAX_CODE = 64
_decode_problem = msgspec.json.Decoder(Problem).decode


class Reply(msgspec.Struct, frozen=True):
    """The answer to a request: its payload and headers."""

    data: bytes
    headers: dict[str, str] = {}


Responder = Callable[[str, bytes, Mapping[str, str]], Awaitable[Reply]]
"""An in-process request handler: ``(subject, data, headers) -> Reply``."""


@runtime_checkable
class Requester(Protocol):
    """A backbone that carries core request/reply (not every one does: see ``ctx.request``)."""

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Reply:
        """Send a request, return the first reply.

        Raises ``NoResponders`` when nobody serves ``subject`` and
        ``DeadlineExceeded`` when no reply came within ``timeout`` seconds.
        """
        ...


def service_reply(outcome: Outcome) -> tuple[bytes, dict[str, str]]:
    """The reply body and headers for an Outcome (pure; a service only sends it)."""
    answer = answer_outcome(outcome)
    if type(outcome) is Ok:
        return answer.body, {}
    problem = _decode_problem(answer.body)
    headers = {
        ERROR_HEADER: problem.detail,
        ERROR_CODE_HEADER: problem.code,
        STATUS_HEADER: str(answer.status),
    }
    if type(outcome) is Retry and answer.retry_after is not None:
        headers[RETRY_AFTER_HEADER] = str(answer.retry_after)
    return answer.body, headers


def outcome_of_reply(data: bytes, headers: Mapping[str, str], *, attempt: int = 1) -> Outcome:
    """The Outcome a reply carries (pure; the inverse of ``service_reply``).

    A reply without ``Nats-Service-Error`` is ``Ok``. An error reply is a
    ``Retry`` when its status says transient (408, 425, 429, 5xx but 501) and
    a ``Reject`` otherwise. Other NATS micro services put a numeric code in
    ``Nats-Service-Error-Code``; that is read as the status, code ``remote_error``.
    """
    reason = headers.get(ERROR_HEADER)
    if reason is None:
        return Ok(data)
    code = headers.get(ERROR_CODE_HEADER, "")[:_MAX_CODE] or REMOTE_ERROR
    status_text = headers.get(STATUS_HEADER, "")
    if _digits(code):
        status_text = status_text or code
        code = REMOTE_ERROR
    status = int(status_text) if _digits(status_text) and len(status_text) == 3 else 500
    reason = reason[:_MAX_REASON] or f"the responder answered {code}"
    if status in _RETRYABLE_STATUSES:
        delay = headers.get(RETRY_AFTER_HEADER, "")
        return Retry(float(delay) if _digits(delay) and len(delay) < 9 else 0.0, reason, code)
    return Reject(code, reason, attempt, status)


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts "²" and other scripts' digits)."""
    return text.isascii() and text.isdigit()
