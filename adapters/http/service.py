"""HttpService: what the connection drives. Operational paths first, then the app's routes.

``check`` runs when a request's head is complete: it answers what needs no
body (``/healthz``, ``/readyz``, 404, 405, OPTIONS) and lowers the body limit
to the route's. ``handle`` turns the request into an Event, calls the compiled
capability and maps its Outcome to an answer.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.lowlevel import Invoker, problem_answer

from ._wire import Request, Response, response_from_answer
from .config import HttpConfig
from .routing import EventIds, Match, Router, _Refused, compile_router, refused_response

__all__ = ["HttpService"]

_HEALTHY = Response(200, b'{"status":"ok"}', "application/json")
_READY = Response(200, b'{"status":"ready"}', "application/json")
_OPS_ALLOW = ("GET", "HEAD")


class HttpService:
    """Serves an invoker's http triggers; ``not_ready()`` returns why it is not ready, or None."""

    def __init__(
        self,
        invoker: Invoker,
        *,
        config: HttpConfig,
        not_ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.router: Router = compile_router(invoker, max_body=config.max_body)
        self._ids = EventIds()
        self._not_ready = not_ready
        self._ops: dict[str, Callable[[], Response]] = {}
        if config.health_path:
            self._ops[config.health_path] = lambda: _HEALTHY
        if config.ready_path:
            self._ops[config.ready_path] = self._readiness
        clash = [r for r in self.router.routes if r.template in self._ops]
        if clash:
            from runtime import ConfigError

            raise ConfigError(
                f"route {clash[0].method} {clash[0].template} of capability {clash[0].name!r} "
                "collides with an operational path; move it or change HttpConfig"
            )

    def _readiness(self) -> Response:
        reason = self._not_ready()
        if reason is None:
            return _READY
        return response_from_answer(problem_answer("not_ready", reason))

    def check(self, request: Request) -> Response | None:
        op = self._ops.get(request.path)
        if op is not None:
            if request.method in _OPS_ALLOW:
                return op()
            answer = problem_answer(
                "method_not_allowed", f"{request.method} is not served here", allow=_OPS_ALLOW
            )
            return response_from_answer(answer)
        found = self.router.match(request.method, request.path)
        if isinstance(found, Response):
            return found
        route = found[0]
        if route.enqueue is not None:
            return response_from_answer(
                problem_answer(
                    "not_implemented",
                    f"{route.method} {route.template} enqueues to {route.enqueue!r}; "
                    "async intake is not served by this version yet",
                )
            )
        request.route = found
        if route.max_body < request.max_body:
            request.max_body = route.max_body
        return None

    async def handle(self, request: Request) -> Response:
        match: Match = request.route
        route, params = match
        try:
            event = route.event(request.body, request.query, params, request.headers, self._ids)
        except _Refused as refused:
            return refused_response(refused)
        outcome = await route.capability(event)
        return route.answer(outcome, event)
