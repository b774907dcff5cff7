"""Async-first intake: ``http(..., enqueue=SUBJECT)`` routes and the status route.

An enqueue route validates the request against its capability's input
contract, publishes the payload to SUBJECT with ``Nats-Msg-Id`` = the event id
(the ``Idempotency-Key`` header, or a generated id) and the ``traceparent``,
and answers ``202 Accepted`` with ``{"id", "status_url"}`` and a ``Location``.
A repeated key is deduplicated by the stream and answered 202 again.

The capability that consumes SUBJECT from the stream (``stream(SUBJECT)``) runs
with that id as its event id. When it declares ``idempotency=Idempotency()``
with the default key, its result lands in the invoker's idempotency store under
``<app>.<capability>.<id>``; ``GET /_thaw/status/<id>`` answers 200 with that
result once it is there and ``202 {"status":"pending"}`` before (an unknown
id is indistinguishable from a pending one).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, unquote

import msgspec

from thaw import ConfigError, Event, ThawError
from thaw.adapters.http._wire import Response, response_from_answer
from thaw.adapters.http.routing import JSON, Route
from thaw.lowlevel import (
    TRACEPARENT_HEADER,
    Backbone,
    CompiledCapability,
    Invoker,
    StreamTrigger,
    problem_answer,
    subject_matches,
)

__all__ = ["Intake", "STATUS_PREFIX", "compile_intake"]

log = logging.getLogger("thaw.http")
STATUS_PREFIX = "/_thaw/status/"
_PENDING = Response(202, b'{"status":"pending"}', JSON)
_encode = msgspec.json.Encoder().encode


class _Accepted(msgspec.Struct, frozen=True):
    id: str
    status_url: str


class Intake:
    """Publishing for enqueue routes, and status look-ups in the consumer's store."""

    def __init__(
        self, invoker: Invoker, backbone: Backbone, consumers: dict[str, CompiledCapability]
    ) -> None:
        self._backbone = backbone
        self._store = invoker.idempotency_store
        self._app = invoker.app.name
        self._consumers = consumers  # enqueue subject -> the capability consuming it
        self._validators: dict[str, Any] = {}  # capability -> its contract's decoder

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
        return None

    async def publish(self, route: Route, event: Event) -> Response:
        subject = route.enqueue
        assert subject is not None
        refused = self._validate(route, event.data)
        if refused is not None:
            return refused
        headers = {TRACEPARENT_HEADER: event.traceparent} if event.traceparent else {}
        try:
            await self._backbone.publish(subject, event.data, headers=headers, msg_id=event.id)
        except ThawError as exc:
            log.warning("enqueue to %r failed for event %s: %s", subject, event.id, exc)
            answer = problem_answer(
                exc.code, str(exc), status=503, retry_after=1, event_id=event.id
            )
            return response_from_answer(answer)
        status_url = STATUS_PREFIX + quote(event.id, safe="")
        body = _encode(_Accepted(event.id, status_url))
        return Response(202, body, JSON, (("location", status_url),))

    async def status(self, event_id: str) -> Response:
        """200 with the stored result, or 202 pending (for any consumer of this app)."""
        for consumer in self._consumers.values():
            key = f"{self._app}.{consumer.name}.{event_id}"
            claim = await self._store.peek(key)  # reads; never claims the key
            if claim is not None and claim.state == "done":
                if consumer.spec.output_type is bytes:
                    return Response(200, claim.result, "application/octet-stream")
                return Response(200 if claim.result else 204, claim.result, JSON)
        return _PENDING


def status_id(path: str) -> str | None:
    """The id in ``/_thaw/status/<id>`` (percent-decoded), or None for any other path."""
    if not path.startswith(STATUS_PREFIX):
        return None
    raw = path[len(STATUS_PREFIX) :]
    try:
        event_id = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return ""
    return event_id if event_id and "/" not in raw else ""


def compile_intake(invoker: Invoker, routes: tuple[Route, ...], backbone: Backbone) -> Intake:
    """Find the consumer of every enqueue subject; refuse (ConfigError) what cannot work."""
    consumers: dict[str, CompiledCapability] = {}
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
