"""Service level objectives a capability declares: ``@app.capability(..., slo=...)``.

Four kinds, each a frozen value with the target ratio first:

- ``Latency(0.99, within=0.2)``: of the capability's *sync* invocations (``http``
  routes that answer, ``subject`` requests, ``ctx.call``), the share that answered
  within ``within`` seconds;
- ``Age(0.99, within=5.0)``: of the messages an *async* trigger delivered
  (``stream``, ``kv``, ``objects``, ``schedule``; an ``http(enqueue=...)`` route's messages
  count for the capability that consumes them), the share
  whose processing started within ``within`` seconds of their publication (every
  delivery counts);
- ``Completion(0.99, within=60.0)``: of those messages, the share that finished (acked
  or dead-lettered) within ``within`` seconds of their publication (once a message);
- ``Availability(0.999)``: of all its invocations, the share that did not fail by a
  fault of the function or the runtime (a ``Rejected`` answer or bad input counts as
  served).

Invariant: a threshold is one of the bounds of the histogram it is read from
(``thaw._histogram``: ``LATENCY_BOUNDS`` for latency, ``AGE_BOUNDS`` for age and
completion), so "within" is an exact bucket count, never an interpolation. The error
budget is ``1 - target`` of the events in the budget ``window`` (30 days unless
given). Each objective has a ``name`` (derived unless given), unique within its
capability, which is the ``slo`` label of the ``thaw_slo_*`` metrics. The kinds are
tagged, so ``Objective`` encodes and decodes as a msgspec union (``{"type": "latency",
...}``) should a manifest or a tool carry them.
"""

from __future__ import annotations

import math
from typing import TypeAlias

import msgspec

from thaw._errors import ConfigError
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS, is_bound

__all__ = [
    "DAY",
    "DEFAULT_BUDGET_WINDOW",
    "MAX_BUDGET_WINDOW",
    "MIN_BUDGET_WINDOW",
    "Age",
    "Availability",
    "Completion",
    "Latency",
    "Objective",
    "check_objectives",
    "nearest_bounds",
]

