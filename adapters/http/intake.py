"""Async-first intake: ``http(..., enqueue=SUBJECT)`` routes and the status route.

An enqueue route validates the request against its capability's input
contract, publishes the payload to SUBJECT with ``Nats-Msg-Id`` = the event id
(the ``Idempotency-Key`` header, or a generated id) and the ``traceparent``,
and answers ``202 Accepted`` with ``{"id", "status_url"}`` and a ``Location``.
A repeated key with the same body is deduplicated by the stream and answered 202
again; a client's ``Idempotency-Key`` is bound to the first body sent under it (its
SHA-256, kept in the app's idempotency store for the consumer's ``Idempotency.ttl``),
so another body under the same key is refused with 422 ``idempotency_key_reused``
instead of being dropped by the stream's duplicate window unseen.

The capability that consumes SUBJECT from the stream (``stream(SUBJECT)``) runs
with that id as its event id. When it declares ``idempotency=Idempotency()``
with the default key, its result lands in the invoker's idempotency store under
``<app>.<capability>.<id>``; ``GET /_thaw/status/<id>/<token>`` answers 200 with
that result once it is there and ``202 {"status":"pending"}`` before.

The status URL is a capability: ``<token>`` is an HMAC-SHA256 (128 bits, hex) of
the app and the id under a key derived from the backbone's event-id key
(``thaw.host._identity``), so every host and worker on the backbone issues and
accepts the same tokens without storing them. A missing or wrong token is the
same 404 as a malformed status URL (compared in constant time): nothing tells
whether the id exists. With a client's ``Idempotency-Key``, whoever knows the key
can obtain the token by repeating the request: such keys must be unguessable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any
from urllib.parse import quote, unquote

import msgspec

from thaw import ConfigError, Event, ThawError
from thaw._errors import IdempotencyKeyReused, PayloadTooLarge
from thaw._headers import URL_PATH_HEADER, URL_QUERY_HEADER
from thaw._trace import SpanKind, Tracer, event_trace
from thaw.adapters.http._wire import Response, response_from_answer
from thaw.adapters.http.routing import GENERATED_ID_PREFIX, JSON, Route
from thaw.host._identity import load_event_key
from thaw.lowlevel import (
    TRACEPARENT_HEADER,
    Backbone,
    Capability,
    CapabilityInvoker,
    StreamTrigger,
    problem_answer,
    subject_matches,
)

__all__ = ["Intake", "STATUS_PREFIX", "compile_intake"]

log = logging.getLogger("thaw.http")
STATUS_PREFIX = "/_thaw/status/"
_PENDING = Response(202, b'{"status":"pending"}', JSON)
NO_STATUS = "the status URL has no valid id"  # for every URL that is not one we issued
_TOKEN_CHARS = 32  # hex digits: 128 bits
_KEY_TTL = 24 * 3600.0  # a key's binding to its body, when the consumer declares no ttl
_HEX = frozenset("0123456789abcdef")
_encode = msgspec.json.Encoder().encode


class _Accepted(msgspec.Struct, frozen=True):
    id: str
    status_url: str


class Intake:
    """Publishing for enqueue routes, and status look-ups in the consumer's store."""

    def __init__(
        self, invoker: CapabilityInvoker, backbone: Backbone, consumers: dict[str, Capability]
    ) -> None:
        self._backbone = backbone
        self._store = invoker.idempotency_store
        self._app = invoker.app.name
        self._consumers = consumers  # enqueue subject -> the capability consuming it
        self._validators: dict[str, Any] = {}  # capability -> its contract's decoder
        self._token_key = b""  # derived from the backbone's event-id key on first use
        self._tracer: Tracer | None = getattr(invoker, "tracer", None)  # None: no spans

    async def _token(self, event_id: str) -> str:
        """The status token of ``event_id``: the same on every host of this backbone."""
        if not self._token_key:
            master = await load_event_key(self._backbone)
            self._token_key = hmac.new(master, b"thaw-status-url/1", hashlib.sha256).digest()
        signed = b"%s\0%s" % (self._app.encode(), event_id.encode("utf-8", "surrogatepass"))
        return hmac.new(self._token_key, signed, hashlib.sha256).hexdigest()[:_TOKEN_CHARS]

    def _validate(self, route: Route, data: bytes) -> Response | None:
        """None when ``data`` fits the route's contract, else the 400/422 answer."""
        spec = route.capability.spec
        if not spec.takes_payload or spec.input_type is bytes:
            return None
        decoder = self._validators.get(route.name)
        if decoder is None:
            decoder = self._validators[route.name] = msgspec.json.Decoder(spec.input_type)
        try:
            decoder.decode(data)
        except msgspec.ValidationError as exc:
            return response_from_answer(problem_answer("contract_invalid", str(exc), status=422))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError for invalid UTF-8 inside strings (as the
            # invoker knows): bad bytes are the caller's fault, never a 500.
            detail = f"payload is not valid JSON: {exc}"
            return response_from_answer(problem_answer("payload_malformed", detail, status=400))
        except Exception as exc:  # RecursionError (deep nesting), a contract's __post_init__
            detail = f"payload could not be decoded: {type(exc).__name__}"
            return response_from_answer(problem_answer("payload_malformed", detail, status=400))
        return None

    async def publish(self, route: Route, event: Event) -> Response:
        subject = route.enqueue
        assert subject is not None
        refused = self._validate(route, event.data)
        if refused is not None:
            return refused
        try:
            refused = await self._bind_key(subject, event)
        except ThawError as exc:
            log.warning("enqueue to %r: could not check key %s: %s", subject, event.id, exc)
            answer = problem_answer(
                exc.code, str(exc), status=503, retry_after=1, event_id=event.id
            )
            return response_from_answer(answer)
        if refused is not None:
            return refused
        headers = {TRACEPARENT_HEADER: event.traceparent} if event.traceparent else {}
        for name in (
            URL_PATH_HEADER,
            URL_QUERY_HEADER,
        ):  # path and query parameters of a bytes payload
            if name in event.headers:
                headers[name] = event.headers[name]
        span = None
        if self._tracer is not None:  # the enqueue hop: a PRODUCER span the consumer links to
            span = self._tracer.start_span(
                f"publish {subject}",
                kind=SpanKind.PRODUCER,
                parent=event_trace(event),
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": subject,
                    "messaging.message.id": event.id,
                    "messaging.message.body.size": len(event.data),
                },
            )
            span.context.write(headers)
        try:
            token = await self._token(event.id)
            await self._backbone.publish(subject, event.data, headers=headers, msg_id=event.id)
        except PayloadTooLarge as exc:  # body and headers exceed the backbone's max_payload
            answer = problem_answer(exc.code, str(exc), status=413, event_id=event.id)
            return response_from_answer(answer)
        except ThawError as exc:
            log.warning("enqueue to %r failed for event %s: %s", subject, event.id, exc)
            answer = problem_answer(
                exc.code, str(exc), status=503, retry_after=1, event_id=event.id
            )
            return response_from_answer(answer)
        finally:
            if span is not None:
                span.end()
        status_url = f"{STATUS_PREFIX}{quote(event.id, safe='')}/{token}"
        body = _encode(_Accepted(event.id, status_url))
        return Response(202, body, JSON, (("location", status_url),))

    async def _bind_key(self, subject: str, event: Event) -> Response | None:
        """None when ``event`` may be published: a generated id, the first body under a
        client's key, or the same body again; the 422 answer for another body."""
        if event.id.startswith(GENERATED_ID_PREFIX):
            return None  # ours: unique, never reused
        consumer = self._consumers[subject]
        policy = consumer.spec.policy.idempotency
        ttl = policy.ttl if policy is not None else _KEY_TTL
        key = f"{self._app}.{consumer.name}.{event.id}/intake"
        digest = hashlib.sha256(event.data).digest()[:16]
        claim = await self._store.claim(key, hold=ttl, ttl=ttl, digest=digest)
        if claim.state == "conflict":
            error = IdempotencyKeyReused(
                f"Idempotency-Key {event.id!r} was sent before with another body; "
                "use a new key for a new request"
            )
            answer = problem_answer(error.code, error.message, status=422, event_id=event.id)
            return response_from_answer(answer)
        if claim.state == "claimed":  # the first body under this key: kept with its digest
            await self._store.complete(key, claim.token, b"", ttl=ttl, digest=digest)
        return None

    async def status(self, reference: str) -> Response:
        """200 with the stored result, or 202 pending (for any consumer of this app);
        404 unless ``reference`` (from ``status_id``) holds the id's own token."""
        token, _, event_id = reference.partition("/")
        try:
            expected = await self._token(event_id)
        except ThawError as exc:
            answer = problem_answer(exc.code, str(exc), status=503, retry_after=1)
            return response_from_answer(answer)
        if not hmac.compare_digest(expected, token):
            return response_from_answer(problem_answer("route_not_found", NO_STATUS))
        for consumer in self._consumers.values():
            key = f"{self._app}.{consumer.name}.{event_id}"
            claim = await self._store.peek(key)  # reads; never claims the key
            if claim is not None and claim.state == "done":
                if consumer.spec.output_type is bytes:
                    return Response(200, claim.result, "application/octet-stream")
                return Response(200 if claim.result else 204, claim.result, JSON)
        return _PENDING


