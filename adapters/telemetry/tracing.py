"""Thaw's ``Tracer`` over the OpenTelemetry API (the ``otel`` extra).

``OtelTracer`` turns the core's spans (``thaw._trace.Tracer``) into OpenTelemetry
spans with the W3C ids the core carries, so a trace crosses HTTP, NATS and object
metadata as one. ``tracer_from_environment()`` is how ``thaw serve`` turns tracing on:
only when the OpenTelemetry SDK's own variables ask for an exporter
(``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); otherwise it returns None and no span is
ever made. ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the sampler
variables are the SDK's, read by the SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from thaw._trace import AttributeValue, SpanKind, TraceContext

__all__ = ["OtelSpan", "OtelTracer", "tracer_from_environment"]

_KINDS = {
    SpanKind.INTERNAL: trace.SpanKind.INTERNAL,
    SpanKind.SERVER: trace.SpanKind.SERVER,
    SpanKind.CLIENT: trace.SpanKind.CLIENT,
    SpanKind.PRODUCER: trace.SpanKind.PRODUCER,
    SpanKind.CONSUMER: trace.SpanKind.CONSUMER,
}


def _span_context(context: TraceContext) -> SpanContext:
    state = TraceState.from_header([context.tracestate]) if context.tracestate else None
    return SpanContext(
        int(context.trace_id, 16),
        int(context.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if context.sampled else TraceFlags.DEFAULT),
        trace_state=state,
    )


class OtelSpan:
    """A core ``Span`` over an OpenTelemetry span."""

    __slots__ = ("_context", "_span")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        own = span.get_span_context()
        state = own.trace_state.to_header() if own.trace_state else ""
        self._context = TraceContext(
            f"{own.trace_id:032x}", f"{own.span_id:016x}", own.trace_flags.sampled, state
        )

    @property
    def context(self) -> TraceContext:
        return self._context

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_error(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, description))

    def record_exception(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}"))

    def end(self) -> None:
        self._span.end()


class OtelTracer:
    """Implements ``thaw._trace.Tracer`` with an OpenTelemetry tracer (default: the
    global provider's)."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("thaw")

    def start_span(
        self,
        name: str,
        *,
        kind: str = SpanKind.INTERNAL,
        parent: TraceContext | None = None,
        links: Sequence[TraceContext] = (),
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> OtelSpan:
        # The parent is explicit (the core passes it); an empty context otherwise, so a
        # span never picks up an unrelated ambient span.
        context = trace.set_span_in_context(
            NonRecordingSpan(_span_context(parent)) if parent is not None else trace.INVALID_SPAN
        )
        span = self._tracer.start_span(
            name,
            context=context,
            kind=_KINDS.get(kind, trace.SpanKind.INTERNAL),
            attributes=attributes,
            links=[Link(_span_context(link)) for link in links],
        )
        return OtelSpan(span)


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if environ is None else environ
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none" or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        exporters
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracer_from_environment(environ: Mapping[str, str] | None = None) -> OtelTracer | None:
    """A tracer exporting as the OTEL_* variables say (installed as the global
    provider), or None when they ask for nothing. Raises ``ConfigError`` naming the
    missing extra when they ask for traces and the SDK is not installed."""
    if not tracing_requested(environ):
        return None
    from thaw import ConfigError

    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        raise ConfigError(
            "OTEL_* variables ask for traces but the OpenTelemetry SDK is not installed: "
            "pip install 'thaw-runtime[otel]'"
        ) from None
    env = os.environ if environ is None else environ
    provider = TracerProvider(resource=Resource.create({"service.name": _service(env)}))
    for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        exporter: SpanExporter
        name = name.strip().lower()
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not one thaw serve sets up "
                "(use otlp, console or none)"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return OtelTracer(provider.get_tracer("thaw"))


def _service(env: Mapping[str, str]) -> str:
    # Resource.create reads OTEL_SERVICE_NAME itself; this is the default beside it.
    return env.get("OTEL_SERVICE_NAME") or "thaw"
