"""Serving: bind, accept, drain.

``open_http_server(invoker_or_host)`` binds a listening socket on the running
asyncio loop (uvloop's when the caller runs one; the server never picks the
loop) and yields an ``HttpServer`` with the bound ``port``. Leaving the context
drains: stop accepting, let each connection finish the requests it has read
(answers say ``connection: close``) within ``drain_timeout``, then abort what is
left, cancel its request tasks and wait for them to end.

``serve_http`` serves until cancelled (or SIGTERM/SIGINT with
``handle_signals=True``); ``run_app`` is the blocking entry point that also
chooses the loop: uvloop when importable, else the standard asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import msgspec

from thaw import App
from thaw.adapters.http._wire import Service
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.metrics import ServerCounters
from thaw.adapters.http.protocol import HttpConnection
from thaw.adapters.http.service import HttpService
from thaw.adapters.http.service_set import RouteClash, ServiceSet
from thaw.adapters.http.state import ServerState, ServerStatistics
from thaw.adapters.telemetry.metrics_peers import peer_metrics
from thaw.lowlevel import Backbone, CapabilityInvoker, Host, Invoker, MemoryBackbone, open_host

__all__ = [
    "HttpServer",
    "open_apps_http_server",
    "open_http_server",
    "open_service_server",
    "serve_http",
    "run_app",
]

log = logging.getLogger("thaw.http")
_ABORT_GRACE = 5.0  # after the drain deadline: how long cancelled tasks get to unwind


class HttpServer:
    """A listening server (from ``open_http_server``)."""

    def __init__(self, state: ServerState, server: asyncio.AbstractServer) -> None:
        self._state = state
        self._server = server
        sockets = getattr(server, "sockets", None) or ()
        address = sockets[0].getsockname() if sockets else ("", 0)
        self.host: str = address[0]
        self.port: int = address[1]

    @property
    def config(self) -> HttpConfig:
        return self._state.config

    @property
    def draining(self) -> bool:
        return self._state.draining

    def statistics(self) -> ServerStatistics:
        return self._state.statistics()

    async def wait_idle(self) -> None:
        """Return once no connection is open and no request task is left."""
        await self._state.wait_idle()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting and finish in-flight requests within ``timeout`` (default: config)."""
        state = self._state
        if timeout is None:
            timeout = state.config.drain_timeout
        if not state.draining:
            state.draining = True
            self._server.close()
        for connection in list(state.connections):
            connection.begin_drain()
        with anyio.move_on_after(timeout):
            await state.wait_idle()
        if state.connections or state.tasks:
            log.warning(
                "drain deadline passed with %d connections and %d requests left: cancelling",
                len(state.connections),
                len(state.tasks),
            )
            for connection in list(state.connections):
                connection.abort()
            for task in list(state.tasks):
                task.cancel()
            with anyio.move_on_after(_ABORT_GRACE):
                await state.wait_idle()
        await self._server.wait_closed()


@asynccontextmanager
async def open_service_server(
    service: Service,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HttpConfig | None = None,
    counters: ServerCounters | None = None,
    state_hook: Callable[[ServerState], None] | None = None,
) -> AsyncIterator[HttpServer]:
    """Serve any ``Service`` (the lower level under ``open_http_server``).

    ``counters`` are what the connections count for ``/metrics`` (responses by
    class, refusals by status): whoever renders them hands them in; new ones
    otherwise.
    """
    config = config or HttpConfig()
    loop = asyncio.get_running_loop()
    if counters is None:
        counters = ServerCounters()
    state = ServerState(service, config, loop, counters=counters)
    if state_hook is not None:
        state_hook(state)
    server = await loop.create_server(
        lambda: HttpConnection(state),
        host,
        port,
        backlog=config.backlog,
        reuse_port=config.reuse_port or None,
    )
    running = HttpServer(state, server)
    tick: asyncio.TimerHandle | None = None

    def refresh_date() -> None:
        nonlocal tick
        state.date.refresh()
        if state.access_log is not None:
            state.access_log.flush()  # a buffered access log writes at least once a second
        tick = loop.call_later(1.0, refresh_date)

    refresh_date()
    try:
        yield running
    finally:
        try:
            with anyio.CancelScope(shield=True):
                await running.drain()
        finally:
            if tick is not None:
                tick.cancel()
            if state.access_log is not None:
                state.access_log.flush()


@asynccontextmanager
async def open_http_server(
    target: CapabilityInvoker | Host,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HttpConfig | None = None,
    reuse_port: bool | None = None,
    access_log: bool | None = None,
    access_log_stream: str | None = None,
    max_body: int | None = None,
    readiness: Callable[[], str | None] | None = None,
) -> AsyncIterator[HttpServer]:
    """Serve the http triggers of an invoker's (or a host's) app; yields the bound server.

    ``reuse_port``, ``access_log``, ``access_log_stream`` and ``max_body`` override those
    ``config`` fields (so a caller that cannot import HttpConfig, like ``thaw serve``
    finding this through an entry point, can set them). ``readiness()`` returns why the
    app should get no traffic yet (e.g. its revision is still loading), or None;
    ``/readyz`` answers 503 with that reason, as it does while draining or while the
    backbone is disconnected.
    """
    config = _with_overrides(
        config or HttpConfig(),
        reuse_port=reuse_port,
        access_log=access_log,
        access_log_stream=access_log_stream,
        max_body=max_body,
    )
    holder: list[ServerState] = []

    def not_ready() -> str | None:
        if holder and holder[0].draining:
            return "the server is draining"
        return readiness() if readiness is not None else None

    service = _service_for(target, config, not_ready)

    def bind(state: ServerState) -> None:
        holder.append(state)
        service.state = state

    # The service renders /metrics, so this server builds the counters it shows.
    async with open_service_server(
        service, host=host, port=port, config=config, counters=ServerCounters(), state_hook=bind
    ) as server:
        yield server


