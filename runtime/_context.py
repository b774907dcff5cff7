"""Context: what a running function may use besides its payload.

A Context is created per call only for functions that ask for one. It exposes
the event's attempt, deadline and trace, a logger that stamps the trace id, and
the backbone (publish with a message id derived from the input, KV buckets).
Everything costly (trace parsing, logger adapters) is computed on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import AccessDenied, ConfigError, UnknownCapability
from ._event import Event, Outcome, Reject
from ._subjects import subject_matches
from ._trace import TraceContext, parse_traceparent, start_trace

if TYPE_CHECKING:
    from ._backbone import Backbone, KeyValue, PubAck
    from ._clock import Clock
    from ._policy import Access

__all__ = ["Context", "CapabilityEnv", "TRACEPARENT_HEADER", "MSG_ID_HEADER"]

TRACEPARENT_HEADER = "traceparent"
MSG_ID_HEADER = "Nats-Msg-Id"
_encode = msgspec.json.Encoder().encode


class CapabilityEnv:
    """Per-capability, per-invoker values shared by every Context of that capability."""

    __slots__ = ("access", "app", "backbone", "capability", "clock", "logger", "siblings")

    def __init__(
        self,
        *,
        app: str,
        capability: str,
        backbone: Backbone | None,
        clock: Clock,
        logger: logging.Logger,
        access: Access | None = None,
    ) -> None:
        self.access = access
        self.app = app
        self.capability = capability
        self.backbone = backbone
        self.clock = clock
        self.logger = logger
        # The invoker's compiled capabilities, for ctx.call (set once all are compiled).
        self.siblings: Mapping[str, Callable[[Event], Awaitable[Outcome]]] = {}


class _TraceLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra['trace_id']} {extra['capability']}] {msg}", kwargs


class Context:
    """Handed to a function that declares a ``ctx: Context`` parameter."""

    __slots__ = ("_env", "_logger", "_published", "_trace", "deadline", "event")

    def __init__(self, env: CapabilityEnv, event: Event, deadline: float) -> None:
        self._env = env
        self.event = event
        self.deadline = deadline
        self._trace: TraceContext | None = None
        self._published = 0
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def app(self) -> str:
        return self._env.app

    @property
    def capability(self) -> str:
        return self._env.capability

    @property
    def attempt(self) -> int:
        """1 on first delivery; the delivery count on redeliveries."""
        return self.event.attempt

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative once it has passed)."""
        return self.deadline - self._env.clock.now()

    @property
    def trace(self) -> TraceContext:
        """The incoming trace context, or a new trace when the event carried none."""
        if self._trace is None:
            self._trace = parse_traceparent(self.event.traceparent) or start_trace()
        return self._trace

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose lines carry the trace id and capability name."""
        if self._logger is None:
            self._logger = _TraceLogger(
                self._env.logger,
                {"trace_id": self.trace.trace_id, "capability": self._env.capability},
            )
        return self._logger

    async def publish(
        self,
        subject: str,
        data: bytes | object,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Publish to the backbone with a message id derived from the input.

        The default id is ``<event id>/<capability>/<n>`` for the n-th publish of this
        call, so a redelivered input republishes the same ids and the stream's
        duplicate window drops the copies. ``data`` that is not bytes is JSON-encoded.
        """
        backbone = self._require_backbone("publish")
        access = self._env.access
        if access is not None and not any(subject_matches(p, subject) for p in access.publishes):
            raise AccessDenied(
                f"capability {self._env.capability!r} may not publish to {subject!r}; "
                f"add it to access=Access(publishes=...) (allowed: {list(access.publishes)})"
            )
        self._published += 1
        if msg_id is None:
            msg_id = f"{self.event.id}/{self._env.capability}/{self._published}"
        payload = data if isinstance(data, bytes) else _encode(data)
        out_headers = dict(headers) if headers else {}
        out_headers[TRACEPARENT_HEADER] = self.trace.child().traceparent
        return await backbone.publish(subject, payload, headers=out_headers, msg_id=msg_id)

    async def call(
        self, capability: str, payload: bytes | object = b"", *, timeout: float | None = None
    ) -> Outcome:
        """Invoke another capability of this app in process (BFF fan-out, composition).

        The callee gets this call's trace (a child span), an event id derived from
        this one, and a deadline no later than ours (sooner with ``timeout``).
        Combine several calls with ``runtime.fan_out`` to get partial results.
        """
        target = self._env.siblings.get(capability)
        if target is None:
            error = UnknownCapability.naming(self._env.app, capability, self._env.siblings)
            return Reject(error.code, error.message)
        deadline = self.deadline
        if timeout is not None:
            deadline = min(deadline, self._env.clock.now() + timeout)
        data = payload if isinstance(payload, bytes) else _encode(payload)
        event = Event(
            id=f"{self.event.id}/{self._env.capability}->{capability}",
            data=data,
            deadline=deadline,
            traceparent=self.trace.child().traceparent,
        )
        return await target(event)

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket ``bucket`` (it must exist; hosts provision declared buckets)."""
        backbone = self._require_backbone("kv")
        access = self._env.access
        if access is not None and bucket not in access.buckets:
            raise AccessDenied(
                f"capability {self._env.capability!r} may not use KV bucket {bucket!r}; "
                f"add it to access=Access(buckets=...) (allowed: {list(access.buckets)})"
            )
        return await backbone.kv(bucket)

    def _require_backbone(self, what: str) -> Backbone:
        backbone = self._env.backbone
        if backbone is None:
            raise ConfigError(
                f"capability {self._env.capability!r} called ctx.{what}() but this invoker "
                "has no backbone; pass backbone=... to the Invoker or run it under a host"
            )
        return backbone
