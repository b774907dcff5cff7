"""The ASGI adapter: in memory (hand-made scopes), under a real uvicorn, against the native server.

In memory, ``asgi_request`` plays the server: one scope, a ``receive`` that hands
out the body in chunks (counting how many were taken), a ``send`` that records.
End to end, ``under_uvicorn`` serves the adapter with ``uvicorn.Server`` on a
socket bound to 127.0.0.1:0 in this process, and the raw client of the native
server's tests sends the very same bytes to both servers. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import msgspec
import pytest
import uvicorn
from example_loader import load_example
from test_http_support import WAIT, RawClient, Reply, request, serving

from thaw import App, ConfigError, Idempotency, Webhook, http, stream
from thaw.adapters.asgi import ThawASGI, asgi_app, from_env
from thaw.adapters.http import HttpConfig
from thaw.adapters.http.metrics import ServerCounters
from thaw.adapters.http.webhooks import sign
from thaw.lowlevel import Invoker

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
Message = dict[str, Any]


# -- the in-memory server ---------------------------------------------------------


async def asgi_request(
    app: ThawASGI,
    method: str,
    target: str,
    body: bytes | Iterable[bytes] = b"",
    headers: dict[str, str] | None = None,
    *,
    taken: list[int] | None = None,
    disconnect: bool = False,
    raw_path: bool = True,
) -> Reply | None:
    """One request; None if the app sent nothing. ``taken`` counts the receive() calls;
    with ``disconnect`` the client goes away after the last chunk instead of ending the body."""
    path, _, query = target.partition("?")
    fields = {"host": "test", **{k.lower(): v for k, v in (headers or {}).items()}}
    if isinstance(body, bytes):
        if body:
            fields.setdefault("content-length", str(len(body)))
        chunks = iter([body])
    else:
        fields["transfer-encoding"] = "chunked"
        chunks = iter(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in fields.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    if not raw_path:  # optional in ASGI: the adapter re-encodes the decoded path
        del scope["raw_path"]
    pending = next(chunks, None)
    sent: list[Message] = []
    counter = taken if taken is not None else [0]

    async def receive() -> Message:
        nonlocal pending
        counter[0] += 1
        if pending is None:
            return {"type": "http.disconnect"}
        chunk, pending = pending, next(chunks, None)
        more = pending is not None or disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(WAIT):
        await app(scope, receive, send)
    if not sent:
        return None
    start, *parts = sent
    assert start["type"] == "http.response.start"
    assert [p["type"] for p in parts] == ["http.response.body"] * len(parts)
    assert not parts[-1].get("more_body", False)
    headers_out = {k.decode(): v.decode() for k, v in start["headers"]}
    return Reply(start["status"], headers_out, b"".join(p["body"] for p in parts))


@asynccontextmanager
async def lifespan(app: ThawASGI) -> AsyncIterator[None]:
    """Run the app's lifespan: startup on entry, shutdown on exit (both must complete)."""
    inbox, inbox_out = anyio.create_memory_object_stream[Message](4)
    outbox, outbox_out = anyio.create_memory_object_stream[Message](4)
    async with inbox, inbox_out, outbox, outbox_out, anyio.create_task_group() as group:
        group.start_soon(
            app, {"type": "lifespan", "asgi": {"version": "3.0"}}, inbox_out.receive, outbox.send
        )
        await inbox.send({"type": "lifespan.startup"})
        with anyio.fail_after(WAIT):
            assert (await outbox_out.receive())["type"] == "lifespan.startup.complete"
        yield
        await inbox.send({"type": "lifespan.shutdown"})
        with anyio.fail_after(WAIT):
            assert (await outbox_out.receive())["type"] == "lifespan.shutdown.complete"


async def startup_answer(app: ThawASGI) -> Message:
    """What the app answers to lifespan.startup (the lifespan call must then return)."""
    messages: list[Message] = [{"type": "lifespan.startup"}]
    answers: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        answers.append(message)

    with anyio.fail_after(WAIT):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert len(answers) == 1, answers
    return answers[0]


