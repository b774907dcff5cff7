"""``thaw serve`` exports its spans over OTLP/HTTP when the OTEL_* variables say so.

The path a user takes: a real ``thaw serve`` on the test's nats-server, with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a collector this test runs on loopback
(a plain HTTP server that decodes the OTLP protobuf the SDK posts). One order goes in
by HTTP, is published to a stream, consumed, and written to KV: the collector receives
every hop as spans of the one trace the request's ``traceparent`` began, with the
service name from ``OTEL_SERVICE_NAME``.
"""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats_fixtures import end_process, nats_server, serve_http_port  # noqa: F401
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from thaw.adapters.nats.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"

APP = textwrap.dedent(
    """
    import msgspec
    from thaw import Access, App, Context, http, stream

    app = App("{name}")

    class Order(msgspec.Struct):
        sku: str
        qty: int

    @app.capability(http("POST", "/orders"), access=Access(publishes=("{name}.orders.>",)))
    async def take(order: Order, ctx: Context) -> dict:
        await ctx.publish(f"{name}.orders.{{order.sku}}", order)
        return {{"queued": order.sku}}

    @app.capability(stream("{name}.orders.>"), access=Access(buckets=("{name}_stock",)))
    async def fulfil(order: Order, ctx: Context) -> None:
        kv = await ctx.kv("{name}_stock")
        await kv.put(order.sku, str(order.qty).encode())
    """
)


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (protobuf bodies on POST /v1/traces)."""

    def __init__(self, wanted: set[str]) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (service, name, trace id)
        self.complete = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    service = next(
                        (
                            a.value.string_value
                            for a in resource.resource.attributes
                            if a.key == "service.name"
                        ),
                        "",
                    )
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            collector.spans.append((service, span.name, span.trace_id.hex()))
                if wanted <= {name for _, name, _ in collector.spans}:
                    collector.complete.set()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def collector_for() -> Iterator[type[Collector]]:
    made: list[Collector] = []

    class Started(Collector):
        def __init__(self, wanted: set[str]) -> None:
            super().__init__(wanted)
            made.append(self)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    yield Started
    for collector in made:
        collector.server.shutdown()
        collector.server.server_close()


def test_thaw_serve_exports_one_trace_over_otlp(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
    collector_for: type[Collector],
) -> None:
    name = f"otlp{secrets.token_hex(3)}"
    (tmp_path / "app.py").write_text(APP.format(name=name))
    wanted = {
        "POST /orders",
        "invoke take",
        f"publish {name}.orders.ab",
        f"process {name}.orders.ab",
        "invoke fulfil",
        f"kv put {name}_stock",
    }
    collector = collector_for(wanted)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="shop",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 100 ms instead of every 5 s
    )
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(tmp_path / "app.py")]
    command += ["--nats", nats_server.url, "--http", "0", "--no-access-log"]
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path
        )
    try:
        port = serve_http_port(process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        connection.request(
            "POST",
            "/orders",
            body=b'{"sku": "ab", "qty": 3}',
            headers={"traceparent": TRACEPARENT, "content-type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        connection.close()
        assert collector.complete.wait(WAIT), (collector.spans, stderr_path.read_text()[-2000:])
    finally:
        end_process(process)
    ours = [span for span in collector.spans if span[1] in wanted]
    assert {trace for _, _, trace in ours} == {TRACE}, ours
    assert {service for service, _, _ in ours} == {"shop"}
