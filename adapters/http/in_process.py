"""HTTP in process, for tests: a request goes through the server's own ``HttpService``, no socket.

``open_in_process_http(host)`` yields an ``InProcessHttp`` whose ``get``/``post``/
``put``/``patch``/``delete``/``request`` build the ``Request`` the native server's
reader would build (lower-case header names, repeated ones joined, the target split
into a still percent-encoded path and a query) and run what the server runs after
parsing: ``HttpService.check`` (operational paths, routing, 404/405, the route's body
limit), the 413 for a body past that limit (the server's own ``too_large`` answer),
then ``HttpService.handle`` (webhook signatures, the Event with ``ctx.params`` and
``ctx.query``, the invoker or the 202 enqueue intake, problem details). So status,
headers and bodies are ``thaw serve``'s for one app, byte for byte; what is left out
is the wire: framing, keep-alive, timeouts, ``Date`` and ``Connection``.

``thaw.testing.TestHost`` finds this through the ``thaw.servers`` entry point
``http-in-process`` (the core never imports adapters). Webhook signatures are
checked against ``wall_clock`` (the TestHost's, so a FakeClock can make one stale).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msgspec

from thaw.adapters.http._wire import Request, Response, refusal, too_large
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.server import _service_for, _with_overrides
from thaw.adapters.http.service import HttpService
from thaw.adapters.http.webhooks import (
    SignatureVerifier,
    load_secret,
    replay_store_for,
)
from thaw.decisions._http import valid_host
from thaw.lowlevel import Host

__all__ = ["HttpHeaders", "InProcessHttp", "InProcessResponse", "open_in_process_http"]

log = logging.getLogger("thaw.http")
DEFAULT_HOST = "testserver"
_NO_BODY = frozenset({204, 304})
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # a path's own characters (RFC 3986), "%" kept as given
_MISSING: Any = object()
_encode_json = msgspec.json.Encoder().encode

Params = Mapping[str, str | int | float] | Iterable[tuple[str, str | int | float]]


class HttpHeaders(Mapping[str, str]):
    """Response header fields, names compared without case; a repeated one reads joined."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = [(name.lower(), value) for name, value in fields]

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        wanted = name.lower()
        return [value for key, value in self._fields if key == wanted]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key for key, _ in self._fields))

    def __len__(self) -> int:
        return len(dict.fromkeys(key for key, _ in self._fields))

    def __repr__(self) -> str:
        return f"HttpHeaders({self._fields!r})"


class InProcessResponse:
    """An answer: ``status``, ``headers`` (case-insensitive), ``body``, ``text``, ``json()``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: HttpHeaders, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body decoded as JSON (a problem-details body for an error answer)."""
        return msgspec.json.decode(self.body)

    def __repr__(self) -> str:
        return f"<InProcessResponse {self.status} {len(self.body)} bytes>"


