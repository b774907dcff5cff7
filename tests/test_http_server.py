"""The server end to end: the examples over real sockets with a standard-library client."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from example_loader import load_example
from test_http_support import WAIT, RawClient, request, serving

from thaw import App
from thaw import http as http_trigger
from thaw.adapters.http import HttpConfig, HttpServer, open_http_server, serve_http
from thaw.host._host import open_host
from thaw.lowlevel import Invoker
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
LOOPS = pytest.mark.parametrize(
    "anyio_backend",
    [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
    ids=["asyncio", "uvloop"],
)


class Page(msgspec.Struct):
    shelf: str
    limit: int = 10
    sort: list[str] = []


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, calls: list[tuple[str, str, bytes | None, dict[str, str]]]) -> list[Answer]:
    """Run requests on one keep-alive connection with http.client (in a worker thread)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    answers = []
    try:
        for method, path, body, headers in calls:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answers.append(
                Answer(
                    response.status,
                    {k.lower(): v for k, v in response.getheaders()},
                    response.read(),
                )
            )
    finally:
        connection.close()
    return answers


async def call(port: int, *calls: tuple[str, str, bytes | None, dict[str, str]]) -> list[Answer]:
    with anyio.fail_after(WAIT * 2):
        return await anyio.to_thread.run_sync(exchange, port, list(calls))


def post(path: str, body: bytes, **headers: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    return ("POST", path, body, {"content-type": "application/json", **headers})


def get(path: str, **headers: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    return ("GET", path, None, headers)


@LOOPS
async def test_hello_greets_over_http(anyio_backend: object) -> None:
    hello, _ = load_example("hello")
    async with serving(hello) as server:
        running = type(asyncio.get_running_loop()).__module__
        assert running.startswith("uvloop") == (anyio_backend[1]["use_uvloop"])  # type: ignore[index]
        answers = await call(
            server.port,
            post("/greet", b'{"name": "Ada", "language": "fr"}'),
            post("/greet", b'{"name": 42}'),
            post("/greet", b'{"name": "Ada"'),
            post("/greet", b'{"name": "Ada", "language": "tlh"}'),
            get("/greet"),
            get("/nowhere"),
        )
    ok, contract, malformed, rejected, wrong_method, missing = answers
    assert (ok.status, ok.json()) == (200, {"message": "Bonjour, Ada!", "attempt": 1})
    assert ok.headers["content-type"] == "application/json"
    assert contract.status == 422
    assert contract.headers["content-type"] == "application/problem+json"
    assert contract.json()["code"] == "contract_invalid"
    assert contract.json()["detail"] == "Expected `str`, got `int` - at `$.name`"
    assert (malformed.status, malformed.json()["code"]) == (400, "payload_malformed")
    assert (rejected.status, rejected.json()["code"]) == (422, "unknown_language")
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "OPTIONS, POST")
    assert (missing.status, missing.json()["code"]) == (404, "route_not_found")


async def test_idempotency_key_replays_the_stored_answer() -> None:
    hello, _ = load_example("hello")
    async with serving(hello) as server:
        first, second, reused, other = await call(
            server.port,
            post("/greet", b'{"name": "Grace"}', **{"Idempotency-Key": "greet-1"}),
            post("/greet", b'{"name": "Grace"}', **{"Idempotency-Key": "greet-1"}),
            post("/greet", b'{"name": "Someone else"}', **{"Idempotency-Key": "greet-1"}),
            post("/greet", b'{"name": "Linus"}'),
        )
    assert first.status == second.status == 200
    assert second.body == first.body == b'{"message":"Hello, Grace!","attempt":1}'
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # The key names one request: another body under it is refused, never given Grace's answer.
    assert reused.status == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert b"Grace" not in reused.body
    assert other.json()["message"] == "Hello, Linus!"


async def test_a_failing_function_answers_5xx_with_retry_after_and_no_internals() -> None:
    hello, _ = load_example("hello")
    async with serving(hello) as server:
        (flaky,) = await call(server.port, post("/greet", b'{"name": "Flaky"}'))
    assert flaky.status == 500
    assert flaky.headers["retry-after"] == "1"
    problem = flaky.json()
    assert problem["code"] == "handler_error"
    assert "hiccupped" not in problem["detail"] and "ConnectionError" not in problem["detail"]
    assert problem["event_id"].startswith("~")


async def test_get_routes_take_path_and_query_parameters() -> None:
    app = App("params")

    @app.capability(http_trigger("GET", "/shelves/{shelf}/books"))
    async def books(page: Page) -> Page:
        return page

    async with serving(app) as server:
        ok, bad = await call(
            server.port,
            get("/shelves/sci%20fi/books?limit=2&sort=title&sort=year"),
            get("/shelves/x/books?limit=two"),
        )
    assert ok.json() == {"shelf": "sci fi", "limit": 2, "sort": ["title", "year"]}
    assert (bad.status, bad.json()["detail"]) == (422, "Expected `int`, got `str` - at `$.limit`")


async def test_health_and_readiness_and_draining() -> None:
    app = App("ops")

    @app.capability(http_trigger("GET", "/ok"))
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    async with serving(app, HttpConfig(drain_timeout=WAIT)) as server:
        health, ready, answer, head = await call(
            server.port,
            get("/healthz"),
            get("/readyz"),
            get("/ok"),
            ("HEAD", "/ok", None, {}),
        )
        assert (health.status, health.json()) == (200, {"status": "ok"})
        assert (ready.status, ready.json()) == (200, {"status": "ready"})
        assert (answer.status, answer.body) == (200, b'{"ok":true}')
        assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "11")
        async with RawClient.connect(server.port) as client:
            await client.send(request("GET", "/readyz"))
            assert (await client.response()).status == 200
            async with anyio.create_task_group() as group:
                group.start_soon(server.drain)
                await client.closed()
        assert server.draining


