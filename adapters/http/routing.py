"""Routing for ``http`` triggers, and the request -> Event -> answer translation.

Routes are compiled once from the invoker's capabilities: static paths go in a
dict, parametrised ones become one anchored regex each (most literal first,
``path`` parameters last). Matching runs on the raw, still percent-encoded
path, so an encoded ``/`` (``%2F``) stays inside one parameter; only parameter
values are decoded. No trailing-slash redirects: ``/greet/`` is not ``/greet``.

How a request becomes the capability's payload (``Event.data``):

- a capability without a payload gets ``b""``; one taking ``bytes`` gets the body
  as it came (webhooks verify signatures over exactly these bytes);
- otherwise the payload is JSON for the capability's contract:
  - a body and no URL parameters: the body, untouched (the invoker decodes it);
  - no body: a JSON object of the path parameters and query parameters (``{}`` when
    there are none), e.g. ``GET /items/7?limit=10`` -> ``{"id": 7, "limit": 10}``;
  - a body and URL parameters: the body must be a JSON object; the parameters
    are added to it, and a name given in both is refused (400 ``parameter_conflict``).
  URL values are text, so each is converted to its contract field's type the way
  msgspec's lax mode does (``"10"`` -> ``10`` for an ``int`` field, a repeated
  query key for a ``list`` field); a value that does not convert is a 422 that
  names the field. Body values are never loosened: the invoker decodes them strictly.

The Event: ``id`` is the ``Idempotency-Key`` header (1-255 of ``A-Z a-z 0-9 . _ : / + = @ -``)
or a generated id that no client key can equal (it starts with ``~``); headers
are the request's, lower-cased; ``traceparent`` is carried; ``subject`` stays
empty (it names a stream subject, which an HTTP request has not).
"""

from __future__ import annotations

import os
import re
import typing
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import msgspec

from thaw import ConfigError, Event, Ok, Outcome
from thaw._headers import URL_PATH_HEADER, URL_QUERY_HEADER
from thaw.adapters.http._wire import Response, response_from_answer
from thaw.lowlevel import (
    Capability,
    CapabilityInvoker,
    HttpTrigger,
    answer_outcome,
    parse_traceparent,
    problem_answer,
)

if typing.TYPE_CHECKING:
    from thaw.adapters.http.webhooks import SignatureVerifier
from thaw.adapters.http.cors import CorsPolicy

JSON = "application/json"

__all__ = ["GENERATED_ID_PREFIX", "Route", "Router", "compile_router", "EventIds"]

GENERATED_ID_PREFIX = "~"  # of the ids Thaw makes; a client's Idempotency-Key never has it

_PARAM = re.compile(r"\{([^{}:]+)(?::([a-z]+))?\}")
_PATTERNS = {
    "str": r"[^/]+",
    "int": r"[0-9]{1,18}",
    "float": r"[0-9]{1,18}(?:\.[0-9]{1,18})?",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "path": r".+",
}
_CONVERT: dict[str, Callable[[str], Any]] = {
    "str": lambda text: unquote(text, errors="strict"),
    "int": int,
    "float": float,
    "uuid": lambda text: str(uuid.UUID(text)),
    "path": lambda text: unquote(text, errors="strict"),
}
_KEY = re.compile(r"[A-Za-z0-9._:/+=@\-]{1,255}\Z")
_MAX_QUERY_FIELDS = 256
_SEQUENCES = (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)
_EMPTY: dict[str, Any] = {}
_NONE, _RAW, _JSON = range(3)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_TOO_DEEP = "payload is not valid JSON: it is nested too deeply to decode"
Match = tuple["Route", dict[str, Any]]


