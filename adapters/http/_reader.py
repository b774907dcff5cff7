"""Reading requests: the httptools callbacks, the limits and the framing checks.

``RequestReader`` is the reading half of ``HttpConnection``: it turns bytes into
``Request`` values and refuses what it must while the bytes arrive (431, 414,
413, 417, 505, smuggling shapes), leaving the answering, the tasks and the
timers to the connection (``protocol.py``). Callbacks are resolved once, when
the parser is built; a refusal inside a callback is stored in ``_fault`` and
``_Stop`` aborts the parse.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter

import httptools

from thaw.adapters.http._wire import Request, Response, Service, refusal, too_large
from thaw.adapters.http.config import HttpConfig
from thaw.decisions._http import valid_host
from thaw.lowlevel import keep_alive

__all__ = ["Exchange", "RequestReader"]

log = logging.getLogger("thaw.http")

_SINGLETONS = frozenset({"host", "content-length", "transfer-encoding"})
_SPECIAL = frozenset({"content-length", "transfer-encoding", "connection", "expect"})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
_NAMES = {  # common header names, so the hot path neither decodes nor lower-cases them
    raw: raw.decode().lower()
    for name in (
        "Host",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Connection",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Traceparent",
        "Idempotency-Key",
        "Authorization",
        "Cookie",
        "Expect",
    )
    for raw in (name.encode(), name.lower().encode())
}


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the answer is in ``_fault``."""


class Exchange:
    """One request's place in the answer order."""

    __slots__ = (
        "close",
        "continue_pending",
        "fault",
        "head_only",
        "http10",
        "request",
        "response",
        "started",
        "task",
        "turn",
    )

    def __init__(self, head_only: bool, http10: bool, started: float = 0.0) -> None:
        self.head_only = head_only
        self.http10 = http10
        self.started = started  # perf_counter() at the end of the head (access log only)
        self.request: Request | None = None
        self.close = False
        self.fault = False
        self.continue_pending = False
        self.response: Response | None = None
        self.turn: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None


