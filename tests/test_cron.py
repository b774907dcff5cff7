"""Cron parsing (fields, lists, ranges, steps, names, macros), tick matching, and ticks at DST.

The DST tests check ``next_tick`` at both transitions of Europe/Paris,
America/New_York, Australia/Lord_Howe (a 30-minute shift), Australia/Sydney and
America/Santiago (southern hemisphere; Santiago changes at midnight) against a
minute-by-minute reference of Vixie cron's rules walked in UTC.
"""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw._errors import ConfigError
from thaw.declarations._cron import CronSpec, next_tick, parse_cron, previous_tick

ALL_MINUTES = frozenset(range(60))
ALL_HOURS = frozenset(range(24))
ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute)


# -- fields ------------------------------------------------------------------------


def test_plain_values_restrict_only_their_field() -> None:
    spec = parse_cron("5 4 * * *")
    assert spec.minutes == {5}
    assert spec.hours == {4}
    assert spec.days == ALL_DAYS
    assert spec.months == ALL_MONTHS
    assert spec.weekdays == ALL_WEEKDAYS
    assert not spec.days_restricted
    assert not spec.weekdays_restricted
    assert spec.expression == "5 4 * * *"


def test_all_stars_allow_every_value() -> None:
    spec = parse_cron("* * * * *")
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays) == (
        ALL_MINUTES,
        ALL_HOURS,
        ALL_DAYS,
        ALL_MONTHS,
        ALL_WEEKDAYS,
    )


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("1,2,3", {1, 2, 3}),
        ("10-15", {10, 11, 12, 13, 14, 15}),
        ("*/15", {0, 15, 30, 45}),
        ("1-30/10", {1, 11, 21}),
        ("5/20", {5, 25, 45}),
        ("0-4,50-59/3,7", {0, 1, 2, 3, 4, 7, 50, 53, 56, 59}),
        ("59", {59}),
        ("3,3,3", {3}),
        ("*/60", {0}),
        ("0007", {7}),
    ],
)
def test_minute_field_forms(field: str, expected: set[int]) -> None:
    assert parse_cron(f"{field} * * * *").minutes == expected


def test_steps_start_at_the_field_low_bound() -> None:
    spec = parse_cron("* * */10 */5 *")
    assert spec.days == {1, 11, 21, 31}
    assert spec.months == {1, 6, 11}


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("jan", {1}),
        ("DEC", {12}),
        ("jan-mar", {1, 2, 3}),
        ("Feb,Aug", {2, 8}),
        ("jan-dec/3", {1, 4, 7, 10}),
        ("6-aug", {6, 7, 8}),
    ],
)
def test_month_names(field: str, expected: set[int]) -> None:
    assert parse_cron(f"0 0 1 {field} *").months == expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("sun", {0}),
        ("MON-fri", {1, 2, 3, 4, 5}),
        ("sat,sun", {6, 0}),
        ("7", {0}),
        ("0,7", {0}),
        ("5-7", {5, 6, 0}),
        ("0-7", ALL_WEEKDAYS),
        ("1/2", {1, 3, 5, 0}),  # 1, 3, 5, 7 and 7 is Sunday
        ("*/2", {0, 2, 4, 6}),
    ],
)
def test_weekday_names_and_seven_is_sunday(field: str, expected: set[int]) -> None:
    spec = parse_cron(f"0 0 * * {field}")
    assert spec.weekdays == expected
    assert 7 not in spec.weekdays


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_macros_expand_to_their_five_fields(macro: str, equivalent: str) -> None:
    expanded = parse_cron(equivalent)
    for text in (macro, macro.upper(), f"  {macro}\t"):
        spec = parse_cron(text)
        assert spec.expression == text  # the user's text, for messages and logs
        assert spec == msgspec.structs.replace(expanded, expression=text)


def test_surrounding_and_repeated_whitespace_is_ignored() -> None:
    assert parse_cron("  5\t4  *   * *\n").minutes == {5}