async def test_payment_webhook_intake_over_http_on_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", "whsec_http_test")
    app, modules = load_example("payment_webhook")
    signatures = modules["payment_webhook.signatures"]
    event = {
        "id": "evt_http00001",
        "type": "payment.succeeded",
        "created": "2026-01-01T12:00:00Z",
        "payment_id": "pay_00000001",
        "amount": 10_000,
        "currency": "USD",
        "customer": "cus_ABC12345",
        "metadata": {},
    }
    body = msgspec.json.encode(event)
    signature = signatures.sign("whsec_http_test", int(time.time()), body)
    backbone = MemoryBackbone()
    async with open_host(app, backbone) as host, open_http_server(host) as server:
        accepted, unsigned, quote = await call(
            server.port,
            post("/webhooks/payments", body, **{"Webhook-Signature": signature}),
            post("/webhooks/payments", body),
            post("/fees/quote", b'{"amount": 1999, "currency": "EUR"}'),
        )
        assert accepted.status == 200, accepted.body
        assert accepted.json()["event_id"] == "evt_http00001"
        assert unsigned.status == 401  # the function chose it: Rejected(http_status=401)
        assert "Webhook-Signature" in unsigned.json()["detail"]
        assert quote.status == 200 and quote.json()["currency"] == "EUR"
        with anyio.fail_after(WAIT):  # the stream worker applies it to the ledger
            ledger = await backbone.kv("ledger")
            # The backbone has no KV watch yet: poll the ledger, bounded by fail_after.
            while await ledger.get("acct.USD.cus_ABC12345") is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_serve_http_serves_until_cancelled_then_drains() -> None:
    app = App("served")

    @app.capability(http_trigger("GET", "/ok"))
    async def ok() -> None:
        return None

    ready: list[HttpServer] = []
    started = anyio.Event()

    def on_ready(server: HttpServer) -> None:
        ready.append(server)
        started.set()

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve_http(Invoker(app), on_ready=on_ready))
        with anyio.fail_after(WAIT):
            await started.wait()
        (answer,) = await call(ready[0].port, get("/ok"))
        assert answer.status == 204 and answer.body == b""
        group.cancel_scope.cancel()
    assert ready[0].draining
    assert ready[0].statistics().connections == 0


def _wait_for_line(process: subprocess.Popen[str], predicate: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + WAIT * 2
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if predicate(line):
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError("the server did not say it was serving")


def test_python_m_adapters_http_serves_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thaw.adapters.http",
            str(ROOT / "examples" / "hello"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        line = _wait_for_line(process, lambda text: text.startswith("serving"))
        port = int(line.rsplit(":", 1)[1])
        (answer,) = exchange(port, [post("/greet", b'{"name": "Ada"}')])
        assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT * 2) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        assert process.stdout is not None
        process.stdout.close()
