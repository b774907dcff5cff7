"""CORS for http routes declared with ``cors=Cors(...)``: pure decisions, precompiled.

``CorsPolicy`` is compiled once per route. ``preflight`` decides the answer to a
browser's ``OPTIONS`` preflight and ``actual_headers`` the headers added to an
ordinary answer; neither touches a socket, so both are tested as tables.

What the Fetch standard asks of a server, and what this does:
- an allowed origin gets ``Access-Control-Allow-Origin`` naming it (or ``*`` for
  ``origins=("*",)`` without credentials) and ``Vary: Origin`` so caches keep
  answers per origin;
- anything else gets no CORS headers at all, which is how a browser learns
  "no": the preflight is answered 403 with a problem naming the part refused
  (origin, method or header), without echoing the client's value;
- the Origin value is compared exactly with the declared ones; it is never
  reflected unless it equals one of them, so a long, CR/LF-laden or ``null``
  Origin can only ever be refused.
"""

from __future__ import annotations

from thaw import Cors
from thaw.adapters.http._wire import Headers, Response, response_from_answer
from thaw.lowlevel import problem_answer

__all__ = ["CorsPolicy", "Preflight", "preflight", "actual_headers", "is_preflight"]

MAX_ORIGIN = 512
_VARY_ORIGIN = ("vary", "Origin")
_VARY_PREFLIGHT = ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
# CORS-safelisted request headers: a browser may send them without asking.
_SAFELISTED = frozenset({"accept", "accept-language", "content-language", "content-type"})


class CorsPolicy:
    """A route's ``Cors`` compiled into what the decisions compare and send."""

    __slots__ = ("any_origin", "credentials", "headers", "origins", "preflight_headers", "expose")

    def __init__(self, cors: Cors, route_method: str) -> None:
        self.any_origin = cors.origins == ("*",)
        self.origins = frozenset(cors.origins)
        self.credentials = cors.credentials
        self.headers = frozenset(name.lower() for name in cors.headers)
        methods = cors.methods or (
            (route_method, "HEAD") if route_method == "GET" else (route_method,)
        )
        extra: list[tuple[str, str]] = [("access-control-allow-methods", ", ".join(methods))]
        if cors.headers:
            extra.append(("access-control-allow-headers", ", ".join(cors.headers)))
        extra.append(("access-control-max-age", str(cors.max_age)))
        if cors.credentials:
            extra.append(("access-control-allow-credentials", "true"))
        self.preflight_headers: Headers = tuple(extra)
        expose: list[tuple[str, str]] = []
        if cors.credentials:
            expose.append(("access-control-allow-credentials", "true"))
        if cors.expose:
            expose.append(("access-control-expose-headers", ", ".join(cors.expose)))
        self.expose: Headers = tuple(expose)

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None (refused)."""
        if origin is None or len(origin) > MAX_ORIGIN:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None


def is_preflight(method: str, headers: dict[str, str]) -> bool:
    return (
        method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers
    )


class Preflight:
    """The decision on one preflight: ``headers`` to send with 204, or why it is refused."""

    __slots__ = ("headers", "refused")

    def __init__(self, headers: Headers = (), refused: str = "") -> None:
        self.headers = headers
        self.refused = refused

    def response(self) -> Response:
        if self.refused:
            answer = problem_answer("cors_refused", self.refused, status=403)
            refused = response_from_answer(answer)
            refused.headers = (*refused.headers, _VARY_PREFLIGHT)
            return refused
        return Response(204, headers=self.headers)


def preflight(policy: CorsPolicy, headers: dict[str, str]) -> Preflight:
    """Decide a preflight for the route whose method the browser asks about."""
    allowed = policy.allow_origin(headers.get("origin"))
    if allowed is None:
        return Preflight(refused="this origin may not call this route")
    requested = [
        name.strip().lower()
        for name in headers.get("access-control-request-headers", "").split(",")
        if name.strip()
    ]
    for name in requested:
        if name not in policy.headers and name not in _SAFELISTED:
            shown = name if len(name) <= 64 and name.isprintable() else name[:64].encode().hex()
            return Preflight(refused=f"the request header {shown!r} is not allowed here")
    return Preflight(
        (("access-control-allow-origin", allowed), *policy.preflight_headers, _VARY_PREFLIGHT)
    )


def actual_headers(policy: CorsPolicy, origin: str | None) -> Headers:
    """Headers to add to an ordinary answer of a CORS route (always ``Vary: Origin``)."""
    allowed = policy.allow_origin(origin)
    if allowed is None:
        return (_VARY_ORIGIN,)
    return (("access-control-allow-origin", allowed), *policy.expose, _VARY_ORIGIN)


def with_headers(response: Response, extra: Headers) -> Response:
    """A copy of ``response`` with ``extra`` header fields (responses may be shared)."""
    return Response(
        response.status,
        response.body,
        response.content_type,
        (*response.headers, *extra),
        stream=response.stream,
        close=response.close,
    )
