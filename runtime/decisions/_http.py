"""Pure HTTP decisions: what an HTTP answer is, given an Outcome or a refusal.

The HTTP adapter performs these answers; it never decides them. Everything
here is a pure function of its arguments (stdlib + msgspec only), so each rule
is a one-line unit test, and the same table serves any HTTP front end (the
httptools server, an ASGI adapter, the edge fetch handler).

Rules:
- ``Ok(b"")`` -> 204; ``Ok(data)`` -> 200 with the route's content type;
  a replayed result (idempotency store) says so in ``Idempotent-Replayed``.
- ``Reject``/``Retry`` -> RFC 9457 problem details (``application/problem+json``)
  with the stable ``code``; the status comes from the code (``status_for``).
  Every ``Retry`` carries ``Retry-After`` (whole seconds, at least 1).
- Caller faults (4xx) show the reason, which names what to fix. Server faults
  (5xx) show a fixed text, unless the code is known to carry no internals:
  a function's exception message may hold secrets and is for the log only.
- Keep-alive follows RFC 9112: HTTP/1.1 stays open unless ``Connection: close``;
  HTTP/1.0 closes unless ``Connection: keep-alive``.
- A Host value is ``uri-host [":" port]`` of RFC 3986 (RFC 9112 section 3.2):
  a non-empty reg-name, an IPv4 address or a bracketed IPv6/IPvFuture literal,
  and a port of at most 65535. Anything else is refused (400 ``host_invalid``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from http import HTTPStatus

import msgspec

import thaw._errors as _errors
from thaw._event import Ok, Outcome, Reject, Retry

__all__ = [
    "HttpAnswer",
    "Problem",
    "PROTOCOL_ERRORS",
    "answer_outcome",
    "keep_alive",
    "problem",
    "problem_answer",
    "reason_phrase",
    "retry_after_seconds",
    "status_for",
    "valid_host",
]

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:thaw:error:"


def _codes_of(cls: type[_errors.ThawError]) -> dict[str, int]:
    table = {cls.code: cls.http_status}
    for sub in cls.__subclasses__():
        table.update(_codes_of(sub))
    return table


# code -> HTTP status. Built from the error classes (their ``http_status`` hint),
# plus the codes that exist only as Outcomes and the HTTP transport's own codes.
_STATUS: dict[str, int] = {
    **_codes_of(_errors.ThawError),
    "idempotency_key_invalid": 422,
    "result_invalid": 500,
    "result_too_large": 500,  # the function's result, past its Policy.max_result
}

# Refusals of the HTTP transport itself: code -> (status, close the connection after).
# Closing is what keeps a broken or hostile byte stream from being read as a
# second request (smuggling) or from holding a connection forever.
PROTOCOL_ERRORS: dict[str, tuple[int, bool]] = {
    "http_malformed": (400, True),
    "http_smuggling": (400, True),
    "host_invalid": (400, True),
    "target_invalid": (400, False),
    "parameter_conflict": (400, False),
    "idempotency_header_invalid": (400, False),
    "route_not_found": (404, False),
    "method_not_allowed": (405, False),
    "request_timeout": (408, True),
    "payload_too_large": (413, True),
    "uri_too_long": (414, True),
    "expectation_failed": (417, True),
    "headers_too_large": (431, True),
    "not_implemented": (501, False),
    "overloaded": (503, False),
    "pipeline_full": (503, True),
    "draining": (503, True),
    "not_ready": (503, False),
    "app_unavailable": (503, False),
    "http_version_unsupported": (505, True),
    "internal_error": (500, False),
}

# 5xx codes whose reasons are written by the runtime (or chosen by the function on
# purpose) and carry no internals: they are shown to the client as they are.
_SAFE_SERVER_REASONS = frozenset(
    {
        "overloaded",
        "deadline_exceeded",
        "retry_requested",
        "pipeline_full",
        "draining",
        "not_ready",
        "app_unavailable",
        "not_implemented",
        "http_version_unsupported",
    }
)
_HIDDEN_REASON = "the capability failed; the server log has the details under this event id"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details, with Thaw's stable ``code`` as an extension member."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    event_id: str = ""
    trace_id: str = ""
    allow: list[str] = []


class HttpAnswer(msgspec.Struct, frozen=True, gc=False):
    """What to send: status, body, its content type, and the few headers decisions add."""

    status: int
    body: bytes = b""
    content_type: str = ""
    retry_after: int | None = None
    replayed: bool = False
    allow: tuple[str, ...] = ()


_encode = msgspec.json.Encoder().encode


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_for(code: str, *, retryable: bool) -> int:
    """The HTTP status for a stable error code; unknown codes are a function's own.

    A function's own ``Rejected(code=...)`` is the caller's fault (422); an unknown
    code on a ``Retry`` is a transient failure (503).
    """
    status = _STATUS.get(code)
    if status is None:
        protocol = PROTOCOL_ERRORS.get(code)
        status = protocol[0] if protocol else (503 if retryable else 422)
    return status


def retry_after_seconds(delay: float) -> int:
    """``Retry-After`` is whole seconds: round up, never 0 (0 invites a hot loop)."""
    if not math.isfinite(delay) or delay <= 1.0:
        return 1
    return min(math.ceil(delay), 86_400)


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    event_id: str = "",
    trace_id: str = "",
    allow: tuple[str, ...] = (),
) -> bytes:
    """The encoded problem-details body (never a traceback, never a repr)."""
    if status >= 500 and code not in _SAFE_SERVER_REASONS:
        detail = _HIDDEN_REASON
    body = Problem(
        type=PROBLEM_TYPE_PREFIX + code,
        title=reason_phrase(status),
        status=status,
        detail=detail,
        code=code,
        event_id=event_id,
        trace_id=trace_id,
        allow=list(allow),
    )
    return _encode(body)


def problem_answer(
    code: str,
    detail: str,
    *,
    status: int | None = None,
    retry_after: int | None = None,
    allow: tuple[str, ...] = (),
    event_id: str = "",
    trace_id: str = "",
) -> HttpAnswer:
    """A refusal of the transport or the router (404, 405, 413, 431, ...)."""
    if status is None:
        status = status_for(code, retryable=retry_after is not None)
    if retry_after is None and status == 503:
        retry_after = 1
    body = problem(status, code, detail, event_id=event_id, trace_id=trace_id, allow=allow)
    return HttpAnswer(status, body, PROBLEM_JSON, retry_after, allow=allow)


def answer_outcome(
    outcome: Outcome, *, content_type: str = JSON, event_id: str = "", trace_id: str = ""
) -> HttpAnswer:
    """The HTTP answer for an Outcome of a synchronous (non-enqueue) route."""
    if type(outcome) is Ok:
        if not outcome.data:
            return HttpAnswer(204, replayed=outcome.replayed)
        return HttpAnswer(200, outcome.data, content_type, replayed=outcome.replayed)
    if type(outcome) is Retry:
        status = status_for(outcome.code, retryable=True)
        body = problem(status, outcome.code, outcome.reason, event_id=event_id, trace_id=trace_id)
        return HttpAnswer(status, body, PROBLEM_JSON, retry_after_seconds(outcome.delay))
    assert type(outcome) is Reject
    status = outcome.status or status_for(outcome.code, retryable=False)
    body = problem(status, outcome.code, outcome.reason, event_id=event_id, trace_id=trace_id)
    return HttpAnswer(status, body, PROBLEM_JSON)


def keep_alive(version: str, connection: str) -> bool:
    """Whether the connection stays open after answering this request (RFC 9112 9.3)."""
    if connection:
        tokens = {token.strip().lower() for token in connection.split(",")}
        if "close" in tokens:
            return False
        if version == "1.0":
            return "keep-alive" in tokens
    return version == "1.1"


# RFC 3986: reg-name = *( unreserved / pct-encoded / sub-delims ); an IPv4address is
# one too. Empty is refused: an "http" URI never has an empty host (RFC 9110 4.2.1).
_REG_NAME_PORT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+(?::([0-9]{0,5}))?")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")  # no zone id: RFC 3986 has none ("%" refused)
_PORT = re.compile(r"(?::([0-9]{0,5}))?")


def valid_host(value: str) -> bool:
    """Whether ``value`` is a valid Host field value: ``uri-host [":" port]`` (RFC 9112 3.2)."""
    if value[:1] == "[":
        inside, bracket, rest = value[1:].partition("]")
        port = _PORT.fullmatch(rest) if bracket else None
        if port is None:
            return False
        if inside[:1] in ("v", "V"):
            if _IPV_FUTURE.fullmatch(inside) is None:
                return False
        elif _IPV6_CHARS.fullmatch(inside) is None or not _is_ipv6(inside):
            return False
    else:
        port = _REG_NAME_PORT.fullmatch(value)
        if port is None:
            return False
    digits = port.group(1)
    return not digits or int(digits) <= 65535


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
