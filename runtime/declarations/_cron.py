"""Cron expressions (five fields: minute hour day-of-month month day-of-week).

Parsed once at registration into sets of allowed values, so a malformed
expression fails at import with a message naming the field. Supports ``*``,
lists, ranges, steps (``*/5``, ``1-30/2``), month and weekday names and the
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``.
Day-of-week 0 and 7 are both Sunday. As in Vixie cron, when both day fields are
restricted a day matches if either does.
"""

from __future__ import annotations

import datetime as _dt

import msgspec

from thaw._errors import ConfigError

__all__ = ["CronSpec", "parse_cron"]

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


class CronSpec(msgspec.Struct, frozen=True):
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

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
