"""Cron expressions (five fields: minute hour day-of-month month day-of-week) and their ticks.

Parsed once at registration into sets of allowed values, so a malformed
expression fails at import with a message naming the field. Supports ``*``,
lists, ranges, steps (``*/5``, ``1-30/2``), month and weekday names and the
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``.
Day-of-week 0 and 7 are both Sunday. As in Vixie cron, when both day fields are
restricted a day matches if either does.

``next_tick(spec, after, timezone)`` is pure: the first tick strictly after
``after`` (an aware datetime), as an aware UTC datetime; ``previous_tick`` the
last one at or before a moment. Ticks are wall-clock minutes in the schedule's
IANA time zone, and at daylight-saving transitions they follow Vixie (ISC) cron,
whose manual says: when the clock moves by less than three hours, jobs that
would have run in the skipped time run soon after the change, and jobs in the
repeated time are not run again; only jobs at a particular time are affected,
those with ``*`` in the minute or hour field run by the new time. Here:

- A *wildcard* schedule is one whose minute or hour field starts with ``*``
  (``*/30 * * * *``, ``0 * * * *``, ``@hourly``); it runs by the wall clock as
  time actually passes: at a fall-back both occurrences of a repeated minute
  tick (``*/30`` keeps ticking every 30 minutes through the repeated hour, no
  skipped hour), and minutes that a spring-forward skips do not exist, so they
  do not tick (the ticks before and after the gap are the usual interval apart
  in elapsed time).
- Any other schedule is *fixed-time* (``30 2 * * *``, ``0 9-17 * * 1-5``: Vixie
  decides by spelling, not by the set of values). A tick in a repeated
  (fall-back) interval runs once, at its first occurrence. Ticks inside a
  spring-forward gap run once, right after the gap (at the transition instant,
  e.g. 03:00 CEST for 02:30 in Europe/Paris), however many of them fell into
  it; a regular tick at that same instant is the same tick.
- A shift of three hours or more is no daylight-saving change for Vixie but a
  correction of the clock: its times tick by the plain wall clock (repeated
  ones twice, skipped ones never), for every schedule.

Every tick is a distinct UTC instant and ticks strictly increase, so a tick's
instant identifies it (the scheduler derives message ids from it).
"""

from __future__ import annotations

import datetime as _dt
import zoneinfo
from collections.abc import Iterator as _Iterator

import msgspec

from thaw._errors import ConfigError

__all__ = ["CronSpec", "next_tick", "parse_cron", "previous_tick"]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_MAX_LENGTH = 256
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February of a leap year


class CronSpec(msgspec.Struct, frozen=True):
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool
    # Vixie's MIN_STAR|HR_STAR: the minute or hour field starts with "*" (see the module doc).
    wildcard: bool = False

    def matches(self, when: _dt.datetime) -> bool:
        """Whether the minute containing ``when`` is a tick of this schedule."""
        if (
            when.minute not in self.minutes
            or when.hour not in self.hours
            or when.month not in self.months
        ):
            return False
        return self.matches_day(when.date())

    def matches_day(self, day: _dt.date) -> bool:
        """Whether ``day`` is a day of this schedule (month aside; the Vixie OR rule)."""
        day_ok = day.day in self.days
        weekday_ok = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def can_fire(self) -> bool:
        """Whether some day of some year matches (``0 0 30 2 *`` never does)."""
        if not self.days_restricted or self.weekdays_restricted:
            return True  # every day, or days OR weekdays: some day of every month
        return any(day <= _LONGEST_MONTH[month - 1] for month in self.months for day in self.days)


def parse_cron(expression: str) -> CronSpec:
    if not isinstance(expression, str):
        raise ConfigError(f"a cron expression must be a string, got {type(expression).__name__}")
    if len(expression) > _MAX_LENGTH:
        raise ConfigError(f"cron expression is longer than {_MAX_LENGTH} characters")
    text = expression.strip()
    text = _MACROS.get(text.lower(), text)
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(
            f"cron expression {expression!r} has {len(parts)} fields; expected 5 "
            "(minute hour day-of-month month day-of-week) or a macro such as @hourly"
        )
    sets = [
        _parse_field(part, name, low, high, names, expression)
        for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(7 % 7 if d == 7 else d for d in sets[4])
    return CronSpec(
        expression=expression,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),  # Vixie: "*" or "*/n" is unrestricted
        weekdays_restricted=not parts[4].startswith("*"),
        wildcard=parts[0].startswith("*") or parts[1].startswith("*"),
    )


