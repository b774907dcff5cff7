"""Instance pool: thaw on first event, burst thaws once, scale to zero, isolation levels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from snapshot_apps import build, write_app

from thaw import Event, Ok, Retry
from thaw._errors import ConfigError
from thaw.host._instances import InstancePool
from thaw.snapshots._revision import Revision, load_revision
from thaw.testing import FakeClock

pytestmark = pytest.mark.anyio
HELLO = Event(id="e", data=b'{"who": "ada"}')


@pytest.fixture
def revision(tmp_path: Path) -> Iterator[Revision]:
    loaded = load_revision(build(tmp_path, write_app(tmp_path / "src")), data_dir=tmp_path / "d")
    yield loaded
    loaded.unload()


def state(revision: Revision) -> object:
    return revision.namespace.modules["greeter.state"]


async def counts(pool: InstancePool) -> dict[str, int]:
    outcome = await pool.invoke("counts", Event(id="c"))
    assert isinstance(outcome, Ok)
    result: dict[str, int] = msgspec.json.decode(outcome.data)
    return result


async def test_first_event_thaws_and_runs_on_start(revision: Revision) -> None:
    pool = InstancePool(revision)
    assert not pool.live
    outcome = await pool.invoke("hello", HELLO)
    assert outcome == Ok(b'{"text":"HELLO ADA","calls":1,"loads":1}')
    assert pool.live
    assert pool.statistics().thaws == 1
    assert (await counts(pool))["started"] == 1
    await pool.aclose()


async def test_burst_of_events_for_a_cold_revision_thaws_once(revision: Revision) -> None:
    pool = InstancePool(revision)
    results: list[object] = []
    async with anyio.create_task_group() as group:
        for i in range(50):

            async def call(i: int = i) -> None:
                results.append(await pool.invoke("hello", Event(id=str(i), data=HELLO.data)))

            group.start_soon(call)
    assert len(results) == 50
    assert all(isinstance(r, Ok) for r in results)
    assert pool.statistics().thaws == 1
    assert state(revision).started == 1
    await pool.aclose()


async def test_scale_to_zero_after_idle_keeps_the_revision(revision: Revision) -> None:
    clock = FakeClock()
    pool = InstancePool(revision, idle_timeout=60, clock=clock)
    await pool.invoke("hello", HELLO)
    clock.advance(59)
    assert not await pool.drop_idle()
    assert pool.live
    clock.advance(1)
    assert await pool.drop_idle()
    assert not pool.live
    assert state(revision).stopped == 1
    # The revision's modules stay loaded; the next event thaws a new instance.
    assert await pool.invoke("hello", HELLO) == Ok(b'{"text":"HELLO ADA","calls":2,"loads":1}')
    assert pool.statistics().thaws == 2
    assert pool.statistics().drops == 1
    await pool.aclose()


async def test_busy_instance_is_not_dropped(revision: Revision) -> None:
    clock = FakeClock()
    pool = InstancePool(revision, idle_timeout=1, clock=clock)
    await pool.thaw()
    instance = await pool.thaw()
    instance.in_flight = 1  # as if a call were running
    clock.advance(10)
    assert not await pool.drop_idle()
    instance.in_flight = 0
    assert await pool.drop_idle()
    await pool.aclose()


async def test_reaper_drops_idle_instances(revision: Revision) -> None:
    clock = FakeClock()
    pool = InstancePool(revision, idle_timeout=10, clock=clock)
    await pool.invoke("hello", HELLO)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run_reaper)
        with anyio.fail_after(5):
            while pool.live:
                await anyio.wait_all_tasks_blocked()
                clock.advance(5)
        group.cancel_scope.cancel()
    assert pool.statistics().drops == 1


async def test_shared_isolation_keeps_module_state_across_instances(revision: Revision) -> None:
    pool = InstancePool(revision, isolation="shared")
    await pool.invoke("hello", HELLO)
    await pool.scale_to_zero()
    await pool.invoke("hello", HELLO)
    assert state(revision).calls == 2
    await pool.aclose()


async def test_fresh_isolation_reexecutes_modules_per_instance(revision: Revision) -> None:
    pool = InstancePool(revision, isolation="fresh")
    first = await pool.invoke("hello", HELLO)
    await pool.scale_to_zero()
    second = await pool.invoke("hello", HELLO)
    assert first == second == Ok(b'{"text":"HELLO ADA","calls":1,"loads":1}')
    assert state(revision).calls == 0  # the revision's own modules untouched
    await pool.aclose()
    import sys

    assert not [m for m in sys.modules if "_i" in m and m.startswith("_thaw_")]


async def test_failing_on_start_is_a_retry_and_the_next_event_tries_again(
    revision: Revision,
) -> None:
    app = revision.app
    attempts: list[int] = []

    async def flaky_start() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("config service down")

    app.on_start(flaky_start)
    pool = InstancePool(revision)
    outcome = await pool.invoke("hello", HELLO)
    assert isinstance(outcome, Retry)
    assert outcome.code == "instance_start_failed"
    assert "config service down" in outcome.reason
    assert not pool.live
    assert isinstance(await pool.invoke("hello", HELLO), Ok)
    await pool.aclose()


async def test_unknown_capability_through_the_pool(revision: Revision) -> None:
    pool = InstancePool(revision)
    outcome = await pool.invoke("nope", HELLO)
    assert not isinstance(outcome, Ok)
    assert outcome.code == "capability_unknown"
    await pool.aclose()


def test_bad_options(revision: Revision) -> None:
    with pytest.raises(ConfigError, match="isolation"):
        InstancePool(revision, isolation="threads")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="idle_timeout"):
        InstancePool(revision, idle_timeout=0)
