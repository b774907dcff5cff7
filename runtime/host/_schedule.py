"""Schedule triggers: each cron tick is a message, run like any stream message.

``ScheduleRunner`` computes an App's ticks (``next_tick`` in
``thaw.declarations._cron``, DST rules there) and, at each one, publishes one
tick message (a JSON ``Tick``) to ``thaw.tick.<app>.<capability>`` in the app's
tick stream ``<APP>-TICKS``. Provisioning gives each schedule trigger a durable
consumer on that subject, and the host runs it with the ordinary ``StreamWorker``:
retries with backoff, attempts, the retry budget, idempotency and the dead-letter
stream apply exactly as for a ``stream`` trigger, and a host that dies between
publish and run leaves the tick to the consumer, which redelivers it.

Once per tick across hosts: every host publishes every tick, with the msg id
``tick:<app>:<capability>:<scheduled time>`` (also the event id the function
sees, so an idempotency key defaults to it), and JetStream's duplicate window
(``TICK_DUPLICATE_WINDOW``) keeps one. A host publishes a tick only within
``LATE_LIMIT`` (half that window) of its time, so hosts whose clocks agree to
within that never publish one tick twice outside the window; no KV lease is
needed for this (the old claim-then-run lease lost the tick when its holder
died between claim and run). A host that wakes later than that (suspended,
overloaded, broker down) treats the tick as missed. The KV record
``<app>.<capability>.last`` (bucket ``thaw_schedules``) keeps the latest tick
published; it is what decides, beyond the duplicate window, whether a tick was
missed: at start and after a late wake-up, ``missed="run_once"`` publishes the
latest missed tick once (``catch_up=True``, same msg id), ``"skip"`` does not.
Ticks are wall-clock times (hosts share UTC, not a monotonic clock).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import BackboneError, BucketNotFound, KeyExists, WrongRevision
from thaw._trace import SpanKind, Tracer
from thaw.backbone._contract import Backbone, KeyValue, KvConfig, PubAck
from thaw.declarations._app import App
from thaw.declarations._cron import next_tick, previous_tick
from thaw.declarations._triggers import ScheduleTrigger

__all__ = [
    "LATE_LIMIT",
    "SCHEDULE_BUCKET",
    "SCHEDULE_BUCKET_TTL",
    "TICK_DUPLICATE_WINDOW",
    "TICK_MAX_AGE",
    "ScheduleRunner",
    "Tick",
    "next_tick",
    "previous_tick",
    "tick_msg_id",
    "tick_stream_name",
    "tick_subject",
    "tick_subjects",
]

SCHEDULE_BUCKET = "thaw_schedules"
SCHEDULE_BUCKET_TTL = 8 * 24 * 3600.0  # longer than previous_tick looks back
TICK_DUPLICATE_WINDOW = 120.0  # seconds JetStream drops a repeated tick msg id
LATE_LIMIT = TICK_DUPLICATE_WINDOW / 2  # a tick later than this is missed, not published
TICK_MAX_AGE = 7 * 24 * 3600.0  # tick messages are kept a week (retries are far shorter)
PUBLISH_PAUSE_MIN = 0.5  # seconds between attempts to publish a tick the broker refused
PUBLISH_PAUSE_MAX = 8.0
log = logging.getLogger("thaw.schedule")
UTC = dt.UTC


class Tick(msgspec.Struct, frozen=True):
    """The payload a scheduled capability receives (JSON)."""

    scheduled_at: str  # ISO 8601, UTC
    capability: str
    catch_up: bool = False


def tick_stream_name(app: str) -> str:
    """The app's tick stream: ``-`` keeps it apart from every app stream name."""
    return app.upper().replace("-", "_") + "-TICKS"


def tick_subjects(app: str) -> str:
    """What the tick stream captures (one pattern, so a new schedule never changes it)."""
    return f"thaw.tick.{app}.>"


def tick_subject(app: str, capability: str) -> str:
    return f"thaw.tick.{app}.{capability}"


def _stamp(tick: dt.datetime) -> str:
    return tick.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_msg_id(app: str, capability: str, tick: dt.datetime) -> str:
    """The msg id (and event id) of one tick: the same on every host."""
    return f"tick:{app}:{capability}:{_stamp(tick)}"


