"""Schedules: ticks are messages (retried, dead-lettered, once across hosts), catch-up.

On MemoryBackbone with a FakeClock: the wall clock the runner reads is derived
from the fake clock, so ticks, AckWait and backoff all move only with ``advance``.
The DST rules of the tick computation are in test_cron.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thaw import App, Backoff, Context, Idempotency, Rejected, RetryPolicy, schedule
from thaw._errors import ConfigError
from thaw.declarations._cron import parse_cron
from thaw.declarations._triggers import ScheduleTrigger
from thaw.host._dead_letters import list_dead_letters, replay_dead_letter
from thaw.host._identity import EVENT_KEY, load_event_key
from thaw.host._provision import ConsumerPlan, apply_plan, plan_for
from thaw.host._schedule import (
    LATE_LIMIT,
    SCHEDULE_BUCKET,
    ScheduleRunner,
    Tick,
    next_tick,
    previous_tick,
    tick_stream_name,
    tick_subject,
)
from thaw.lowlevel import DEAD_LETTER_STREAM, Invoker, StreamWorker
from thaw.testing import FakeClock, MemoryBackbone

UTC = dt.UTC
START = 1000.0  # FakeClock's start
WAIT = 5.0  # seconds a test waits for a condition before it fails


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


def test_time_zone() -> None:
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
    weekly = parse_cron("@weekly")  # beyond the shorter look-backs
    assert previous_tick(weekly, at("2026-11-26T10:00:00")) == at("2026-11-22T00:00:00")
    assert previous_tick(parse_cron("0 0 30 2 *"), at("2026-11-26T10:00:00")) is None


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


# -- ticks are messages --------------------------------------------------------------


class Sched(msgspec.Struct, frozen=True):
    """What the function saw: the Tick and the delivery."""

    tick: Tick
    attempt: int
    event_id: str


@dataclass
class Harness:
    """A backbone, a fake clock, the wall time derived from it, and "hosts" on them."""

    app: App
    clock: FakeClock
    backbone: MemoryBackbone
    wall0: float
    runs: list[Sched] = field(default_factory=list)

    def wall(self) -> float:
        return self.wall0 + self.clock.now() - START

    def runner(self) -> ScheduleRunner:
        return ScheduleRunner(self.app, self.backbone, wall_clock=self.wall, clock=self.clock)

    def consumer(self) -> ConsumerPlan:
        return next(c for c in plan_for(self.app).consumers if c.capability == "report")

    def worker(self) -> StreamWorker:
        invoker = Invoker(self.app, backbone=self.backbone, clock=self.clock, rand=lambda: 0.0)
        plan = self.consumer()
        return StreamWorker(
            invoker, self.backbone, "report", stream=plan.stream, consumer=plan.config
        )


def ticking_app(
    runs: list[Sched],
    *,
    cron: str = "*/5 * * * *",
    missed: str = "skip",
    fail: Callable[[Tick, int], None] | None = None,
    idempotent: bool = False,
) -> App:
    app = App("cron")

    @app.capability(
        schedule(cron, missed=missed),  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=10, jitter=0)),
        idempotency=Idempotency() if idempotent else None,
    )
    async def report(tick: Tick, ctx: Context) -> None:
        runs.append(Sched(tick, ctx.attempt, ctx.event.id))
        if fail is not None:
            fail(tick, ctx.attempt)

    return app


async def harness(start: str = "2026-11-26T10:00:30", **options: object) -> Harness:
    clock = FakeClock(START)
    backbone = MemoryBackbone(clock=clock)
    runs: list[Sched] = []
    app = ticking_app(runs, **options)  # type: ignore[arg-type]
    await apply_plan(plan_for(app), backbone)
    return Harness(app, clock, backbone, at(start).timestamp(), runs)


@asynccontextmanager
async def running(*runners: ScheduleRunner) -> AsyncIterator[None]:
    async with anyio.create_task_group() as group:
        for runner in runners:
            group.start_soon(runner.run)
        await anyio.wait_all_tasks_blocked()
        yield
        group.cancel_scope.cancel()


async def advance(h: Harness, seconds: float) -> None:
    """Move the clock and let the runners publish what is due."""
    h.clock.advance(seconds)
    await anyio.wait_all_tasks_blocked()


async def dead_letters(backbone: MemoryBackbone) -> list[dict[str, str]]:
    info = await backbone.stream_info(DEAD_LETTER_STREAM)
    return [
        (await backbone.get_message(DEAD_LETTER_STREAM, seq)).headers
        for seq in range(info.first_seq, info.last_seq + 1)
        if info.messages
    ]


@pytest.mark.anyio
async def test_provisioning_gives_each_schedule_a_tick_stream_and_consumer() -> None:
    h = await harness()
    plan = plan_for(h.app)
    stream = next(s for s in plan.streams if s.name == "CRON-TICKS")
    assert stream.subjects == ("thaw.tick.cron.>",)
    assert stream.duplicate_window >= 2 * LATE_LIMIT  # a tick on time is dropped as a repeat
    assert stream.max_age > 0  # tick history does not grow forever
    consumer = h.consumer()
    assert (consumer.stream, consumer.config.filter_subject) == (
        tick_stream_name("cron"),
        tick_subject("cron", "report"),
    )
    assert consumer.config.durable == "cron-report-tick"
    assert consumer.config.max_deliver == -1  # attempts are counted by the worker
    assert SCHEDULE_BUCKET in {b.bucket for b in plan.buckets}


@pytest.mark.anyio
async def test_a_tick_runs_through_the_worker_with_the_tick_value() -> None:
    h = await harness()
    worker = h.worker()
    async with running(h.runner()):
        await advance(h, 270)  # 10:05:00
    await worker.run_until_idle()
    assert [r.tick for r in h.runs] == [Tick("2026-11-26T10:05:00Z", "report")]
    assert h.runs[0].event_id == "tick:cron:report:2026-11-26T10:05:00Z"
    assert worker.statistics().acked == 1


@pytest.mark.anyio
async def test_a_failing_tick_is_retried_and_then_dead_lettered_with_the_reason() -> None:
    def always(tick: Tick, attempt: int) -> None:
        raise ConnectionError("the report server is down")

    h = await harness(fail=always)
    worker = h.worker()
    async with running(h.runner()):
        await advance(h, 270)
    for _ in range(4):  # attempts 1..3, backoff 10 s then 20 s
        await worker.run_until_idle()
        h.clock.advance(30)
    assert [(r.tick.scheduled_at, r.attempt) for r in h.runs] == [
        ("2026-11-26T10:05:00Z", 1),
        ("2026-11-26T10:05:00Z", 2),
        ("2026-11-26T10:05:00Z", 3),
    ]
    assert worker.statistics().naked == 2
    [dead] = await dead_letters(h.backbone)
    assert dead["Thaw-Error-Code"] == "handler_error"
    assert dead["Thaw-Attempts"] == "3"
    assert "gave up after 3 attempts" in dead["Thaw-Error-Message"]
    assert dead["Thaw-Original-Subject"] == "thaw.tick.cron.report"
    assert dead["Thaw-Capability"] == "report"


@pytest.mark.anyio
async def test_a_rejected_tick_is_dead_lettered_at_once() -> None:
    def refuse(tick: Tick, attempt: int) -> None:
        raise Rejected("no report on this day", code="report_refused")

    h = await harness(fail=refuse)
    worker = h.worker()
    async with running(h.runner()):
        await advance(h, 270)
    await worker.run_until_idle()
    [dead] = await dead_letters(h.backbone)
    assert dead["Thaw-Error-Code"] == "report_refused"
    assert len(h.runs) == 1


@pytest.mark.anyio
async def test_two_hosts_run_each_tick_once() -> None:
    h = await harness()
    workers = [h.worker(), h.worker()]  # competing consumers of one durable
    async with running(h.runner(), h.runner()):
        for _ in range(6):
            await advance(h, 300)
            for worker in workers:
                await worker.run_until_idle()
    stamps = [r.tick.scheduled_at for r in h.runs]
    assert stamps == [f"2026-11-26T10:{m:02d}:00Z" for m in (5, 10, 15, 20, 25, 30)]
    assert (await h.backbone.stream_info("CRON-TICKS")).messages == 6  # repeats dropped


@pytest.mark.anyio
async def test_a_host_late_beyond_the_limit_does_not_publish_the_tick_again() -> None:
    h = await harness(missed="run_once")
    on_time = h.runner()
    async with running(on_time):
        await advance(h, 270)  # 10:05 published
        await h.worker().run_until_idle()
    # A second host wakes for 10:05 only now (it was suspended): the duplicate window
    # may be over, so it must not publish 10:05 again; the record says it ran.
    h.clock.advance(LATE_LIMIT + 1)
    late = h.runner()
    assert await late.missed_tick("report", late.schedules[0][1]) is None
    async with running(late):
        await advance(h, 1)
    await h.worker().run_until_idle()
    assert [r.tick.scheduled_at for r in h.runs] == ["2026-11-26T10:05:00Z"]


@pytest.mark.anyio
async def test_a_host_killed_while_running_a_tick_does_not_lose_it() -> None:
    started = anyio.Event()

    def hang_first(tick: Tick, attempt: int) -> None:
        if attempt == 1:
            started.set()
            raise anyio.get_cancelled_exc_class()  # stands for the process dying mid-call

    h = await harness(fail=hang_first)
    async with running(h.runner()):
        await advance(h, 270)
    dying = h.worker()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:  # the first host: never acks
            group.start_soon(dying.run)
            await started.wait()
            group.cancel_scope.cancel()
    assert dying.statistics().acked == 0
    successor = h.worker()
    await successor.run_until_idle()
    assert [r.attempt for r in h.runs] == [1]  # not before AckWait
    h.clock.advance(h.consumer().config.ack_wait)
    await successor.run_until_idle()
    assert [(r.tick.scheduled_at, r.attempt) for r in h.runs] == [
        ("2026-11-26T10:05:00Z", 1),
        ("2026-11-26T10:05:00Z", 2),
    ]
    assert successor.statistics().acked == 1


@pytest.mark.anyio
async def test_idempotency_keys_on_the_tick() -> None:
    h = await harness(idempotent=True)
    runner = h.runner()
    tick = at("2026-11-26T10:05:00")
    first = await runner.publish("report", tick)
    h.clock.advance(LATE_LIMIT * 3)  # beyond the duplicate window
    again = await runner.publish("report", tick)  # e.g. a replay: same event id
    assert (first.duplicate, again.duplicate) == (False, False)
    await h.worker().run_until_idle()
    assert [r.tick.scheduled_at for r in h.runs] == ["2026-11-26T10:05:00Z"]


@pytest.mark.anyio
async def test_missed_ticks_run_once_or_are_skipped() -> None:
    for missed, expected in (("run_once", 1), ("skip", 0)):
        h = await harness(missed=missed)
        runner = h.runner()
        trigger = runner.schedules[0][1]
        await runner.publish("report", at("2026-11-26T10:00:00"))
        await h.worker().run_until_idle()
        h.runs.clear()
        h.clock.advance(3600 + 90)  # the host was down for an hour: 11:02
        await runner.catch_up("report", trigger)
        await runner.catch_up("report", trigger)  # nothing more to catch up
        await h.worker().run_until_idle()
        assert len(h.runs) == expected, missed
        if expected:
            assert h.runs[0].tick == Tick("2026-11-26T11:00:00Z", "report", catch_up=True)


@pytest.mark.anyio
async def test_the_loop_catches_up_when_it_wakes_too_late() -> None:
    h = await harness(missed="run_once")
    async with running(h.runner()):
        await advance(h, 270)  # 10:05 on time
        # The process is stopped (SIGSTOP, a laptop lid) for twenty minutes.
        h.wall0 += 20 * 60
        await advance(h, 300)
        await h.worker().run_until_idle()
    stamps = [(r.tick.scheduled_at, r.tick.catch_up) for r in h.runs]
    assert stamps == [("2026-11-26T10:05:00Z", False), ("2026-11-26T10:30:00Z", True)]


@pytest.mark.anyio
async def test_garbage_on_the_tick_subject_is_dead_lettered_and_ticks_go_on() -> None:
    h = await harness()
    for junk in (b"", b"\xff\xfe", b"[" * 5000, b'{"scheduled_at": 5}', b"x" * 10_000):
        await h.backbone.publish(tick_subject("cron", "report"), junk)
    worker = h.worker()
    await worker.run_until_idle()
    assert worker.statistics().dead_lettered == 5
    codes = [d["Thaw-Error-Code"] for d in await dead_letters(h.backbone)]
    malformed, invalid = "payload_malformed", "contract_invalid"
    assert codes == [malformed, malformed, invalid, invalid, malformed]
    async with running(h.runner()):
        await advance(h, 270)
    await worker.run_until_idle()
    assert [r.tick.scheduled_at for r in h.runs] == ["2026-11-26T10:05:00Z"]


@pytest.mark.anyio
async def test_an_unreadable_last_record_counts_as_never_run() -> None:
    h = await harness(missed="run_once")
    runner = h.runner()
    kv = await h.backbone.kv(SCHEDULE_BUCKET)
    await kv.put("cron.report.last", b"\x00not a number")
    await runner.catch_up("report", runner.schedules[0][1])  # no crash; catches up
    await h.worker().run_until_idle()
    assert [r.tick.catch_up for r in h.runs] == [True]


def test_a_cron_that_never_fires_is_refused_at_declaration() -> None:
    with pytest.raises(ConfigError, match="'0 0 30 2 \\*' never fires"):
        schedule("0 0 30 2 *")


@pytest.mark.anyio
async def test_a_schedule_that_never_fires_stops_alone(caplog: pytest.LogCaptureFixture) -> None:
    h = await harness()
    app = App("never")

    @app.capability(ScheduleTrigger(parse_cron("0 0 30 2 *")))  # declared past the check
    async def report(tick: Tick) -> None:
        raise AssertionError("never runs")

    runner = ScheduleRunner(app, h.backbone, wall_clock=h.wall, clock=h.clock)
    with caplog.at_level(logging.ERROR, logger="thaw.schedule"), anyio.fail_after(WAIT):
        await runner.run()  # returns instead of raising into the host's task group
    assert "has no tick" in caplog.text


@pytest.mark.anyio
async def test_a_dead_lettered_tick_replays_as_the_same_tick() -> None:
    def fail_the_first_delivery(tick: Tick, attempt: int) -> None:
        if len(h.runs) <= 3:  # every attempt of the first delivery fails
            raise ConnectionError("the report server is down")

    h = await harness(fail=fail_the_first_delivery)
    worker = h.worker()
    async with running(h.runner()):
        await advance(h, 270)
    for _ in range(4):
        await worker.run_until_idle()
        h.clock.advance(30)
    [letter] = await list_dead_letters(h.backbone, app="cron")
    await replay_dead_letter(h.backbone, letter.seq)
    # The host hands its workers the backbone's event-id key (open_host does this).
    token = EVENT_KEY.set(await load_event_key(h.backbone))
    try:
        await worker.run_until_idle()
    finally:
        EVENT_KEY.reset(token)
    assert [(r.tick.scheduled_at, r.event_id) for r in h.runs][-1] == (
        "2026-11-26T10:05:00Z",
        "tick:cron:report:2026-11-26T10:05:00Z",
    )
    assert len(h.runs) == 4
    assert await list_dead_letters(h.backbone, app="cron") == []
