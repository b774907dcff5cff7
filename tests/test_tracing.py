"""Traces through OpenTelemetry (thaw.adapters.telemetry.tracing): one payment of
examples/payment_webhook from the HTTP answer to the ledger KV write is one trace;
a redelivered and a dead-lettered-then-replayed message stay in their trace; tracestate
rides along; with no tracer nothing is recorded and the plain capability class runs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest
from example_loader import load_example
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from thaw import App, Event, Idempotency, RetryLater, http, stream
from thaw.adapters.http.in_process import open_in_process_http
from thaw.adapters.telemetry.tracing import OtelTracer, tracer_from_environment
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.host._dead_letters import list_dead_letters, replay_dead_letter
from thaw.host._host import open_host
from thaw.invocation._invoker import CompiledCapability, Invoker, TracedCapability

APP, MODULES = load_example("payment_webhook")
signatures = MODULES["payment_webhook.signatures"]
ledger = MODULES["payment_webhook.ledger"]
SECRET = "whsec_test_secret"
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = "vendor=opaque,other=1"


@pytest.fixture
def spans() -> tuple[OtelTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracer(provider.get_tracer("test")), exporter


async def wait_for(check: Callable[[], Any], *, timeout: float = 10.0) -> Any:
    """Wait (bounded) until ``check()`` gives something truthy (awaited if a coroutine)."""
    with anyio.fail_after(timeout):
        while True:
            found = check()
            if hasattr(found, "__await__"):
                found = await found
            if found:
                return found
            await anyio.sleep(0.01)


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


@pytest.mark.anyio
async def test_one_payment_is_one_trace_from_the_http_answer_to_the_ledger_write(
    spans: tuple[OtelTracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer, exporter = spans
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", SECRET)
    body = msgspec.json.encode(
        {
            "id": "evt_00000001",
            "type": "payment.succeeded",
            "created": "2026-01-01T12:00:00Z",
            "payment_id": "pay_00000001",
            "amount": 10_000,
            "currency": "USD",
            "customer": "cus_ABC12345",
        }
    )
    headers = {
        "Webhook-Signature": signatures.sign(SECRET, int(time.time()), body),
        "traceparent": PARENT,
        "tracestate": STATE,
    }
    backbone = MemoryBackbone()
    async with (
        open_host(APP, backbone, tracer=tracer, fetch_timeout=0.05) as host,
        open_in_process_http(host) as http,
    ):
        response = await http.post("/webhooks/payments", content=body, headers=headers)
        assert response.status in (200, 202), response.text
        kv = await backbone.kv("ledger")
        await wait_for(lambda: kv.get("acct.USD.cus_ABC12345"))
        await wait_for(lambda: named(exporter, "kv "))
    finished = exporter.get_finished_spans()
    assert {trace_of(s) for s in finished} == {PARENT.split("-")[1]}, [s.name for s in finished]
    (server,) = [s for s in finished if s.kind is SpanKind.SERVER and s.name.startswith("POST")]
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == response.status
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT.split("-")[2]
    (publish,) = named(exporter, "publish payments.")
    (consume,) = named(exporter, "process payments.")
    assert consume.kind is SpanKind.CONSUMER and consume.parent is not None
    assert consume.parent.span_id == publish.context.span_id  # type: ignore[union-attr]
    assert [link.context.span_id for link in consume.links] == [publish.context.span_id]  # type: ignore[union-attr]
    invokes = {s.name: s for s in named(exporter, "invoke ")}
    apply = invokes["invoke apply_payment"]
    assert apply.attributes is not None
    assert apply.attributes["faas.trigger"] == "pubsub"
    assert apply.attributes["thaw.isolation"] == "shared"
    assert "faas.coldstart" in apply.attributes
    writes = [
        s
        for s in named(exporter, "kv ")
        if s.attributes and s.attributes.get("db.namespace") == "ledger"
    ]
    assert writes, [s.name for s in finished]
    # tracestate is carried unchanged on every hop
    assert {s.context.trace_state.to_header() for s in finished} == {STATE}  # type: ignore[union-attr]


flaky = App("traced")
runs: list[int] = []


@flaky.capability(stream("jobs.>"))
async def job(payload: bytes) -> None:
    runs.append(len(runs))
    if len(runs) == 1:
        raise RetryLater("first attempt fails", delay=0.01)
    raise ValueError("and then every time")


@pytest.mark.anyio
async def test_a_trace_survives_redelivery_and_a_dead_letter_replay(
    spans: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = spans
    runs.clear()
    backbone = MemoryBackbone()
    async with open_host(flaky, backbone, tracer=tracer, fetch_timeout=0.05):
        await backbone.publish(
            "jobs.a", b"x", headers={"traceparent": PARENT, "tracestate": STATE}, msg_id="j1"
        )
        dead = await wait_for(lambda: list_dead_letters(backbone))
        attempts = len(runs)
        assert attempts >= 2
        await replay_dead_letter(backbone, dead[0].seq)
        await wait_for(lambda: len(runs) > attempts)
        await wait_for(lambda: len(named(exporter, "process jobs.a")) > attempts)
    consumed = named(exporter, "process jobs.a")
    trace_id = PARENT.split("-")[1]
    assert {trace_of(s) for s in consumed} == {trace_id}
    producer = int(PARENT.split("-")[2], 16)
    # one span per attempt, each linked to the one producer context; the replay's links
    # to the attempt that dead-lettered it (its context is in the dead letter)
    links = [[link.context.span_id for link in s.links] for s in consumed]
    assert links[:attempts] == [[producer]] * attempts
    last = consumed[attempts - 1].context
    assert last is not None and links[attempts] == [last.span_id]
    attempts_seen = [s.attributes["thaw.delivery.attempt"] for s in consumed]  # type: ignore[index]
    assert attempts_seen[:attempts] == list(range(1, attempts + 1))
    assert consumed[attempts - 1].attributes["thaw.action"] == "deadletter"  # type: ignore[index]
    assert {s.context.trace_state.to_header() for s in consumed} == {STATE}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_without_a_tracer_nothing_is_traced_and_the_plain_path_runs() -> None:
    plain = Invoker(flaky)
    assert type(plain.capability("job")) is CompiledCapability
    traced = Invoker(flaky, tracer=OtelTracer())
    assert type(traced.capability("job")) is TracedCapability


@pytest.mark.anyio
async def test_an_object_put_carries_its_trace_to_what_it_triggers() -> None:
    backbone = MemoryBackbone()
    from thaw.backbone._contract import ObjectStoreConfig

    await backbone.add_object_store(ObjectStoreConfig(bucket="up"))
    store = await backbone.object_store("up")
    await store.put("a", b"1", headers={"traceparent": PARENT, "tracestate": STATE})
    from thaw.host._worker import _object_trace

    (message,) = [m async for m in _meta_messages(backbone)]
    headers: dict[str, str] = {}
    assert _object_trace(message, headers) == PARENT
    assert headers == {"tracestate": STATE}


async def _meta_messages(backbone: MemoryBackbone) -> AsyncIterator[bytes]:
    stored = await backbone.get_message("OBJ_up", 1)
    yield stored.data


def test_no_otel_variables_no_tracer() -> None:
    assert tracer_from_environment({}) is None
    assert tracer_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracer_from_environment({"OTEL_SERVICE_NAME": "x"}) is None


def test_context_tracestate_is_read_from_the_event() -> None:
    from thaw.declarations._context import CapabilityEnv, Context

    env = Invoker(flaky).capability("job")._env
    ctx = Context(env, Event(id="e", traceparent=PARENT, headers={"tracestate": STATE}), 1.0)
    assert ctx.trace.tracestate == STATE
    assert isinstance(env, CapabilityEnv)


queued = App("queued")


class Job(msgspec.Struct):
    n: int


@queued.capability(
    http("POST", "/jobs", enqueue="queued.jobs"), stream("queued.jobs"), idempotency=Idempotency()
)
async def run_job(job: Job) -> None:
    return None


@pytest.mark.anyio
async def test_an_enqueue_route_is_a_producer_span_the_consumer_links_to(
    spans: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = spans
    backbone = MemoryBackbone()
    async with (
        open_host(queued, backbone, tracer=tracer, fetch_timeout=0.05) as host,
        open_in_process_http(host) as client,
    ):
        response = await client.post("/jobs", content=b'{"n": 1}', headers={"traceparent": PARENT})
        assert response.status == 202, response.text
        await wait_for(lambda: named(exporter, "invoke run_job"))
    (publish,) = named(exporter, "publish queued.jobs")
    (consume,) = named(exporter, "process queued.jobs")
    (server,) = named(exporter, "POST /jobs")
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None and server.context is not None
    assert publish.parent.span_id == server.context.span_id
    assert publish.context is not None
    assert [link.context.span_id for link in consume.links] == [publish.context.span_id]
    assert {trace_of(s) for s in (server, publish, consume)} == {PARENT.split("-")[1]}