DAY = 86400.0
DEFAULT_BUDGET_WINDOW = 30 * DAY
MIN_BUDGET_WINDOW = 3 * DAY  # the longest alert window (the ticket's 3 d) must fit in it
MAX_BUDGET_WINDOW = 366 * DAY
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None when it is no number (bools are none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def nearest_bounds(seconds: float, bounds: tuple[float, ...]) -> tuple[float, ...]:
    """The one or two bounds next to ``seconds`` (for an error message)."""
    below = [b for b in bounds if b < seconds]
    above = [b for b in bounds if b > seconds]
    return (*below[-1:], *above[:1])


def _seconds(value: float) -> str:
    """A threshold as people write it: 200ms, 5s, 20us, 2m (for names and messages)."""
    if value < 0.001:
        return f"{value * 1e6:g}us"
    if value < 1:
        return f"{value * 1e3:g}ms"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def _percent(target: float) -> str:
    """0.99 -> "99", 0.999 -> "99.9" (for derived names)."""
    return f"{round(target * 100, 6):g}"


class _Options(msgspec.Struct, frozen=True, kw_only=True):
    window: float = DEFAULT_BUDGET_WINDOW
    """The error budget's window in seconds (30 days by default, 3 to 366 days)."""
    name: str = ""
    """The ``slo`` label; "" derives one from the kind, target and threshold."""

    def _check_common(self, kind: str, target: object) -> None:
        ratio = _finite(target)
        if ratio is None or not 0 < ratio < 1:
            raise ConfigError(
                f"{kind} target must be a ratio strictly between 0 and 1 (0.99 for 99%), "
                f"got {target!r}"
            )
        window = _finite(self.window)
        if window is None:
            raise ConfigError(f"{kind} window must be a number of seconds, got {self.window!r}")
        if not MIN_BUDGET_WINDOW <= window <= MAX_BUDGET_WINDOW:
            raise ConfigError(
                f"{kind} window={self.window!r} s ({window / DAY:.3g} days) is outside 3 to "
                "366 days: the budget window must hold the 3-day window of the ticket alert "
                "(30 days: window=30 * 86400)"
            )
        name = self.name
        if not isinstance(name, str) or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError(
                f"{kind} name {str(name)[:70]!r} must be at most 64 of a-z 0-9 _ . - "
                "(it becomes the slo label of the thaw_slo_* metrics)"
            )


def _check_threshold(kind: str, within: object, bounds: tuple[float, ...], family: str) -> None:
    seconds = _finite(within)
    if seconds is None or seconds <= 0:
        raise ConfigError(f"{kind} within must be a positive number of seconds, got {within!r}")
    if not is_bound(seconds, bounds):
        near = " or ".join(f"{b:g}" for b in nearest_bounds(seconds, bounds))
        raise ConfigError(
            f"{kind} within={within!r} is not a bucket bound of {family}, so its count "
            f"would be a guess: use within={near} (seconds; the bounds run 1-2-5 from "
            f"{_seconds(bounds[0])} to {_seconds(bounds[-1])})"
        )


class Latency(_Options, frozen=True, tag="latency"):
    """Sync paths: ``target`` of invocations answer within ``within`` seconds."""

    target: float
    within: float

    def __post_init__(self) -> None:
        self._check_common("Latency", self.target)
        _check_threshold("Latency", self.within, LATENCY_BOUNDS, "thaw_invocation_duration_seconds")

    @property
    def kind(self) -> str:
        return "latency"

    @property
    def key(self) -> str:
        """The ``slo`` label: the name, or ``latency_p99_200ms``."""
        return self.name or f"latency_p{_percent(self.target)}_{_seconds(self.within)}"


class Age(_Options, frozen=True, tag="age"):
    """Async paths: ``target`` of deliveries start within ``within`` s of publication."""

    target: float
    within: float

    def __post_init__(self) -> None:
        self._check_common("Age", self.target)
        _check_threshold("Age", self.within, AGE_BOUNDS, "thaw_message_age_seconds")

    @property
    def kind(self) -> str:
        return "age"

    @property
    def key(self) -> str:
        return self.name or f"age_p{_percent(self.target)}_{_seconds(self.within)}"


class Completion(_Options, frozen=True, tag="completion"):
    """Async paths: ``target`` of messages are done within ``within`` s of publication."""

    target: float
    within: float

    def __post_init__(self) -> None:
        self._check_common("Completion", self.target)
        _check_threshold("Completion", self.within, AGE_BOUNDS, "thaw_message_completion_seconds")

    @property
    def kind(self) -> str:
        return "completion"

    @property
    def key(self) -> str:
        return self.name or f"completion_p{_percent(self.target)}_{_seconds(self.within)}"


class Availability(_Options, frozen=True, tag="availability"):
    """Every path: ``target`` of invocations do not fail by a function or runtime fault."""

    target: float

    def __post_init__(self) -> None:
        self._check_common("Availability", self.target)

    @property
    def kind(self) -> str:
        return "availability"

    @property
    def key(self) -> str:
        return self.name or f"availability_{_percent(self.target)}"


Objective: TypeAlias = Latency | Age | Completion | Availability
_OBJECTIVE_TYPES = (Latency, Age, Completion, Availability)


def check_objectives(
    where: str, given: object, *, sync: bool, asynchronous: bool
) -> tuple[Objective, ...]:
    """``slo=`` as a tuple of objectives, refused with a ConfigError when it is not one
    objective or a list of them, names a path the capability does not have (``sync``:
    it answers http/subject requests or calls; ``asynchronous``: it consumes messages),
    or holds two objectives with one name."""
    if given is None:
        return ()
    items = list(given) if isinstance(given, list | tuple) else [given]
    out: list[Objective] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, _OBJECTIVE_TYPES):
            raise ConfigError(
                f"{where}: slo={item!r} is not an objective; use Latency(0.99, within=0.2), "
                "Age(...), Completion(...) or Availability(...), or a list of them"
            )
        if isinstance(item, Latency) and not sync:
            raise ConfigError(
                f"{where}: Latency is an objective of sync paths (http routes that answer, "
                "subject requests), and this capability only consumes messages: declare "
                "Age(...) or Completion(...) for it"
            )
        if isinstance(item, Age | Completion) and not asynchronous:
            raise ConfigError(
                f"{where}: {type(item).__name__} is an objective of async paths (stream, kv, "
                "objects, schedule triggers), and this capability has none: declare "
                "Latency(...) for it, or, for an http(enqueue=...) route, declare it on the "
                "capability whose stream(...) trigger consumes the enqueued subject"
            )
        if item.key in seen:
            raise ConfigError(
                f"{where}: two objectives are named {item.key!r}; drop the duplicate or give "
                "one a name=..."
            )
        seen.add(item.key)
        out.append(item)
    return tuple(out)
