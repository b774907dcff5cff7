"""HttpService: what the connection drives. Operational paths first, then the app's routes.

``check`` runs when a request's head is complete: it answers what needs no
body (``/healthz``, ``/readyz``, 404, 405, OPTIONS) and lowers the body limit
to the route's. ``handle`` turns the request into an Event, calls the compiled
capability and maps its Outcome to an answer. Invocations are accounted where
every trigger's are (a host's ``ServedCapability``, as trigger ``http``); over a bare
Invoker, the service wraps each route's capability in ``Accounted`` itself. A result larger than the
capability's ``Policy.max_result`` is never sent: it is the function's fault,
answered 500 ``result_too_large`` and logged with its size and the event id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from thaw import Event, Ok, Reject
from thaw._trace import SpanKind, Tracer
from thaw.adapters.http._wire import Request, Response, response_from_answer
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.cors import actual_headers, is_preflight, preflight, with_headers
from thaw.adapters.http.intake import STATUS_PREFIX, Intake, compile_intake, status_id
from thaw.adapters.http.metrics import CONTENT_TYPE, ServerCounters, render
from thaw.adapters.http.openapi import openapi_bytes
from thaw.adapters.http.routing import (
    EventIds,
    Route,
    Router,
    _Refused,
    compile_router,
    refused_response,
)
from thaw.adapters.http.webhooks import SignatureVerifier, load_secret, replay_store_for
from thaw.lowlevel import (
    Accounted,
    Accounting,
    Backbone,
    CapabilityAccount,
    CapabilityInvoker,
    RouterStatistics,
    WorkerStatistics,
    parse_traceparent,
    problem_answer,
    start_trace,
)

if TYPE_CHECKING:
    from thaw.adapters.http.state import ServerState

__all__ = ["HttpService"]

log = logging.getLogger("thaw.http")

_HEALTHY_BODY = b'{"status":"ok"}'
_READY = Response(200, b'{"status":"ready"}', "application/json")
_OPS_ALLOW = ("GET", "HEAD")


def _get_or_head_only(method: str) -> Response:
    answer = problem_answer("method_not_allowed", f"{method} is not served here", allow=_OPS_ALLOW)
    return response_from_answer(answer)


class HttpService:
    """Serves an invoker's http triggers; ``not_ready()`` returns why it is not ready, or None.

    ``/readyz`` is 503 while the server drains, while the backbone reports itself
    disconnected (a ``connected`` attribute that is False, as JetStreamBackbone's
    during a NATS outage), and while ``not_ready()`` gives a reason.
    """

    def __init__(
        self,
        invoker: CapabilityInvoker,
        *,
        config: HttpConfig,
        not_ready: Callable[[], str | None] = lambda: None,
        backbone: Backbone | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        # None: no server spans (tracing off); by default the tracer of the host served.
        self._tracer = tracer if tracer is not None else getattr(invoker, "tracer", None)
        self.router: Router = compile_router(
            invoker, max_body=config.max_body, max_body_cap=config.max_body_cap
        )
        # A host's accounting (every trigger's invocations), else this service's own.
        hosted: Accounting | None = getattr(invoker, "accounting", None)
        self.accounting: Accounting = hosted if hosted is not None else Accounting()
        via = getattr(invoker, "capability_via", None)
        for route in self.router.routes:
            if hosted is not None and via is not None:
                route.capability = via(route.name, "http")
            else:
                spec = route.capability.spec
                series = self.accounting.series(spec, "http")
                route.capability = Accounted(route.capability, series, spec=spec)
        replays = replay_store_for(invoker, backbone)  # its own bucket, not idempotency's
        for route in self.router.routes:
            if route.webhook is not None:
                route.verifier = SignatureVerifier(
                    route.webhook,
                    load_secret(route.webhook),
                    replay_key=f"{invoker.app.name}.{route.name}",
                    store=replays,
                    timeout=route.capability.spec.policy.timeout,
                )
        self._intake: Intake | None = None
        if backbone is not None and any(r.enqueue for r in self.router.routes):
            self._intake = compile_intake(invoker, self.router.routes, backbone)
        self._ids = EventIds()
        self._not_ready = not_ready
        self._backbone = backbone
        # With the access log on, a request without a valid traceparent gets a new trace,
        # so the log line and the function's spans and publishes share one trace id.
        self._assign_trace = config.access_log
        self._any_cors = any(route.cors is not None for route in self.router.routes)
        # /healthz names the serving process, so clients can tell `--workers` apart.
        healthy = Response(
            200, _HEALTHY_BODY, "application/json", (("thaw-worker", str(os.getpid())),)
        )
        self.state: ServerState | None = None  # set by the server that serves this service
        # A host's stream workers, for /metrics (set by whoever serves a Host).
        self.workers: Callable[[], Mapping[str, WorkerStatistics]] | None = None
        # A host's revisions, instances and cold starts, for /metrics (likewise).
        self.revisions: Callable[[], RouterStatistics | None] | None = None
        # The revision being loaded beside the serving ones, for /readyz (likewise).
        self.preloading: Callable[[], str | None] | None = None
        # The app's capabilities' accounts, by name (what /metrics shows).
        self.metrics: dict[str, CapabilityAccount] = {
            name: self.accounting.account(spec) for name, spec in invoker.app.capabilities.items()
        }
        # The host's retry budget's refusals, for /metrics (set by whoever serves a Host).
        self.budget_refusals: Callable[[], int] | None = None
        # Whether /metrics shows the process_* families: one service per process does.
        self.process_metrics = True
        self._ops: dict[str, Callable[[], Response]] = {}
        if config.health_path:
            self._ops[config.health_path] = lambda: self._liveness(healthy)
        if config.ready_path:
            self._ops[config.ready_path] = self._readiness
        if config.metrics_path:
            self._ops[config.metrics_path] = self._exposition
        if config.openapi_path:
            document = Response(200, openapi_bytes(invoker.app), "application/json")
            self._ops[config.openapi_path] = lambda: document
        clash = [r for r in self.router.routes if r.template in self._ops]
        if clash:
            from thaw import ConfigError

            raise ConfigError(
                f"route {clash[0].method} {clash[0].template} of capability {clash[0].name!r} "
                "collides with an operational path; move it or change HttpConfig"
            )

    def operational(self, path: str) -> Response | None:
        """The answer of an operational path (``/healthz``, ``/metrics``...), or None."""
        op = self._ops.get(path)
        return op() if op is not None else None

    def not_ready(self) -> str | None:
        """Why the server should get no traffic now, or None when it is ready."""
        reason = self._not_ready()
        if reason is None and getattr(self._backbone, "connected", True) is False:
            reason = "the backbone is disconnected"
        return reason

    def _liveness(self, healthy: Response) -> Response:
        """200, or 503 once the backbone says it is not ``alive`` (its connection is gone
        for good: only a restart helps, so a supervisor probing /healthz restarts it)."""
        if getattr(self._backbone, "alive", True) is not False:
            return healthy
        reason = "the backbone's connection is gone for good (see the log); restart the process"
        return response_from_answer(problem_answer("not_ready", reason))

    def preloading_now(self) -> str | None:
        """The revision loading in the background while the current one serves, or None."""
        return self.preloading() if self.preloading is not None else None

    def _readiness(self) -> Response:
        reason = self.not_ready()
        if reason is not None:
            return response_from_answer(problem_answer("not_ready", reason))
        loading = self.preloading_now()
        if loading is None:
            return _READY
        body = msgspec.json.encode({"status": "ready", "preloading": loading})
        return Response(200, body, "application/json")

    def _exposition(self) -> Response:
        state = self.state
        workers = self.workers() if self.workers is not None else None
        revisions = self.revisions() if self.revisions is not None else None
        body = render(
            self.metrics.values(),
            state.counters if state is not None else ServerCounters(),
            connections_open=len(state.connections) if state is not None else 0,
            connections_total=state.accepted if state is not None else 0,
            requests_in_flight=state.in_flight if state is not None else 0,
            workers=workers,
            revisions=revisions,
            budget_refusals=self.budget_refusals() if self.budget_refusals is not None else None,
            process=self.process_metrics,
        )
        return Response(200, body, CONTENT_TYPE)

    def check(self, request: Request) -> Response | None:
        op = self._ops.get(request.path)
        if op is not None:
            return op() if request.method in _OPS_ALLOW else _get_or_head_only(request.method)
        if self._intake is not None and request.path.startswith(STATUS_PREFIX):
            return self._status_check(request)
        if self._any_cors and is_preflight(request.method, request.headers):
            asked = self.router.match(
                request.headers["access-control-request-method"], request.path
            )
            if not isinstance(asked, Response) and asked[0].cors is not None:
                return preflight(asked[0].cors, request.headers).response()
        found = self.router.match(request.method, request.path)
        if isinstance(found, Response):
            return found
        route = found[0]
        if route.enqueue is not None and self._intake is None:
            return response_from_answer(
                problem_answer(
                    "not_implemented",
                    f"{route.method} {route.template} enqueues to {route.enqueue!r}, which "
                    "needs a backbone: serve a Host (open_host) rather than a bare Invoker",
                )
            )
        request.route = found
        request.max_body = route.max_body  # a route may declare more than the server default
        return None

    def _status_check(self, request: Request) -> Response | None:
        event_id = status_id(request.path)
        if not event_id:
            return response_from_answer(
                problem_answer("route_not_found", "the status URL has no valid id")
            )
        if request.method not in _OPS_ALLOW:
            return _get_or_head_only(request.method)
        request.route = (None, event_id)
        return None

    def handle(self, request: Request) -> Awaitable[Response]:
        # A plain function handing on the coroutine that answers: no frame of its own
        # per request on the hot path.
        route: Route | None
        params: Any  # the path parameters, or the status id
        route, params = request.route
        if route is None:  # GET /_thaw/status/<id>
            assert self._intake is not None
            return self._intake.status(params)
        if self._tracer is not None:
            return self._handle_traced(route, request, params)
        if self._assign_trace:
            self._trace(request)
        return self._handle(route, request, params)

    async def _handle_traced(self, route: Route, request: Request, params: Any) -> Response:
        """The request as an HTTP SERVER span; the function's spans are its children."""
        assert self._tracer is not None
        headers = request.headers
        parent = parse_traceparent(headers.get("traceparent", ""), headers.get("tracestate", ""))
        span = self._tracer.start_span(
            f"{request.method} {route.template}",
            kind=SpanKind.SERVER,
            parent=parent,
            attributes={
                "http.request.method": request.method,
                "http.route": route.template,
                "url.path": request.path,
                "thaw.capability": route.name,
            },
        )
        context = span.context
        context.write(headers)
        request.trace_id = context.trace_id
        try:
            response = await self._handle(route, request, params)
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_attribute("error.type", str(response.status))
            span.set_error(f"HTTP {response.status}")
        span.end()
        return response

    async def _handle(self, route: Route, request: Request, params: Any) -> Response:
        if route.verifier is not None:  # claimed while answered: kept on a 2xx, else released
            answer = partial(self._answer, route, request, params)
            cors = partial(self._cors, route, request)
            return await route.verifier.guard(request.headers, request.body, answer, refused=cors)
        return await self._answer(route, request, params)

    async def _answer(self, route: Route, request: Request, params: Any) -> Response:
        try:
            event = route.event(request.body, request.query, params, request.headers, self._ids)
        except _Refused as error:
            return self._cors(route, request, refused_response(error))
        if route.enqueue is not None:
            assert self._intake is not None
            return self._cors(route, request, await self._intake.publish(route, event))
        outcome = await route.capability(event)  # accounted there (see the module docstring)
        if type(outcome) is Ok and len(outcome.data) > route.max_result:
            outcome = _result_too_large(route, event, outcome)
        if route.cors is None:
            return route.answer(outcome, event)
        return self._cors(route, request, route.answer(outcome, event))

    @staticmethod
    def _cors(route: Route, request: Request, response: Response) -> Response:
        if route.cors is None:
            return response
        return with_headers(response, actual_headers(route.cors, request.headers.get("origin")))

    @staticmethod
    def _trace(request: Request) -> None:
        headers = request.headers
        context = parse_traceparent(headers.get("traceparent", ""))
        if context is None:
            context = start_trace()
            headers["traceparent"] = context.traceparent
        request.trace_id = context.trace_id


def _result_too_large(route: Route, event: Event, outcome: Ok) -> Reject:
    """The answer for a result past the capability's ``max_result`` (the author's to fix)."""
    reason = (
        f"capability {route.name!r} returned {len(outcome.data)} bytes, more than its "
        f"max_result of {route.max_result}"
    )
    log.error("%s (event %s): answered 500 result_too_large", reason, event.id)
    return Reject("result_too_large", reason)
