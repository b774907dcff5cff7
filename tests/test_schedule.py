"""Schedules: next tick computation (against brute force), once-per-tick leases, catch-up."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thaw import App, Ok, schedule
from thaw.declarations._cron import parse_cron
from thaw.host._schedule import ScheduleRunner, Tick, next_tick, previous_tick
from thaw.lowlevel import Invoker
from thaw.testing import MemoryBackbone

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_simple_ticks() -> None:
    every5 = parse_cron("*/5 * * * *")
    assert next_tick(every5, at("2026-11-26T10:02:30")) == at("2026-11-26T10:05:00")
    assert next_tick(every5, at("2026-11-26T10:05:00")) == at("2026-11-26T10:10:00")
    daily = parse_cron("@daily")
    assert next_tick(daily, at("2026-12-31T23:59:00")) == at("2027-01-01T00:00:00")
    leap = parse_cron("0 12 29 2 *")
    assert next_tick(leap, at("2026-03-01T00:00:00")) == at("2028-02-29T12:00:00")


def test_time_zone_and_dst() -> None:
    nine_paris = parse_cron("0 9 * * *")
    # Winter: Paris is UTC+1; summer: UTC+2.
    assert next_tick(nine_paris, at("2026-01-10T00:00:00"), "Europe/Paris") == at(
        "2026-01-10T08:00:00"
    )
    assert next_tick(nine_paris, at("2026-07-10T00:00:00"), "Europe/Paris") == at(
        "2026-07-10T07:00:00"
    )


def test_previous_tick() -> None:
    hourly = parse_cron("@hourly")
    assert previous_tick(hourly, at("2026-11-26T10:30:00")) == at("2026-11-26T10:00:00")
    assert previous_tick(hourly, at("2026-11-26T10:00:00")) == at("2026-11-26T10:00:00")


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    minute = draw(st.sampled_from(["*", "*/7", "0", "15,45", "10-20/5"]))
    hour = draw(st.sampled_from(["*", "*/3", "9", "0-5", "23"]))
    dom = draw(st.sampled_from(["*", "1", "15", "*/10"]))
    month = draw(st.sampled_from(["*", "*/2", "6"]))
    dow = draw(st.sampled_from(["*", "1-5", "0", "sat"]))
    return f"{minute} {hour} {dom} {month} {dow}"


@settings(max_examples=60)
@given(
    cron_expressions(),
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1)),
)
def test_next_tick_matches_brute_force(expression: str, start: dt.datetime) -> None:
    spec = parse_cron(expression)
    after = start.replace(tzinfo=UTC)
    tick = next_tick(spec, after)
    assert tick > after
    assert spec.matches(tick)
    # No matching minute between `after` and `tick` (brute force, bounded to 70 days).
    probe = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    limit = min(tick, probe + dt.timedelta(days=70))
    while probe < limit:
        assert not spec.matches(probe), probe
        probe += dt.timedelta(minutes=1)


class Wall:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def ticking_app(fired: list[Tick], missed: str = "skip") -> App:
    app = App("cron")

    @app.capability(schedule("*/5 * * * *", missed=missed))  # type: ignore[arg-type]
    async def report(tick: Tick) -> None:
        fired.append(tick)

    return app


@pytest.mark.anyio
async def test_each_tick_fires_once_across_hosts() -> None:
    backbone = MemoryBackbone()
    fired: list[Tick] = []
    wall = Wall(at("2026-11-26T10:00:30"))
    runners = [
        ScheduleRunner(app, Invoker(app), backbone, wall_clock=wall)
        for app in (ticking_app(fired), ticking_app(fired), ticking_app(fired))
    ]
    tick = at("2026-11-26T10:05:00")
    outcomes = [await runner.fire("report", tick) for runner in runners]
    assert outcomes.count(None) == 2
    assert [o for o in outcomes if o is not None] == [Ok(b"")]
    assert fired == [Tick("2026-11-26T10:05:00Z", "report")]


@pytest.mark.anyio
async def test_missed_ticks_run_once_or_are_skipped() -> None:
    for missed, expected in (("run_once", 1), ("skip", 0)):
        backbone = MemoryBackbone()
        fired: list[Tick] = []
        app = ticking_app(fired, missed)
        wall = Wall(at("2026-11-26T10:00:30"))
        runner = ScheduleRunner(app, Invoker(app), backbone, wall_clock=wall)
        trigger = runner.schedules[0][1]
        await runner.fire("report", at("2026-11-26T10:00:00"))
        fired.clear()
        wall.now = at("2026-11-26T11:02:00").timestamp()  # the host was down for an hour
        await runner.catch_up("report", trigger)
        assert len(fired) == expected
        if expected:
            assert fired[0] == Tick("2026-11-26T11:00:00Z", "report", catch_up=True)
        await runner.catch_up("report", trigger)  # nothing more to catch up
        assert len(fired) == expected


@pytest.mark.anyio
async def test_runner_loop_sleeps_until_the_next_tick() -> None:
    import anyio

    backbone = MemoryBackbone()
    fired: list[Tick] = []
    app = ticking_app(fired)
    wall = Wall(at("2026-11-26T10:03:00"))
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        wall.now += seconds
        if len(slept) >= 3:
            await anyio.sleep_forever()

    runner = ScheduleRunner(app, Invoker(app), backbone, wall_clock=wall, sleep=fake_sleep)
    async with anyio.create_task_group() as group:
        group.start_soon(runner.run)
        with anyio.fail_after(5):
            while len(slept) < 3:
                await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    assert slept[:2] == [120.0, 300.0]
    assert [t.scheduled_at for t in fired] == ["2026-11-26T10:05:00Z", "2026-11-26T10:10:00Z"]
    assert msgspec.json.encode(fired[0])
