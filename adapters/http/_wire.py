"""What crosses the protocol/handler line (Request, Response, Service) and response bytes.

The protocol turns bytes into a ``Request`` and a ``Response`` back into bytes;
handlers never see bytes on the wire. ``Service`` is what the protocol calls
(``HttpService`` is the one the server builds); it lives here, below both, so
the connection, the server's state and the service import it one way. Status
lines and content-type lines are precomputed; the ``Date`` line is refreshed
once a second by the server, not formatted per response.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Awaitable
from http import HTTPStatus
from typing import Any, Protocol

from thaw.lowlevel import PROTOCOL_ERRORS, HttpAnswer, problem_answer

__all__ = [
    "Request",
    "Response",
    "Service",
    "DateLine",
    "encode_head",
    "encode_response",
    "refusal",
    "response_from_answer",
    "too_large",
]

Headers = tuple[tuple[str, str], ...]


class Request:
    """One parsed request. ``route`` is the handler's own slot (set by ``check``)."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "max_body",
        "method",
        "path",
        "query",
        "route",
        "target",
        "trace_id",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        keep_alive: bool,
        max_body: int,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path  # still percent-encoded: routing decodes parameter values only
        self.query = query
        self.version = version
        self.headers = headers  # lower-case names; repeated fields joined with ", "
        self.keep_alive = keep_alive
        self.max_body = max_body
        self.body = b""
        self.route: Any = None
        self.trace_id = ""  # set by the service when it assigns or reads the trace

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target[:80]!r} HTTP/{self.version}>"


class Response:
    """An answer. ``stream`` (async iterator of bytes) is sent chunked on HTTP/1.1."""

    __slots__ = ("body", "close", "content_type", "headers", "status", "stream")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "",
        headers: Headers = (),
        *,
        stream: AsyncIterator[bytes] | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.stream = stream
        self.close = close

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class Service(Protocol):
    """What the connection calls: a cheap early look at the head, then the handler."""

    def check(self, request: Request) -> Response | None:
        """At the end of the head: a refusal (404, 405, 413...) or None to read the body."""

    def handle(self, request: Request) -> Awaitable[Response]: ...


def response_from_answer(answer: HttpAnswer, *, close: bool = False) -> Response:
    headers: list[tuple[str, str]] = []
    if answer.retry_after is not None:
        headers.append(("retry-after", str(answer.retry_after)))
    if answer.allow:
        headers.append(("allow", ", ".join(answer.allow)))
    if answer.replayed:
        headers.append(("idempotent-replayed", "true"))
    return Response(answer.status, answer.body, answer.content_type, tuple(headers), close=close)


def refusal(code: str, detail: str, *, status: int | None = None) -> Response:
    """A problem-details answer of the transport (status and closing from the table)."""
    close = PROTOCOL_ERRORS.get(code, (0, True))[1]
    return response_from_answer(problem_answer(code, detail, status=status), close=close)


def too_large(limit: int) -> Response:
    """The 413 for a body past ``limit`` bytes, declared or streamed."""
    return refusal("payload_too_large", f"the body is larger than {limit} bytes")


def _status_lines() -> dict[int, bytes]:
    lines = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
    return lines


_STATUS_LINES = _status_lines()
_CONTENT_TYPES: dict[str, bytes] = {}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"connection: close\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


def _content_type_line(content_type: str) -> bytes:
    line = _CONTENT_TYPES.get(content_type)
    if line is None:
        line = f"content-type: {content_type}\r\n".encode("latin-1")
        if len(_CONTENT_TYPES) < 64:
            _CONTENT_TYPES[content_type] = line
    return line


def encode_head(response: Response, date: bytes, connection: bytes, *, chunked: bool) -> bytes:
    """Status line and header fields; ``chunked`` for a streamed body on HTTP/1.1."""
    status = response.status
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
    content_type = _content_type_line(response.content_type) if response.content_type else b""
    if response.stream is not None:
        length = b"transfer-encoding: chunked\r\n" if chunked else b""
    elif status in _NO_BODY_STATUSES:
        length = b""
    else:
        length = b"content-length: %d\r\n" % len(response.body)
    if not response.headers:
        return b"%s%s%s%s%s\r\n" % (line, content_type, length, date, connection)
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    return b"%s%s%s%s%s%s\r\n" % (
        line,
        content_type,
        length,
        extra.encode("latin-1"),
        date,
        connection,
    )


_PREFIXES: dict[tuple[int, str], bytes] = {}


def encode_response(response: Response, date: bytes, connection: bytes, head_only: bool) -> bytes:
    """A whole answer with a body in memory (the common case gets a cached prefix)."""
    if response.headers or response.status in _NO_BODY_STATUSES:
        head = encode_head(response, date, connection, chunked=False)
        return head if head_only else head + response.body
    key = (response.status, response.content_type)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        line = _STATUS_LINES.get(key[0]) or f"HTTP/1.1 {key[0]} Unknown\r\n".encode()
        prefix = line + (_content_type_line(key[1]) if key[1] else b"") + b"content-length: "
        if len(_PREFIXES) < 256:
            _PREFIXES[key] = prefix
    body = response.body
    return b"%s%d\r\n%s%s\r\n%s" % (prefix, len(body), date, connection, b"" if head_only else body)


class DateLine:
    """The ``date:`` header line, refreshed by the server's one-second tick."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        self.line = b""
        self.refresh()

    def refresh(self) -> None:
        self.line = f"date: {email.utils.formatdate(usegmt=True)}\r\n".encode("ascii")