# -- a real uvicorn ---------------------------------------------------------------


@asynccontextmanager
async def under_uvicorn(app: ThawASGI) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in this process; yield the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            with anyio.fail_after(WAIT):
                while True:  # uvicorn has no event for this: poll, bounded
                    if server.started:
                        break
                    await anyio.sleep(0.01)
            try:
                yield sock.getsockname()[1]
            finally:
                server.should_exit = True
    finally:
        sock.close()


async def over_socket(port: int, raw: bytes, *, head: bool = False) -> Reply:
    async with RawClient.connect(port) as client:
        await client.send(raw)
        return await client.response(head=head)


def essence(reply: Reply) -> tuple[Any, ...]:
    """What two servers must agree on: status, body, and the headers decisions add."""
    body: Any = reply.body
    if reply.headers.get("content-type", "").endswith("json") and body:
        body = json.loads(body)
    keep = ("content-type", "allow", "retry-after", "idempotent-replayed", "content-length")
    return (reply.status, body, {k: reply.headers[k] for k in keep if k in reply.headers})


def code(reply: Reply | None) -> str:
    assert reply is not None
    assert reply.headers["content-type"] == "application/problem+json", reply
    return str(json.loads(reply.body)["code"])


GREET = {"content-type": "application/json"}
HELLO_CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", "/greet", b'{"name": "Ada"}', {**GREET, "Idempotency-Key": "k1"}),
    ("POST", "/greet", b'{"name": "Ada", "language": "xx"}', {**GREET, "Idempotency-Key": "k2"}),
    ("POST", "/greet", b'{"name": ', {**GREET, "Idempotency-Key": "k3"}),
    ("POST", "/greet", b'{"name": "Ada"}', {"content-type": "text/plain", "Idempotency-Key": "k4"}),
    ("POST", "/greet", b"[1, 2]", {**GREET, "Idempotency-Key": "k5"}),
    ("POST", "/greet", b'{"name": "Ada"}', {"Idempotency-Key": "bad key!"}),
    ("GET", "/greet", b"", {}),
    ("PURGE", "/greet", b"", {}),
    ("DELETE", "/nowhere", b"", {}),
    ("OPTIONS", "/greet", b"", {}),
    ("GET", "/healthz", b"", {}),
    ("POST", "/healthz", b"", {}),
    ("GET", "/readyz", b"", {}),
    ("GET", "/openapi.json", b"", {}),
]


# -- the same answers as the native server ----------------------------------------


async def test_hello_answers_like_the_native_server_in_memory_and_under_uvicorn() -> None:
    hello, _ = load_example("hello")
    native_app = asgi_app(Invoker(hello))
    async with serving(hello) as native, under_uvicorn(asgi_app(Invoker(hello))) as port:
        for method, target, body, headers in HELLO_CASES:
            raw = request(method, target, body, headers)
            expected = essence(await over_socket(native.port, raw))
            in_memory = await asgi_request(native_app, method, target, body, headers)
            assert in_memory is not None
            assert essence(in_memory) == expected, (method, target, body)
            assert essence(await over_socket(port, raw)) == expected, (method, target, body)
        head = await over_socket(port, request("HEAD", "/healthz"), head=True)
        assert (head.status, head.headers["content-length"], head.body) == (200, "15", b"")


async def test_bff_path_parameters_answer_like_the_native_server() -> None:
    bff, _ = load_example("bff")
    async with serving(bff) as native, under_uvicorn(asgi_app(Invoker(bff))) as port:
        for target in ("/page/u1", "/page/u2", "/page/nobody", "/page/u%2F1", "/page/"):
            raw = request("GET", target, headers={"Idempotency-Key": "page"})
            expected = essence(await over_socket(native.port, raw))
            assert essence(await over_socket(port, raw)) == expected, target
    assert expected[0] == 404  # "/page/": no route