# -- matching ----------------------------------------------------------------------


def test_matches_checks_minute_hour_and_month() -> None:
    spec = parse_cron("30 9 * jun *")
    assert spec.matches(at(2024, 6, 3, 9, 30))
    assert not spec.matches(at(2024, 6, 3, 9, 31))
    assert not spec.matches(at(2024, 6, 3, 10, 30))
    assert not spec.matches(at(2024, 7, 3, 9, 30))


def test_matches_ignores_seconds_within_the_tick_minute() -> None:
    spec = parse_cron("30 9 * * *")
    assert spec.matches(dt.datetime(2024, 6, 3, 9, 30, 59, 999_999))


def test_only_weekday_restricted_means_that_weekday() -> None:
    spec = parse_cron("0 0 * * mon")
    assert spec.matches(at(2024, 1, 1))  # a Monday
    assert not spec.matches(at(2024, 1, 2))  # a Tuesday
    assert spec.matches(at(2024, 1, 8))


def test_only_day_of_month_restricted_means_that_day() -> None:
    spec = parse_cron("0 0 13 * *")
    assert spec.matches(at(2024, 9, 13))  # a Friday
    assert spec.matches(at(2024, 10, 13))  # a Sunday
    assert not spec.matches(at(2024, 9, 12))


def test_both_day_fields_restricted_match_if_either_does() -> None:
    # Vixie cron: "0 0 1 * mon" fires on the 1st AND on every Monday.
    spec = parse_cron("0 0 1 * mon")
    assert spec.matches(at(2024, 2, 1))  # the 1st, a Thursday
    assert spec.matches(at(2024, 2, 5))  # a Monday, not the 1st
    assert not spec.matches(at(2024, 2, 6))  # neither
    assert not spec.matches(at(2024, 2, 5, 0, 1))  # right day, wrong minute


def test_sunday_as_seven_matches_sundays() -> None:
    spec = parse_cron("0 12 * * 7")
    assert spec.matches(at(2024, 3, 10, 12))  # a Sunday
    assert not spec.matches(at(2024, 3, 11, 12))


def test_impossible_date_parses_and_never_matches() -> None:
    spec = parse_cron("0 0 30 feb *")
    day = dt.datetime(2024, 1, 1)
    while day.year == 2024:
        assert not spec.matches(day)
        day += dt.timedelta(days=1)


