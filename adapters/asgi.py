"""Thaw under any ASGI server (uvicorn, granian, hypercorn): ``asgi_app(target)``.

    app = asgi_app(load_app("examples/hello"))   # uvicorn module:app
    THAW_APP=examples/hello uvicorn --factory thaw.adapters.asgi:from_env

The adapter translates ASGI messages to the native server's transport-free
pieces and back: ``HttpService.check`` (operational paths, routing, 404/405,
the route's body limit) and ``HttpService.handle`` (webhook signatures, the
Event, the invoker or the enqueue intake, the answer). So routes, contracts,
problem details and their codes are the native server's, byte for byte.

What stays the ASGI server's job: parsing, framing and smuggling checks,
header limits and timeouts, keep-alive, ``Expect: 100-continue`` (answered
when the body is first read, so a refusal before that sends no 100), the
``Date`` header. What the adapter adds: a Host that is not RFC 3986's
``host[:port]`` (or none on HTTP/1.1) is 400 ``host_invalid``; ``Content-Length`` over the limit is
refused before reading; a body is read chunk by chunk and refused (413) as soon
as it passes the limit, never buffered past it; ``body_timeout`` (silence) and
``receive_timeout`` (whole body) give 408; ``max_in_flight`` gives 503.

Lifespan: for an ``App`` the adapter opens the host at ``lifespan.startup``
(provisioning, stream workers, schedules, ``on_start``) inside the lifespan
call, which the server keeps open until shutdown, so the host's task group has
an owner; a failure is reported with ``lifespan.startup.failed`` and a message
naming the app and the cause. At shutdown, readiness turns 503, new requests
get 503 ``draining``, in-flight requests get ``drain_timeout`` to finish, then
the host closes (``on_stop``). A ``Host`` or ``Invoker`` is already open: the
caller owns its lifecycle. Without lifespan (``--lifespan off``), an ``App``
answers 503 ``not_ready``: it has no owner to open it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

import anyio

from thaw import App, ConfigError
from thaw.adapters.http._wire import Request, Response, refusal, too_large
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.metrics import CONTENT_TYPE, ServerCounters, render
from thaw.adapters.http.service import HttpService
from thaw.decisions._http import valid_host
from thaw.lowlevel import Backbone, CapabilityInvoker, Host, MemoryBackbone, open_host

__all__ = ["ASGIApp", "ThawASGI", "asgi_app", "from_env"]

log = logging.getLogger("thaw.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NO_BODY = frozenset({204, 304})
_OPS_ALLOW = ("GET", "HEAD")
# What a re-encoded path keeps as is (RFC 3986 pchar and "/", not "%"), for servers
# that give no raw_path: routing matches on the encoded path, as the native server.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


_GONE = Response(499)  # the client disconnected before its body was in: answer nothing


class ThawASGI:
    """An ASGI 3 application serving an app's http triggers (build it with ``asgi_app``)."""

    def __init__(
        self,
        target: App | Host | CapabilityInvoker,
        *,
        config: HttpConfig | None = None,
        backbone: Backbone | None = None,
        counters: ServerCounters | None = None,
    ) -> None:
        self.config = config or HttpConfig()
        self._app: App | None = None
        self._backbone = backbone
        self._service: HttpService | None = None
        # What /metrics shows besides the capabilities: this app renders it, so it owns
        # the counters (a caller may hand in its own, to read them directly).
        self._counters = counters if counters is not None else ServerCounters()
        self._in_flight = 0
        self._idle: anyio.Event | None = None
        self._draining = False
        # Served while draining (readiness says so): the operational paths.
        config = self.config
        paths = (config.health_path, config.ready_path, config.metrics_path, config.openapi_path)
        self._ops = frozenset(path for path in paths if path)
        self._down = "the app is not open: serve it with the ASGI lifespan protocol on"
        if isinstance(target, App):
            self._app = target
        elif isinstance(target, Host):
            self._open(target.invoker, target.backbone, target)
        else:
            self._open(target, backbone)

    def _open(
        self, invoker: CapabilityInvoker, backbone: Backbone | None, host: Host | None = None
    ) -> None:
        self._service = HttpService(
            invoker, config=self.config, not_ready=self._not_ready, backbone=backbone
        )
        if host is not None:  # /metrics shows its stream workers, as the native server does
            self._service.workers = lambda: host.statistics().workers
            self._service.revisions = lambda: host.statistics().revisions

    def _not_ready(self) -> str | None:
        if self._draining:
            return "the server is draining"
        return None if self._service is not None else self._down

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # refused before accepting: the server answers 403
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": "not served"})
        else:
            raise ValueError(f"Thaw's ASGI app serves 'http' and 'lifespan' scopes, not {kind!r}")

    # -- requests -----------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _request(scope, self.config.max_body)
        head = request.method == "HEAD"
        service = self._service
        refused = self._admit(service, request)
        if refused is not None:
            await self._send(send, refused, head)
            return
        assert service is not None
        self._in_flight += 1
        try:
            response = await self._answer(service, request, receive)
        finally:
            self._in_flight -= 1
            if self._idle is not None and not self._in_flight:
                self._idle.set()
        if response is not None:  # None: the client went away before the body was in
            await self._send(send, response, head)

    def _admit(self, service: HttpService | None, request: Request) -> Response | None:
        path = request.path
        host = request.headers.get("host")
        if (host is None and request.version == "1.1") or (
            host is not None and not valid_host(host)  # repeated ones are joined: invalid
        ):
            reason = f"Host {host[:100]!r} is not a valid host[:port]" if host else "no Host"
            return self._refused(refusal("host_invalid", f"{reason} (RFC 9112 section 3.2)"))
        if self._draining and (service is None or path not in self._ops):
            return self._refused(refusal("draining", "the server is shutting down"))
        if service is None:
            return self._refused(refusal("not_ready", self._down))
        if self._in_flight >= self.config.max_in_flight:
            return self._refused(refusal("overloaded", "the server is at its in-flight limit"))
        return None

    async def _answer(
        self, service: HttpService, request: Request, receive: Receive
    ) -> Response | None:
        try:
            if request.path == self.config.metrics_path and request.method in _OPS_ALLOW:
                return self._exposition(service)
            response = service.check(request)
            if response is not None:
                return response
            if "content-length" in request.headers or "transfer-encoding" in request.headers:
                response = await self._read_body(request, receive)
                if response is not None:
                    return None if response is _GONE else response
            return await service.handle(request)
        except Exception:
            log.exception("ASGI request %r failed", request)
            return refusal("internal_error", "the server failed to answer; see its log")

    async def _read_body(self, request: Request, receive: Receive) -> Response | None:
        """Read the body into ``request.body`` within the limit and the timeouts.

        Returns None when the body is in, a refusal (413, 408), or ``_GONE`` when
        the client disconnected first.
        """
        limit = request.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self._refused(too_large(limit))
        config = self.config
        chunks: list[bytes] = []
        size = 0
        # One scope, armed once (a deadline costs a timer: ~5 us), re-armed per chunk.
        now = anyio.current_time()
        end = now + config.receive_timeout
        with anyio.CancelScope(deadline=min(end, now + config.body_timeout)) as scope:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect
                    return _GONE
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return self._refused(too_large(limit))
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                scope.deadline = min(end, anyio.current_time() + config.body_timeout)
        if scope.cancelled_caught:
            return self._refused(refusal("request_timeout", "the request body arrived too slowly"))
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return None

    def _exposition(self, service: HttpService) -> Response:
        # Connections belong to the ASGI server, which does not tell: they read 0.
        body = render(
            service.metrics.values(),
            self._counters,
            connections_open=0,
            connections_total=0,
            requests_in_flight=self._in_flight,
            workers=service.workers() if service.workers is not None else None,
        )
        return Response(200, body, CONTENT_TYPE)

    def _refused(self, response: Response) -> Response:
        self._counters.refused(response.status)
        return response

    async def _send(self, send: Send, response: Response, head: bool) -> None:
        self._counters.responses[response.status // 100] += 1
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
        ]
        if response.content_type:
            headers.append((b"content-type", response.content_type.encode("latin-1")))
        stream = response.stream
        if stream is None and response.status not in _NO_BODY:
            headers.append((b"content-length", b"%d" % len(response.body)))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if stream is None:
            body = b"" if head or response.status in _NO_BODY else response.body
            await send({"type": "http.response.body", "body": body})
            return
        try:
            if not head:
                async for chunk in stream:
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

    # -- lifespan -----------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        self._draining = False  # a server may serve the same app again after a shutdown
        app = self._app
        if app is None:  # a Host or an Invoker: the caller opened it and will close it
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self._drain()
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = stopping = False
        try:
            async with open_host(app, self._backbone or MemoryBackbone(), warm=True) as host:
                self._open(host.invoker, host.backbone, host)
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                stopping = True
                await self._drain()
        except Exception as exc:
            self._service = None
            reason = _describe(exc)
            self._down = f"the app {app.name!r} stopped: {reason}"
            if not started:
                log.exception("Thaw could not start the app %r", app.name)
                message = f"Thaw could not start the app {app.name!r}: {reason}"
                await send({"type": "lifespan.startup.failed", "message": message})
                return
            if not stopping:
                raise  # the host failed while serving: the server logs it
            message = f"Thaw could not stop the app {app.name!r} cleanly: {reason}"
            await send({"type": "lifespan.shutdown.failed", "message": message})
            return
        self._service = None
        self._down = f"the app {app.name!r} is closed"
        await send({"type": "lifespan.shutdown.complete"})

    async def _drain(self) -> None:
        """Refuse new requests; give those in flight ``drain_timeout`` to finish."""
        self._draining = True
        self._idle = anyio.Event()
        if self._in_flight:
            with anyio.move_on_after(self.config.drain_timeout):
                await self._idle.wait()
            if self._in_flight:
                log.warning("drain deadline passed with %d requests in flight", self._in_flight)


