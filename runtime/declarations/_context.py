"""Context: what a running function may use besides its payload.

A Context is created per call only for functions that ask for one. It exposes
the event's attempt, deadline and trace, a logger that stamps the trace id, and
the backbone (publish with a message id derived from the input, KV buckets,
object stores), and ``run_sync`` for blocking code: the core starts no threads (it
runs in Pyodide), so it asks the ``SyncRunner`` the host was given (default
``run_sync_inline``: on the loop); ``thaw serve`` passes
``thaw.adapters.threads.SyncPool`` (threads, optionally processes).
Everything costly (trace parsing, logger adapters) is computed on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast
from urllib.parse import parse_qsl

import anyio
import msgspec

from thaw._errors import (
    AccessDenied,
    ConfigError,
    DeadlineExceeded,
    NoResponders,
    UnknownCapability,
)
from thaw._event import Event, Ok, Outcome, Reject, Retry
from thaw._headers import MSG_ID_HEADER, TRACESTATE_HEADER, URL_PATH_HEADER, URL_QUERY_HEADER
from thaw._trace import Span, SpanKind, TraceContext, Tracer, event_trace, start_trace
from thaw.backbone._subjects import subject_matches
from thaw.decisions._reply import Requester, outcome_of_reply

if TYPE_CHECKING:
    from thaw._clock import Clock
    from thaw.backbone._contract import Backbone, KeyValue, ObjectStore, PubAck
    from thaw.declarations._batch_types import BatchRef
    from thaw.declarations._policy import Access

__all__ = ["Context", "CapabilityEnv", "SyncRunner", "run_sync_inline"]

T = TypeVar("T")


class SyncRunner(Protocol):
    """Runs ``function(*args)`` for ``ctx.run_sync`` (``process``: in a process, if it can)."""

    async def __call__(
        self, function: Callable[..., T], args: tuple[Any, ...], *, process: bool
    ) -> T: ...


async def run_sync_inline(function: Callable[..., T], args: tuple[Any, ...], *, process: bool) -> T:
    """Run on the event loop (all Pyodide can do): the loop waits for it, deadline too."""
    return function(*args)


_encode = msgspec.json.Encoder().encode


class CapabilityEnv:
    """Per-capability, per-invoker values shared by every Context of that capability."""

    __slots__ = (
        "access",
        "app",
        "backbone",
        "capability",
        "clock",
        "logger",
        "run_sync",
        "revision",
        "siblings",
        "tracer",
    )

    def __init__(
        self,
        *,
        app: str,
        capability: str,
        backbone: Backbone | None,
        clock: Clock,
        logger: logging.Logger,
        access: Access | None = None,
        run_sync: SyncRunner = run_sync_inline,
        tracer: Tracer | None = None,
        revision: str = "",
    ) -> None:
        self.tracer = tracer  # None: tracing off (no span is started anywhere)
        self.revision = revision  # the serving revision's id ("" outside a host)
        self.access = access
        self.run_sync = run_sync
        self.app = app
        self.capability = capability
        self.backbone = backbone
        self.clock = clock
        self.logger = logger
        # The invoker's compiled capabilities, for ctx.call (set once all are compiled).
        self.siblings: Mapping[str, Callable[[Event], Awaitable[Outcome]]] = {}


_NO_VALUES: Mapping[str, str] = MappingProxyType({})


def _url_values(text: str) -> Mapping[str, str]:
    if not text:
        return _NO_VALUES
    values: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, max_num_fields=1000):
        values.setdefault(name, value)
    return MappingProxyType(values)


class _TraceLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        # The fields ride on the record too (JSON logs show them: trace_id, capability,
        # event_id); a caller's own extra= wins.
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
        return f"[{extra['trace_id']} {extra['capability']}] {msg}", kwargs


class Context:
    """Handed to a function that declares a ``ctx: Context`` parameter."""

    __slots__ = ("_env", "_logger", "_published", "_requested", "_trace", "deadline", "event")

    def __init__(self, env: CapabilityEnv, event: Event, deadline: float) -> None:
        self._env = env
        self.event = event
        self.deadline = deadline
        self._trace: TraceContext | None = None
        self._published = self._requested = 0
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def app(self) -> str:
        return self._env.app

    @property
    def capability(self) -> str:
        return self._env.capability

    @property
    def params(self) -> Mapping[str, str]:
        """The HTTP path parameters, as text, when the payload is ``bytes`` or absent.

        With a Struct or dict payload they join the payload instead (and this is empty).
        """
        return _url_values(self.event.headers.get(URL_PATH_HEADER, ""))

    @property
    def query(self) -> Mapping[str, str]:
        """The HTTP query parameters (the first of a repeated name), likewise."""
        return _url_values(self.event.headers.get(URL_QUERY_HEADER, ""))

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
            self._trace = event_trace(self.event) or start_trace()
        return self._trace

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose lines carry the trace id and capability name."""
        if self._logger is None:
            self._logger = _TraceLogger(
                self._env.logger,
                {
                    "trace_id": self.trace.trace_id,
                    "span_id": self.trace.span_id,
                    "capability": self._env.capability,
                    "event_id": self.event.id,
                    "revision": self._env.revision,
                },
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
        self._check_subject("publish to", subject, "publishes")
        self._published += 1
        if msg_id is None:
            msg_id = f"{self.event.id}/{self._env.capability}/{self._published}"
        payload = data if isinstance(data, bytes) else _encode(data)
        out_headers = dict(headers) if headers else {}
        tracer = self._env.tracer
        if tracer is None:
            self.trace.child().write(out_headers)
            return await backbone.publish(subject, payload, headers=out_headers, msg_id=msg_id)
        span = _send_span(tracer, self.trace, "publish", subject, len(payload), msg_id)
        span.context.write(out_headers)
        try:
            return await backbone.publish(subject, payload, headers=out_headers, msg_id=msg_id)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()

    async def call(
        self, capability: str, payload: bytes | object = b"", *, timeout: float | None = None
    ) -> Outcome:
        """Invoke another capability of this app in process (BFF fan-out, composition).

        The callee gets this call's trace (a child span), an event id derived from
        this one, and a deadline no later than ours (sooner with ``timeout``).
        Combine several calls with ``thaw.fan_out`` to get partial results.
        """
        target = self._env.siblings.get(capability)
        if target is None:
            error = UnknownCapability.naming(self._env.app, capability, self._env.siblings)
            return Reject(error.code, error.message)
        deadline = self.deadline
        if timeout is not None:
            deadline = min(deadline, self._env.clock.now() + timeout)
        data = payload if isinstance(payload, bytes) else _encode(payload)
        # The callee's invoke span (when tracing) is the child; without tracing a new span id.
        trace = self.trace if self._env.tracer is not None else self.trace.child()
        event = Event(
            id=f"{self.event.id}/{self._env.capability}->{capability}",
            data=data,
            headers={TRACESTATE_HEADER: trace.tracestate} if trace.tracestate else {},
            deadline=deadline,
            traceparent=trace.traceparent,
        )
        return await target(event)

    async def request(
        self,
        subject: str,
        payload: bytes | object = b"",
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Call a capability behind a ``subject`` trigger (any app) over request/reply.

        The remote counterpart of ``call``: the same Outcome comes back (``Ok``
        with the encoded result, or the responder's ``Reject``/``Retry`` with its
        stable code), so ``fan_out`` mixes both. The request carries a child
        trace and an id derived from this event (``Nats-Msg-Id``); it waits no
        later than our deadline (sooner with ``timeout``). No reply in time is
        ``Retry(code="deadline_exceeded")`` (``fan_out`` lists it as late);
        nobody serving the subject is ``Retry(code="no_responders")``. The
        subject must be allowed by ``Access(requests=...)`` when the capability
        declares one (not ``publishes``: a stream provisioned for it would answer).
        """
        backbone = self._require_backbone("request")
        self._check_subject("send requests to", subject, "requests")
        if not isinstance(backbone, Requester):
            raise ConfigError(
                f"capability {self._env.capability!r} called ctx.request() but the backbone "
                f"{type(backbone).__name__} carries no request/reply"
            )
        wait = self.deadline - self._env.clock.now()
        if timeout is not None:
            wait = min(wait, timeout)
        if wait <= 0:
            return Retry(0.0, f"no time left to request {subject!r}", DeadlineExceeded.code)
        self._requested += 1
        out_headers = dict(headers) if headers else {}
        out_headers[MSG_ID_HEADER] = (
            f"{self.event.id}/{self._env.capability}?{subject}/{self._requested}"
        )
        data = payload if isinstance(payload, bytes) else _encode(payload)
        tracer = self._env.tracer
        if tracer is None:
            self.trace.child().write(out_headers)
            return await _request(backbone, subject, data, out_headers, wait)
        span = _send_span(tracer, self.trace, "request", subject, len(data))
        span.context.write(out_headers)
        try:
            outcome = await _request(backbone, subject, data, out_headers, wait)
            if type(outcome) is not Ok:
                span.set_error(getattr(outcome, "code", "error"))
            return outcome
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()

    async def fan_out(
        self,
        subject: str,
        items: Iterable[Any],
        *,
        join: Callable[..., Any],
        context: Any = None,
    ) -> BatchRef:
        """Publish one child message per item to ``subject`` as a batch that ``join`` (a
        function declared with ``@app.join``) collects once every child has reported
        (see docs/fan-out.md). A redelivered call makes the same batch and message ids
        again, so the children are not sent twice. Items that are not bytes are JSON;
        ``context`` (JSON, at most 16 KiB) reaches the join as ``batch.context``."""
        start = getattr(join, "__thaw_fan_out__", None)
        if start is None:
            name = getattr(join, "__name__", type(join).__name__)
            raise ConfigError(f"fan_out join={name!r} is not a function declared with @app.join")
        ref: BatchRef = await start(self, subject, items, context=context)
        return ref

    async def run_sync(self, function: Callable[..., T], *args: Any, process: bool = False) -> T:
        """``function(*args)`` off the event loop, within this call's deadline.

        Where it runs is the host's choice: under ``thaw serve`` a worker thread
        (``process=True``: a worker process, when the server has a process pool;
        ``function`` and ``args`` must pickle), in Pyodide and a plain ``Invoker``
        on the loop itself. At the deadline the await ends with ``DeadlineExceeded``;
        a thread cannot be stopped, so it runs on and its result is dropped (a
        process task not yet started is cancelled).
        """
        remaining = self.deadline - self._env.clock.now()
        name = getattr(function, "__qualname__", repr(function))
        if remaining <= 0:
            raise DeadlineExceeded(f"no time left to run {name} (ctx.run_sync)")
        try:
            with anyio.fail_after(remaining):
                return await self._env.run_sync(function, args, process=process)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{name} (ctx.run_sync) ran past the capability's deadline; "
                "its thread runs on and its result is dropped"
            ) from None

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket ``bucket`` (it must exist; hosts provision declared buckets)."""
        backbone = self._require_backbone("kv")
        self._check_bucket("use KV bucket", bucket, "buckets")
        store = await backbone.kv(bucket)
        if self._env.tracer is None:
            return store
        return cast("KeyValue", _Traced(store, self._env.tracer, self.trace, "kv", bucket))

    async def objects(self, bucket: str) -> ObjectStore:
        """The object store ``bucket`` (it must exist; hosts provision declared ones)."""
        backbone = self._require_backbone("objects")
        self._check_bucket("use object store", bucket, "objects")
        store = await backbone.object_store(bucket)
        # Always wrapped: a put carries this call's trace in the object's info, so what the
        # object triggers continues this trace (with tracing off too).
        return cast("ObjectStore", _Traced(store, self._env.tracer, self.trace, "objects", bucket))

    def _check_subject(
        self, doing: str, subject: str, field: Literal["publishes", "requests"]
    ) -> None:
        access = self._env.access
        if access is None:
            return
        allowed: tuple[str, ...] = getattr(access, field)
        if not any(subject_matches(pattern, subject) for pattern in allowed):
            raise self._denied(f"{doing} {subject!r}", field, allowed)

    def _check_bucket(self, doing: str, bucket: str, field: Literal["buckets", "objects"]) -> None:
        access = self._env.access
        if access is None:
            return
        allowed: tuple[str, ...] = getattr(access, field)
        if bucket not in allowed:
            raise self._denied(f"{doing} {bucket!r}", field, allowed)

    def _denied(self, doing: str, field: str, allowed: tuple[str, ...]) -> AccessDenied:
        return AccessDenied(
            f"capability {self._env.capability!r} may not {doing}; "
            f"add it to access=Access({field}=...) (allowed: {list(allowed)})"
        )

    def _require_backbone(self, what: str) -> Backbone:
        backbone = self._env.backbone
        if backbone is None:
            raise ConfigError(
                f"capability {self._env.capability!r} called ctx.{what}() but this invoker "
                "has no backbone; pass backbone=... to the Invoker or run it under a host"
            )
        return backbone


def _send_span(
    tracer: Tracer,
    parent: TraceContext,
    operation: Literal["publish", "request"],
    subject: str,
    size: int,
    msg_id: str = "",
) -> Span:
    """A ``publish`` (PRODUCER) or ``request`` (CLIENT) span, with the messaging
    semantic conventions' attributes."""
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
        "messaging.message.body.size": size,
    }
    if msg_id:
        attributes["messaging.message.id"] = msg_id
    if operation == "publish":
        return tracer.start_span(
            f"publish {subject}", kind=SpanKind.PRODUCER, parent=parent, attributes=attributes
        )
    return tracer.start_span(
        f"send {subject}", kind=SpanKind.CLIENT, parent=parent, attributes=attributes
    )


async def _request(
    backbone: Requester, subject: str, data: bytes, headers: dict[str, str], wait: float
) -> Outcome:
    try:
        reply = await backbone.request(subject, data, headers=headers, timeout=wait)
    except (DeadlineExceeded, NoResponders) as exc:
        return Retry(0.0, exc.message, exc.code)
    return outcome_of_reply(reply.data, reply.headers)


class _Traced:
    """A KV bucket or object store whose async calls are CLIENT spans (with a tracer) and
    whose object puts carry the trace in the object's info."""

    __slots__ = ("_bucket", "_kind", "_parent", "_store", "_tracer")

    def __init__(
        self, store: Any, tracer: Tracer | None, parent: TraceContext, kind: str, bucket: str
    ) -> None:
        self._store = store
        self._tracer = tracer
        self._parent = parent
        self._kind = kind
        self._bucket = bucket

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        tracer = self._tracer
        if self._kind == "objects" and name == "put":
            attribute = self._put(attribute)
        if tracer is None:
            return attribute

        async def traced(*args: Any, **kwargs: Any) -> Any:
            span = tracer.start_span(
                f"{self._kind} {name} {self._bucket}",
                kind=SpanKind.CLIENT,
                parent=self._parent,
                attributes={
                    "db.system.name": "nats" if self._kind == "kv" else "nats_object_store",
                    "db.operation.name": name,
                    "db.namespace": self._bucket,
                },
            )
            try:
                result = attribute(*args, **kwargs)
                if hasattr(result, "__await__"):
                    result = await result
                return result
            except BaseException as exc:
                span.record_exception(exc)
                raise
            finally:
                span.end()

        return traced

    def _put(self, put: Callable[..., Any]) -> Callable[..., Any]:
        async def put_traced(name: str, data: bytes) -> Any:
            headers: dict[str, str] = {}
            self._parent.child().write(headers)
            return await put(name, data, headers=headers)

        return put_traced
