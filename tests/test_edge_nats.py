"""The edge host on JetStream: Pyodide under Node consuming from a real nats-server.

One edge process (``thaw_edge.mjs serve APP --nats URL``) serves the whole module:
the app is provisioned from Python first (``apply_plan`` on a JetStreamBackbone;
the edge provisions nothing), then each test publishes orders and reads what the
function did from the app's KV ledger, the consumer's state and the dead-letter
stream. The Node tests need the edge cache (``python -m thaw.adapters.edge.prepare``);
without it they fail with that instruction, never skip. Waits are bounded polls
(``wait_until``); nothing sleeps to let a race settle.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
import pytest
from edge_support import wait_listening
from nats.aio.msg import Msg
from nats_fixtures import nats_server, remove_app, wait_until  # noqa: F401

from thaw import App, Event, Ok, Reject
from thaw._errors import MalformedPayload
from thaw.adapters.edge import prepare
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.decisions._delivery import dead_letter_headers, decide_stream
from thaw.host._provision import idempotency_bucket_for
from thaw.invocation._kv_idempotency import KvIdempotencyStore
from thaw.lowlevel import (
    MSG_ID_HEADER,
    TRACEPARENT_HEADER,
    DeadLetter,
    DeadLetterRecord,
    Invoker,
    apply_plan,
    list_dead_letters,
    load_app,
    open_host,
    plan_for,
)

pytestmark = pytest.mark.anyio

APP_SOURCE = textwrap.dedent(
    '''
    """Orders booked into a KV ledger: every run of the side effect is visible there."""

    import msgspec

    from thaw import (
        Access, App, Backoff, Context, Idempotency, KeyExists, Ok, Rejected, RetryLater,
        RetryPolicy, stream,
    )

    NAME = "{name}"
    LEDGER = f"{NAME}_ledger"
    app = App(NAME)


    class Order(msgspec.Struct, frozen=True):
        order_id: str
        amount: int
        mode: str = "ok"  # ok | retry (succeeds on delivery 3) | reject | quote


    @app.capability(
        stream(f"{NAME}.orders"),
        idempotency=Idempotency(key=lambda event, order: order.order_id),
        retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0)),
        concurrency=8,
        access=Access(buckets=(LEDGER,), requests=(f"{NAME}.quote",)),
    )
    async def book(order: Order, ctx: Context) -> dict[str, int]:
        if order.mode == "reject":
            raise Rejected(f"order {order.order_id} is refused", code="order_refused")
        ledger = await ctx.kv(LEDGER)
        if order.mode == "quote":  # the amount comes from a NATS service (ctx.request)
            quoted = await ctx.request(f"{NAME}.quote", {"amount": order.amount}, timeout=5)
            if not isinstance(quoted, Ok):
                await ledger.put(f"quote.{order.order_id}", quoted.code.encode())
                raise RetryLater(f"no quote: {quoted.code}", delay=0.05)
            order = msgspec.structs.replace(order, amount=msgspec.json.decode(quoted.data))
        if order.mode == "retry" and ctx.attempt < 3:
            await ledger.put(f"try.{order.order_id}.{ctx.attempt}", b"1")
            raise RetryLater("the warehouse is busy", delay=0.05)
        try:
            await ledger.create(f"done.{order.order_id}", f"{order.amount}@{ctx.attempt}".encode())
        except KeyExists:
            await ledger.put(f"twice.{order.order_id}", b"1")  # the side effect ran again
            raise
        return {"amount": order.amount}
    '''
)


@dataclass
class EdgeOnNats:
    url: str
    app: App  # the same app, loaded in this process (for a Python host beside the edge)
    stream: str
    durable: str
    ledger: str
    process: subprocess.Popen[str]


async def _provision(url: str, app: App) -> None:
    backbone = await JetStreamBackbone.connect(url)
    try:
        await apply_plan(plan_for(app), backbone)
    finally:
        await backbone.aclose()


async def _remove(url: str, app: App) -> None:
    backbone = await JetStreamBackbone.connect(url)
    try:
        await remove_app(backbone, app)
    finally:
        await backbone.aclose()


def _write_app(folder: Path, name: str) -> Path:
    source = folder / "edgeorders.py"
    source.write_text(APP_SOURCE.replace("{name}", name))
    return source


@pytest.fixture(scope="module")
def edge(
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgeOnNats]:
    """The app provisioned on the session's nats-server and one edge host consuming it."""
    problems = prepare.check(test_wheels=False)
    if problems:
        pytest.fail("the edge host cannot run:\n  " + "\n  ".join(problems), pytrace=False)
    name = f"t{uuid.uuid4().hex[:8]}edge"
    folder = tmp_path_factory.mktemp("edge-nats-app")
    source = _write_app(folder, name)
    app = load_app(str(source))
    anyio.run(_provision, nats_server.url, app)
    [consumer] = plan_for(app).consumers
    command = prepare.host_command("serve", str(source), "--port", "0", "--nats", nats_server.url)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = wait_listening(process, timeout=120)
        assert ready["nats"] == nats_server.url
        yield EdgeOnNats(
            nats_server.url,
            app,
            consumer.stream,
            consumer.config.durable,
            f"{name}_ledger",
            process,
        )
        assert process.poll() is None, "the edge host died during the tests"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        anyio.run(_remove, nats_server.url, app)


