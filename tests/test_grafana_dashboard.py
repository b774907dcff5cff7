"""docs/grafana-dashboard.json: valid JSON whose every expression names metrics a
served host's ``/metrics`` exposes."""

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
_METRIC = re.compile(r"\bthaw_[a-z0-9_]+")
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
