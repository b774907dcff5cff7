"""W3C trace context (``traceparent``): parse, start and continue traces.

Malformed or hostile headers are ignored and a new trace is started, as the W3C
spec asks; parsing never raises. Ids come from ``random.getrandbits``, which is
fast and good enough for trace ids (they are not secrets).
"""

from __future__ import annotations

import random
import re

import msgspec

__all__ = ["TraceContext", "parse_traceparent", "start_trace"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """A new span in the same trace (for an outgoing publish or call)."""
        return TraceContext(self.trace_id, _new_span_id(), self.sampled)


def parse_traceparent(header: str) -> TraceContext | None:
    """The trace context in ``header``, or None if it is absent or invalid."""
    if not header or len(header) > 128:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def start_trace() -> TraceContext:
    return TraceContext(f"{random.getrandbits(128) or 1:032x}", _new_span_id())


def _new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"
