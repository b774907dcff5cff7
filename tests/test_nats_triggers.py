"""The core NATS ``subject`` trigger: request/reply with nats-py against a real nats-server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats_fixtures import nats_server  # noqa: F401

from thaw import App, Context, Ok, Reject, Rejected, Retry, subject
from thaw.adapters.nats import EmbeddedServer
from thaw.adapters.nats.subject_services import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    SubjectServices,
    open_subject_services,
    service_reply,
)
from thaw.lowlevel import Invoker

pytestmark = pytest.mark.anyio


class Greeting(msgspec.Struct, frozen=True):
    name: str


class Gate:
    """Holds ``limited`` calls until opened; records how many ran at once."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.full = anyio.Event()  # two calls are running
        self.running = 0
        self.most = 0


def service_app(name: str, gate: Gate, traces: list[str]) -> App:
    app = App(name)

    @app.capability(subject(f"{name}.greet"))
    async def greet(greeting: Greeting, ctx: Context) -> dict[str, str]:
        traces.append(ctx.trace.trace_id)
        if greeting.name == "nobody":
            raise Rejected("say who to greet", code="name_missing")
        if greeting.name == "crash":
            raise RuntimeError("password=hunter2")
        return {"message": f"Hello, {greeting.name}!"}

    @app.capability(subject(f"{name}.slow"), timeout=0.2)
    async def slow() -> None:
        await anyio.sleep(30)

    @app.capability(subject(f"{name}.limited", queue="workers"), concurrency=2)
    async def limited() -> dict[str, int]:
        gate.running += 1
        gate.most = max(gate.most, gate.running)
        if gate.running == 2:
            gate.full.set()
        try:
            await gate.open.wait()
        finally:
            gate.running -= 1
        return {"most": gate.most}

    return app


@pytest.fixture
async def client(nats_server: EmbeddedServer) -> AsyncIterator[Client]:  # noqa: F811
    connection = await nats.connect(nats_server.url)
    try:
        yield connection
    finally:
        await connection.close()


@dataclass
class Served:
    name: str
    gate: Gate
    traces: list[str]
    services: SubjectServices


@pytest.fixture
async def served(client: Client) -> AsyncIterator[Served]:
    name = f"svc{uuid.uuid4().hex[:8]}"
    gate, traces = Gate(), list[str]()
    invoker = Invoker(service_app(name, gate, traces))
    async with open_subject_services(invoker, client, drain_timeout=1.0) as services:
        yield Served(name, gate, traces, services)
        gate.open.set()


async def test_ok_answers_the_encoded_result_and_keeps_the_trace(
    client: Client, served: Served
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with anyio.fail_after(5):
        reply = await client.request(
            f"{served.name}.greet", b'{"name": "Ada"}', timeout=5, headers={"traceparent": parent}
        )
    assert json.loads(reply.data) == {"message": "Hello, Ada!"}
    assert not reply.headers or ERROR_HEADER not in reply.headers
    assert served.traces == [trace_id]


async def test_contract_and_function_errors_are_micro_errors_without_internals(
    client: Client, served: Served
) -> None:
    with anyio.fail_after(5):
        bad = await client.request(f"{served.name}.greet", b'{"name": 42}', timeout=5)
        refused = await client.request(f"{served.name}.greet", b'{"name": "nobody"}', timeout=5)
        crashed = await client.request(f"{served.name}.greet", b'{"name": "crash"}', timeout=5)
    assert bad.headers is not None and bad.headers[ERROR_CODE_HEADER] == "contract_invalid"
    assert "$.name" in bad.headers[ERROR_HEADER]
    assert refused.headers is not None and refused.headers[ERROR_CODE_HEADER] == "name_missing"
    assert refused.headers[ERROR_HEADER] == "say who to greet"
    assert crashed.headers is not None and crashed.headers[ERROR_CODE_HEADER] == "handler_error"
    for text in (crashed.headers[ERROR_HEADER], crashed.data.decode()):
        assert "hunter2" not in text and "Traceback" not in text
    assert json.loads(crashed.data)["code"] == "handler_error"
    stats = served.services.statistics()["greet"]
    assert (stats.num_requests, stats.num_errors) == (3, 3)


async def test_a_call_past_the_capability_timeout_answers_deadline_exceeded(
    client: Client, served: Served
) -> None:
    with anyio.fail_after(5):
        reply = await client.request(f"{served.name}.slow", b"", timeout=5)
    assert reply.headers is not None
    assert reply.headers[ERROR_CODE_HEADER] == "deadline_exceeded"


async def test_requests_beyond_the_concurrency_limit_wait_for_a_slot(
    client: Client, served: Served
) -> None:
    replies: list[bytes] = []

    async def ask() -> None:
        reply = await client.request(f"{served.name}.limited", b"", timeout=10)
        replies.append(reply.data)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(ask)
            await served.gate.full.wait()
            assert served.services.statistics()["limited"].in_flight == 2
            served.gate.open.set()
    assert len(replies) == 6
    assert served.gate.most == 2
    assert served.services.statistics()["limited"].queue_group == "workers"


async def test_the_app_answers_micro_discovery(client: Client, served: Served) -> None:
    with anyio.fail_after(5):
        await client.request(f"{served.name}.greet", b'{"name": "Ada"}', timeout=5)
        ping = json.loads((await client.request(f"$SRV.PING.{served.name}", b"", timeout=5)).data)
        info = json.loads((await client.request(f"$SRV.INFO.{served.name}", b"", timeout=5)).data)
        stats = json.loads(
            (await client.request(f"$SRV.STATS.{served.name}.{ping['id']}", b"", timeout=5)).data
        )
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["name"] == served.name
    assert {e["name"]: e["subject"] for e in info["endpoints"]} == {
        "greet": f"{served.name}.greet",
        "slow": f"{served.name}.slow",
        "limited": f"{served.name}.limited",
    }
    greet = next(e for e in stats["endpoints"] if e["name"] == "greet")
    assert (greet["num_requests"], greet["queue_group"]) == (1, served.name)


def test_service_reply_is_a_pure_mapping_of_outcomes() -> None:
    assert service_reply(Ok(b'{"a":1}')) == (b'{"a":1}', {})
    body, headers = service_reply(Retry(2.5, "busy", "overloaded"))
    assert headers[ERROR_CODE_HEADER] == "overloaded"
    assert headers["Retry-After"] == "3"
    assert json.loads(body)["code"] == "overloaded"
    _, headers = service_reply(Reject("handler_error", "KeyError: 'secret'"))
    assert "secret" not in headers[ERROR_HEADER]
