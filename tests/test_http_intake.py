"""Async-first intake end to end: enqueue routes, 202 + status URL, the stream run, the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_http_support import WAIT, RawClient, Reply, request

from thaw import App, ConfigError, Idempotency, http, stream
from thaw.adapters.http import HttpConfig, HttpService, open_http_server
from thaw.adapters.http.intake import status_id
from thaw.lowlevel import Invoker, open_host
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio
TOKEN = "0123456789abcdef" * 2


class Order(msgspec.Struct):
    sku: str
    quantity: int


class Receipt(msgspec.Struct):
    sku: str
    total: int


def intake_app(release: anyio.Event) -> App:
    app = App("intake")

    @app.capability(
        http("POST", "/orders", enqueue="shop.orders"),
        stream("shop.orders"),
        idempotency=Idempotency(),
    )
    async def place(order: Order) -> Receipt:
        await release.wait()
        return Receipt(order.sku, order.quantity * 5)

    return app


async def _poll(client: RawClient, url: str) -> Reply:
    """GET the status URL until it is no longer pending (bounded by the caller's fail_after)."""
    while True:
        await client.send(request("GET", url))
        reply = await client.response()
        if reply.status != 202:
            return reply
        await anyio.sleep(0.01)  # the stream worker runs on its own schedule: poll


async def test_enqueue_answers_202_and_the_status_url_serves_the_result() -> None:
    release = anyio.Event()
    backbone = MemoryBackbone()
    app = intake_app(release)
    async with (
        open_host(app, backbone) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        headers = {"Idempotency-Key": "order/1", "traceparent": traceparent}
        body = b'{"sku": "A-1", "quantity": 3}'
        await client.send(request("POST", "/orders", body, headers))
        accepted = await client.response()
        assert accepted.status == 202, accepted.body
        document = json.loads(accepted.body)
        assert document["id"] == "order/1"
        assert re.fullmatch(r"/_thaw/status/order%2F1/[0-9a-f]{32}", document["status_url"])
        assert accepted.headers["location"] == document["status_url"]
        await client.send(request("GET", document["status_url"]))
        pending = await client.response()
        assert (pending.status, json.loads(pending.body)) == (202, {"status": "pending"})
        await client.send(request("POST", "/orders", body, headers))  # a retry of the client
        again = await client.response()
        assert (again.status, json.loads(again.body)) == (202, document)
        release.set()
        with anyio.fail_after(WAIT):
            done = await _poll(client, document["status_url"])
        assert done.status == 200
        assert json.loads(done.body) == {"sku": "A-1", "total": 15}


async def test_another_body_under_a_used_key_is_422_and_nothing_is_dropped() -> None:
    """A client's Idempotency-Key names one request: a second, different body under it
    is refused (the stream's duplicate window would have dropped it unseen, and its
    status URL would have shown the first body's result); the same body again is 202."""
    release = anyio.Event()
    release.set()
    backbone = MemoryBackbone()
    async with (
        open_host(intake_app(release), backbone) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        headers = {"Idempotency-Key": "k1"}
        first = b'{"sku": "A-1", "quantity": 1}'
        await client.send(request("POST", "/orders", first, headers))
        assert (await client.response()).status == 202
        await client.send(request("POST", "/orders", b'{"sku": "B-2", "quantity": 2}', headers))
        reused = await client.response()
        assert reused.status == 422, reused.body
        assert json.loads(reused.body)["code"] == "idempotency_key_reused"
        await client.send(request("POST", "/orders", first, headers))  # a retry: fine
        assert (await client.response()).status == 202
        await client.send(request("POST", "/orders", b'{"sku": "B-2", "quantity": 2}'))
        assert (await client.response()).status == 202  # no key: a new request each time


async def test_enqueue_validates_against_the_contract_before_publishing() -> None:
    release = anyio.Event()
    release.set()
    async with (
        open_host(intake_app(release), MemoryBackbone()) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/orders", b'{"sku": "A-1", "quantity": "many"}'))
        invalid = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": '))
        malformed = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": "\xff\xfe", "quantity": 1}'))
        bad_utf8 = await client.response()
        deep = b'{"sku": "A", "quantity": 1, "extra": ' + b"[" * 3000 + b"]" * 3000 + b"}"
        await client.send(request("POST", "/orders", deep))
        too_deep = await client.response()
        await client.send(request("POST", "/orders", b'{"sku": "B", "quantity": 1}'))
        generated = await client.response()
        await client.send(request("DELETE", f"/_thaw/status/x/{TOKEN}"))
        wrong_method = await client.response()
        await client.send(request("GET", "/_thaw/status/"))
        no_id = await client.response()
    assert invalid.status == 422
    problem = json.loads(invalid.body)
    assert problem["code"] == "contract_invalid"
    assert problem["detail"].endswith("- at `$.quantity`")
    assert (malformed.status, json.loads(malformed.body)["code"]) == (400, "payload_malformed")
    assert (bad_utf8.status, json.loads(bad_utf8.body)["code"]) == (400, "payload_malformed")
    assert (too_deep.status, json.loads(too_deep.body)["code"]) == (400, "payload_malformed")
    assert generated.status == 202
    generated_id = json.loads(generated.body)["id"]
    assert generated_id.startswith("~")
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "GET, HEAD")
    assert no_id.status == 404


async def test_an_enqueue_route_needs_an_idempotent_consumer() -> None:
    app = App("no_consumer")

    @app.capability(http("POST", "/jobs", enqueue="jobs.new"))
    async def job(order: Order) -> None:
        return None

    with pytest.raises(ConfigError, match=r"no capability consumes it; add stream\('jobs.new'\)"):
        HttpService(Invoker(app), config=HttpConfig(), backbone=MemoryBackbone())

    app2 = App("not_idempotent")

    @app2.capability(http("POST", "/jobs", enqueue="jobs.new"), stream("jobs.new"))
    async def job2(order: Order) -> None:
        return None

    with pytest.raises(ConfigError, match=r"idempotency=Idempotency\(\) with the default key"):
        HttpService(Invoker(app2), config=HttpConfig(), backbone=MemoryBackbone())


async def test_without_a_backbone_an_enqueue_route_says_what_it_needs() -> None:
    release = anyio.Event()
    async with (
        open_http_server(Invoker(intake_app(release))) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/orders", b'{"sku": "A", "quantity": 1}'))
        reply = await client.response()
    assert reply.status == 501
    assert "serve a Host" in json.loads(reply.body)["detail"]


def test_status_ids_are_percent_decoded_and_never_span_segments() -> None:
    assert status_id(f"/_thaw/status/a%2Fb/{TOKEN}") == f"{TOKEN}/a/b"
    assert status_id(f"/_thaw/status/a/b/{TOKEN}") == ""
    assert status_id(f"/_thaw/status/%ff/{TOKEN}") == ""
    assert status_id(f"/_thaw/status//{TOKEN}") == ""
    assert status_id("/_thaw/status/a%2Fb") == ""  # no token
    assert status_id(f"/_thaw/status/a/{TOKEN.upper()}") == ""
    assert status_id(f"/_thaw/status/a/{TOKEN[:-1]}") == ""
    assert status_id("/elsewhere") is None


@given(st.text(max_size=200))
def test_any_status_path_is_parsed_without_raising(tail: str) -> None:
    found = status_id("/_thaw/status/" + tail)
    assert found == "" or (found is not None and found[32] == "/" and len(found) > 33)


async def test_a_status_url_is_served_only_with_its_own_token() -> None:
    release = anyio.Event()
    release.set()
    async with (
        open_host(intake_app(release), MemoryBackbone()) as host,
        open_http_server(host) as server,
        RawClient.connect(server.port) as client,
    ):
        urls = {}
        for name, key in (("victim", "order-1001"), ("attacker", None), ("other", None)):
            headers = {"Idempotency-Key": key} if key else {}
            await client.send(request("POST", "/orders", b'{"sku": "S", "quantity": 1}', headers))
            accepted = await client.response()
            assert accepted.status == 202
            urls[name] = json.loads(accepted.body)["status_url"]
        with anyio.fail_after(WAIT):
            done = await _poll(client, urls["victim"])
        assert done.status == 200  # the victim's own URL works
        victim_id, victim_token = urls["victim"].rsplit("/", 1)
        own_token = urls["attacker"].rsplit("/", 1)[1]
        other_id = urls["other"].rsplit("/", 1)[0]
        guesses = [
            victim_id,  # the id alone (a guessable Idempotency-Key)
            f"{victim_id}/{own_token}",  # someone else's token
            f"{victim_id}/{'0' * 32}",
            f"{victim_id}/{victim_token[:-1]}{'1' if victim_token[-1] != '1' else '2'}",
            f"{other_id}/{own_token}",
            f"{urls['attacker']}/extra",
            f"/_thaw/status/order-1002/{victim_token}",  # a token on another id
        ]
        answers = []
        for url in guesses:
            await client.send(request("GET", url))
            answers.append(await client.response())
        await client.send(request("GET", "/_thaw/status/order-9999/" + "0" * 32))
        unknown = await client.response()
    for url, answer in zip(guesses, answers, strict=True):
        assert answer.status == 404, url
        assert json.loads(answer.body)["code"] == "route_not_found", url
    # A wrong token on an unknown id reads exactly as on a known one: no existence leak.
    assert (unknown.status, unknown.body) == (404, answers[2].body)
    assert answers[0].body == answers[2].body  # no token reads as a wrong one


def test_thaw_serve_refuses_an_enqueue_route_without_an_idempotent_consumer_in_one_line(
    tmp_path: Path,
) -> None:
    """The host's refusal is raised inside a task group; the command line still says it
    in one `thaw: error [code]: ...` line and exits 1, with no traceback."""
    (tmp_path / "app.py").write_text(
        "import msgspec\n"
        "from thaw import App, http, stream\n"
        "app = App('enq')\n"
        "class Job(msgspec.Struct):\n"
        "    n: int\n"
        "@app.capability(http('POST', '/jobs', enqueue='enq.jobs'), stream('enq.jobs'))\n"
        "async def work(job: Job) -> None:\n"
        "    return None\n"
    )
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(tmp_path / "app.py")]
    command += ["--backbone", "memory", "--http", "0", "--state-dir", str(tmp_path / "state")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr
    (line,) = [one for one in done.stderr.splitlines() if "error [" in one]
    assert line.startswith("thaw: error [config_invalid]: route POST /jobs")
    assert "idempotency=Idempotency()" in line