def test_weekly_macro_fires_on_sunday_midnight_only() -> None:
    spec = parse_cron("@weekly")
    ticks = [
        at(2024, 5, d, h, m)
        for d in range(1, 32)
        for h in (0, 1)
        for m in (0, 1)
        if spec.matches(at(2024, 5, d, h, m))
    ]
    assert ticks == [at(2024, 5, d) for d in (5, 12, 19, 26)]


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 0 *", "month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day-of-week"),
        ("* * * * jan", "day-of-week"),
        ("mon * * * *", "minute"),
        ("x * * * *", "minute"),
        ("1- * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        (", * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("*/x * * * *", "minute"),
        ("1/2/3 * * * *", "minute"),
        ("5/ * * * *", "minute"),
        ("* */ * * *", "hour"),
        ("5-1 * * * *", "minute"),
        ("* * * dec-jan *", "month"),
        ("* * * * fri-mon", "day-of-week"),
        ("1-2-3 * * * *", "minute"),
        ("+5 * * * *", "minute"),
        ("\u0663 * * * *", "minute"),  # an Arabic-Indic digit
        ("99999 * * * *", "minute"),
        ("* * * * **", "day-of-week"),
        ("*-5 * * * *", "minute"),
    ],
)
def test_bad_field_errors_name_the_field_and_expression(expression: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cron(expression)
    assert f"cron {field} " in info.value.message
    assert repr(expression) in info.value.message


@pytest.mark.parametrize(
    ("expression", "count"),
    [("", 0), ("   ", 0), ("* * * *", 4), ("* * * * * *", 6), ("@often", 1), ("@", 1)],
)
def test_wrong_number_of_fields(expression: str, count: int) -> None:
    with pytest.raises(ConfigError, match=f"has {count} fields; expected 5"):
        parse_cron(expression)


def test_overlong_expression_is_refused_before_parsing() -> None:
    with pytest.raises(ConfigError, match="longer than 256 characters"):
        parse_cron("1," * 200 + "1 * * * *")


@pytest.mark.parametrize("value", [None, 5, b"* * * * *", ["*"] * 5])
def test_non_string_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        parse_cron(value)  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------

CRON_ALPHABET = st.sampled_from(list("0123456789*/-, @\tjanfebmarsunmonfriSATDEC"))


@given(st.one_of(st.text(max_size=300), st.text(CRON_ALPHABET, max_size=40)))
def test_parse_cron_returns_a_spec_or_raises_config_error(text: str) -> None:
    try:
        spec = parse_cron(text)
    except ConfigError:
        return
    assert isinstance(spec, CronSpec)
    for values, low, high in (
        (spec.minutes, 0, 59),
        (spec.hours, 0, 23),
        (spec.days, 1, 31),
        (spec.months, 1, 12),
        (spec.weekdays, 0, 6),
    ):
        assert values
        assert all(low <= value <= high for value in values)


# Field bounds and names, restated here so the reference below does not share code
# with the parser.
FIELDS = (
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, {n: i + 1 for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun"])}),
    (0, 7, {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}),
)


@st.composite
def cron_field(draw: st.DrawFn, index: int) -> tuple[str, set[int]]:
    """A valid field text for field ``index`` and the set of values it allows."""
    low, high, names = FIELDS[index]

    def spell(value: int) -> str:
        spellings = [str(value)] + [n for n, v in names.items() if v == value]
        return draw(st.sampled_from(spellings))

    if draw(st.integers(0, 5)) == 0:
        return "*", set(range(low, high + 1))
    items: list[str] = []
    allowed: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "range", "star-step", "value-step"]))
        step = draw(st.integers(1, high + 1))
        if kind == "value":
            value = draw(st.integers(low, high))
            items.append(spell(value))
            allowed.add(value)
            continue
        if kind == "range":
            start = draw(st.integers(low, high))
            stop = draw(st.integers(start, high))
            text = f"{spell(start)}-{spell(stop)}"
        elif kind == "star-step":
            start, stop, text = low, high, "*"
        else:
            start = draw(st.integers(low, high))
            stop, text = high, spell(start)
        has_step = kind != "range" or draw(st.booleans())
        if has_step:
            text += f"/{step}"
        else:
            step = 1
        items.append(text)
        allowed.update(
            v for v in range(low, high + 1) if start <= v <= stop and (v - start) % step == 0
        )
    return ",".join(items), allowed


@st.composite
def cron_and_moment(draw: st.DrawFn) -> tuple[str, list[set[int]], list[str], dt.datetime]:
    fields = [draw(cron_field(i)) for i in range(5)]
    texts = [text for text, _ in fields]
    allowed = [values for _, values in fields]

    # Bias the moment towards allowed values so matches are common, not just misses.
    def pick(values: set[int], low: int, high: int) -> int:
        return draw(st.one_of(st.sampled_from(sorted(values)), st.integers(low, high)))

    moment = draw(
        st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2150, 1, 1))
    )
    moment = moment.replace(
        minute=pick(allowed[0], 0, 59),
        hour=pick(allowed[1], 0, 23),
        day=1,
        month=pick(allowed[3], 1, 12),
    )
    day = pick(allowed[2], 1, 31)
    try:
        moment = moment.replace(day=day)
    except ValueError:  # the 31st of a short month: keep the 1st
        pass
    return " ".join(texts), allowed, texts, moment