def asgi_app(
    target: App | Host | CapabilityInvoker,
    *,
    config: HttpConfig | None = None,
    backbone: Backbone | None = None,
) -> ThawASGI:
    """An ASGI 3 app serving ``target``'s http triggers with the native server's semantics.

    An ``App`` is opened on ``backbone`` (a new MemoryBackbone by default) at
    lifespan startup and closed at shutdown; a ``Host`` or ``Invoker`` is
    served as it is (a bare Invoker answers enqueue routes with 501).
    """
    return ThawASGI(target, config=config, backbone=backbone)


def from_env() -> ThawASGI:
    """For ``uvicorn --factory thaw.adapters.asgi:from_env``: the app named by ``THAW_APP``.

    ``THAW_APP`` is an app directory, module file, ``module:attr`` or snapshot,
    as for ``thaw run``; the app runs on an in-process MemoryBackbone.
    """
    target = os.environ.get("THAW_APP", "")
    if not target:
        raise ConfigError(
            "THAW_APP is not set: name the app to serve, e.g. THAW_APP=examples/hello"
        )
    from thaw.snapshots._revision import load_target

    return asgi_app(load_target(target))


def _request(scope: Scope, max_body: int) -> Request:
    raw = scope.get("raw_path")
    path = (
        raw.partition(b"?")[0].decode("latin-1") if raw else quote(scope["path"], safe=_PATH_SAFE)
    )
    query = scope.get("query_string", b"").decode("latin-1")
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = f"{path}?{query}" if query else path
    version = scope.get("http_version", "1.1")
    return Request(scope["method"], target, path, query, version, headers, True, max_body)


def _describe(exc: BaseException) -> str:
    """The cause, for a lifespan message: the one error inside groups, type and text."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
