"""The retry budget: retries bounded by a fraction of first attempts, delayed beyond it."""

from __future__ import annotations

import pytest

from thaw._errors import ConfigError
from thaw.invocation._budget import RetryBudget
from thaw.testing import FakeClock


def test_retries_within_budget_keep_their_delay() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, burst=2, clock=FakeClock())
    assert budget.retry_delay(1.0) == 1.0
    assert budget.retry_delay(1.0) == 1.0
    assert budget.retry_delay(1.0) == 5.0  # burst spent: delayed, not dropped
    for _ in range(2):
        budget.record_first_attempt()
    assert budget.retry_delay(1.0) == 1.0  # two first attempts earned one retry
    assert budget.retry_delay(1.0) == 5.0
    stats = budget.statistics()
    assert (stats.first_attempts, stats.retries_allowed, stats.retries_throttled) == (2, 3, 2)


def test_fraction_of_load_under_a_storm() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0, burst=10, clock=FakeClock())
    allowed = 0
    for _ in range(10_000):
        budget.record_first_attempt()
        if budget.retry_delay(0.5) == 0.5:
            allowed += 1
    assert allowed <= 10 + 1000  # burst + ratio * first attempts
    assert allowed >= 1000


def test_floor_refills_with_time() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=2, burst=1, clock=clock)
    assert budget.retry_delay(0.1) == 0.1
    assert budget.retry_delay(0.1) == 5.0
    clock.advance(0.5)
    assert budget.retry_delay(0.1) == 0.1


def test_long_wanted_delay_is_kept_when_throttled() -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, burst=1, throttle_delay=5, clock=FakeClock())
    budget.retry_delay(1)
    assert budget.retry_delay(30.0) == 30.0


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": -1},
        {"min_per_second": -0.1},
        {"burst": 0},
        {"throttle_delay": 0},
        {"ratio": True},
        {"ratio": float("nan")},
        {"min_per_second": float("inf")},
        {"burst": "100"},
        {"throttle_delay": float("nan")},
        {"throttle_delay": "5"},
    ],
)
def test_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryBudget(**options)