def reference_matches(allowed: list[set[int]], texts: list[str], moment: dt.datetime) -> bool:
    minutes, hours, days, months, weekdays = allowed
    weekday = (moment.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0 (or 7)
    if moment.minute not in minutes or moment.hour not in hours or moment.month not in months:
        return False
    day_ok = moment.day in days
    weekday_ok = weekday in weekdays or (weekday == 0 and 7 in weekdays)
    # Vixie cron: a day field starting with "*" (also "*/n") counts as unrestricted.
    if not texts[2].startswith("*") and not texts[4].startswith("*"):
        return day_ok or weekday_ok
    return day_ok and weekday_ok


@given(cron_and_moment())
def test_matches_agrees_with_brute_force_reference(
    case: tuple[str, list[set[int]], list[str], dt.datetime],
) -> None:
    expression, allowed, texts, moment = case
    spec = parse_cron(expression)
    assert spec.minutes == allowed[0]
    assert spec.hours == allowed[1]
    assert spec.days == allowed[2]
    assert spec.months == allowed[3]
    assert spec.matches(moment) == reference_matches(allowed, texts, moment)


# -- ticks at daylight-saving transitions ----------------------------------------------

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)

# (zone, the UTC instant of a transition, "spring" (a gap) or "fall" (a repeat)), 2026.
TRANSITIONS = [
    ("Europe/Paris", "2026-03-29T01:00", "spring"),
    ("Europe/Paris", "2026-10-25T01:00", "fall"),
    ("America/New_York", "2026-03-08T07:00", "spring"),
    ("America/New_York", "2026-11-01T06:00", "fall"),
    ("Australia/Lord_Howe", "2026-10-03T15:30", "spring"),  # 02:00 -> 02:30
    ("Australia/Lord_Howe", "2026-04-04T15:00", "fall"),  # 02:00 -> 01:30
    ("Australia/Sydney", "2026-10-03T16:00", "spring"),
    ("Australia/Sydney", "2026-04-04T16:00", "fall"),
    ("America/Santiago", "2026-09-06T04:00", "spring"),  # 00:00 -> 01:00
    ("America/Santiago", "2026-04-05T03:00", "fall"),  # 00:00 -> 23:00 the day before
]
EXPRESSIONS = [
    "*/30 * * * *",
    "0 * * * *",
    "*/15 * * * *",
    "@hourly",
    "* * * * *",
    "*/10 2 * * *",  # a wildcard minute: Vixie counts it a wildcard job
    "30 2 * * *",
    "0 2 * * *",
    "15 1 * * *",
    "45 1,2 * * *",
    "0,15,30,45 2 * * *",
    "0 2,3 * * *",
    "0 0 * * *",
    "30 23 * * *",
    "0,30 0-3 * * *",
    "0-59 0-23 * * *",  # every minute, but spelled as fixed times
]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def reference_ticks(
    expression: str, zone_name: str, start: dt.datetime, stop: dt.datetime
) -> list[dt.datetime]:
    """Vixie's rules, walked minute by minute in UTC (the way cron's clock passes)."""
    spec = parse_cron(expression)
    texts = parse_text(expression)
    wildcard = texts[0].startswith("*") or texts[1].startswith("*")
    zone = zoneinfo.ZoneInfo(zone_name)
    ticks = []
    moment = start
    while moment < stop:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        previous = (moment - MINUTE).astimezone(zone).replace(tzinfo=None)
        jumped = wall - previous - MINUTE  # wall-clock minutes this UTC minute skipped
        if wall - previous < dt.timedelta(0):  # the clock went back: a repeated interval
            repeat_until = previous
        elif moment == start:
            repeat_until = None
        if not wildcard and jumped > dt.timedelta(0):
            skipped = [previous + MINUTE * (i + 1) for i in range(jumped // MINUTE)]
            if any(spec.matches(s) for s in skipped) or spec.matches(wall):
                ticks.append(moment)  # right after the gap, once
        elif spec.matches(wall):
            again = repeat_until is not None and wall <= repeat_until
            if wildcard or not again:
                ticks.append(moment)
        moment += MINUTE
    return ticks


def parse_text(expression: str) -> list[str]:
    macros = {"@hourly": "0 * * * *", "@daily": "0 0 * * *"}
    return macros.get(expression, expression).split()


def walk(expression: str, zone: str, start: dt.datetime, stop: dt.datetime) -> list[dt.datetime]:
    spec = parse_cron(expression)
    ticks = []
    tick = next_tick(spec, start - MINUTE, zone)
    while tick < stop:
        ticks.append(tick)
        tick = next_tick(spec, tick, zone)
    return ticks


@pytest.mark.parametrize("expression", EXPRESSIONS)
@pytest.mark.parametrize(("zone", "instant", "kind"), TRANSITIONS)
def test_ticks_around_a_transition_follow_vixie_cron(
    expression: str, zone: str, instant: str, kind: str
) -> None:
    center = utc(instant)
    start, stop = center - dt.timedelta(hours=5), center + dt.timedelta(hours=5)
    assert walk(expression, zone, start, stop) == reference_ticks(expression, zone, start, stop)


@pytest.mark.parametrize(("zone", "instant", "kind"), TRANSITIONS)
def test_the_transitions_are_where_the_table_says(zone: str, instant: str, kind: str) -> None:
    center = utc(instant)
    before = (center - MINUTE).astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()
    after = center.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()
    assert before is not None and after is not None
    assert (after > before) == (kind == "spring")


def local_times(ticks: list[dt.datetime], zone: str) -> list[str]:
    return [t.astimezone(zoneinfo.ZoneInfo(zone)).strftime("%H:%M%z") for t in ticks]


def test_every_30_minutes_keeps_ticking_through_the_repeated_hour_in_paris() -> None:
    ticks = walk("*/30 * * * *", "Europe/Paris", utc("2026-10-24T23:30"), utc("2026-10-25T02:01"))
    assert local_times(ticks, "Europe/Paris") == [
        "01:30+0200",
        "02:00+0200",
        "02:30+0200",
        "02:00+0100",  # the hour again: the finding was that it was skipped
        "02:30+0100",
        "03:00+0100",
    ]
    assert all(b - a == dt.timedelta(minutes=30) for a, b in itertools.pairwise(ticks))


def test_hourly_neither_skips_nor_doubles_at_either_paris_transition() -> None:
    fall = walk("0 * * * *", "Europe/Paris", utc("2026-10-24T22:00"), utc("2026-10-25T03:00"))
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(fall))
    assert len(fall) == 5
    spring = walk("0 * * * *", "Europe/Paris", utc("2026-03-28T22:00"), utc("2026-03-29T03:00"))
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(spring))
    assert local_times(spring, "Europe/Paris")[2:4] == ["01:00+0100", "03:00+0200"]