@pytest.fixture
async def backbone(edge: EdgeOnNats) -> AsyncIterator[JetStreamBackbone]:
    client = await JetStreamBackbone.connect(edge.url)
    try:
        yield client
    finally:
        await client.aclose()


async def _publish(
    backbone: JetStreamBackbone,
    edge: EdgeOnNats,
    order: dict[str, object] | bytes,
    *,
    msg_id: str,
    headers: dict[str, str] | None = None,
) -> int:
    data = order if isinstance(order, bytes) else msgspec.json.encode(order)
    ack = await backbone.publish(
        f"{edge.app.name}.orders", data, msg_id=msg_id, headers=headers or {}
    )
    return ack.seq


async def _settled(backbone: JetStreamBackbone, edge: EdgeOnNats) -> bool:
    info = await backbone.consumer_info(edge.stream, edge.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _ledger(backbone: JetStreamBackbone, edge: EdgeOnNats) -> dict[str, bytes]:
    bucket = await backbone.kv(edge.ledger)
    values: dict[str, bytes] = {}
    for key in await bucket.keys():
        entry = await bucket.get(key)
        if entry is not None:
            values[key] = entry.value
    return values


async def _dead_letter(backbone: JetStreamBackbone, edge: EdgeOnNats, seq: int) -> DeadLetterRecord:
    records: list[DeadLetterRecord] = []

    async def arrived() -> bool:
        records[:] = [
            r for r in await list_dead_letters(backbone, app=edge.app.name) if r.original_seq == seq
        ]
        return bool(records)

    await wait_until(arrived)
    [record] = records
    return record


async def test_a_good_order_is_booked_once_and_a_duplicate_only_acked(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    await _publish(backbone, edge, {"order_id": "good", "amount": 5}, msg_id="good-a")
    # Another message (not a JetStream duplicate) with the same idempotency key.
    await _publish(backbone, edge, {"order_id": "good", "amount": 5}, msg_id="good-b")

    async def done() -> bool:
        return "done.good" in await _ledger(backbone, edge) and await _settled(backbone, edge)

    await wait_until(done, limit=30)
    ledger = await _ledger(backbone, edge)
    assert ledger["done.good"] == b"5@1"
    assert "twice.good" not in ledger
    store = KvIdempotencyStore(backbone, bucket=idempotency_bucket_for(edge.app))
    claim = await store.peek(f"{edge.app.name}.book.good")  # the edge's record, read by Python
    assert claim is not None and claim.state == "done"
    assert msgspec.json.decode(claim.result) == {"amount": 5}


async def test_a_retry_is_redelivered_with_backoff_and_then_succeeds(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    await _publish(
        backbone, edge, {"order_id": "slow", "amount": 7, "mode": "retry"}, msg_id="slow"
    )

    async def done() -> bool:
        return "done.slow" in await _ledger(backbone, edge) and await _settled(backbone, edge)

    await wait_until(done, limit=30)
    ledger = await _ledger(backbone, edge)
    assert {"try.slow.1", "try.slow.2"} <= set(ledger)
    assert ledger["done.slow"] == b"7@3"  # nak'ed twice, booked on the third delivery
    assert not [
        r for r in await list_dead_letters(backbone, app=edge.app.name) if r.event_id == "slow"
    ]


async def test_a_rejected_order_is_dead_lettered_with_the_python_hosts_headers(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    order = {"order_id": "nope", "amount": 1, "mode": "reject"}
    seq = await _publish(
        backbone, edge, order, msg_id="nope", headers={TRACEPARENT_HEADER: traceparent}
    )
    record = await _dead_letter(backbone, edge, seq)

    # What the Python host writes for the same delivery: its invoker, decide_stream and
    # dead_letter_headers on the same app, event and delivery count.
    data = msgspec.json.encode(order)
    subject = f"{edge.app.name}.orders"
    event = Event(
        id="nope",
        data=data,
        subject=subject,
        headers={MSG_ID_HEADER: "nope", TRACEPARENT_HEADER: traceparent},
        attempt=1,
        traceparent=traceparent,
    )
    outcome = await Invoker(edge.app).invoke("book", event)
    assert type(outcome) is Reject
    action = decide_stream(outcome, delivery_count=1, max_deliver=5)
    assert isinstance(action, DeadLetter)
    expected = dead_letter_headers(
        action,
        app=edge.app.name,
        capability="book",
        subject=subject,
        stream=edge.stream,
        seq=seq,
        attempts=1,
        traceparent=traceparent,
        event_id="nope",
    )
    written = {k: v for k, v in record.headers.items() if k != MSG_ID_HEADER}
    assert written == expected
    assert record.headers[MSG_ID_HEADER] == f"dlq/{edge.stream}/{seq}"
    assert record.code == "order_refused" and record.data == data
    await wait_until(lambda: _settled(backbone, edge))  # termed: not delivered again


async def test_a_malformed_payload_is_dead_lettered_as_malformed(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    seq = await _publish(backbone, edge, b'{"order_id": "broken", "amount": ', msg_id="broken")
    record = await _dead_letter(backbone, edge, seq)
    assert record.code == MalformedPayload.code
    assert record.attempts == 1
    assert record.event_id == "broken"
    assert record.headers["Thaw-Original-Subject"] == f"{edge.app.name}.orders"
    assert "Traceback" not in record.message


async def test_an_order_the_python_host_already_booked_is_not_booked_again_at_the_edge(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    """The edge and Python share the idempotency bucket: a result stored by a Python
    invoker answers the edge's delivery, and the side effect stays single."""
    store = KvIdempotencyStore(backbone, bucket=idempotency_bucket_for(edge.app))
    invoker = Invoker(edge.app, backbone=backbone, idempotency_store=store)
    data = msgspec.json.encode({"order_id": "shared", "amount": 3})
    outcome = await invoker.invoke("book", Event(id="py-shared", data=data, attempt=1))
    assert type(outcome) is Ok
    await _publish(backbone, edge, data, msg_id="shared-edge")
    await wait_until(lambda: _settled(backbone, edge), limit=30)
    ledger = await _ledger(backbone, edge)
    assert ledger["done.shared"] == b"3@1"
    assert "twice.shared" not in ledger


async def test_a_python_host_and_the_edge_racing_on_redeliveries_book_each_order_once(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    """Both consume the same durable consumer with the same idempotency bucket; every
    order arrives twice (two messages, one idempotency key)."""
    orders: list[dict[str, object]] = [
        {"order_id": f"r{index}", "amount": index + 1} for index in range(30)
    ]
    # Nak'ed twice, each redelivery going to whichever host fetches first.
    orders += [{"order_id": f"r{index}", "amount": 1, "mode": "retry"} for index in range(30, 36)]
    async with open_host(edge.app, backbone, fetch_timeout=0.2, drain_timeout=5.0) as host:
        for copy in ("a", "b"):
            for order in orders:
                await _publish(backbone, edge, order, msg_id=f"{order['order_id']}-{copy}")

        async def all_booked() -> bool:
            ledger = await _ledger(backbone, edge)
            booked = sum(1 for order in orders if f"done.{order['order_id']}" in ledger)
            return booked == len(orders) and await _settled(backbone, edge)

        await wait_until(all_booked, limit=60)
        python_acks = host.statistics().workers["book"].acked
    ledger = await _ledger(backbone, edge)
    assert [key for key in ledger if key.startswith("twice.r")] == []
    for order in orders:
        amount, attempt = ledger[f"done.{order['order_id']}"].split(b"@")
        assert amount == str(order["amount"]).encode()
        assert attempt == (b"3" if order.get("mode") == "retry" else b"1")
    print(f"the Python host acked {python_acks} of {2 * len(orders)} messages")
    assert python_acks <= 2 * len(orders)


def test_the_edge_refuses_an_app_that_is_not_provisioned(
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path: Path,
    edge: EdgeOnNats,
) -> None:
    source = _write_app(tmp_path, f"t{uuid.uuid4().hex[:8]}none")
    command = prepare.host_command("serve", str(source), "--port", "0", "--nats", nats_server.url)
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 3, completed.stderr[-2000:]
    assert "thaw provision" in completed.stderr
    assert "Traceback" not in completed.stderr


async def test_the_edge_calls_a_nats_service_with_ctx_request(
    edge: EdgeOnNats, backbone: JetStreamBackbone
) -> None:
    seen: list[dict[str, str]] = []

    async def quote(message: Msg) -> None:  # a NATS service in this process
        seen.append(dict(message.headers or {}))
        amount = msgspec.json.decode(message.data)["amount"]
        await message.respond(msgspec.json.encode(amount * 10))

    # Nobody answers yet: each attempt says why, then the order is dead-lettered.
    seq = await _publish(
        backbone, edge, {"order_id": "unasked", "amount": 3, "mode": "quote"}, msg_id="unasked"
    )
    record = await _dead_letter(backbone, edge, seq)
    assert record.code == "retry_requested" and "no_responders" in record.message
    assert (await _ledger(backbone, edge))["quote.unasked"] == b"no_responders"

    subscription = await backbone.client.subscribe(f"{edge.app.name}.quote", cb=quote)
    try:
        await _publish(
            backbone, edge, {"order_id": "asked", "amount": 3, "mode": "quote"}, msg_id="asked"
        )

        async def done() -> bool:
            return "done.asked" in await _ledger(backbone, edge) and await _settled(backbone, edge)

        await wait_until(done, limit=30)
    finally:
        await subscription.unsubscribe()
    assert (await _ledger(backbone, edge))["done.asked"] == b"30@1"
    [headers] = seen
    assert headers["Nats-Msg-Id"].endswith(f"/book?{edge.app.name}.quote/1")
    assert headers["traceparent"].startswith("00-")
