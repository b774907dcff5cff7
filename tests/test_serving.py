"""The host serves every trigger through its revision's instance pools: thaw on the first
event, scale to zero when idle, isolation per capability (MemoryBackbone, FakeClock)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from thaw import App, ConfigError, Event, Ok, kv, objects, stream, subject
from thaw.host._host import Host, open_host
from thaw.testing import FakeClock, MemoryBackbone

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds any condition below may take, at most


def counted_app(log: list[str], *, idle: float = 60.0) -> App:
    app = App("served", idle_timeout=idle)

    @app.on_start
    async def up() -> None:
        log.append("start")

    @app.on_stop
    async def down() -> None:
        log.append("stop")

    @app.capability(stream("served.in"))
    async def consume(raw: bytes) -> None:
        log.append(f"stream:{raw.decode()}")

    @app.capability(subject("served.ask"))
    async def answer(raw: bytes) -> bytes:
        log.append("subject")
        return b"answer:" + raw

    @app.capability(kv("served_cfg"))
    async def changed(raw: bytes) -> None:
        log.append("kv")

    @app.capability(objects("served_up"))
    async def uploaded(raw: bytes) -> None:
        log.append("objects")

    @app.capability()
    async def direct() -> str:
        log.append("direct")
        return "ok"

    return app


async def wait_until(condition: Callable[[], bool]) -> None:
    """Bounded: statistics and logs have no event to await, so look every few ms."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 - nothing to await but the condition
            await anyio.sleep(0.005)


def live(host: Host) -> bool:
    return any(pool.live for pool in host.router.statistics().pools)


async def scale_to_zero(host: Host, clock: FakeClock, seconds: float) -> None:
    """Move past the idle time and wait for the reaper to stop the instance.

    The reaper sees a use through the fast lane at its next look, so the instance may
    need one look more: time moves by ``seconds`` at most three times."""
    for _ in range(3):
        await wait_until(lambda: clock.sleepers() > 0)  # the reaper is parked on the clock
        clock.advance(seconds)
        await wait_until(lambda: clock.sleepers() > 0 or not live(host))
        if not live(host):
            return
    await wait_until(lambda: not live(host))


async def test_the_first_event_thaws_and_an_idle_instance_scales_to_zero() -> None:
    log: list[str] = []
    clock = FakeClock()
    async with open_host(counted_app(log, idle=30), MemoryBackbone(), clock=clock) as host:
        assert log == []  # nothing thaws at start: on_start waits for the first event
        assert not live(host)
        outcome = await host.invoke("direct", Event(id="e1", data=b""))
        assert isinstance(outcome, Ok)
        assert log == ["start", "direct"]
        await host.invoke("direct", Event(id="e2", data=b""))
        assert log.count("start") == 1  # warm: the same instance
        await scale_to_zero(host, clock, 31)
        assert log[-1] == "stop"
        await host.invoke("direct", Event(id="e3", data=b""))
        assert log.count("start") == 2  # a second cold start
        series = host.statistics().revisions
        assert series is not None
        (cold,) = series.cold_starts
        assert (cold.capability, cold.count, cold.isolation) == ("direct", 2, "shared")
        assert sum(cold.buckets) == 2 and cold.total_seconds > 0
    assert log[-1] == "stop"  # leaving the host stops the live instance


async def test_an_instance_in_use_is_not_stopped() -> None:
    log: list[str] = []
    clock = FakeClock()
    release = anyio.Event()
    app = App("busy", idle_timeout=5)

    @app.on_stop
    async def down() -> None:
        log.append("stop")

    @app.capability(timeout=3600)
    async def slow() -> None:
        await release.wait()

    async with open_host(app, MemoryBackbone(), clock=clock) as host:
        async with anyio.create_task_group() as group:
            group.start_soon(host.invoke, "slow", Event(id="s", data=b""))
            await wait_until(lambda: host.invoker.statistics().in_flight["slow"] == 1)
            await wait_until(lambda: clock.sleepers() > 0)
            clock.advance(60)
            await wait_until(lambda: clock.sleepers() > 0)  # the reaper looked and slept again
            assert live(host) and log == []
            release.set()
        clock.advance(60)
        await wait_until(lambda: not live(host))
        assert log == ["stop"]


@pytest.mark.parametrize("kind", ["stream", "subject", "kv", "objects"])
async def test_every_trigger_kind_thaws_after_a_scale_to_zero(kind: str) -> None:
    log: list[str] = []
    clock = FakeClock()
    backbone = MemoryBackbone()
    expected = {"stream": "stream:x", "subject": "subject", "kv": "kv", "objects": "objects"}[kind]

    async def send(n: int) -> None:
        if kind == "stream":
            await backbone.publish("served.in", b"x")
        elif kind == "subject":
            reply = await backbone.request("served.ask", b"q", timeout=WAIT)
            assert reply.data == b"answer:q"
        elif kind == "kv":
            await (await backbone.kv("served_cfg")).put(f"k{n}", b"v")
        else:
            await (await backbone.object_store("served_up")).put(f"o{n}", b"data")

    async with open_host(counted_app(log, idle=10), backbone, clock=clock) as host:
        await send(1)
        await wait_until(lambda: log.count(expected) == 1)
        assert log[0] == "start"
        await scale_to_zero(host, clock, 11)
        assert log[-1] == "stop"
        await send(2)
        await wait_until(lambda: log.count(expected) == 2)
        assert log.count("start") == 2
        stats = host.statistics().revisions
        assert stats is not None
        assert sum(s.count for s in stats.cold_starts) == 2