def _parse_field(
    part: str, name: str, low: int, high: int, names: dict[str, int], expression: str
) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        range_part, slash, step_text = item.partition("/")
        step = 1
        if slash:  # '5/' is a typo, not '5'
            step = _number(step_text, name, expression)
            if step < 1:
                raise ConfigError(f"cron {name} step must be >= 1 in {expression!r}")
        if range_part == "*":
            start, stop = low, high
        elif "-" in range_part:
            a, _, b = range_part.partition("-")
            start, stop = _value(a, name, names, expression), _value(b, name, names, expression)
        else:
            start = _value(range_part, name, names, expression)
            stop = high if slash else start
        for bound in (start, stop):
            if not low <= bound <= high:
                raise ConfigError(
                    f"cron {name} value {bound} is outside {low}-{high} in {expression!r}"
                )
        if start > stop:
            raise ConfigError(f"cron {name} range {range_part!r} runs backwards in {expression!r}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def _value(text: str, name: str, names: dict[str, int], expression: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    return _number(text, name, expression)


def _number(text: str, name: str, expression: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 4:
        raise ConfigError(f"cron {name} field has {text!r}, not a number, in {expression!r}")
    return int(text)


UTC = _dt.UTC
_MINUTE = _dt.timedelta(minutes=1)
_SECOND = _dt.timedelta(seconds=1)
_DST_LIMIT = _dt.timedelta(hours=3)  # Vixie: smaller shifts are DST, larger ones corrections
_SEARCH_DAYS = 366 * 8  # Feb 29 on a Monday can be years away
_LOOKBACKS = (_dt.timedelta(hours=1), _dt.timedelta(days=1), _dt.timedelta(days=8))


def _zone(name: str) -> _dt.tzinfo:
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def next_tick(spec: CronSpec, after: _dt.datetime, timezone: str = "UTC") -> _dt.datetime:
    """The first tick strictly after ``after`` (aware), as an aware UTC datetime."""
    if after.tzinfo is None:
        raise ValueError("next_tick needs an aware datetime (with a time zone)")
    zone = _zone(timezone)
    local = after.astimezone(zone)
    naive = local.replace(tzinfo=None, second=0, microsecond=0, fold=0)
    # In a repeated interval, the second occurrences of earlier wall-clock minutes are
    # still ahead: start that much earlier (candidates at or before ``after`` are dropped).
    start = naive + _MINUTE - _overlap(naive, zone)
    best: _dt.datetime | None = None
    for candidate in _candidates(spec, start):
        first, instants = _occurrences(candidate, zone, wildcard=spec.wildcard)
        for instant in instants:
            if instant > after and (best is None or instant < best):
                best = instant
        # Every later wall-clock minute occurs at or after ``first``: nothing earlier remains.
        if best is not None and first >= best:
            return best
    if best is not None:
        return best
    raise ValueError(f"cron {spec.expression!r} has no tick in the next {_SEARCH_DAYS} days")


def previous_tick(
    spec: CronSpec, before: _dt.datetime, timezone: str = "UTC"
) -> _dt.datetime | None:
    """The last tick at or before ``before`` within the last 8 days, or None."""
    for lookback in _LOOKBACKS:  # the latest tick lies in the first window holding any
        last = None
        try:
            tick = next_tick(spec, before - lookback, timezone)
            while tick <= before:
                last, tick = tick, next_tick(spec, tick, timezone)
        except ValueError:  # a schedule that never fires
            return None
        if last is not None:
            return last
    return None


def _candidates(spec: CronSpec, start: _dt.datetime) -> _Iterator[_dt.datetime]:
    """The matching wall-clock minutes at or after ``start`` (naive), in order."""
    hours = sorted(spec.hours)
    minutes = sorted(spec.minutes)
    day = start.date()
    for _ in range(_SEARCH_DAYS):
        if day.month in spec.months and spec.matches_day(day):
            for hour in hours:
                for minute in minutes:
                    candidate = _dt.datetime.combine(day, _dt.time(hour, minute))
                    if candidate >= start:
                        yield candidate
        day += _dt.timedelta(days=1)


def _overlap(naive: _dt.datetime, zone: _dt.tzinfo) -> _dt.timedelta:
    """How long the interval repeated around ``naive`` is (zero if it occurs once)."""
    first = naive.replace(tzinfo=zone).utcoffset()
    second = naive.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None
    return max(first - second, _dt.timedelta(0))


def _occurrences(
    naive: _dt.datetime, zone: _dt.tzinfo, *, wildcard: bool
) -> tuple[_dt.datetime, list[_dt.datetime]]:
    """When the wall-clock minute ``naive`` ticks: (its earliest instant, its ticks).

    PEP 495: fold 0 takes the offset before a transition, fold 1 the one after, so
    the two differ exactly in repeated (fold-0 offset larger) and skipped minutes.
    The earliest instant never decreases with ``naive``; ``next_tick`` relies on it.
    """
    before = naive.replace(tzinfo=zone).utcoffset()
    after = naive.replace(tzinfo=zone, fold=1).utcoffset()
    assert before is not None and after is not None
    earliest = (naive - before).replace(tzinfo=UTC)
    if before == after:
        return earliest, [earliest]
    if before > after:  # repeated: wildcards tick twice, fixed times once (the first)
        again = (naive - after).replace(tzinfo=UTC)
        twice = wildcard or before - after >= _DST_LIMIT
        return earliest, [earliest, again] if twice else [earliest]
    end = _transition((naive - after).replace(tzinfo=UTC), earliest, zone, after)
    if wildcard or after - before >= _DST_LIMIT:
        return end, []  # a skipped minute does not exist on the wall clock
    return end, [end]  # fixed time in a spring-forward gap: right after the gap


def _transition(
    low: _dt.datetime, high: _dt.datetime, zone: _dt.tzinfo, offset: _dt.timedelta
) -> _dt.datetime:
    """The first instant in (``low``, ``high``] whose offset is ``offset`` (to the second)."""
    while high - low > _SECOND:
        middle = low + (high - low) // 2
        middle -= _dt.timedelta(microseconds=middle.microsecond)
        if middle <= low:
            break
        if middle.astimezone(zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return high