class ScheduleRunner:
    """Publishes an App's schedule ticks (its stream workers run them).

    ``wall_clock`` gives the wall time (seconds since the epoch), ``clock`` is what
    the runner sleeps on; tests pass a ``FakeClock`` and a wall clock derived from it.
    """

    def __init__(
        self,
        app: App,
        backbone: Backbone,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.app = app
        self._tracer = tracer
        self._backbone = backbone
        self._now = wall_clock
        self._clock: Clock = clock or SystemClock()
        self._bucket: KeyValue | None = None
        self.schedules = [
            (spec.name, trigger)
            for spec in app.capabilities.values()
            for trigger in spec.triggers
            if isinstance(trigger, ScheduleTrigger)
        ]

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            try:
                self._bucket = await self._backbone.kv(SCHEDULE_BUCKET)
            except BucketNotFound:
                self._bucket = await self._backbone.add_kv(
                    KvConfig(bucket=SCHEDULE_BUCKET, ttl=SCHEDULE_BUCKET_TTL)
                )
        return self._bucket

    def _last_key(self, capability: str) -> str:
        return f"{self.app.name}.{capability}.last"

    async def publish(
        self, capability: str, tick: dt.datetime, *, catch_up: bool = False
    ) -> PubAck:
        """Publish ``tick`` (a repeat within the duplicate window is dropped) and record it."""
        payload = msgspec.json.encode(Tick(_stamp(tick), capability, catch_up))
        subject = tick_subject(self.app.name, capability)
        msg_id = tick_msg_id(self.app.name, capability, tick)
        if self._tracer is None:
            ack = await self._backbone.publish(subject, payload, msg_id=msg_id)
        else:  # a tick starts a trace: its own root span, the consumer's parent
            span = self._tracer.start_span(
                f"publish {subject}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": subject,
                    "messaging.message.id": msg_id,
                    "faas.cron": capability,
                    "faas.time": _stamp(tick),
                    "thaw.catch_up": catch_up,
                },
            )
            headers: dict[str, str] = {}
            span.context.write(headers)
            try:
                ack = await self._backbone.publish(subject, payload, headers=headers, msg_id=msg_id)
            except BaseException as exc:
                span.record_exception(exc)
                raise
            finally:
                span.end()
        await self._record(capability, int(tick.timestamp()))
        return ack

    async def _record(self, capability: str, epoch: int) -> None:
        """Raise the ``last`` record to ``epoch`` (never lower it: hosts race here)."""
        kv = await self._kv()
        key = self._last_key(capability)
        for _ in range(5):  # a few rounds of compare-and-set against other hosts
            entry = await kv.get(key)
            try:
                if entry is None:
                    await kv.create(key, str(epoch).encode())
                elif _epoch(entry.value) < epoch:
                    await kv.update(key, str(epoch).encode(), last=entry.revision)
                return
            except (KeyExists, WrongRevision):
                continue

    async def missed_tick(self, capability: str, trigger: ScheduleTrigger) -> dt.datetime | None:
        """The latest tick no host published (after downtime), or None."""
        kv = await self._kv()
        entry = await kv.get(self._last_key(capability))
        now = dt.datetime.fromtimestamp(self._now(), UTC)
        latest = previous_tick(trigger.cron, now, trigger.timezone)
        if latest is None or entry is None or _epoch(entry.value) >= int(latest.timestamp()):
            return None
        return latest

    async def catch_up(self, capability: str, trigger: ScheduleTrigger) -> PubAck | None:
        """With ``missed="run_once"``, publish the latest missed tick once."""
        if trigger.missed != "run_once":
            return None
        latest = await self.missed_tick(capability, trigger)
        if latest is None:
            return None
        log.info("schedule %s: catching up the tick of %s", capability, _stamp(latest))
        return await self.publish(capability, latest, catch_up=True)

    async def _sleep_until(self, when: dt.datetime) -> None:
        target = when.timestamp()
        while (delay := target - self._now()) > 0:  # wall time may drift from the clock
            await self._clock.sleep_until(self._clock.now() + delay)

    async def _publish_on_time(self, capability: str, tick: dt.datetime) -> bool:
        """Publish ``tick`` while it is not late; False if it could not be."""
        pause = 0.0
        while self._now() - tick.timestamp() <= LATE_LIMIT:
            try:
                await self.publish(capability, tick)
                return True
            except BackboneError as exc:  # other hosts may get it through; keep trying
                pause = min(max(pause * 2, PUBLISH_PAUSE_MIN), PUBLISH_PAUSE_MAX)
                log.warning(
                    "schedule %s: publishing the tick of %s failed (%s: %s); again in %.1fs",
                    capability,
                    _stamp(tick),
                    exc.code,
                    exc,
                    pause,
                )
                await self._clock.sleep_until(self._clock.now() + pause)
        return False

    async def run_one(self, capability: str, trigger: ScheduleTrigger) -> None:
        """Publish ``capability``'s ticks until cancelled."""
        await self._catch_up_logged(capability, trigger)
        now = dt.datetime.fromtimestamp(self._now(), UTC)
        while True:
            try:
                tick = next_tick(trigger.cron, now, trigger.timezone)
            except ValueError as exc:  # a cron that never fires (30 February) stops alone
                log.error("schedule %s stops: %s", capability, exc)
                return
            await self._sleep_until(tick)
            if not await self._publish_on_time(capability, tick):
                log.warning(
                    "schedule %s: the tick of %s is more than %gs late; it counts as missed",
                    capability,
                    _stamp(tick),
                    LATE_LIMIT,
                )
                await self._catch_up_logged(capability, trigger)
            now = max(tick, dt.datetime.fromtimestamp(self._now(), UTC))

    async def _catch_up_logged(self, capability: str, trigger: ScheduleTrigger) -> None:
        try:
            await self.catch_up(capability, trigger)
        except BackboneError as exc:  # the schedule goes on; the next tick tries again
            log.warning("schedule %s: catch-up failed (%s: %s)", capability, exc.code, exc)

    async def run(self) -> None:
        """Run every schedule until cancelled (in the host's task group)."""
        async with anyio.create_task_group() as group:
            for capability, trigger in self.schedules:
                group.start_soon(self.run_one, capability, trigger)


def _epoch(value: bytes) -> int:
    """A ``last`` record's tick (seconds since the epoch); unreadable counts as never."""
    try:
        return int(value)
    except ValueError:
        return -1