def status_id(path: str) -> str | None:
    """``<token>/<id>`` from ``/_thaw/status/<id>/<token>`` (the id percent-decoded, the
    token 32 lower-case hex digits), ``""`` for a status path of any other shape, or
    None for any other path. ``Intake.status`` takes it as it is."""
    if not path.startswith(STATUS_PREFIX):
        return None
    raw, _, token = path[len(STATUS_PREFIX) :].partition("/")
    if len(token) != _TOKEN_CHARS or not _HEX.issuperset(token):
        return ""
    try:
        event_id = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return ""
    return f"{token}/{event_id}" if event_id else ""


def compile_intake(
    invoker: CapabilityInvoker, routes: tuple[Route, ...], backbone: Backbone
) -> Intake:
    """Find the consumer of every enqueue subject; refuse (ConfigError) what cannot work."""
    consumers: dict[str, Capability] = {}
    for route in routes:
        subject = route.enqueue
        if subject is None or subject in consumers:
            continue
        found = [
            capability
            for capability in invoker.capabilities.values()
            for trigger in capability.spec.triggers
            if isinstance(trigger, StreamTrigger) and subject_matches(trigger.subject, subject)
        ]
        where = f"route {route.method} {route.template} (capability {route.name!r})"
        if not found:
            raise ConfigError(
                f"{where} enqueues to {subject!r} but no capability consumes it; "
                f"add stream({subject!r}) to the capability that handles these requests"
            )
        consumer = found[0]
        policy = consumer.spec.policy.idempotency
        if policy is None or policy.key is not None:
            raise ConfigError(
                f"{where} enqueues to {subject!r}, consumed by {consumer.name!r}, which must "
                "declare idempotency=Idempotency() with the default key (the event id) so that "
                f"{STATUS_PREFIX}<id> can find its result"
            )
        consumers[subject] = consumer
    intake = Intake(invoker, backbone, consumers)
    return intake