# -- hostile input ----------------------------------------------------------------


def limited_app() -> App:
    app = App("limited")

    @app.capability(http("POST", "/echo"))
    async def echo(data: bytes) -> bytes:
        return data

    return app


async def test_an_oversized_body_is_refused_without_reading_the_rest() -> None:
    counters = ServerCounters()
    service = ThawASGI(Invoker(limited_app()), config=HttpConfig(max_body=1000), counters=counters)
    taken = [0]
    declared = await asgi_request(service, "POST", "/echo", b"x" * 1001, taken=taken)
    assert declared is not None and declared.status == 413
    assert code(declared) == "payload_too_large"
    assert taken[0] == 0  # refused on Content-Length: the body was never asked for
    taken = [0]
    endless = (b"y" * 100 for _ in range(100_000))
    streamed = await asgi_request(service, "POST", "/echo", endless, taken=taken)
    assert code(streamed) == "payload_too_large"
    assert taken[0] == 11  # 1100 bytes > 1000: it stopped reading there
    fits = await asgi_request(service, "POST", "/echo", [b"a" * 500, b"b" * 500])
    assert fits is not None and (fits.status, fits.body) == (200, b"a" * 500 + b"b" * 500)
    assert counters.refusals == {413: 2}


async def test_oversized_bodies_get_413_under_uvicorn_while_streaming() -> None:
    service = asgi_app(Invoker(limited_app()), config=HttpConfig(max_body=1000))
    async with under_uvicorn(service) as port, RawClient.connect(port) as client:
        # Refused on Content-Length from the head alone: the body is never sent.
        await client.send(request("POST", "/echo", headers={"Content-Length": "5000"}))
        refused = await client.response()
        assert refused.status == 413
        assert json.loads(refused.body)["code"] == "payload_too_large"
    async with under_uvicorn(service) as port, RawClient.connect(port) as client:
        # Refused on Content-Length: no 100 Continue, the body is never asked for.
        head = request(
            "POST", "/echo", headers={"Content-Length": "5000", "Expect": "100-continue"}
        )
        await client.send(head)
        refused = await client.response()
        assert (refused.status, refused.informational) == (413, [])
        assert json.loads(refused.body)["code"] == "payload_too_large"
    async with under_uvicorn(service) as port, RawClient.connect(port) as client:
        # Chunked: answered once the chunks pass the limit, the rest never sent.
        await client.send(request("POST", "/echo", headers={"Transfer-Encoding": "chunked"}))
        await client.send(b"%x\r\n%s\r\n" % (1200, b"z" * 1200))
        refused = await client.response()
        assert refused.status == 413


async def test_a_disconnect_during_the_body_is_answered_by_nothing() -> None:
    service = asgi_app(Invoker(limited_app()))
    taken = [0]
    reply = await asgi_request(service, "POST", "/echo", [b"12345"], taken=taken, disconnect=True)
    assert reply is None  # half a body, then the client is gone: nobody to answer
    assert taken[0] == 2


async def test_without_raw_path_the_decoded_path_is_encoded_again() -> None:
    app = App("files")

    @app.capability(http("GET", "/files/{name}"))
    async def show(ref: dict[str, str]) -> dict[str, str]:
        return ref

    service = asgi_app(Invoker(app))
    for target in ("/files/a%25b%20c", "/files/caf%C3%A9"):
        with_raw = await asgi_request(service, "GET", target)
        without = await asgi_request(service, "GET", target, raw_path=False)
        assert with_raw is not None and without is not None
        assert (
            (without.status, without.body)
            == (with_raw.status, with_raw.body)
            == (
                200,
                json.dumps(
                    {"name": unquote(target[7:])}, separators=(",", ":"), ensure_ascii=False
                ).encode(),
            )
        )


async def test_websockets_and_unknown_scopes_are_refused() -> None:
    service = asgi_app(Invoker(limited_app()))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await service({"type": "websocket", "path": "/echo"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "not served"}]
    with pytest.raises(ValueError, match="'http' and 'lifespan' scopes, not 'telepathy'"):
        await service({"type": "telepathy"}, receive, send)


