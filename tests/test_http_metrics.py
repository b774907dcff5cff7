"""/metrics: the Prometheus text exposition (0.0.4), checked by a strict little parser."""

from __future__ import annotations

import math
import re

import anyio
import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, Reject, Rejected
from thaw import http as http_trigger
from thaw.adapters.http import HttpConfig
from thaw.adapters.http.metrics import (
    BUCKETS,
    CapabilityMetrics,
    ServerCounters,
    escape_label,
    render,
)
from thaw.lowlevel import Invoker

pytestmark = pytest.mark.anyio

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)\Z")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)\Z")
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|\Z)')
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Families (name -> type) and samples; fails on anything the format does not allow."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: Samples = {}
    current = ""
    for line in text[:-1].split("\n"):
        if found := _HELP.match(line):
            assert found.group(1) not in helps, f"HELP twice: {line}"
            helps.add(found.group(1))
            current = found.group(1)
            continue
        if found := _TYPE.match(line):
            name, kind = found.groups()
            assert name not in types, f"TYPE twice: {line}"
            assert name == current, "TYPE follows its HELP"
            types[name] = kind
            continue
        assert not line.startswith("#"), f"unexpected comment: {line!r}"
        found = _SAMPLE.match(line)
        assert found, f"not a sample line: {line!r}"
        name, labels_text, value = found.groups()
        family = name
        for suffix in _SUFFIXES.get(types.get(current, ""), ()):
            if name == current + suffix:
                family = current
        assert family == current, f"sample {name} outside its family {current}"
        labels: set[tuple[str, str]] = set()
        rest = labels_text or ""
        while rest:
            label = _LABEL.match(rest)
            assert label, f"bad labels in {line!r}"
            labels.add((label.group(1), _unescape(label.group(2))))
            rest = rest[label.end() :]
        key = (name, frozenset(labels))
        assert key not in samples, f"sample twice: {line}"
        samples[key] = math.inf if value == "+Inf" else float(value)
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


class Order(msgspec.Struct):
    amount: int


def metered_app() -> App:
    app = App("metered")

    @app.capability(http_trigger("POST", "/orders"))
    async def place(order: Order) -> dict[str, int]:
        if order.amount < 0:
            raise Rejected("amount must not be negative", code="amount_negative")
        return {"amount": order.amount}

    return app


async def test_metrics_count_outcomes_latency_and_server_answers() -> None:
    config = HttpConfig(max_body=64)
    async with serving(metered_app(), config) as server, RawClient.connect(server.port) as client:
        for body in (b'{"amount": 1}', b'{"amount": 2}', b'{"amount": -1}', b'{"amount": "x"}'):
            await client.send(request("POST", "/orders", body))
            await client.response()
        await client.send(request("GET", "/nowhere"))
        assert (await client.response()).status == 404
        await client.send(request("GET", "/metrics"))
        reply = await client.response()
        async with RawClient.connect(server.port) as other:
            await other.send(request("POST", "/orders", b"x" * 100))
            assert (await other.response()).status == 413
            await other.closed()
        await client.send(request("GET", "/metrics"))
        after = await client.response()
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types, samples = parse(reply.body.decode())
    assert types == {
        "thaw_invocations_total": "counter",
        "thaw_invocation_duration_seconds": "histogram",
        "thaw_invocation_cpu_seconds_total": "counter",
        "thaw_invocation_bytes_in_total": "counter",
        "thaw_invocation_bytes_out_total": "counter",
        "thaw_invocations_in_flight": "gauge",
        "thaw_message_age_seconds": "histogram",
        "thaw_message_completion_seconds": "histogram",
        "thaw_http_connections_total": "counter",
        "thaw_http_connections_open": "gauge",
        "thaw_http_requests_in_flight": "gauge",
        "thaw_http_responses_total": "counter",
        "thaw_http_refusals_total": "counter",
        "process_cpu_seconds_total": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_max_resident_memory_bytes": "gauge",
        "process_start_time_seconds": "gauge",
    }
    total = "thaw_invocations_total"
    http = {"capability": "place", "trigger": "http"}
    assert value(samples, total, **http, outcome="ok", code="") == 2
    reject = value(samples, total, **http, outcome="reject", code="amount_negative")
    assert reject == 1
    invalid = value(samples, total, **http, outcome="reject", code="contract_invalid")
    assert invalid == 1
    count = value(samples, "thaw_invocation_duration_seconds_count", **http)
    assert count == 4
    inf = value(samples, "thaw_invocation_duration_seconds_bucket", **http, le="+Inf")
    assert inf == 4
    buckets = [
        value(samples, "thaw_invocation_duration_seconds_bucket", **http, le=repr(b))
        for b in BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] <= 4
    assert value(samples, "thaw_invocation_duration_seconds_sum", **http) >= 0
    sent = len(b'{"amount": 1}') + len(b'{"amount": 2}') + len(b'{"amount": -1}')
    assert value(samples, "thaw_invocation_bytes_in_total", capability="place") == sent + len(
        b'{"amount": "x"}'
    )
    out = len(b'{"amount":1}') + len(b'{"amount":2}')
    assert value(samples, "thaw_invocation_bytes_out_total", capability="place") == out
    assert value(samples, "thaw_invocation_cpu_seconds_total", capability="place") >= 0
    assert ("thaw_message_age_seconds_count", frozenset({("capability", "place")})) not in samples
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_start_time_seconds") > 1.5e9
    assert value(samples, "thaw_invocations_in_flight", capability="place") == 0
    assert value(samples, "thaw_http_connections_open") == 1
    assert value(samples, "thaw_http_connections_total") == 1
    assert value(samples, "thaw_http_requests_in_flight") == 0
    assert value(samples, "thaw_http_responses_total", **{"class": "2xx"}) == 2
    assert value(samples, "thaw_http_responses_total", **{"class": "4xx"}) == 3
    _, later = parse(after.body.decode())
    assert value(later, "thaw_http_refusals_total", status="413") == 1
    assert value(later, "thaw_http_connections_total") == 2
    assert value(later, "thaw_http_responses_total", **{"class": "2xx"}) == 3  # the first scrape


