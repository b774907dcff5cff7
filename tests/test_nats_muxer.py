"""The request muxer (``adapters/nats/_request_mux.py``) against a real nats-server.

Responders are core NATS subscriptions on a second connection, so each test
decides when (and whether) a request is answered; a responder counts as ready
once ``wait_subscribed`` returns (tested here too, as every helper relies on
it). Waits are bounded by ``anyio.fail_after`` as a guard against hangs; nothing
sleeps to settle a race.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats_fixtures import nats_server  # noqa: F401

from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone, ServerConfig
from thaw.adapters.nats._errors import translated
from thaw.adapters.nats._request_mux import RequestLost, RequestMux, header_block
from thaw.adapters.nats.connection import JetStreamOptions, wait_subscribed
from thaw.lowlevel import BackboneError, KvConfig

pytestmark = pytest.mark.anyio
GUARD = 30.0  # seconds: only against hangs, never a measurement
# seconds: the muxer's timeout where a test waits one out; the requests answered under
# the same timeout need a small fraction of it, even on a loaded machine
WAITED_OUT = 2.0
SUBSCRIBE_ROUNDS = 1000  # subscribe + wait_subscribed + request, ~0.5 s


@pytest.fixture
async def clients(
    nats_server: EmbeddedServer,  # noqa: F811
) -> AsyncIterator[tuple[Client, Client]]:
    """(requester, responder): two connections to the session server."""
    requester = await nats.connect(nats_server.url)
    responder = await nats.connect(nats_server.url)
    try:
        yield requester, responder
    finally:
        await requester.close()
        await responder.close()


async def _echo(responder: Client, subject: str) -> None:
    async def answer(message: Msg) -> None:
        await responder.publish(message.reply, b"re:" + message.data, headers=message.headers)

    await responder.subscribe(subject, cb=answer)
    await wait_subscribed(responder)


class Held:
    """Requests a responder keeps without answering; the test answers them."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = anyio.Event()

    async def keep(self, message: Msg) -> None:
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, count: int) -> None:
        with anyio.fail_after(GUARD):
            while len(self.messages) < count:
                await self._changed.wait()

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: int) -> Msg:
        return self.messages[index]


async def _held(responder: Client, subject: str) -> Held:
    held = Held()
    await responder.subscribe(subject, cb=held.keep)
    await wait_subscribed(responder)
    return held


async def test_concurrent_requests_each_get_their_own_reply(
    clients: tuple[Client, Client],
) -> None:
    requester, responder = clients
    await _echo(responder, "mux.echo")
    mux = RequestMux(requester, timeout=GUARD)
    replies: dict[int, bytes] = {}

    async def one(n: int) -> None:
        message = await mux.request("mux.echo", b"%d" % n, {"N": str(n)})
        assert message.headers == {"N": str(n)}
        replies[n] = message.data

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            for n in range(500):
                group.start_soon(one, n)
    assert replies == {n: b"re:%d" % n for n in range(500)}
    assert mux.waiting == 0
    await mux.aclose()


async def test_prepared_header_blocks_arrive_as_headers(clients: tuple[Client, Client]) -> None:
    requester, responder = clients
    await _echo(responder, "mux.prepared")
    mux = RequestMux(requester, timeout=GUARD)
    with anyio.fail_after(GUARD):
        block = header_block({"Nats-Expected-Last-Subject-Sequence": "7", "KV-Operation": "DEL"})
        message = await mux.request("mux.prepared", b"v", prepared=block)
        assert message.headers == {
            "Nats-Expected-Last-Subject-Sequence": "7",
            "KV-Operation": "DEL",
        }
        assert message.data == b"re:v"
        plain = await mux.request("mux.prepared", b"w", prepared=b"")
        assert (plain.data, plain.headers) == (b"re:w", None)
    await mux.aclose()


async def test_after_wait_subscribed_a_request_always_finds_its_responder(
    clients: tuple[Client, Client],
) -> None:
    # The helpers above rely on wait_subscribed (adapters/nats/connection.py), as do
    # subject services. With nats-py's flush() in its place, about 1 request in 150
    # got "no responders" here (flush's PING overtakes the SUB still waiting in the
    # pending buffer), so this many rounds catch a regression nearly every run.
    requester, responder = clients

    async def answer(message: Msg) -> None:
        await responder.publish(message.reply, message.data)

    unanswered = []
    with anyio.fail_after(GUARD):
        for n in range(SUBSCRIBE_ROUNDS):
            subscription = await responder.subscribe(f"mux.subscribed.{n}", cb=answer)
            await wait_subscribed(responder)
            try:
                await requester.request(f"mux.subscribed.{n}", b"%d" % n, timeout=GUARD)
            except nats.errors.NoRespondersError:
                unanswered.append(n)
            await subscription.unsubscribe()
    assert unanswered == []