def _with_overrides(config: HttpConfig, **overrides: Any) -> HttpConfig:
    given = {name: value for name, value in overrides.items() if value is not None}
    return msgspec.structs.replace(config, **given) if given else config


def _service_for(
    target: CapabilityInvoker | Host, config: HttpConfig, not_ready: Callable[[], str | None]
) -> HttpService:
    invoker = target.invoker if isinstance(target, Host) else target
    backbone = target.backbone if isinstance(target, Host) else None
    service = HttpService(invoker, config=config, not_ready=not_ready, backbone=backbone)
    if isinstance(target, Host):
        service.workers = lambda: target.statistics().workers
        service.revisions = lambda: target.statistics().revisions
        service.preloading = lambda: target.router.preloading
        service.budget_refusals = lambda: target.budget.statistics().retries_throttled
    return service


@asynccontextmanager
async def open_apps_http_server(
    hosts: Sequence[Host],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HttpConfig | None = None,
    reuse_port: bool | None = None,
    access_log: bool | None = None,
    access_log_stream: str | None = None,
    max_body: int | None = None,
    unavailable: Sequence[tuple[App, str]] = (),
) -> AsyncIterator[tuple[HttpServer, ServiceSet, list[tuple[str, str]]]]:
    """Serve several hosts' apps on one server (see ``service_set``); yields the server,
    the set (mark an app ``down`` there) and the apps refused, with why (a route clash).
    ``unavailable``: apps whose host did not start, and why: their routes answer 503."""
    config = _with_overrides(
        config or HttpConfig(),
        reuse_port=reuse_port,
        access_log=access_log,
        access_log_stream=access_log_stream,
        max_body=max_body,
    )
    holder: list[ServerState] = []

    def not_ready() -> str | None:
        return "the server is draining" if holder and holder[0].draining else None

    services: list[tuple[str, HttpService]] = []
    refused: list[tuple[str, str]] = []
    # A down app's routes still have a service (never called): they answer 503, not 404.
    targets: list[CapabilityInvoker | Host] = [*hosts, *(Invoker(app) for app, _ in unavailable)]
    for served in targets:
        candidate = (served.app.name, _service_for(served, config, not_ready))
        try:
            ServiceSet.check_clashes(services, candidate)
        except RouteClash as exc:
            refused.append((served.app.name, exc.message))
            continue
        services.append(candidate)
    for _, later in services[1:]:  # the process_* families once per process, not per app
        later.process_metrics = False
    apps = ServiceSet(services, config=config)
    apps.down.update((app.name, reason) for app, reason in unavailable)

    # One app and nothing down: its service itself, without the set's dispatch per request.
    front: Service = services[0][1] if len(services) == 1 and not unavailable else apps

    def bind(state: ServerState) -> None:
        holder.append(state)
        apps.bind(state)

    # Under `thaw serve --workers N`: /metrics answers the sum of every worker's; the
    # objectives the apps declare are evaluated on that merged view (adapters/telemetry/slo).
    async with (
        peer_metrics(front, config.metrics_path) as front,
        _slo_front(front, [served.app for served in hosts], config.metrics_path) as front,
        open_service_server(
            front, host=host, port=port, config=config, counters=ServerCounters(), state_hook=bind
        ) as server,
    ):
        yield server, apps, refused


def _slo_front(
    front: Service, apps: list[App], metrics_path: str
) -> AbstractAsyncContextManager[Any]:
    """The SLO evaluation around ``front`` when an app declares objectives; else ``front``
    unchanged, without importing the evaluator (a host's boot imports what it uses)."""
    if not any(spec.policy.slo for app in apps for spec in app.capabilities.values()):
        return contextlib.nullcontext(front)
    from thaw.adapters.telemetry.slo import slo_metrics

    return slo_metrics(front, apps, metrics_path)


async def serve_http(
    target: CapabilityInvoker | Host,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HttpConfig | None = None,
    on_ready: Callable[[HttpServer], None] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serve until cancelled, or until SIGTERM/SIGINT when ``handle_signals``; then drain."""
    loop = asyncio.get_running_loop()
    async with open_http_server(target, host=host, port=port, config=config) as server:
        stop = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for number in signals:
            loop.add_signal_handler(number, stop.set)
        try:
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
        finally:
            for number in signals:
                loop.remove_signal_handler(number)


def run_app(
    app: App,
    *,
    backbone: Backbone | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: HttpConfig | None = None,
    on_ready: Callable[[HttpServer], None] | None = None,
) -> None:
    """Blocking: open a host for ``app`` (MemoryBackbone by default) and serve it over HTTP."""

    async def main() -> None:
        async with open_host(app, backbone or MemoryBackbone()) as opened:
            await serve_http(
                opened, host=host, port=port, config=config, on_ready=on_ready, handle_signals=True
            )

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