class EventIds:
    """Event ids for requests without ``Idempotency-Key``: ``~`` and 128 random bits
    (32 hex digits), so no id can be guessed from another (they name status URLs and
    idempotency records) and none equals a client key (those never start with ``~``).

    The bits come from ``os.urandom`` (the source ``secrets`` uses), 256 ids per
    call: one system call per 256 ids keeps an id about as cheap as the counter it
    replaced. A forked child drops what its parent had drawn, so the two never
    hand out the same id.
    """

    __slots__ = ("__weakref__", "_drawn", "_next")

    def __init__(self) -> None:
        self._drawn = ""  # hex digits not yet handed out, from self._next on
        self._next = 0
        _LIVE_IDS.add(self)

    def __call__(self) -> str:
        at = self._next
        if at >= len(self._drawn):
            self._drawn = os.urandom(_ID_BYTES * _IDS_PER_DRAW).hex()
            at = 0
        self._next = at + 2 * _ID_BYTES
        return GENERATED_ID_PREFIX + self._drawn[at : at + 2 * _ID_BYTES]

    def _forget(self) -> None:
        self._drawn, self._next = "", 0


_ID_BYTES = 16
_IDS_PER_DRAW = 256
_LIVE_IDS: weakref.WeakSet[EventIds] = weakref.WeakSet()


def _forget_drawn_ids() -> None:
    for ids in list(_LIVE_IDS):
        ids._forget()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to copy the bits
    os.register_at_fork(after_in_child=_forget_drawn_ids)


