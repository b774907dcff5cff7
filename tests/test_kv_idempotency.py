"""KvIdempotencyStore on MemoryBackbone: two hosts racing on one redelivery run it once."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from runtime import App, Event, Idempotency, Ok
from runtime._kv_idempotency import IDEMPOTENCY_BUCKET, KvIdempotencyStore
from runtime.lowlevel import Invoker, KvConfig
from runtime.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


class WallClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def store_pair() -> tuple[KvIdempotencyStore, KvIdempotencyStore, WallClock, MemoryBackbone]:
    backbone = MemoryBackbone()
    wall = WallClock()
    first = KvIdempotencyStore(backbone, wall_clock=wall)
    await first.provision(ttl=3600)
    second = KvIdempotencyStore(backbone, wall_clock=wall)
    return first, second, wall, backbone


async def test_only_one_host_claims() -> None:
    first, second, _, _ = await store_pair()
    a = await first.claim("evt/1", hold=30, ttl=600)
    b = await second.claim("evt/1", hold=30, ttl=600)
    assert (a.state, b.state) == ("claimed", "busy")
    await first.complete("evt/1", a.token, b"result", ttl=600)
    done = await second.claim("evt/1", hold=30, ttl=600)
    assert (done.state, done.result) == ("done", b"result")


async def test_lapsed_claim_is_taken_over_and_the_old_owner_cannot_complete() -> None:
    first, second, wall, _ = await store_pair()
    stale = await first.claim("k", hold=30, ttl=600)
    wall.now += 31
    fresh = await second.claim("k", hold=30, ttl=600)
    assert fresh.state == "claimed"
    await first.complete("k", stale.token, b"late", ttl=600)  # lost ownership: ignored
    await first.release("k", stale.token)  # ignored too
    assert (await first.claim("k", hold=30, ttl=600)).state == "busy"
    await second.complete("k", fresh.token, b"fresh", ttl=600)
    assert (await first.claim("k", hold=30, ttl=600)).result == b"fresh"


async def test_release_lets_a_retry_claim_and_results_expire() -> None:
    first, second, wall, _ = await store_pair()
    claim = await first.claim("k", hold=30, ttl=600)
    await first.release("k", claim.token)
    again = await second.claim("k", hold=30, ttl=600)
    assert again.state == "claimed"
    await second.complete("k", again.token, b"r", ttl=100)
    wall.now += 101
    assert (await first.claim("k", hold=30, ttl=600)).state == "claimed"


async def test_any_key_is_usable_and_garbage_records_are_taken_over() -> None:
    first, _, _, backbone = await store_pair()
    for key in ("with spaces", "ünïcode/ключ", "*.>", "x" * 5000, "\udcff"):
        assert (await first.claim(key, hold=1, ttl=1)).state == "claimed"
    bucket = await backbone.kv(IDEMPOTENCY_BUCKET)
    await bucket.put(KvIdempotencyStore._key("garbage"), b"\xff not msgpack")
    assert (await first.claim("garbage", hold=1, ttl=1)).state == "claimed"


async def test_wait_settled_returns_once_completed() -> None:
    first, second, _, _ = await store_pair()
    claim = await first.claim("k", hold=30, ttl=600)
    finished = anyio.Event()
    async with anyio.create_task_group() as group:

        async def waiter() -> None:
            await second.wait_settled("k", timeout=10)
            finished.set()

        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not finished.is_set()
        await first.complete("k", claim.token, b"r", ttl=600)
        with anyio.fail_after(5):
            await finished.wait()


async def test_two_hosts_racing_on_a_redelivered_message_run_the_side_effect_once() -> None:
    backbone = MemoryBackbone()
    await backbone.add_kv(KvConfig(bucket=IDEMPOTENCY_BUCKET, ttl=3600))
    effects: list[str] = []
    gate = anyio.Event()

    def host() -> Invoker:
        app = App("pay")

        @app.capability(timeout=5, idempotency=Idempotency())
        async def charge(amount: int) -> dict[str, int]:
            effects.append("charged")
            await gate.wait()
            return {"charged": amount}

        return Invoker(app, idempotency_store=KvIdempotencyStore(backbone))

    hosts = [host(), host()]
    results: list[object] = []
    async with anyio.create_task_group() as group:
        for invoker in hosts:

            async def deliver(invoker: Invoker = invoker) -> None:
                results.append(await invoker.invoke("charge", Event(id="msg-42", data=b"7")))

            group.start_soon(deliver)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert effects == ["charged"]
    assert len(results) == 2
    assert all(isinstance(r, Ok) and msgspec.json.decode(r.data) == {"charged": 7} for r in results)
    assert sorted(r.replayed for r in results if isinstance(r, Ok)) == [False, True]


async def test_peek_reads_without_claiming() -> None:
    first, second, wall, _ = await store_pair()
    assert await second.peek("k") is None
    claim = await first.claim("k", hold=30, ttl=600)
    busy = await second.peek("k")
    assert busy is not None
    assert busy.state == "busy"
    await first.complete("k", claim.token, b"r", ttl=600)
    done = await second.peek("k")
    assert done is not None
    assert (done.state, done.result) == ("done", b"r")
    wall.now += 601
    assert await second.peek("k") is None