# -- lifespan ---------------------------------------------------------------------


def started_app(log: list[str], *, fail: bool = False) -> tuple[App, anyio.Event, anyio.Event]:
    """An app with start/stop hooks and ``GET /hold``, which waits for ``release``."""
    app = App("started")
    held, release = anyio.Event(), anyio.Event()

    @app.on_start
    async def connect() -> None:
        if fail:
            raise ConnectionRefusedError("the database at db:5432 refused the connection")
        log.append("start")

    @app.on_stop
    async def disconnect() -> None:
        log.append("stop")

    @app.capability(http("GET", "/hold"))
    async def hold() -> dict[str, str]:
        log.append("held")
        held.set()
        await release.wait()
        return {"held": "yes"}

    return app, held, release


async def test_lifespan_opens_the_host_and_drains_before_closing_it() -> None:
    log: list[str] = []
    app, held, release = started_app(log)
    service = asgi_app(app)
    assert code(await asgi_request(service, "GET", "/readyz")) == "not_ready"
    replies: list[Reply | None] = []

    async def hold() -> None:
        replies.append(await asgi_request(service, "GET", "/hold"))

    async def release_when_draining() -> None:
        with anyio.fail_after(WAIT):
            while True:  # the shutdown message is handled on the app's schedule: poll, bounded
                ready = await asgi_request(service, "GET", "/readyz")
                if ready is not None and ready.status == 503:
                    break
                await anyio.sleep(0.005)
        assert json.loads(ready.body)["detail"] == "the server is draining"
        assert code(await asgi_request(service, "GET", "/hold")) == "draining"
        assert log == ["start", "held"]  # the host is still open
        release.set()

    async with anyio.create_task_group() as group:
        async with lifespan(service):
            assert log == ["start"]
            ready = await asgi_request(service, "GET", "/readyz")
            assert ready is not None and ready.status == 200
            group.start_soon(hold)
            with anyio.fail_after(WAIT):
                await held.wait()
            group.start_soon(release_when_draining)
        # Shutdown waited for the held request, then closed the host (on_stop).
        assert log == ["start", "held", "stop"]
    assert replies[0] is not None and replies[0].status == 200
    assert code(await asgi_request(service, "GET", "/readyz")) == "draining"


async def test_a_failing_on_start_is_reported_as_startup_failed() -> None:
    service = asgi_app(started_app([], fail=True)[0])
    answer = await startup_answer(service)
    assert answer["type"] == "lifespan.startup.failed"
    assert answer["message"] == (
        "Thaw could not start the app 'started': ConnectionRefusedError: "
        "the database at db:5432 refused the connection"
    )
    reply = await asgi_request(service, "GET", "/hold")
    assert code(reply) == "not_ready"
    assert reply is not None and "db:5432" in json.loads(reply.body)["detail"]


async def test_uvicorn_factory_serves_thaw_app_and_exits_on_a_failed_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        "from thaw import App\napp = App('bad')\n\n@app.on_start\nasync def boom() -> None:\n"
        "    raise RuntimeError('no config at /etc/bad.toml')\n"
    )
    env = {**os.environ, "THAW_APP": str(bad), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "uvicorn", "--factory", "thaw.adapters.asgi:from_env"]
    command += ["--host", "127.0.0.1", "--port", "0", "--lifespan", "on"]
    with anyio.fail_after(WAIT * 4):  # on timeout, anyio kills the process (ours, by PID)
        process = await anyio.run_process(command, env=env, cwd=ROOT, check=False)
    stderr = process.stderr
    assert process.returncode != 0
    assert b"Thaw could not start the app 'bad': RuntimeError: no config at /etc/bad.toml" in stderr