class _Coercer:
    """Converts URL text to a contract's field types (msgspec lax mode), per field."""

    def __init__(self, contract: Any) -> None:
        self.fields: dict[str, tuple[Any, bool]] | None = None
        self.values: tuple[Any, bool] | None = None
        info = msgspec.inspect.type_info(contract)
        if isinstance(info, msgspec.inspect.StructType):
            hints = msgspec.structs.fields(contract)
            self.fields = {
                f.encode_name: (f.type, isinstance(t.type, _SEQUENCES))
                for f, t in zip(hints, info.fields, strict=True)
            }
        elif isinstance(info, msgspec.inspect.DictType):
            args = typing.get_args(contract)
            value_type = args[1] if len(args) == 2 else Any
            self.values = (value_type, isinstance(info.value_type, _SEQUENCES))

    def field(self, name: str) -> tuple[Any, bool]:
        if self.fields is not None:
            return self.fields.get(name, (Any, False))
        return self.values or (Any, False)

    def convert(self, name: str, value: Any) -> Any:
        kind, _ = self.field(name)
        if kind is Any:
            return value
        try:
            return msgspec.convert(value, type=kind, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            if " - at `$" in message:
                message = message.replace("`$", f"`$.{name}", 1)
            else:
                message = f"{message} - at `$.{name}`"
            raise _Refused(422, "contract_invalid", message) from None


class _Refused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Route:
    """One (method, path) of one capability, compiled."""

    __slots__ = (
        "capability",
        "coercer",
        "content_type",
        "cors",
        "enqueue",
        "max_body",
        "max_result",
        "method",
        "mode",
        "name",
        "params",
        "template",
        "verifier",
        "webhook",
    )

    def __init__(
        self,
        trigger: HttpTrigger,
        capability: Capability,
        *,
        max_body: int,
        max_body_cap: int = 64 * 1024 * 1024,
    ) -> None:
        spec = capability.spec
        self.method = trigger.method
        self.template = trigger.path
        self.name = capability.name
        self.capability = capability
        self.params = {name: _CONVERT[kind] for name, kind in trigger.params}
        self.enqueue = trigger.enqueue
        self.webhook = trigger.webhook
        self.cors = CorsPolicy(trigger.cors, trigger.method) if trigger.cors is not None else None
        self.verifier: SignatureVerifier | None = None  # set by HttpService for webhook routes
        if trigger.max_body is None:
            self.max_body = min(max_body, spec.policy.max_payload)
        elif trigger.max_body > max_body_cap:
            raise ConfigError(
                f"route {trigger.method} {trigger.path} of capability {capability.name!r} "
                f"declares max_body={trigger.max_body}, above the server's max_body_cap of "
                f"{max_body_cap} bytes: lower it, or raise HttpConfig.max_body_cap"
            )
        else:  # the route's own limit; a smaller max_payload of its capability still wins
            self.max_body = min(trigger.max_body, spec.policy.max_payload)
        self.max_result = spec.policy.max_result
        self.content_type = "application/octet-stream" if spec.output_type is bytes else JSON
        if not spec.takes_payload:
            self.mode, self.coercer = _NONE, None
        elif spec.input_type is bytes:
            self.mode, self.coercer = _RAW, None
        else:
            self.mode, self.coercer = _JSON, _Coercer(spec.input_type)

    def __repr__(self) -> str:
        return f"<Route {self.method} {self.template} -> {self.name}>"

    def event(
        self,
        body: bytes,
        query: str,
        params: dict[str, Any],
        headers: dict[str, str],
        ids: EventIds,
    ) -> Event:
        """The Event for this request (raises _Refused with a clear answer otherwise)."""
        key = headers.get("idempotency-key")
        if key is None:
            event_id = ids()
        elif _KEY.match(key):
            event_id = key
        else:
            raise _Refused(
                400,
                "idempotency_header_invalid",
                "Idempotency-Key must be 1-255 characters of A-Z a-z 0-9 . _ : / + = @ -",
            )
        mode = self.mode
        if mode == _JSON:
            data = self._json(body, query, params)
        else:
            data = body if mode == _RAW else b""
            headers = _with_url(headers, params, query)
        return Event(
            id=event_id, data=data, headers=headers, traceparent=headers.get("traceparent", "")
        )

    def _json(self, body: bytes, query: str, params: dict[str, Any]) -> bytes:
        if not params and not query:
            return body or b"{}"
        coercer = self.coercer
        assert coercer is not None
        values: dict[str, Any] = {}
        if query:
            try:
                pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
            except ValueError as exc:
                raise _Refused(400, "target_invalid", f"bad query string: {exc}") from None
            for name, value in pairs:
                if coercer.field(name)[1]:
                    values.setdefault(name, []).append(value)
                elif name in values:
                    raise _Refused(400, "parameter_conflict", f"query parameter {name!r} repeats")
                else:
                    values[name] = value
        for name, value in params.items():
            if name in values:
                raise _Refused(
                    400, "parameter_conflict", f"{name!r} is both a path and a query parameter"
                )
            values[name] = value
        url = {name: coercer.convert(name, value) for name, value in values.items()}
        if not body:
            return _encode(url)
        try:
            document = _decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise _Refused(400, "payload_malformed", f"payload is not valid JSON: {exc}") from None
        except RecursionError:  # msgspec's depth limit: 2 KB of "[" reach it
            raise _Refused(400, "payload_malformed", _TOO_DEEP) from None
        if not isinstance(document, dict):
            raise _Refused(
                400, "payload_malformed", "with URL parameters, the body must be a JSON object"
            )
        clash = sorted(set(document) & set(url))
        if clash:
            raise _Refused(
                400, "parameter_conflict", f"{clash[0]!r} is given both in the URL and the body"
            )
        document.update(url)
        return _encode(document)

    def answer(self, outcome: Outcome, event: Event) -> Response:
        # Fast path for the common case; equal to the decision table's answer
        # (tests/test_http_routing.py checks the two agree).
        if type(outcome) is Ok and outcome.data and not outcome.replayed:
            return Response(200, outcome.data, self.content_type)
        trace = parse_traceparent(event.traceparent) if type(outcome) is not Ok else None
        answer = answer_outcome(
            outcome,
            content_type=self.content_type,
            event_id=event.id,
            trace_id=trace.trace_id if trace is not None else "",
        )
        return response_from_answer(answer)


def _with_url(headers: dict[str, str], params: dict[str, Any], query: str) -> dict[str, str]:
    """``headers`` carrying the URL's parameters for ``ctx.params`` / ``ctx.query``.

    A client's own headers of those names are dropped: only Thaw sets them."""
    if URL_PATH_HEADER in headers or URL_QUERY_HEADER in headers:
        headers = {k: v for k, v in headers.items() if k not in (URL_PATH_HEADER, URL_QUERY_HEADER)}
    if params:
        headers[URL_PATH_HEADER] = urlencode({k: str(v) for k, v in params.items()})
    if query:
        headers[URL_QUERY_HEADER] = query
    return headers


class Router:
    """Method + path -> (Route, path parameters), or the 404/405/OPTIONS answer."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = tuple(routes)
        self._static: dict[str, dict[str, Route]] = {}
        shapes: dict[str, dict[str, Route]] = {}
        order: dict[str, tuple[int, int]] = {}
        for route in routes:
            if not route.params:
                table = self._static.setdefault(route.template, {})
            else:
                pattern = _regex(route.template)
                table = shapes.setdefault(pattern, {})
                literal = len(_PARAM.sub("", route.template))
                has_path = "path" in {k for _, k in _kinds(route.template)}
                order[pattern] = (int(has_path), -literal)
            table[route.method] = route
        for table in (*self._static.values(), *shapes.values()):
            if "GET" in table and "HEAD" not in table:
                table["HEAD"] = table["GET"]
        self._dynamic = [
            (re.compile(pattern).fullmatch, table, _allow(table))
            for pattern, table in sorted(shapes.items(), key=lambda item: order[item[0]])
        ]
        self._static_allow = {path: _allow(table) for path, table in self._static.items()}

    def match(self, method: str, path: str) -> Match | Response:
        table = self._static.get(path)
        if table is not None:
            route = table.get(method)
            if route is not None:
                return route, _EMPTY
            return self._not_allowed(method, path, self._static_allow[path])
        allowed: set[str] = set()
        for fullmatch, table, allow in self._dynamic:
            found = fullmatch(path)
            if found is None:
                continue
            route = table.get(method)
            if route is None:
                allowed.update(allow)
                continue
            try:
                params = {
                    name: route.params[name](text) for name, text in found.groupdict().items()
                }
            except (ValueError, UnicodeDecodeError):
                continue  # e.g. bad UTF-8 in a percent-encoded value: not this route
            return route, params
        if allowed:
            return self._not_allowed(method, path, tuple(sorted(allowed)))
        if path == "*" and method == "OPTIONS":
            return Response(204, headers=(("allow", "GET, HEAD, POST, PUT, PATCH, DELETE"),))
        return response_from_answer(
            problem_answer("route_not_found", f"no route serves {_clip(path)!r}")
        )

    @staticmethod
    def _not_allowed(method: str, path: str, allow: tuple[str, ...]) -> Response:
        if method == "OPTIONS":
            return Response(204, headers=(("allow", ", ".join(allow)),))
        answer = problem_answer(
            "method_not_allowed", f"{method} is not served at {_clip(path)!r}", allow=allow
        )
        return response_from_answer(answer)


def compile_router(
    invoker: CapabilityInvoker, *, max_body: int, max_body_cap: int = 64 * 1024 * 1024
) -> Router:
    """Every http trigger of every capability of the invoker's app, compiled."""
    routes = [
        Route(trigger, capability, max_body=max_body, max_body_cap=max_body_cap)
        for capability in invoker.capabilities.values()
        for trigger in capability.spec.triggers
        if isinstance(trigger, HttpTrigger)
    ]
    return Router(routes)


def refused_response(error: _Refused, event_id: str = "") -> Response:
    answer = problem_answer(error.code, error.detail, status=error.status, event_id=event_id)
    return response_from_answer(answer)


def _kinds(template: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2) or "str") for m in _PARAM.finditer(template)]


def _regex(template: str) -> str:
    parts, last = [], 0
    for found in _PARAM.finditer(template):
        parts.append(re.escape(template[last : found.start()]))
        parts.append(f"(?P<{found.group(1)}>{_PATTERNS[found.group(2) or 'str']})")
        last = found.end()
    parts.append(re.escape(template[last:]))
    return "".join(parts)


def _allow(table: Mapping[str, Route]) -> tuple[str, ...]:
    return tuple(sorted({*table, "OPTIONS"}))


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
