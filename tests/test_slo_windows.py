"""The SLO window math: histories of counter samples, burn rates, budgets and alerts.

Times are made up (seconds on a monotonic scale), as a fake clock would give them.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw.declarations._slo import DAY
from thaw.host._slo_windows import (
    ALERT_RULES,
    History,
    burn_rate,
    fault_codes,
    standing,
    threshold,
)

MONTH = 30 * DAY
STEP = 5.0  # a host samples every 5 s


def run(
    history: History, seconds: float, *, rate: float, bad: float, start: float | None = None
) -> float:
    """Feed ``rate`` events a second, ``bad`` of them (a share) bad, for ``seconds``."""
    latest = history.latest
    now, good, total = latest if latest is not None else (start or 1000.0, 0.0, 0.0)
    if latest is None:
        history.add(now, good, total)
    for _ in range(int(seconds / STEP)):
        now += STEP
        total += rate * STEP
        good += rate * STEP * (1 - bad)
        history.add(now, good, total)
    return now


def test_the_thresholds_are_the_workbooks_for_a_30_day_budget() -> None:
    rates = [(r.severity, r.long, r.short, threshold(r, MONTH)) for r in ALERT_RULES]
    assert [(s, long, short, round(x, 6)) for s, long, short, x in rates] == [
        ("page", "1h", "5m", 14.4),
        ("page", "6h", "30m", 6.0),
        ("ticket", "3d", "6h", 1.0),
    ]
    # a 90-day budget is three times as large: the same share of it burns three times faster
    assert [round(threshold(r, 3 * MONTH), 6) for r in ALERT_RULES] == [43.2, 18.0, 3.0]


def test_an_empty_history_stands_at_a_full_budget_with_nothing_burning() -> None:
    got = standing(History(budget_window=MONTH), target=0.99)
    assert set(got.sli.values()) == {None}
    assert set(got.burn.values()) == {0.0}
    assert got.budget_remaining == 1.0 and got.covered == 0.0
    assert got.alerts == {"page": False, "ticket": False}


def test_a_window_without_events_has_no_sli_and_burns_nothing() -> None:
    history = History(budget_window=MONTH)
    run(history, 600, rate=0.0, bad=0.0)
    got = standing(history, target=0.99)
    assert set(got.sli.values()) == {None} and set(got.burn.values()) == {0.0}
    assert got.budget_remaining == 1.0 and got.covered == 600


def test_exactly_on_budget_burns_at_one_and_spends_the_budget_seen() -> None:
    history = History(budget_window=MONTH)
    run(history, 7200, rate=10.0, bad=0.01)
    got = standing(history, target=0.99)
    assert got.sli["1h"] == pytest.approx(0.99)
    assert all(rate == pytest.approx(1.0) for rate in got.burn.values())
    assert got.budget_remaining == pytest.approx(0.0, abs=1e-9)
    assert got.events["5m"] == pytest.approx(3000) and got.events["1h"] == pytest.approx(36000)
    assert got.alerts == {"page": False, "ticket": False}  # 1 is not above 1


def test_a_burst_of_errors_pages_while_both_windows_burn_and_stops_when_it_ends() -> None:
    history = History(budget_window=MONTH)
    run(history, 2 * 3600, rate=10.0, bad=0.0)
    run(history, 3600, rate=10.0, bad=0.2)  # 20 % bad against a 99.9 % target: burn 200
    got = standing(history, target=0.999)
    assert got.burn["5m"] == pytest.approx(200) and got.burn["1h"] == pytest.approx(200)
    assert got.alerts["page"] and got.alerts["ticket"]
    run(history, 600, rate=10.0, bad=0.0)  # fixed: the short windows recover first
    got = standing(history, target=0.999)
    assert got.burn["5m"] == 0.0 and got.burn["1h"] > 14.4
    assert got.alerts["page"]  # still: 30 m and 6 h burn above 6
    run(history, 1800, rate=10.0, bad=0.0)
    got = standing(history, target=0.999)
    assert got.burn["30m"] == 0.0 and got.burn["1h"] > 14.4 and got.burn["6h"] > 6
    assert not got.alerts["page"]  # long windows alone do not page
    assert got.alerts["ticket"]  # 6 h and 3 d still burn above 1
    assert got.budget_remaining < 0  # far more than the budget seen so far is spent


def test_a_slow_burn_opens_a_ticket_and_never_pages() -> None:
    history = History(budget_window=MONTH)
    run(history, 7 * 3600, rate=1.0, bad=0.003)  # burn 3 against 99.9 %
    got = standing(history, target=0.999)
    assert got.burn["6h"] == pytest.approx(3)
    assert got.alerts == {"page": False, "ticket": True}


def test_a_counter_reset_counts_what_the_counters_show_after_it_as_new() -> None:
    history = History(budget_window=MONTH)
    history.add(0.0, 90, 100)
    history.add(10.0, 180, 200)
    history.add(20.0, 5, 10)  # a worker restarted: 10 new events, 5 of them bad
    history.add(30.0, 15, 20)
    assert history.latest == (30.0, 195.0, 220.0)
    good, total, covered = history.window(3600)
    assert (good, total, covered) == (105.0, 120.0, 30.0)


def test_samples_that_are_old_or_not_numbers_are_ignored() -> None:
    history = History(budget_window=MONTH)
    assert history.add(10.0, 1, 2)
    for now, good, total in [
        (10.0, 5, 5),
        (9.0, 5, 5),
        (11.0, math.nan, 5),
        (11.0, 1, math.inf),
        (11.0, -1, 5),
        (math.nan, 1, 2),
    ]:
        assert not history.add(now, good, total)
    assert history.latest == (10.0, 1.0, 2.0) and len(history) == 3
    assert history.add(11.0, 9, 4)  # more good than total: clamped to (4, 4), and as the
    assert history.latest == (11.0, 5.0, 6.0)  # bad count went down, that is a reset


def test_a_month_of_samples_stays_bounded_and_long_windows_stay_exact() -> None:
    history = History(budget_window=MONTH)
    now, good, total = 0.0, 0.0, 0.0
    step = 10.0
    for index in range(int(31 * DAY / step)):
        now += step
        total += 10
        good += 10 if index % 100 else 0  # one sample in 100 all bad: 1 % bad
        history.add(now, good, total)
    assert len(history) < 390 + 4400 + 4400  # 65 min at 10 s, 3 d at 1 min, 30 d at 10 min
    got = standing(history, target=0.98)
    assert got.burn["3d"] == pytest.approx(0.5, rel=0.01)
    assert got.burn["6h"] == pytest.approx(0.5, rel=0.05)  # starts up to a minute early
    assert got.covered == pytest.approx(MONTH, abs=600)
    assert got.budget_remaining == pytest.approx(0.5, rel=0.01)


_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.001, max_value=4 * 3600),  # time to the next sample
        st.integers(min_value=0, max_value=10_000),  # new good events
        st.integers(min_value=0, max_value=10_000),  # new bad events
        st.booleans(),  # the counters reset before this sample
    ),
    max_size=60,
)


@given(_steps, st.floats(min_value=0.5, max_value=0.99999))
def test_burn_rates_are_never_negative_and_slis_are_ratios(
    steps: list[tuple[float, int, int, bool]], target: float
) -> None:
    history = History(budget_window=MONTH)
    now, good, total = 0.0, 0, 0
    for delay, new_good, new_bad, reset in steps:
        now += delay
        if reset:
            good = total = 0
        good += new_good
        total += new_good + new_bad
        history.add(now, good, total)
        got = standing(history, target=target)
        for window, rate in got.burn.items():
            assert rate >= 0 and math.isfinite(rate), window
            sli = got.sli[window]
            assert sli is None or 0 <= sli <= 1
            assert got.events[window] >= 0
        assert got.budget_remaining <= 1
        latest = history.latest
        assert latest is not None and 0 <= latest[1] <= latest[2]


@given(_steps)
def test_the_history_adds_up_the_events_seen_across_resets(
    steps: list[tuple[float, int, int, bool]],
) -> None:
    history = History(budget_window=MONTH)
    history.add(0.0, 0, 0)
    now, good, total, seen_good, seen_total = 0.0, 0, 0, 0, 0
    for delay, new_good, new_bad, reset in steps:
        now += delay
        if reset:
            good = total = 0
        good += new_good
        total += new_good + new_bad
        seen_good += new_good
        seen_total += new_good + new_bad
        history.add(now, good, total)
    # a reset is only seen when a counter went down; otherwise what was lost hides in the sum
    latest = history.latest
    assert latest is not None
    assert latest[2] <= seen_total and latest[1] <= seen_good
    assert history.window(MONTH)[1] == latest[2]


@given(st.floats(min_value=0, max_value=1e9), st.floats(min_value=0, max_value=1e9))
def test_burn_rate_is_bounded_by_the_worst_case(good: float, total: float) -> None:
    rate = burn_rate(good, total, 0.99)
    assert 0 <= rate <= 100 + 1e-9


def test_availability_counts_function_and_runtime_faults_only() -> None:
    faults = fault_codes()
    assert {"handler_error", "deadline_exceeded", "overloaded", "retry_requested"} <= faults
    assert {"result_invalid", "result_too_large", "backbone_error"} <= faults
    assert not {"contract_invalid", "payload_malformed", "rejected", "other", ""} & faults