async def test_in_flight_gauge_counts_a_running_invocation() -> None:
    app = App("slow")
    entered, release = anyio.Event(), anyio.Event()

    @app.capability(http_trigger("GET", "/wait"))
    async def wait() -> None:
        entered.set()
        await release.wait()

    async with (
        serving(app) as server,
        RawClient.connect(server.port) as busy,
        RawClient.connect(server.port) as scraper,
    ):
        await busy.send(request("GET", "/wait"))
        with anyio.fail_after(5):
            await entered.wait()
        await scraper.send(request("GET", "/metrics"))
        _, samples = parse((await scraper.response()).body.decode())
        release.set()
        assert (await busy.response()).status == 204
    assert value(samples, "thaw_invocations_in_flight", capability="wait") == 1
    assert value(samples, "thaw_http_requests_in_flight") == 1


async def test_metrics_path_is_configurable_and_can_be_off() -> None:
    config = HttpConfig(metrics_path="")
    async with serving(metered_app(), config) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/metrics"))
        assert (await client.response()).status == 404


def test_label_values_and_help_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    metrics = CapabilityMetrics('we"ird\\name\n')
    metrics.observe(Reject("odd", "no"), 0.001)
    metrics.observe(Reject('in"jected\nlabel', "no"), 0.001)
    text = render(
        [metrics], ServerCounters(), connections_open=0, connections_total=0, requests_in_flight=0
    ).decode()
    _, samples = parse(text)
    name = 'we"ird\\name\n'
    labels = {"capability": name, "trigger": "http", "outcome": "reject"}
    assert value(samples, "thaw_invocations_total", **labels, code="odd") == 1
    assert value(samples, "thaw_invocations_total", **labels, code="other") == 1
    assert value(samples, "thaw_http_responses_total", **{"class": "5xx"}) == 0


def test_the_exposition_needs_no_server() -> None:
    app = metered_app()
    from thaw.adapters.http import HttpService

    service = HttpService(Invoker(app), config=HttpConfig())
    assert service.metrics["place"] is service.accounting.account("place")
    text = service.operational("/metrics")
    assert text is not None
    _, samples = parse(text.body.decode())
    labels = {"capability": "place", "trigger": "http", "outcome": "ok", "code": ""}
    assert value(samples, "thaw_invocations_total", **labels) == 0


async def test_a_served_host_exposes_its_stream_workers() -> None:
    from thaw import RetryPolicy, stream
    from thaw.adapters.http import open_http_server
    from thaw.lowlevel import open_host
    from thaw.testing import MemoryBackbone

    app = App("streamed")

    @app.capability(stream("jobs.run"), retry=RetryPolicy(max_attempts=1))
    async def run(order: Order) -> None:
        if order.amount < 0:
            raise Rejected("negative", code="amount_negative")

    backbone = MemoryBackbone()
    async with (
        open_host(app, backbone, fetch_timeout=0.05) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        for amount in (1, 2, -1):
            await backbone.publish("jobs.run", msgspec.json.encode({"amount": amount}))
        worker = host.workers["run"]
        with anyio.fail_after(10):
            while True:
                numbers = worker.statistics()
                if numbers.acked + numbers.dead_lettered == 3:
                    break
                await anyio.sleep(0.01)  # the worker's progress has no event to wait on
        await client.send(request("GET", "/metrics"))
        reply = await client.response()
    types, samples = parse(reply.body.decode())
    assert types["thaw_stream_deliveries_total"] == "counter"
    name = "thaw_stream_deliveries_total"
    assert value(samples, name, capability="run", consumer="", action="ack") == 2
    assert value(samples, name, capability="run", consumer="", action="dead_letter") == 1
    assert value(samples, name, capability="run", consumer="", action="nak") == 0
    assert types["thaw_stream_pending"] == "gauge"
    assert value(samples, "thaw_stream_pending", capability="run", consumer="") == 0  # caught up
