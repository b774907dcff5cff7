"""TestHost: a whole app on a MemoryBackbone and a FakeClock, driven from a test.

A realistic app: a stream capability writing KV, a schedule, a capability that always
fails and ends in the dead-letter stream; everything asserted on outcomes, and that
leaving is instant is read from the FakeClock (it never moves while leaving). Then
what only a FakeClock shows of ``th.http`` (a signature going stale as the clock
moves) and the client's own behaviour; the contract both backbones share is
tests/test_host_contract.py.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from thaw import Access, App, ConfigError, Context, Ok, RetryPolicy, Webhook, http, schedule, stream
from thaw.adapters.http.webhooks import sign
from thaw.testing import FakeClock, TestHost, invoke

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


app = App("shop")


@app.capability(stream("shop.orders"), access=Access(buckets=("ledger",)))
async def record_order(order: Order, ctx: Context) -> None:
    ledger = await ctx.kv("ledger")
    await ledger.put(order.order_id, str(order.amount).encode())


@app.capability(schedule("* * * * *"), access=Access(buckets=("ledger",)))
async def count_ticks(ctx: Context) -> None:
    ledger = await ctx.kv("ledger")
    entry = await ledger.get("ticks")
    ticks = int(entry.value) + 1 if entry is not None else 1
    await ledger.put("ticks", str(ticks).encode())


@app.capability(stream("shop.broken"), retry=RetryPolicy(max_attempts=3))
async def always_fails(data: bytes) -> None:
    raise RuntimeError("the provider is down")


async def test_a_published_order_lands_in_kv_once_settled() -> None:
    async with TestHost(app) as th:
        await th.publish("shop.orders", {"order_id": "o-1", "amount": 1999})
        await th.settle()
        entry = await (await th.kv("ledger")).get("o-1")
        assert entry is not None and entry.value == b"1999"
        assert [m.subject for m in await th.published("shop.>")] == ["shop.orders"]
        assert await th.dead_letters() == []


async def test_advancing_time_fires_each_schedule_tick() -> None:
    async with TestHost(app) as th:
        ledger = await th.kv("ledger")
        assert await ledger.get("ticks") is None
        await th.advance(60)
        first = await ledger.get("ticks")
        assert first is not None and first.value == b"1"
        await th.advance(120)
        later = await ledger.get("ticks")
        assert later is not None and later.value == b"3"


async def test_a_failing_capability_retries_then_is_dead_lettered() -> None:
    async with TestHost(app) as th:
        await th.publish("shop.broken", b"x")
        await th.settle()
        assert await th.dead_letters() == []  # the first attempt failed; a retry is due
        await th.advance(600)  # every backoff passes
        (dead,) = await th.dead_letters()
        assert dead.data == b"x"
        assert any("handler_error" in value for value in dead.headers.values())


async def test_leaving_is_instant_on_the_fake_clock() -> None:
    clock = FakeClock()
    entered, left = anyio.Event(), anyio.Event()
    readings: list[float] = []

    async def run_host() -> None:
        async with TestHost(app, clock=clock) as th:
            await th.publish("shop.orders", {"order_id": "o-2", "amount": 5})
            await th.settle()
            readings.append(clock.now())
            entered.set()
        readings.append(clock.now())
        left.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run_host)
        await entered.wait()
        # Once every task is blocked, leaving has either finished or is waiting for a
        # time (the drain timeout it used to sit out: 10 s per test); no wall clock read.
        await TestHost(app).settle()
        finished = left.is_set()
        group.cancel_scope.cancel()
    assert finished, "leaving waited for a timeout instead of ending the parked fetches"
    assert readings[0] == readings[1]


async def test_invoke_provisions_the_buckets_the_app_declares() -> None:
    outcome = await invoke(app, "record_order", {"order_id": "o-3", "amount": 7})
    assert outcome == Ok(b"null") or type(outcome) is Ok


async def test_advance_refuses_going_backwards() -> None:
    async with TestHost(app) as th:
        with pytest.raises(ValueError, match="backwards"):
            await th.advance(-1)


async def test_using_it_outside_the_context_is_a_clear_error() -> None:
    th = TestHost(app)
    with pytest.raises(RuntimeError, match="async with"):
        await th.invoke("record_order", {"order_id": "o", "amount": 1})


# -- HTTP ---------------------------------------------------------------------------------

web = App("web")


@web.capability(http("GET", "/echo/{word}"))
async def echo(ctx: Context) -> dict[str, Any]:
    headers = ctx.event.headers
    return {"word": ctx.params["word"], "query": dict(ctx.query), "tags": headers.get("x-tag")}


@web.capability(http("POST", "/notes"))
async def note(body: bytes) -> int:
    return len(body)


@web.capability(http("POST", "/boom"))
async def boom(body: bytes) -> None:
    raise RuntimeError("secret internals")


hooked = App("hooked")  # apart: its secret must be set for the server to start


@hooked.capability(
    http("POST", "/hook", webhook=Webhook(secret_env="THAW_TH_SECRET", tolerance=60))
)
async def hook(body: bytes) -> int:
    return len(body)


async def test_http_sends_what_a_client_would_and_reads_the_answer() -> None:
    async with TestHost(web) as th:
        response = await th.http.get(
            "/echo/caf\u00e9?a=1", params=[("b", "2")], headers=[("X-Tag", "x"), ("x-tag", "y")]
        )
        assert response.status == 200, response.text
        assert response.json() == {
            "word": "caf\u00e9",
            "query": {"a": "1", "b": "2"},
            "tags": "x, y",
        }
        assert response.headers["CONTENT-TYPE"] == response.headers["content-type"]
        assert int(response.headers["Content-Length"]) == len(response.body)
        head = await th.http.head("/echo/x")  # HEAD reaches a GET route, answers no body
        assert (head.status, head.body) == (200, b"")
        assert (await th.http.post("/notes", content="h\u00e9")).json() == 3  # str as UTF-8
        by_url = await th.http.get("http://example.com:8080/echo/u?q=1")
        assert by_url.json()["query"] == {"q": "1"}
        assert (await th.http.get("/openapi.json")).json()["openapi"].startswith("3.1")


async def test_a_failing_capability_is_a_500_that_hides_its_internals() -> None:
    async with TestHost(web) as th:
        response = await th.http.post("/boom", content=b"x")
        assert response.status == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert "secret internals" not in response.text
        assert response.json()["code"] == "handler_error"


async def test_max_body_sets_the_servers_limit_as_thaw_serve_does() -> None:
    async with TestHost(web, max_body=10) as th:
        assert (await th.http.post("/notes", content=b"x" * 10)).status == 200
        over = await th.http.post("/notes", content=b"x" * 11)
        assert (over.status, over.json()["code"]) == (413, "payload_too_large")
        bad_host = await th.http.get("/echo/x", headers={"host": "a b"})
        assert (bad_host.status, bad_host.json()["code"]) == (400, "host_invalid")


async def test_webhook_signatures_go_by_the_test_hosts_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THAW_TH_SECRET", "s3cret")
    async with TestHost(hooked) as th:
        body = b"{}"
        signature = sign(b"s3cret", int(th.wall_time()), body)  # 2026-01-01, not today
        await th.advance(61)  # past the route's tolerance, on the FakeClock only
        stale = await th.http.post("/hook", content=body, headers={"Webhook-Signature": signature})
        assert (stale.status, stale.json()["code"]) == (401, "signature_stale")
        fresh = sign(b"s3cret", int(th.wall_time()), body)
        accepted = await th.http.post("/hook", content=body, headers={"Webhook-Signature": fresh})
        assert accepted.status == 200, accepted.text


async def test_a_missing_webhook_secret_fails_the_first_request_as_the_server_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("THAW_TH_SECRET", raising=False)
    async with TestHost(hooked) as th:
        with pytest.raises(ConfigError, match="THAW_TH_SECRET is not set"):
            await th.http.post("/hook", content=b"{}")


async def test_http_on_an_app_without_routes_says_so() -> None:
    async with TestHost(app) as th:
        with pytest.raises(RuntimeError, match="declares no http triggers"):
            await th.http.get("/")


async def test_http_without_the_adapter_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("thaw._test_host.load_server", lambda name: None)  # no entry point
    async with TestHost(web) as th:
        with pytest.raises(RuntimeError, match="install the 'fast' extra"):
            await th.http.get("/echo/x")
