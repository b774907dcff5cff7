"""A process-wide retry budget: retries may add at most a set fraction of load.

Every first attempt earns ``ratio`` tokens (up to ``burst``); every retry spends
one. With no token left a retry is not dropped but delayed (``throttle_delay``),
so a failing dependency sees a bounded trickle of retries instead of a storm.
``min_per_second`` keeps a floor so a quiet process can still retry. Pure logic
on an injectable clock; adapters ask it before they nak.
"""

from __future__ import annotations

import math

import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import ConfigError
from thaw.declarations._policy import _is_number

__all__ = ["RetryBudget", "BudgetStatistics"]


class BudgetStatistics(msgspec.Struct, frozen=True):
    first_attempts: int
    retries_allowed: int
    retries_throttled: int
    tokens: float


class RetryBudget:
    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        burst: float = 100.0,
        throttle_delay: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        for name, value in (("ratio", ratio), ("min_per_second", min_per_second)):
            if not (_finite(value) and value >= 0):
                raise ConfigError(f"RetryBudget {name} must be >= 0, got {value!r}")
        if not (_finite(burst) and burst >= 1 and _finite(throttle_delay) and throttle_delay > 0):
            raise ConfigError("RetryBudget burst must be >= 1 and throttle_delay > 0")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.burst = burst
        self.throttle_delay = throttle_delay
        self._clock = clock or SystemClock()
        self._tokens = burst
        self._refilled_at = self._clock.now()
        self._first = self._allowed = self._throttled = 0

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = max(now - self._refilled_at, 0.0)
        self._refilled_at = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.min_per_second)

    def record_first_attempt(self) -> None:
        self._first += 1
        self._tokens = min(self.burst, self._tokens + self.ratio)

    def retry_delay(self, wanted: float) -> float:
        """The delay to use for a retry that wanted ``wanted`` seconds (longer when over budget)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._allowed += 1
            return wanted
        self._throttled += 1
        return max(wanted, self.throttle_delay)

    def statistics(self) -> BudgetStatistics:
        self._refill()
        return BudgetStatistics(self._first, self._allowed, self._throttled, self._tokens)


def _finite(value: object) -> bool:
    """A real number (not a bool, not NaN or infinite)."""
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