def test_a_fixed_time_in_the_gap_runs_once_right_after_it() -> None:
    spec = parse_cron("30 2 * * *")
    tick = next_tick(spec, utc("2026-03-28T12:00"), "Europe/Paris")
    assert local_times([tick], "Europe/Paris") == ["03:00+0200"]  # the end of the gap
    assert next_tick(spec, tick, "Europe/Paris") == utc("2026-03-30T00:30")  # next day, 02:30
    quarters = walk(
        "0,15,30,45 2 * * *", "Europe/Paris", utc("2026-03-29T00:00"), utc("2026-03-29T02:00")
    )
    assert local_times(quarters, "Europe/Paris") == ["03:00+0200"]  # four times in it: once
    ny = next_tick(spec, utc("2026-03-08T00:00"), "America/New_York")
    assert local_times([ny], "America/New_York") == ["03:00-0400"]
    lord_howe = next_tick(parse_cron("15 2 * * *"), utc("2026-10-03T00:00"), "Australia/Lord_Howe")
    assert local_times([lord_howe], "Australia/Lord_Howe") == ["02:30+1100"]


def test_a_fixed_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    ticks = walk("30 1 * * *", "America/New_York", utc("2026-10-31T12:00"), utc("2026-11-01T12:00"))
    assert local_times(ticks, "America/New_York") == ["01:30-0400"]
    howe = walk(
        "45 1 * * *", "Australia/Lord_Howe", utc("2026-04-04T12:00"), utc("2026-04-04T20:00")
    )
    assert local_times(howe, "Australia/Lord_Howe") == ["01:45+1100"]
    # Santiago falls back at midnight: 23:30 repeats, and the day boundary is inside it.
    santiago = walk(
        "30 23 * * *", "America/Santiago", utc("2026-04-04T12:00"), utc("2026-04-05T12:00")
    )
    assert local_times(santiago, "America/Santiago") == ["23:30-0300"]


