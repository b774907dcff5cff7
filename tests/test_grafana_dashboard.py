"""docs/grafana-dashboard.json: valid JSON whose every expression names metrics a
served host's ``/metrics`` exposes, with a panel for each thing an operator looks at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from test_http_support import RawClient, request

from thaw import App, stream
from thaw import http as http_trigger

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
_METRIC = re.compile(r"\b(?:thaw|process)_[a-z0-9_]+")
# What the dashboard must show (the final family names other tools code against too).
SHOWN = (
    "thaw_invocations_total",
    "thaw_invocation_duration_seconds_bucket",
    "thaw_invocation_cpu_seconds_total",
    "thaw_invocation_bytes_in_total",
    "thaw_invocation_bytes_out_total",
    "thaw_invocations_in_flight",
    "thaw_message_age_seconds_bucket",
    "thaw_message_completion_seconds_bucket",
    "thaw_stream_deliveries_total",
    "thaw_retry_budget_refusals_total",
    "thaw_stream_pending",
    "thaw_cold_starts_total",
    "thaw_cold_start_seconds_bucket",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
)
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct):
    amount: int


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def exposed(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            if kind == "histogram":
                names.update(family + part for part in _HISTOGRAM_PARTS)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_has_panels_with_expressions() -> None:
    assert len(expressions()) >= 12


def test_the_dashboard_shows_latency_by_trigger_age_completion_cost_and_retries() -> None:
    used = {name for expr in expressions() for name in _METRIC.findall(expr)}
    assert set(SHOWN) <= used, sorted(set(SHOWN) - used)
    by_trigger = [e for e in expressions() if "thaw_invocation_duration_seconds_bucket" in e]
    assert by_trigger and all("trigger" in e for e in by_trigger)
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


async def test_every_metric_of_the_dashboard_is_in_a_scrape() -> None:
    from thaw.adapters.http import open_http_server
    from thaw.lowlevel import open_host
    from thaw.testing import MemoryBackbone

    app = App("dashboard")

    @app.capability(http_trigger("POST", "/orders"), stream("orders.placed"))
    async def place(order: Order) -> dict[str, int]:
        return {"amount": order.amount}

    async with (
        open_host(app, MemoryBackbone(), fetch_timeout=0.05) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/orders", b'{"amount": 3}'))
        assert (await client.response()).status == 200
        await client.send(request("GET", "/metrics"))
        reply = await client.response()
    names = exposed(reply.body.decode())
    wanted = {name for expr in expressions() for name in _METRIC.findall(expr)}
    assert wanted, "no thaw_ metric in the dashboard"
    assert wanted <= names, sorted(wanted - names)
