"""KvIdempotencyStore on MemoryBackbone: two hosts racing on one redelivery run it once."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from thaw import App, Event, Idempotency, Ok
from thaw.invocation._kv_idempotency import IDEMPOTENCY_BUCKET, KvIdempotencyStore
from thaw.lowlevel import Invoker, KvConfig
from thaw.testing import MemoryBackbone

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


class CountingBucket:
    """Forwards to a KeyValue and records which of its methods were called."""

    def __init__(self, inner: Any, calls: list[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(name)
            return await method(*args, **kwargs)

        return call


class CountingBackbone:
    """A MemoryBackbone whose KV buckets count the calls made on them (round trips)."""

    def __init__(self) -> None:
        self.inner = MemoryBackbone()
        self.calls: list[str] = []

    async def add_kv(self, config: KvConfig) -> Any:
        return CountingBucket(await self.inner.add_kv(config), self.calls)

    async def kv(self, bucket: str) -> Any:
        return CountingBucket(await self.inner.kv(bucket), self.calls)


async def counting_pair(
    *, local_entries: int = 100
) -> tuple[KvIdempotencyStore, KvIdempotencyStore, WallClock, CountingBackbone]:
    backbone = CountingBackbone()
    wall = WallClock()
    first = KvIdempotencyStore(backbone, wall_clock=wall, local_entries=local_entries)  # type: ignore[arg-type]
    await first.provision(ttl=3600)
    second = KvIdempotencyStore(backbone, wall_clock=wall, local_entries=local_entries)  # type: ignore[arg-type]
    return first, second, wall, backbone


async def test_a_fresh_key_is_claimed_in_one_round_trip() -> None:
    first, _, _, backbone = await counting_pair()
    claim = await first.claim("evt/1", hold=30, ttl=600)
    assert claim.state == "claimed"
    assert backbone.calls == ["create"]


async def test_an_event_done_here_is_answered_without_a_round_trip() -> None:
    first, second, _, backbone = await counting_pair()
    claim = await first.claim("evt/1", hold=30, ttl=600)
    await first.complete("evt/1", claim.token, b"result", ttl=600)
    backbone.calls.clear()
    again = await first.claim("evt/1", hold=30, ttl=600)
    peeked = await first.peek("evt/1")
    assert (again.state, again.result) == ("done", b"result")
    assert peeked == again
    assert backbone.calls == []
    # another host reads the bucket once, then knows it too
    seen = await second.claim("evt/1", hold=30, ttl=600)
    assert (seen.state, seen.result) == ("done", b"result")
    calls = len(backbone.calls)
    assert calls > 0
    assert (await second.claim("evt/1", hold=30, ttl=600)).state == "done"
    assert len(backbone.calls) == calls


async def test_known_results_expire_with_their_records() -> None:
    first, _, wall, backbone = await counting_pair()
    claim = await first.claim("k", hold=30, ttl=600)
    await first.complete("k", claim.token, b"old", ttl=600)
    wall.now += 601
    backbone.calls.clear()
    fresh = await first.claim("k", hold=30, ttl=600)
    assert fresh.state == "claimed"  # expired: run again, and the bucket was asked
    assert backbone.calls


async def test_known_results_are_bounded_and_big_results_stay_remote() -> None:
    first, _, _, backbone = await counting_pair(local_entries=2)
    for key in ("a", "b", "c"):
        claim = await first.claim(key, hold=30, ttl=600)
        await first.complete(key, claim.token, key.encode(), ttl=600)
    big = await first.claim("big", hold=30, ttl=600)
    await first.complete("big", big.token, b"x" * 100_000, ttl=600)
    backbone.calls.clear()
    assert (await first.claim("c", hold=30, ttl=600)).result == b"c"
    assert backbone.calls == []
    assert (await first.claim("a", hold=30, ttl=600)).result == b"a"  # evicted: read again
    assert backbone.calls
    backbone.calls.clear()
    assert (await first.claim("big", hold=30, ttl=600)).result == b"x" * 100_000
    assert backbone.calls


async def test_a_lost_claim_is_not_remembered_as_done() -> None:
    first, second, wall, _ = await counting_pair()
    stale = await first.claim("k", hold=30, ttl=600)
    wall.now += 31
    fresh = await second.claim("k", hold=30, ttl=600)
    await first.complete("k", stale.token, b"late", ttl=600)  # ignored: not ours any more
    assert (await first.claim("k", hold=30, ttl=600)).state == "busy"
    await second.complete("k", fresh.token, b"fresh", ttl=600)
    assert (await first.claim("k", hold=30, ttl=600)).result == b"fresh"