def test_a_wildcard_in_the_gap_does_not_run_there() -> None:
    ticks = walk("*/10 2 * * *", "Europe/Paris", utc("2026-03-28T12:00"), utc("2026-03-29T12:00"))
    assert ticks == []  # 02:xx did not exist that night; wildcards run by the new time


def test_next_tick_from_inside_the_repeated_hour() -> None:
    spec = parse_cron("*/30 * * * *")
    first_0230 = utc("2026-10-25T00:30")  # 02:30 CEST
    second_0200 = utc("2026-10-25T01:00")  # 02:00 CET
    assert next_tick(spec, first_0230, "Europe/Paris") == second_0200
    assert next_tick(spec, first_0230 + dt.timedelta(seconds=59), "Europe/Paris") == second_0200
    assert next_tick(spec, second_0200, "Europe/Paris") == utc("2026-10-25T01:30")


def test_a_large_shift_is_a_clock_correction_not_dst() -> None:
    # Samoa skipped 30 December 2011 (UTC-10 to UTC+14): no catch-up for fixed times.
    spec = parse_cron("0 12 * * *")
    tick = next_tick(spec, utc("2011-12-29T23:00"), "Pacific/Apia")  # 13:00 on the 29th
    assert tick.astimezone(zoneinfo.ZoneInfo("Pacific/Apia")).date() == dt.date(2011, 12, 31)


def test_next_tick_wants_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_tick(parse_cron("* * * * *"), dt.datetime(2026, 1, 1))


def test_previous_tick_in_the_repeated_hour() -> None:
    spec = parse_cron("*/30 * * * *")
    assert previous_tick(spec, utc("2026-10-25T01:10"), "Europe/Paris") == utc("2026-10-25T01:00")


@given(
    st.sampled_from(EXPRESSIONS),
    st.sampled_from(TRANSITIONS),
    st.integers(min_value=-180, max_value=180),
    st.integers(min_value=0, max_value=59),
)
def test_next_tick_from_any_moment_near_a_transition(
    expression: str, transition: tuple[str, str, str], minutes: int, seconds: int
) -> None:
    zone, instant, _ = transition
    after = utc(instant) + dt.timedelta(minutes=minutes, seconds=seconds)
    # The reference walks from before the transition, so it knows which hour repeats.
    start = utc(instant) - dt.timedelta(hours=5)
    expected = reference_ticks(expression, zone, start, after + dt.timedelta(days=2))
    tick = next_tick(parse_cron(expression), after, zone)
    assert tick == next(t for t in expected if t > after)


@pytest.mark.parametrize(
    ("expression", "fires"),
    [
        ("0 0 30 2 *", False),
        ("0 0 31 4,6,9,11 *", False),
        ("0 0 29 2 *", True),  # leap years
        ("0 0 31 * *", True),
        ("0 0 30 2 mon", True),  # both day fields: either matches
        ("0 0 * 2 *", True),
    ],
)
def test_can_fire(expression: str, fires: bool) -> None:
    assert parse_cron(expression).can_fire() is fires