def test_from_env_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THAW_APP", raising=False)
    with pytest.raises(ConfigError, match="THAW_APP is not set"):
        from_env()
    monkeypatch.setenv("THAW_APP", str(ROOT / "examples" / "hello"))
    assert isinstance(from_env(), ThawASGI)


# -- intake, webhooks, metrics ----------------------------------------------------


class Order(msgspec.Struct):
    sku: str


async def test_enqueue_intake_answers_202_through_the_lifespan_host() -> None:
    app = App("intake")

    @app.capability(
        http("POST", "/orders", enqueue="shop.orders"),
        stream("shop.orders"),
        idempotency=Idempotency(),
    )
    async def place(order: Order) -> dict[str, str]:
        return {"placed": order.sku}

    service = asgi_app(app)
    async with lifespan(service):
        reply = await asgi_request(
            service, "POST", "/orders", b'{"sku": "A"}', {"Idempotency-Key": "o1"}
        )
        assert reply is not None and reply.status == 202
        location = reply.headers["location"]
        assert location.startswith("/_thaw/status/o1/")  # the status URL carries a token
        tokenless = await asgi_request(service, "GET", "/_thaw/status/o1")
        assert tokenless is not None and tokenless.status == 404
        with anyio.fail_after(WAIT):
            while True:  # the stream worker runs on its own schedule: poll, bounded
                done = await asgi_request(service, "GET", location)
                if done is not None and done.status == 200:
                    break
                await anyio.sleep(0.01)
        assert json.loads(done.body) == {"placed": "A"}
        bad = await asgi_request(service, "POST", "/orders", b'{"sku": 1}')
        assert code(bad) == "contract_invalid"


async def test_webhook_signatures_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THAW_TEST_ASGI_SECRET", "whsec_asgi")
    app = App("hooks")

    @app.capability(http("POST", "/hooks", webhook=Webhook(secret_env="THAW_TEST_ASGI_SECRET")))
    async def hook(order: Order) -> None:
        return None

    service = asgi_app(Invoker(app))
    body = b'{"sku": "A"}'
    assert code(await asgi_request(service, "POST", "/hooks", body)) == "signature_missing"
    stale = {"Webhook-Signature": sign(b"whsec_asgi", int(time.time()) - 3600, body)}
    assert code(await asgi_request(service, "POST", "/hooks", body, stale)) == "signature_stale"
    forged = {"Webhook-Signature": sign(b"other", int(time.time()), body)}
    assert code(await asgi_request(service, "POST", "/hooks", body, forged)) == "signature_invalid"
    signed = {"Webhook-Signature": sign(b"whsec_asgi", int(time.time()), body)}
    reply = await asgi_request(service, "POST", "/hooks", body, signed)
    assert reply is not None and reply.status == 204


async def test_metrics_count_invocations_and_refusals() -> None:
    hello, _ = load_example("hello")
    service = asgi_app(Invoker(hello), config=HttpConfig(max_body=100))
    await asgi_request(service, "POST", "/greet", b'{"name": "Ada"}')
    await asgi_request(service, "POST", "/greet", b"x" * 101)
    reply = await asgi_request(service, "GET", "/metrics")
    assert reply is not None and reply.status == 200
    text = reply.body.decode()
    ok = 'thaw_invocations_total{capability="greet",trigger="http",outcome="ok",code=""} 1'
    assert ok in text
    assert 'thaw_http_refusals_total{status="413"} 1' in text
    assert 'thaw_http_responses_total{class="2xx"} 1' in text


async def test_metrics_of_a_served_host_show_its_stream_workers() -> None:
    from thaw.lowlevel import open_host
    from thaw.testing import MemoryBackbone

    hello, _ = load_example("hello")
    async with open_host(hello, MemoryBackbone(), fetch_timeout=0.05) as host:
        service = asgi_app(host)
        reply = await asgi_request(service, "GET", "/metrics")
    assert reply is not None and reply.status == 200
    text = reply.body.decode()
    assert 'thaw_stream_deliveries_total{capability="greet",consumer="",action="ack"} 0' in text
