"""Error budgets and burn rates over windows of counter samples: the math of SLOs.

A host samples, every few seconds, two cumulative counters per objective: ``good``
(events within the objective) and ``total``. ``History`` keeps those samples in a
bounded ring; ``standing`` turns it into what the ``thaw_slo_*`` metrics export:

- the SLI over each window of ``WINDOWS``: good / total of the events in it (None
  when the window saw no event);
- the burn rate over each window: (bad / total) / (1 - target), the speed at which
  the budget is spent (1: exactly the budget over the budget window; 0 when empty);
- the budget left: 1 - the burn rate over the budget window (30 days), or over the
  part of it the history covers; below 0 once overspent;
- the alerts of the SRE workbook's multi-window, multi-burn-rate rules (``ALERT_RULES``):
  a rule fires when both its long and its short window burn faster than the rate that
  spends its share of the budget in the long window (2 % in 1 h -> 14.4 for a 30-day
  budget).

Invariants: samples are monotonic in time (an older or equal time is ignored) and the
counters are made monotonic: a counter that goes down was reset (a worker restarted),
so what it shows after is counted as new, as Prometheus' ``increase()`` does (good and
bad events are the two counters: either going down is a reset); ``good`` never exceeds
``total``, so neither the good nor the bad count of a window is ever negative; every
burn rate is >= 0 and finite. The ring is bounded: every sample for the last
``FINE_SPAN``, one a minute for ``MEDIUM_SPAN``, one every ten minutes for the budget
window, so a window's start is at most one spacing early.
Pure: times come with the samples (a monotonic clock's seconds), nothing here reads a
clock, so tests drive it with made-up times.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque

import msgspec

from thaw._errors import FunctionError, RuntimeFault, ThawError

__all__ = [
    "ALERT_RULES",
    "fault_codes",
    "SEVERITIES",
    "WINDOWS",
    "AlertRule",
    "History",
    "Standing",
    "burn_rate",
    "standing",
    "threshold",
]

WINDOWS: tuple[tuple[str, float], ...] = (
    ("5m", 300.0),
    ("30m", 1800.0),
    ("1h", 3600.0),
    ("6h", 21600.0),
    ("3d", 259200.0),
)
_SECONDS = dict(WINDOWS)
FINE_SPAN = 3900.0  # every sample for 65 minutes: the 5m, 30m and 1h windows
MEDIUM_SPACING, MEDIUM_SPAN = 60.0, 3 * 86400.0 + 3600.0  # the 6h and 3d windows
COARSE_SPACING = 600.0  # the budget window (up to 366 days: at most 52 704 samples)


class AlertRule(msgspec.Struct, frozen=True):
    """Fire ``severity`` when ``budget_share`` of the budget would be spent within the
    ``long`` window at the burn rate of both the long and the ``short`` window."""

    severity: str
    long: str
    short: str
    budget_share: float


ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule("page", "1h", "5m", 0.02),
    AlertRule("page", "6h", "30m", 0.05),
    AlertRule("ticket", "3d", "6h", 0.10),
)
SEVERITIES = ("page", "ticket")


def fault_codes() -> frozenset[str]:
    """Codes of invocations that failed by the function's or the runtime's fault, which an
    ``Availability`` objective counts as bad: Thaw's ``FunctionError`` and ``RuntimeFault``
    codes and a result the runtime refused. Every other code is an answer: the caller's
    errors, a function's own ``Rejected(code=...)``, and ``other`` (beyond the label cap)."""
    codes = {ThawError.code, "result_invalid", "result_too_large"}
    classes: list[type[ThawError]] = [FunctionError, RuntimeFault]
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    return frozenset(codes)


def threshold(rule: AlertRule, budget_window: float) -> float:
    """The burn rate above which ``rule`` fires: 14.4, 6 and 1 for a 30-day budget."""
    return rule.budget_share * budget_window / _SECONDS[rule.long]


def burn_rate(good: float, total: float, target: float) -> float:
    """How fast ``total - good`` bad events out of ``total`` spend a ``target`` budget."""
    if total <= 0:
        return 0.0
    bad = min(max(total - good, 0.0), total)
    return (bad / total) / (1.0 - target)


