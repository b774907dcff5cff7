"""Several apps behind one HTTP server: each request goes to the app whose route matches.

``ServiceSet`` is a ``Service`` (what the connection drives) over one
``HttpService`` per app. A request goes to the first app whose router matches its
method and path (a CORS preflight by the method it asks for); none matching is
the first app's answer (404, or 405 with the methods the path has). Routes may
not overlap: an app whose routes collide with an earlier app's is refused when
the set is built (``RouteClash``), and the caller decides whether the others go
on without it. An app that is down (its host stopped or failed) answers 503
``app_unavailable`` on its routes while the others keep serving (why is logged,
never sent: it may name internals).

The operational paths are the set's own: ``/healthz`` is 200 while every app is
alive; ``/readyz`` is 503 while any app that is up is not ready (a down app is
reported on its own routes, so one broken app never takes the others out of a
load balancer); ``/metrics`` is one exposition with an ``app`` label on every
sample (each family's HELP and TYPE once); ``/openapi.json`` merges the apps'
paths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec

from thaw import ConfigError
from thaw.adapters.http._wire import Request, Response, response_from_answer
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.metrics import CONTENT_TYPE, escape_label
from thaw.adapters.http.service import HttpService
from thaw.lowlevel import problem_answer

__all__ = ["RouteClash", "ServiceSet", "merge_expositions"]

_OPS_ALLOW = ("GET", "HEAD")


class RouteClash(ConfigError):
    """Two apps of one server declare the same method and path."""

    code = "route_clash"


class ServiceSet:
    """One HTTP server's apps (see the module docstring)."""

    def __init__(self, services: Sequence[tuple[str, HttpService]], *, config: HttpConfig) -> None:
        if not services:
            raise ConfigError("a ServiceSet needs at least one app")
        self._services = list(services)
        self._config = config
        self.down: dict[str, str] = {}  # app -> why it is not serving
        self._ops = {
            config.health_path: self._liveness,
            config.ready_path: self._readiness,
            config.metrics_path: self._exposition,
            config.openapi_path: self._openapi,
        }
        self._ops.pop("", None)
        self.state: object = None  # the server sets it; each service gets it too

    @staticmethod
    def check_clashes(
        services: Sequence[tuple[str, HttpService]], candidate: tuple[str, HttpService]
    ) -> None:
        """Raise ``RouteClash`` if ``candidate``'s routes overlap an earlier app's."""
        name, service = candidate
        for other_name, other in services:
            for route in service.router.routes:
                for theirs in other.router.routes:
                    if route.method == theirs.method and route.template == theirs.template:
                        raise RouteClash(
                            f"app {name!r} serves {route.method} {route.template}, which app "
                            f"{other_name!r} already serves; change one of the paths"
                        )

    def bind(self, state: object) -> None:
        self.state = state
        for _, service in self._services:
            service.state = state  # type: ignore[assignment]

    def check(self, request: Request) -> Response | None:
        op = self._ops.get(request.path)
        if op is not None:
            return op() if request.method in _OPS_ALLOW else _get_or_head_only(request.method)
        method = request.method
        if method == "OPTIONS" and "access-control-request-method" in request.headers:
            method = request.headers["access-control-request-method"]
        chosen: tuple[str, HttpService] | None = None
        for pair in self._services:
            if not isinstance(pair[1].router.match(method, request.path), Response):
                chosen = pair
                break
        if chosen is None:  # nobody serves it: the first app's 404 or 405
            chosen = self._services[0]
        name, service = chosen
        if name in self.down:
            return response_from_answer(
                problem_answer(
                    "app_unavailable",
                    f"app {name!r} is not serving on this host (the server log says why)",
                )
            )
        answer = service.check(request)
        if answer is None:
            request.route = (service, request.route)
        return answer

    async def handle(self, request: Request) -> Response:
        service, request.route = request.route
        response: Response = await service.handle(request)
        return response

    def _liveness(self) -> Response:
        healthy: Response | None = None
        for _, service in self._services:
            response = service.operational(self._config.health_path)
            if response is not None and response.status != 200:
                return response
            healthy = healthy or response
        return healthy or Response(200, b'{"status":"ok"}', "application/json")

    def _readiness(self) -> Response:
        reasons = [
            f"app {name!r}: {reason}"
            for name, service in self._services
            if name not in self.down and (reason := service.not_ready()) is not None
        ]
        if not reasons and len(self.down) < len(self._services):
            loading = {
                name: rid
                for name, service in self._services
                if name not in self.down and (rid := service.preloading_now()) is not None
            }
            if not loading:
                return Response(200, b'{"status":"ready"}', "application/json")
            body = msgspec.json.encode({"status": "ready", "preloading": loading})
            return Response(200, body, "application/json")
        if not reasons:
            reasons = ["no app is serving"]
        return response_from_answer(problem_answer("not_ready", "; ".join(reasons)))

    def _exposition(self) -> Response:
        parts = [
            (name, response.body)
            for name, service in self._services
            if (response := service.operational(self._config.metrics_path)) is not None
        ]
        return Response(200, merge_expositions(parts), CONTENT_TYPE)

    def _openapi(self) -> Response:
        merged: dict[str, object] = {}
        paths: dict[str, object] = {}
        for _, service in self._services:
            response = service.operational(self._config.openapi_path)
            if response is None:
                continue
            document = json.loads(response.body)
            merged = merged or document
            paths.update(document.get("paths", {}))
        merged["paths"] = paths
        return Response(200, json.dumps(merged).encode(), "application/json")


def _get_or_head_only(method: str) -> Response:
    answer = problem_answer("method_not_allowed", f"{method} is not served here", allow=_OPS_ALLOW)
    return response_from_answer(answer)


def merge_expositions(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """Prometheus text expositions of several apps as one: an ``app`` label on every
    sample, each family's HELP and TYPE lines once, its samples together."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for app, body in parts:
        label = f'app="{escape_label(app)}"'
        family = ""
        for line in body.decode().splitlines():
            if line.startswith("# "):
                family = line.split(" ", 3)[2]
                if family not in headers:
                    headers[family] = []
                    samples[family] = []
                if line not in headers[family]:
                    headers[family].append(line)
            elif line:
                name, brace, rest = line.partition("{")
                if brace:
                    line = f"{name}{{{label},{rest}"
                else:
                    name, _, value = line.partition(" ")
                    line = f"{name}{{{label}}} {value}"
                samples.setdefault(family, []).append(line)
    out: list[str] = []
    for family, lines in headers.items():
        out += lines
        out += samples[family]
    out.append("")
    return "\n".join(out).encode()