async def test_a_capability_may_keep_its_instance_longer_than_the_app() -> None:
    clock = FakeClock()
    app = App("mixed", idle_timeout=5)

    @app.capability()
    async def quick() -> None:
        return None

    @app.capability(idle_timeout=100)
    async def patient() -> None:
        return None

    async with open_host(app, MemoryBackbone(), clock=clock) as host:
        await host.invoke("quick", Event(id="q", data=b""))
        (pool,) = host.router.statistics().pools
        assert pool.live
        # One shared instance serves both: it stays while the longer idle time runs.
        await wait_until(lambda: clock.sleepers() > 0)
        clock.advance(50)
        await wait_until(lambda: clock.sleepers() > 0)
        assert live(host)
        clock.advance(60)
        await wait_until(lambda: not live(host))


async def test_the_idle_timeout_of_the_host_overrides_the_app() -> None:
    clock = FakeClock()
    log: list[str] = []
    async with open_host(
        counted_app(log, idle=3600), MemoryBackbone(), clock=clock, idle_timeout=1
    ) as host:
        await host.invoke("direct", Event(id="d", data=b""))
        await scale_to_zero(host, clock, 2)


async def test_warm_runs_on_start_before_the_host_serves_and_raises_its_error() -> None:
    log: list[str] = []
    async with open_host(counted_app(log), MemoryBackbone(), warm=True):
        assert log == ["start"]
    app = App("broken")

    @app.on_start
    async def up() -> None:
        raise ConnectionRefusedError("the database refused")

    @app.capability()
    async def f() -> None:
        return None

    with pytest.raises(ConnectionRefusedError, match="database refused"):
        async with open_host(app, MemoryBackbone(), warm=True):
            pass


async def test_a_failing_on_start_answers_retry_and_the_next_event_tries_again() -> None:
    attempts: list[int] = []
    app = App("flaky")

    @app.on_start
    async def up() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("not yet")

    @app.capability()
    async def f() -> str:
        return "fine"

    async with open_host(app, MemoryBackbone()) as host:
        first = await host.invoke("f", Event(id="1", data=b""))
        assert first.code == "instance_start_failed"  # type: ignore[union-attr]
        assert "not yet" in first.reason  # type: ignore[union-attr]
        second = await host.invoke("f", Event(id="2", data=b""))
        assert isinstance(second, Ok) and second.data == b'"fine"'


async def test_process_isolation_without_a_forking_host_is_a_clear_error() -> None:
    app = App("forks")

    @app.capability(isolation="process")
    async def isolated() -> None:
        return None

    with pytest.raises(ConfigError, match="isolated of app 'forks' declare isolation 'process'"):
        async with open_host(app, MemoryBackbone()):
            pass


async def test_fresh_isolation_needs_a_snapshot() -> None:
    app = App("fresh_src")

    @app.capability(isolation="fresh")
    async def f() -> None:
        return None

    with pytest.raises(ConfigError, match="isolation 'fresh'.*snapshot"):
        async with open_host(app, MemoryBackbone()):
            pass


def test_isolation_and_idle_timeout_are_validated() -> None:
    app = App("validated")
    with pytest.raises(ConfigError, match="isolation must be one of shared, fresh, process"):
        app.capability(isolation="threads")
    with pytest.raises(ConfigError, match="idle_timeout"):
        app.capability(idle_timeout=0)
    with pytest.raises(ConfigError, match="idle_timeout"):
        App("bad_idle", idle_timeout=-1)
    with pytest.raises(ConfigError, match="idle_timeout"):
        App("nan_idle", idle_timeout=float("nan"))


async def test_health_counts_calls_and_faults_per_revision_but_not_rejections() -> None:
    from thaw import Rejected

    app = App("health")

    @app.capability()
    async def fine() -> None:
        return None

    @app.capability()
    async def broken() -> None:
        raise RuntimeError("bug")

    @app.capability()
    async def declines() -> None:
        raise Rejected("no", code="declined")

    async with open_host(app, MemoryBackbone()) as host:
        for n, name in enumerate(["fine", "fine", "broken", "declines"]):
            await host.invoke(name, Event(id=f"h{n}", data=b""))
        stats = host.statistics().revisions
        assert stats is not None
        (health,) = stats.health
        assert (health.calls, health.faults) == (4, 1)
