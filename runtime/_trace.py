"""W3C trace context (``traceparent``, ``tracestate``) and the core's tracing interface.

``Tracer`` is the small interface the core records spans through; hosts are given one
(as they are given a ``SyncRunner``), ``thaw.adapters.telemetry.tracing`` implements
it over OpenTelemetry. ``None`` means tracing is off: the core then records nothing
and pays nothing (the invoker picks its traced variant at construction).

Malformed or hostile headers are ignored and a new trace is started, as the W3C
spec asks; parsing never raises. Ids come from ``random.getrandbits``, which is
fast and good enough for trace ids (they are not secrets).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

__all__ = [
    "Span",
    "SpanKind",
    "TraceContext",
    "Tracer",
    "event_trace",
    "log_fields",
    "parse_traceparent",
    "start_trace",
]

AttributeValue = str | bool | int | float


class SpanKind:
    """Span kinds, named as OpenTelemetry names them (the adapter maps them)."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    sampled: bool = True
    tracestate: str = ""  # vendor state, carried unchanged on every hop

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """A new span in the same trace (for an outgoing publish or call)."""
        return TraceContext(self.trace_id, _new_span_id(), self.sampled, self.tracestate)

    def write(self, headers: dict[str, str]) -> None:
        """Set ``traceparent`` (and ``tracestate`` when there is one) in ``headers``."""
        headers["traceparent"] = self.traceparent
        if self.tracestate:
            headers["tracestate"] = self.tracestate


class Span(Protocol):
    """One recorded operation (what ``Tracer.start_span`` returns)."""

    @property
    def context(self) -> TraceContext: ...

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_error(self, description: str) -> None: ...

    def record_exception(self, exc: BaseException) -> None: ...

    def end(self) -> None: ...


class Tracer(Protocol):
    """Starts spans; a host given none records none."""

    def start_span(
        self,
        name: str,
        *,
        kind: str = SpanKind.INTERNAL,
        parent: TraceContext | None = None,
        links: Sequence[TraceContext] = (),
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span: ...


def parse_traceparent(header: str, tracestate: str = "") -> TraceContext | None:
    """The trace context in ``header`` (with ``tracestate``), or None if it is invalid.

    A ``tracestate`` longer than the W3C limit (512 characters) or with a line break is
    dropped, the traceparent kept, as the spec allows."""
    if not header or len(header) > 128:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if tracestate and (len(tracestate) > 512 or "\n" in tracestate or "\r" in tracestate):
        tracestate = ""
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1), tracestate)


class _Traced(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


def event_trace(event: _Traced) -> TraceContext | None:
    """The trace context an Event carries (its ``traceparent``, with the ``tracestate``
    header), or None when it carries none or an invalid one."""
    headers = event.headers
    return parse_traceparent(event.traceparent, headers.get("tracestate", "") if headers else "")


def log_fields(capability: str, event: _Traced, revision: str = "") -> dict[str, str]:
    """A log record's ``extra`` for a line about ``event``: the fields JSON logs show
    (``capability``, ``event_id``, ``revision`` when known, ``trace_id`` and ``span_id``
    when the event carries a valid trace)."""
    fields = {"capability": capability, "event_id": event.id}
    if revision:
        fields["revision"] = revision
    context = event_trace(event)
    if context is not None:
        fields["trace_id"] = context.trace_id
        fields["span_id"] = context.span_id
    return fields


def start_trace() -> TraceContext:
    return TraceContext(f"{random.getrandbits(128) or 1:032x}", _new_span_id())


def _new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"