async def test_wait_subscribed_on_a_closed_client_says_so(
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    client = await nats.connect(nats_server.url)
    await client.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await wait_subscribed(client)


async def test_a_request_nobody_answers_times_out_and_its_late_reply_is_dropped(
    clients: tuple[Client, Client],
) -> None:
    requester, responder = clients
    held = await _held(responder, "mux.slow")
    await _echo(responder, "mux.fast")
    mux = RequestMux(requester, timeout=WAITED_OUT)
    with anyio.fail_after(GUARD), pytest.raises(nats.errors.TimeoutError):
        await mux.request("mux.slow", b"first")
    assert mux.waiting == 0
    await held.wait(1)
    await responder.publish(held[0].reply, b"too late")  # after its request gave up
    # The fast responder's reply leaves the server after the late one, so by the time
    # it arrives the late one has been seen (and dropped).
    with anyio.fail_after(GUARD):
        assert (await mux.request("mux.fast", b"next")).data == b"re:next"
    assert mux.waiting == 0
    await mux.aclose()


async def test_timeouts_fire_in_order_while_other_requests_are_answered(
    clients: tuple[Client, Client],
) -> None:
    requester, responder = clients
    held = await _held(responder, "mux.never")
    await _echo(responder, "mux.echo2")
    mux = RequestMux(requester, timeout=WAITED_OUT)
    outcomes: list[str] = []

    async def silent() -> None:
        try:
            await mux.request("mux.never", b"")
        except nats.errors.TimeoutError:
            outcomes.append("timeout")

    async def answered() -> None:
        assert (await mux.request("mux.echo2", b"x")).data == b"re:x"
        outcomes.append("answered")

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(silent)
                group.start_soon(answered)
        await held.wait(3)  # every silent request reached its responder
    assert sorted(outcomes) == ["answered"] * 3 + ["timeout"] * 3
    assert len(held) == 3
    assert mux.waiting == 0
    await mux.aclose()


async def test_no_responders_is_reported_as_such(clients: tuple[Client, Client]) -> None:
    requester, _ = clients
    mux = RequestMux(requester, timeout=GUARD)
    with anyio.fail_after(GUARD), pytest.raises(nats.errors.NoRespondersError):
        await mux.request("mux.nobody.listens", b"")
    assert mux.waiting == 0
    await mux.aclose()


async def test_a_cancelled_request_leaves_nothing_behind(clients: tuple[Client, Client]) -> None:
    requester, responder = clients
    held = await _held(responder, "mux.cancel")
    await _echo(responder, "mux.after")
    mux = RequestMux(requester, timeout=GUARD)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(mux.request, "mux.cancel", b"")
            await held.wait(1)
            assert mux.waiting == 1
            group.cancel_scope.cancel()
        assert mux.waiting == 0
        await responder.publish(held[0].reply, b"nobody waits")
        assert (await mux.request("mux.after", b"y")).data == b"re:y"
    await mux.aclose()


async def test_close_fails_waiting_requests_and_refuses_new_ones(
    clients: tuple[Client, Client],
) -> None:
    requester, responder = clients
    held = await _held(responder, "mux.closing")
    mux = RequestMux(requester, timeout=GUARD)
    failures: list[BaseException] = []

    async def waiting() -> None:
        try:
            await mux.request("mux.closing", b"")
        except nats.errors.ConnectionClosedError as error:
            failures.append(error)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(waiting)
            await held.wait(3)
            await mux.aclose()
    assert len(failures) == 3
    assert mux.waiting == 0
    with pytest.raises(nats.errors.ConnectionClosedError):
        await mux.request("mux.closing", b"")


async def test_connection_lost_fails_waiting_requests_at_once(
    clients: tuple[Client, Client],
) -> None:
    requester, responder = clients
    held = await _held(responder, "mux.lost")
    await _echo(responder, "mux.still")
    mux = RequestMux(requester, timeout=GUARD)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:

            async def waiting() -> None:
                with pytest.raises(RequestLost):
                    await mux.request("mux.lost", b"")

            group.start_soon(waiting)
            await held.wait(1)
            mux.connection_lost()
        assert mux.waiting == 0
        assert (await mux.request("mux.still", b"z")).data == b"re:z"  # the muxer lives on
    await mux.aclose()


async def test_errors_become_backbone_errors_that_say_what_happened() -> None:
    doing = "update key 'k' in bucket 'b'"
    assert "did not answer in time" in str(translated(nats.errors.TimeoutError(), doing))
    lost = translated(RequestLost(), doing)
    assert isinstance(lost, BackboneError)
    assert str(lost).startswith(doing)
    assert "whether it was applied is unknown" in str(lost)
    closed = translated(nats.errors.ConnectionClosedError(), doing)
    assert "connection is closed" in str(closed)


async def test_a_server_restart_fails_kv_writes_in_flight_and_the_backbone_recovers(
    tmp_path: Path,
) -> None:
    """KV writes waiting when the server dies fail at once (not after request_timeout)."""
    server = EmbeddedServer(ServerConfig(store_dir=str(tmp_path / "store")))
    server.start()
    try:
        # request_timeout is far longer than a restart: a timed-out wait would not pass
        # for a lost request (pytest.raises(RequestLost) below).
        options = JetStreamOptions(request_timeout=GUARD / 2)
        backbone = await JetStreamBackbone.connect(server.url, options=options)
        try:
            kv = await backbone.add_kv(KvConfig(bucket="muxed"))
            held = await _held(backbone.client, "mux.restart")  # same connection, never answered
            with anyio.fail_after(GUARD):
                async with anyio.create_task_group() as group:

                    async def waiting() -> None:
                        with pytest.raises(RequestLost):
                            await backbone.requests.request("mux.restart", b"")

                    group.start_soon(waiting)
                    await held.wait(1)
                    await anyio.to_thread.run_sync(server.restart)
                revision = 0
                while not revision:  # the client reconnects by itself
                    try:
                        revision = await kv.create("after", b"v")
                    except BackboneError:
                        await anyio.sleep(0.05)  # a back-off while it reconnects
            assert (await kv.get("after")) is not None
            assert backbone.requests.waiting == 0
        finally:
            await backbone.aclose()
    finally:
        server.stop()
