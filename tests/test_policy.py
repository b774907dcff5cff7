"""Policies: backoff timing as a pure function, and validation of every policy value."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw._errors import ConfigError
from thaw.declarations._policy import Backoff, Idempotency, Policy, RetryPolicy

backoffs = st.builds(
    Backoff,
    initial=st.floats(1e-3, 1e3),
    multiplier=st.one_of(st.floats(1.0, 10.0), st.floats(1.0, 1e300)),
    maximum=st.floats(1e-3, 1e6),
    jitter=st.floats(0.0, 1.0),
)
attempts = st.one_of(st.integers(1, 64), st.integers(1, 10**40))
draws = st.floats(0.0, 1.0, exclude_max=True)


# -- Backoff.delay -----------------------------------------------------------------


def test_default_backoff_doubles_from_half_a_second() -> None:
    backoff = Backoff(jitter=0.0)
    assert [backoff.delay(n, 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff.delay(100, 0.5) == 60.0


def test_delay_is_capped_at_maximum() -> None:
    backoff = Backoff(initial=1.0, multiplier=3.0, maximum=10.0, jitter=0.0)
    assert [backoff.delay(n, 0.0) for n in range(1, 5)] == [1.0, 3.0, 9.0, 10.0]


def test_jitter_scales_the_delay_down_by_the_draw() -> None:
    backoff = Backoff(initial=8.0, multiplier=1.0, maximum=100.0, jitter=0.5)
    assert backoff.delay(1, 0.0) == 8.0
    assert backoff.delay(1, 0.5) == 6.0
    assert backoff.delay(1, 0.999) == pytest.approx(4.004)


def test_full_jitter_reaches_down_towards_zero() -> None:
    backoff = Backoff(initial=2.0, maximum=2.0, jitter=1.0)
    assert backoff.delay(1, 0.0) == 2.0
    assert backoff.delay(1, 0.75) == 0.5


@pytest.mark.parametrize("attempt", [0, -1, -(10**20)])
def test_attempts_below_one_count_as_the_first(attempt: int) -> None:
    backoff = Backoff(initial=0.25, jitter=0.0)
    assert backoff.delay(attempt, 0.0) == 0.25


@pytest.mark.parametrize("multiplier", [2.0, 1e10, 1e300])
def test_huge_attempts_do_not_overflow(multiplier: float) -> None:
    backoff = Backoff(initial=1.0, multiplier=multiplier, maximum=30.0, jitter=0.5)
    for attempt in (257, 10_000, 10**100):
        assert backoff.delay(attempt, 0.0) == 30.0
        assert backoff.delay(attempt, 0.5) == 22.5


@given(backoffs, attempts, draws)
def test_delay_stays_within_bounds(backoff: Backoff, attempt: int, draw: float) -> None:
    delay = backoff.delay(attempt, draw)
    base = backoff.delay(attempt, 0.0)  # with draw 0 no jitter is applied
    assert math.isfinite(delay)
    assert 0.0 <= delay <= backoff.maximum
    assert delay <= base <= backoff.maximum
    assert delay >= base * (1.0 - backoff.jitter)


@given(backoffs, st.integers(1, 40))
def test_unjittered_delay_is_initial_times_multiplier_powers_capped(
    backoff: Backoff, attempt: int
) -> None:
    try:
        growth = backoff.multiplier ** float(attempt - 1)
    except OverflowError:
        growth = math.inf
    expected = min(backoff.initial * growth, backoff.maximum)
    assert backoff.delay(attempt, 0.0) == pytest.approx(expected, rel=1e-12)


@given(backoffs, attempts, attempts)
def test_delay_grows_monotonically_without_jitter(
    backoff: Backoff, first: int, second: int
) -> None:
    exact = Backoff(
        initial=backoff.initial,
        multiplier=backoff.multiplier,
        maximum=backoff.maximum,
        jitter=0.0,
    )
    low, high = sorted((first, second))
    assert exact.delay(low, 0.9) <= exact.delay(high, 0.9)


# -- validation --------------------------------------------------------------------

NOT_POSITIVE_SECONDS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "1", None, True]


@pytest.mark.parametrize("field", ["initial", "maximum"])
@pytest.mark.parametrize("value", NOT_POSITIVE_SECONDS)
def test_backoff_times_must_be_positive_finite_numbers(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"Backoff\.{field} must be"):
        Backoff(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, 0.999, -2.0, math.nan, math.inf, "2", None, True])
def test_backoff_multiplier_must_be_at_least_one(value: object) -> None:
    with pytest.raises(ConfigError, match=r"Backoff\.multiplier must be >= 1"):
        Backoff(multiplier=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf, "0.5", None])
def test_backoff_jitter_must_be_a_fraction(value: object) -> None:
    with pytest.raises(ConfigError, match=r"Backoff\.jitter must be within \[0, 1\]"):
        Backoff(jitter=value)  # type: ignore[arg-type]


def test_backoff_accepts_edge_values() -> None:
    backoff = Backoff(initial=1e-9, multiplier=1.0, maximum=1e-9, jitter=1.0)
    assert backoff.delay(5, 0.0) == 1e-9
    assert Backoff(jitter=0.0).jitter == 0.0
    assert Backoff(initial=1, maximum=2).delay(2, 0) == 2


@pytest.mark.parametrize("value", [0, -1, 10_001, 1.5, "3", None])
def test_max_attempts_must_be_an_int_in_range(value: object) -> None:
    with pytest.raises(ConfigError, match=r"RetryPolicy\.max_attempts") as info:
        RetryPolicy(max_attempts=value)  # type: ignore[arg-type]
    assert repr(value) in info.value.message


@pytest.mark.parametrize("value", [1, 5, 10_000])
def test_max_attempts_accepts_its_range(value: int) -> None:
    assert RetryPolicy(max_attempts=value).max_attempts == value


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 5
    assert policy.backoff == Backoff()


@pytest.mark.parametrize("value", NOT_POSITIVE_SECONDS)
def test_idempotency_ttl_must_be_positive(value: object) -> None:
    with pytest.raises(ConfigError, match=r"Idempotency\.ttl"):
        Idempotency(ttl=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["order_id", 42, b"key"])
def test_idempotency_key_must_be_callable(key: object) -> None:
    with pytest.raises(ConfigError, match=r"Idempotency\.key must be a callable"):
        Idempotency(key=key)  # type: ignore[arg-type]


def test_idempotency_accepts_a_key_function() -> None:
    def key(event: object, payload: object) -> str:
        return "k"

    idempotency = Idempotency(key=key, ttl=60)
    assert idempotency.key is key
    assert Idempotency().key is None
    assert Idempotency().ttl == 24 * 3600.0


@pytest.mark.parametrize("value", NOT_POSITIVE_SECONDS)
def test_policy_timeout_must_be_positive(value: object) -> None:
    with pytest.raises(ConfigError, match="timeout must be") as info:
        Policy(timeout=value)  # type: ignore[arg-type]
    assert repr(value) in info.value.message


@pytest.mark.parametrize("value", [0, -1, 1.5, "4"])
def test_policy_concurrency_must_be_positive_int_or_none(value: object) -> None:
    with pytest.raises(ConfigError, match="concurrency must be a positive int or None"):
        Policy(concurrency=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 1.5, "1024", None])
def test_policy_max_payload_must_be_non_negative_int(value: object) -> None:
    with pytest.raises(ConfigError, match="max_payload must be a non-negative int"):
        Policy(max_payload=value)  # type: ignore[arg-type]


def test_policy_accepts_edge_values_and_has_defaults() -> None:
    policy = Policy(timeout=1e-6, concurrency=1, max_payload=0)
    assert (policy.timeout, policy.concurrency, policy.max_payload) == (1e-6, 1, 0)
    default = Policy()
    assert default.timeout == 10.0
    assert default.retry == RetryPolicy()
    assert default.idempotency is None
    assert default.concurrency is None
    assert default.max_payload == 1024 * 1024


def test_policies_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Policy().timeout = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Backoff().jitter = 0.0  # type: ignore[misc]