class InProcessHttp:
    """Drives one app's routes like a client would, without a socket (``open_in_process_http``)."""

    def __init__(self, service: HttpService, config: HttpConfig) -> None:
        self.service = service
        self.config = config

    async def get(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("GET", path, **options)

    async def head(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("HEAD", path, **options)

    async def options(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("OPTIONS", path, **options)

    async def post(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("POST", path, **options)

    async def put(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("PUT", path, **options)

    async def patch(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("PATCH", path, **options)

    async def delete(self, path: str, **options: Any) -> InProcessResponse:
        return await self.request("DELETE", path, **options)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _MISSING,
        content: bytes | str | None = None,
        params: Params | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> InProcessResponse:
        """One request. ``path`` (or a whole URL, whose authority is the Host) may carry a
        query; ``params`` are appended to it.
        ``json`` is encoded (and sets ``content-type: application/json`` unless given);
        ``content`` is sent as it is (a str as UTF-8). Never raises for an answer."""
        if json is not _MISSING and content is not None:
            raise ValueError("give json= or content=, not both")
        if json is not _MISSING:
            body = _encode_json(json)
        else:
            body = content.encode() if isinstance(content, str) else content or b""
        fields = _fields(headers)
        if path.startswith(("http://", "https://")):  # a whole URL, as TestClient takes
            url = urlsplit(path)
            fields.setdefault("host", url.netloc)
            path = f"{url.path or '/'}?{url.query}" if url.query else url.path or "/"
        if json is not _MISSING:
            fields.setdefault("content-type", "application/json")
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            fields.setdefault("content-length", str(len(body)))
        fields.setdefault("host", DEFAULT_HOST)
        target = _target(path, params)
        method = method.upper()
        response = await self._answer(method, target, fields, body)
        return await _result(response, head=method == "HEAD")

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        path, _, query = target.partition("?")
        request = Request(method, target, path, query, "1.1", headers, True, self.config.max_body)
        if not valid_host(headers["host"]):
            return refusal(
                "host_invalid",
                f"Host {headers['host'][:100]!r} is not a valid host[:port] (RFC 9112 section 3.2)",
            )
        if not path.startswith("/"):
            return refusal("target_invalid", f"cannot serve target {target!r}")
        try:
            refused = self.service.check(request)
            if refused is not None:
                return refused
            if len(body) > request.max_body:  # the reader refuses at the limit, unread
                return too_large(request.max_body)
            request.body = body
            return await self.service.handle(request)
        except Exception:  # what the native connection does with a failing layer below
            log.exception("HTTP handler failed for %r", request)
            return refusal("internal_error", "the server failed to answer; see its log")


def _fields(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """Lower-case names, repeated fields joined with ", " (as the native reader does)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _target(path: str, params: Params | None) -> str:
    """The request target: the path percent-encoded where a client would, then the query."""
    path, mark, query = path.partition("?")
    target = quote(path, safe=_PATH_SAFE)
    if params:
        pairs = params.items() if isinstance(params, Mapping) else params
        extra = urlencode([(name, str(value)) for name, value in pairs])
        query = f"{query}&{extra}" if query else extra
    return f"{target}?{query}" if mark or query else target


async def _result(response: Response, *, head: bool) -> InProcessResponse:
    """The answer as a client reads it; a streamed body gathered whole (sent chunked)."""
    fields: list[tuple[str, str]] = []
    if response.content_type:
        fields.append(("content-type", response.content_type))
    body = response.body
    if response.stream is not None:
        body = b"".join([chunk async for chunk in response.stream])
        fields.append(("transfer-encoding", "chunked"))
    elif response.status not in _NO_BODY:
        fields.append(("content-length", str(len(body))))
    fields.extend(response.headers)
    if head or response.status in _NO_BODY:
        body = b""
    return InProcessResponse(response.status, HttpHeaders(fields), body)


def _with_wall_clock(service: HttpService, host: Host, now: Callable[[], float]) -> None:
    """Check the routes' webhook signatures against ``now`` (the HttpService uses time.time)."""
    replays = replay_store_for(host.invoker, host.backbone)
    for route in service.router.routes:
        if route.webhook is not None:
            route.verifier = SignatureVerifier(
                route.webhook,
                load_secret(route.webhook),
                replay_key=f"{host.app.name}.{route.name}",
                store=replays,
                timeout=route.capability.spec.policy.timeout,
                now=now,
            )


@asynccontextmanager
async def open_in_process_http(
    host: Host,
    *,
    config: HttpConfig | None = None,
    max_body: int | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[InProcessHttp]:
    """Serve ``host``'s http triggers in process (``thaw.servers`` entry ``http-in-process``).

    ``max_body`` overrides ``config.max_body`` as ``thaw serve --max-body`` does;
    ``wall_clock`` (default ``time.time``) is what webhook signatures are checked against.
    Raises ConfigError as the server would at start (a missing webhook secret, say).
    """
    config = _with_overrides(config or HttpConfig(), max_body=max_body)
    service = _service_for(host, config, lambda: None)
    if wall_clock is not None and wall_clock is not time.time:
        _with_wall_clock(service, host, wall_clock)
    client = InProcessHttp(service, config)
    yield client