class RequestReader(asyncio.Protocol):
    """Parses requests and enforces the reading limits; subclasses answer them."""

    def __init__(self, config: HttpConfig, service: Service) -> None:
        self._config = config
        self._service = service
        self._timed = config.access_log  # the access log measures each request's duration
        self._parser = httptools.HttpRequestParser(self)
        self._exchanges: deque[Exchange] = deque()
        self._closing = False  # read no further requests; close once answers are out
        self._stopped = False  # the parser is done with this connection
        self._now = 0.0
        self._in_message = False
        self._in_head = False
        self._messages = 0
        self._head_seen = 0
        self._message_start = self._body_progress = 0.0
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._special = False
        self._request: Request | None = None
        self._exchange: Exchange | None = None
        self._last_dispatched: Exchange | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_limit = config.max_body
        self._refusal: Response | None = None
        self._fault: Response | None = None
        self._host_seen: str | None = None  # the last Host value found valid here
        self._chunked = False  # the body being read is chunked
        self._chunks = 0  # chunk size lines completed in the current feed
        self._framing = 0  # chunk framing bytes not yet covered by a completed size line

    # -- what the connection provides ------------------------------------------------

    def _dispatch(self, exchange: Exchange, request: Request) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _respond_fault(self, fault: Response) -> None:
        raise NotImplementedError

    def _on_parse_error(self, exc: Exception) -> None:
        raise NotImplementedError

    def _refuse_upgrade(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse one read (or slice of one); False once parsing has stopped."""
        messages, was_in_head = self._messages, self._in_head
        chunked = self._chunked and not was_in_head
        body, fields = self._body_size, self._header_bytes
        if chunked:
            self._chunks = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_upgrade()
        except httptools.HttpParserError as exc:
            self._on_parse_error(exc)
        except Exception:  # a bug of ours: never let it reach the event loop
            log.exception("HTTP connection failed while parsing")
            self._abort()
            return False
        if self._in_head and not self._stopped:
            # httptools buffers a header until it is complete: count raw bytes too.
            if was_in_head and messages == self._messages:
                self._head_seen += len(data)
            else:
                self._head_seen = 0  # a head began in this slice: at most one slice unseen
            if self._head_seen > self._config.max_header_bytes:
                self._respond_fault(refusal("headers_too_large", "the request head is too large"))
        elif chunked and self._in_message and messages == self._messages and not self._stopped:
            fields = self._header_bytes - fields  # complete trailer fields: counted as head
            self._count_framing(len(data) - (self._body_size - body) - fields)
        return not self._stopped

    def _count_framing(self, framing: int) -> None:
        """Bound chunk extensions and unfinished trailer fields, which llhttp skips unseen.

        ``framing`` is what this read held besides body bytes and complete trailer
        fields: chunk size lines with their extensions, CRLFs, a trailer field still
        arriving. Each completed size line may spend ``max_chunk_line``; what is left
        over may not pass it, so one line can never be longer than that plus a read.
        """
        limit = self._config.max_chunk_line
        pending = max(self._framing + framing - limit * self._chunks, 0)
        self._framing = pending
        if pending > limit:
            self._respond_fault(
                refusal(
                    "http_malformed",
                    f"a chunk size line (with its extensions) or a trailer field is longer "
                    f"than {limit} bytes",
                )
            )

    def on_chunk_header(self) -> None:
        self._chunks += 1

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            raise _Stop  # a request after a close decision is never read
        if len(self._exchanges) >= self._config.max_pipeline:
            self._fault = refusal(
                "pipeline_full",
                f"more than {self._config.max_pipeline} pipelined requests are unanswered",
            )
            raise _Stop
        self._in_message = self._in_head = True
        self._messages += 1
        self._message_start = self._now
        self._url = b""
        self._headers = {}
        self._header_bytes = self._header_count = self._body_size = 0
        self._body = []
        self._refusal = None
        self._special = False
        self._body_limit = self._config.max_body
        self._chunked = False
        self._framing = 0

    def on_url(self, piece: bytes) -> None:
        url = self._url + piece if self._url else piece
        if len(url) > self._config.max_target:
            self._fault = refusal(
                "uri_too_long", f"the request target is longer than {self._config.max_target}"
            )
            raise _Stop
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        config = self._config
        if (
            self._header_count > config.max_headers
            or self._header_bytes + len(self._url) > config.max_header_bytes
        ):
            self._fault = refusal(
                "headers_too_large",
                f"at most {config.max_headers} header fields and {config.max_header_bytes} "
                "bytes of head are accepted",
            )
            raise _Stop
        if not self._in_head:
            return  # a trailer field: counted against the limits, otherwise ignored
        key = _NAMES.get(name) or name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        old = headers.get(key)
        if key in _SPECIAL:
            self._special = True
        if old is None:
            headers[key] = text
        elif key in _SINGLETONS:
            self._fault = refusal("http_smuggling", f"the {key} header appears more than once")
            raise _Stop
        else:
            headers[key] = f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._body_progress = self._now
        parser, headers = self._parser, self._headers
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fault = refusal("http_version_unsupported", f"HTTP/{version} is not served")
            raise _Stop
        host = headers.get("host")
        if host is None:
            if version == "1.1":
                self._fault = refusal("host_invalid", "an HTTP/1.1 request needs a Host header")
                raise _Stop
        elif host != self._host_seen:  # a connection usually names one host: check it once
            if not valid_host(host):
                self._fault = refusal(
                    "host_invalid",
                    f"Host {host[:100]!r} is not a valid host[:port] (RFC 9112 section 3.2)",
                )
                raise _Stop
            self._host_seen = host
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        target = self._url.decode("latin-1")
        if target[:1] == "/" and "?" not in target and "#" not in target:
            path, query = target, ""
        else:
            path, query = _split_target(target)
        special = self._special
        # Framing, Connection or Expect headers take the careful path; without them
        # keep-alive is keep_alive(version, "") == (version == "1.1").
        keep = self._check_framing(version, headers) if special else version == "1.1"
        request = Request(
            method, target, path, query, version, headers, keep, self._config.max_body
        )
        exchange = Exchange(
            method == "HEAD", version == "1.0", perf_counter() if self._timed else 0.0
        )
        exchange.request = request
        self._exchanges.append(exchange)
        self._exchange, self._request = exchange, request
        if not path:
            answer: Response | None = refusal("target_invalid", f"cannot serve target {target!r}")
        else:
            try:
                answer = self._service.check(request)
            except Exception:
                log.exception("HTTP service check failed for %r", request)
                answer = refusal("internal_error", "the server failed to answer; see its log")
        self._body_limit = request.max_body
        if special:
            answer = self._check_body(headers, exchange, answer)
            self._chunked = "transfer-encoding" in headers
        if answer is not None:
            if answer.close:
                self._fault = answer
                raise _Stop
            self._refusal = answer  # read and discard the body, then answer

    def _check_framing(self, version: str, headers: dict[str, str]) -> bool:
        """Refuse smuggling shapes; return whether the connection may stay open."""
        te = headers.get("transfer-encoding")
        if te is not None and (version == "1.0" or te.strip().lower() != "chunked"):
            self._fault = refusal(
                "http_smuggling", "Transfer-Encoding must be exactly 'chunked', on HTTP/1.1 only"
            )
            raise _Stop
        return keep_alive(version, headers.get("connection", ""))

    def _check_body(
        self, headers: dict[str, str], exchange: Exchange, answer: Response | None
    ) -> Response | None:
        """Content-Length against the limit, up front; ``Expect: 100-continue``."""
        length = headers.get("content-length")
        if length is not None and int(length) > self._body_limit:
            self._fault = too_large(self._body_limit)
            raise _Stop
        expect = headers.get("expect")
        if expect is None:
            return answer
        if expect.strip().lower() != "100-continue":
            self._fault = refusal("expectation_failed", f"cannot meet Expect: {expect!r}")
            raise _Stop
        body_follows = "transfer-encoding" in headers or (length is not None and length != "0")
        if answer is None:
            if body_follows:
                exchange.continue_pending = True
                self._flush()
            return None
        if body_follows and not answer.close:
            # Answered before the body: its bytes may or may not follow, so close after.
            answer = Response(
                answer.status, answer.body, answer.content_type, answer.headers, close=True
            )
        return answer

    def on_body(self, piece: bytes) -> None:
        size = self._body_size + len(piece)
        if size > self._body_limit:
            self._fault = too_large(self._body_limit)
            raise _Stop
        self._body_size = size
        self._body_progress = self._now
        if self._refusal is None:
            self._body.append(piece)

    def on_message_complete(self) -> None:
        exchange, request = self._exchange, self._request
        assert exchange is not None and request is not None
        self._exchange = self._request = None
        self._in_message = False
        self._last_dispatched = exchange
        if not request.keep_alive:
            exchange.close = self._closing = True
        if self._refusal is not None:
            exchange.response = self._refusal
            self._flush()
            return
        body = self._body
        if body:
            request.body = body[0] if len(body) == 1 else b"".join(body)
        self._dispatch(exchange, request)


def _split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form or absolute-form target; ("", "") if unusable."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path.partition("#")[0], query.partition("#")[0]
    if target == "*":
        return "*", ""
    try:
        url = httptools.parse_url(target.encode("latin-1"))
    except httptools.HttpParserInvalidURLError:
        return "", ""
    path = (url.path or b"/").decode("latin-1")
    return (path, (url.query or b"").decode("latin-1")) if path.startswith("/") else ("", "")