class Standing(msgspec.Struct, frozen=True, kw_only=True):
    """Where one objective stands at the history's latest sample."""

    sli: dict[str, float | None]  # window -> good/total, None when the window is empty
    burn: dict[str, float]  # window -> burn rate (>= 0)
    events: dict[str, float]  # window -> events in it
    budget_remaining: float  # 1 - burn over the (covered part of the) budget window
    covered: float  # seconds of history behind the budget figure (<= the budget window)
    alerts: dict[str, bool]  # severity -> firing


class History:
    """Bounded samples of an objective's (good, total) counters, made monotonic."""

    __slots__ = ("_base", "_last_raw", "_tiers", "_spans", "_spacings", "budget_window")

    def __init__(self, *, budget_window: float) -> None:
        self.budget_window = float(budget_window)
        self._spacings = (0.0, MEDIUM_SPACING, COARSE_SPACING)
        self._spans = (FINE_SPAN, MEDIUM_SPAN, self.budget_window + COARSE_SPACING)
        self._tiers: tuple[deque[tuple[float, float, float]], ...] = (deque(), deque(), deque())
        self._base = (0.0, 0.0)  # what resets took away, added back
        self._last_raw: tuple[float, float] | None = None

    def __len__(self) -> int:
        return sum(len(tier) for tier in self._tiers)

    @property
    def latest(self) -> tuple[float, float, float] | None:
        """The newest (time, good, total), counters made monotonic."""
        fine = self._tiers[0]
        return fine[-1] if fine else None

    def add(self, now: float, good: float, total: float) -> bool:
        """Record the counters read at ``now``; False (and nothing kept) for a sample that
        is not newer than the last or holds no finite, non-negative numbers."""
        values = (now, good, total)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return False
        if good < 0 or total < 0:
            return False
        latest = self.latest
        if latest is not None and now <= latest[0]:
            return False
        good = min(good, total)
        last = self._last_raw
        if last is not None and (good < last[0] or total - good < last[1] - last[0]):
            # A reset (good and bad events are both counters): they restarted from zero,
            # so all they show now is new.
            self._base = (self._base[0] + last[0], self._base[1] + last[1])
        self._last_raw = (good, total)
        sample = (float(now), self._base[0] + good, self._base[1] + total)
        for tier, spacing, span in zip(self._tiers, self._spacings, self._spans, strict=True):
            if not tier or sample[0] - tier[-1][0] >= spacing:
                tier.append(sample)
            while len(tier) > 1 and sample[0] - tier[1][0] >= span:
                tier.popleft()  # keep one sample at or before the span's start
        return True

    def at(self, when: float) -> tuple[float, float, float] | None:
        """The newest sample at or before ``when`` (the oldest one when the history
        starts later: a window longer than the history covers what there is)."""
        for tier in self._tiers:
            if tier and tier[0][0] <= when:
                index = bisect_right(tier, when, key=lambda sample: sample[0])
                return tier[index - 1]
        oldest = [tier[0] for tier in self._tiers if tier]
        return min(oldest) if oldest else None

    def window(self, seconds: float) -> tuple[float, float, float]:
        """(good, total, covered seconds) of the events in the last ``seconds``."""
        end = self.latest
        if end is None:
            return 0.0, 0.0, 0.0
        start = self.at(end[0] - seconds)
        assert start is not None
        return end[1] - start[1], end[2] - start[2], end[0] - start[0]


def standing(history: History, *, target: float) -> Standing:
    """The SLIs, burn rates, budget left and alerts of ``history`` for ``target``."""
    sli: dict[str, float | None] = {}
    burn: dict[str, float] = {}
    events: dict[str, float] = {}
    for name, seconds in WINDOWS:
        good, total, _ = history.window(seconds)
        sli[name] = good / total if total > 0 else None
        burn[name] = burn_rate(good, total, target)
        events[name] = total
    good, total, covered = history.window(history.budget_window)
    alerts = dict.fromkeys(SEVERITIES, False)
    for rule in ALERT_RULES:
        rate = threshold(rule, history.budget_window)
        if burn[rule.long] > rate and burn[rule.short] > rate:
            alerts[rule.severity] = True
    return Standing(
        sli=sli,
        burn=burn,
        events=events,
        budget_remaining=1.0 - burn_rate(good, total, target),
        covered=covered,
        alerts=alerts,
    )
