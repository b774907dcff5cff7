"""Cron parsing (fields, lists, ranges, steps, names, macros) and tick matching."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw._errors import ConfigError
from thaw.declarations._cron import CronSpec, parse_cron

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
