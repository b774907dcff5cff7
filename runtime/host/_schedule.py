"""Schedule triggers: cron ticks that fire once per tick across all hosts.

``next_tick(spec, after, timezone)`` is pure: the first minute after ``after``
(aware UTC datetime) that matches the cron spec in the trigger's time zone.
``ScheduleRunner`` claims each tick with a KV ``create`` on a lease key
(``<app>.<capability>.<epoch minute>``): exactly one host wins and invokes, the
others see ``KeyExists`` and skip. The last fired tick is recorded so that, after
downtime, ``missed="run_once"`` runs one catch-up tick and ``"skip"`` does not.
Ticks are wall-clock times (hosts share UTC, not a monotonic clock).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from thaw._errors import KeyExists
from thaw._event import Event, Ok, Outcome
from thaw.backbone._contract import Backbone, KeyValue, KvConfig
from thaw.declarations._app import App
from thaw.declarations._cron import CronSpec
from thaw.declarations._triggers import ScheduleTrigger
from thaw.invocation._invoker import Invoker

__all__ = ["next_tick", "ScheduleRunner", "SCHEDULE_BUCKET", "Tick"]

SCHEDULE_BUCKET = "thaw_schedules"
_SEARCH_DAYS = 366 * 8  # Feb 29 on a Monday can be years away
log = logging.getLogger("thaw.schedule")
UTC = dt.UTC


class Tick(msgspec.Struct, frozen=True):
    """The payload a scheduled capability receives (JSON)."""

    scheduled_at: str  # ISO 8601, UTC
    capability: str
    catch_up: bool = False


def _zone(name: str) -> dt.tzinfo:
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def next_tick(spec: CronSpec, after: dt.datetime, timezone: str = "UTC") -> dt.datetime:
    """The first tick strictly after ``after`` (aware), as an aware UTC datetime."""
    zone = _zone(timezone)
    local = after.astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)
    start = local + dt.timedelta(minutes=1)
    day = start.date()
    hours = sorted(spec.hours)
    minutes = sorted(spec.minutes)
    for _ in range(_SEARCH_DAYS):
        if day.month in spec.months and spec.matches_day(day):
            for hour in hours:
                for minute in minutes:
                    candidate = dt.datetime.combine(day, dt.time(hour, minute))
                    if candidate < start:
                        continue
                    aware = candidate.replace(tzinfo=zone).astimezone(UTC)
                    if aware > after:
                        return aware
        day += dt.timedelta(days=1)
    raise ValueError(f"cron {spec.expression!r} has no tick in the next {_SEARCH_DAYS} days")


def previous_tick(spec: CronSpec, before: dt.datetime, timezone: str = "UTC") -> dt.datetime | None:
    """The last tick at or before ``before`` within the last 8 days, or None."""
    probe = before - dt.timedelta(days=8)
    last = None
    while True:
        tick = next_tick(spec, probe, timezone)
        if tick > before:
            return last
        last, probe = tick, tick


class ScheduleRunner:
    """Fires an App's schedule triggers, once per tick across every host sharing the KV."""

    def __init__(
        self,
        app: App,
        invoker: Invoker,
        backbone: Backbone,
        *,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.app = app
        self._invoker = invoker
        self._backbone = backbone
        self._now = wall_clock
        self._sleep = sleep
        self._bucket: KeyValue | None = None
        self.schedules = [
            (spec.name, trigger)
            for spec in app.capabilities.values()
            for trigger in spec.triggers
            if isinstance(trigger, ScheduleTrigger)
        ]

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            self._bucket = await self._backbone.add_kv(
                KvConfig(bucket=SCHEDULE_BUCKET, ttl=8 * 24 * 3600.0)
            )
        return self._bucket

    def _key(self, capability: str, tick: dt.datetime) -> str:
        return f"{self.app.name}.{capability}.{int(tick.timestamp()) // 60}"

    async def fire(
        self, capability: str, tick: dt.datetime, *, catch_up: bool = False
    ) -> Outcome | None:
        """Claim ``tick`` and invoke; None when another host already owns it."""
        kv = await self._kv()
        try:
            await kv.create(self._key(capability, tick), str(self._now()).encode())
        except KeyExists:
            return None
        await kv.put(f"{self.app.name}.{capability}.last", str(int(tick.timestamp())).encode())
        stamp = tick.astimezone(UTC).isoformat().replace("+00:00", "Z")
        payload = msgspec.json.encode(Tick(stamp, capability, catch_up))
        event = Event(id=f"tick:{self.app.name}:{capability}:{stamp}", data=payload)
        outcome = await self._invoker.invoke(capability, event)
        if not isinstance(outcome, Ok):
            log.warning("scheduled %s at %s answered %r", capability, stamp, outcome)
        return outcome

    async def catch_up(self, capability: str, trigger: ScheduleTrigger) -> Outcome | None:
        """After downtime: with ``missed="run_once"`` run the latest missed tick once."""
        if trigger.missed != "run_once":
            return None
        kv = await self._kv()
        entry = await kv.get(f"{self.app.name}.{capability}.last")
        now = dt.datetime.fromtimestamp(self._now(), UTC)
        latest = previous_tick(trigger.cron, now, trigger.timezone)
        if latest is None or entry is None:
            return None
        if int(entry.value) >= int(latest.timestamp()):
            return None
        return await self.fire(capability, latest, catch_up=True)

    async def run_one(self, capability: str, trigger: ScheduleTrigger) -> None:
        await self.catch_up(capability, trigger)
        while True:
            now = dt.datetime.fromtimestamp(self._now(), UTC)
            tick = next_tick(trigger.cron, now, trigger.timezone)
            await self._sleep(max((tick - now).total_seconds(), 0.0))
            await self.fire(capability, tick)

    async def run(self) -> None:
        """Run every schedule until cancelled (in the host's task group)."""
        async with anyio.create_task_group() as group:
            for capability, trigger in self.schedules:
                group.start_soon(self.run_one, capability, trigger)
