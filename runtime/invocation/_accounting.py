"""Per-capability accounting: what each invocation adds to the bill, counted in one place.

One ``Accounting`` per host (``open_host`` makes it; an HTTP service over a bare
``Invoker`` makes its own). A ``CapabilityAccount`` per capability holds what is
counted per capability (in flight, CPU seconds, bytes in and out, message age and
completion); a ``TriggerSeries`` per (capability, trigger) what is counted per
trigger kind (outcomes by code, wall-time histogram). Recording is a few integer and
float increments on these objects (no locks: one event loop owns a host; no timer,
no thread); ``thaw.adapters.http.metrics`` renders them only when ``/metrics`` is
scraped.

Who records: a host's ``ServedCapability`` (every http, subject, stream, schedule, kv
and objects invocation passes it), and ``Accounted`` around a capability for what
does not pass a host's capability (``ctx.call`` between siblings, an HTTP service over
a bare Invoker). Both time the call and hand the Outcome to ``TriggerSeries.record``.

What is counted (invariants):

- wall time is ``perf_counter`` around the call, cold start (a thaw) included: the
  billed duration;
- CPU time is ``time.thread_time()`` around the call, but only for one invocation in
  about ``cpu_sample_every`` (a random stride, mean ``cpu_sample_every``), that sample
  weighted by its stride: reading the thread's CPU clock is a system call (0.5-0.8 us
  on the machines we measure on), twice per invocation would be most of the budget.
  The estimate is unbiased; ``cpu_sample_every=1`` measures every call. A sampled
  call is driven step by step (``cpu_of_steps``): the clock is read around each of
  its own steps, from one suspension to the next, so what the loop runs while it
  waits (other invocations, the server's I/O) is not counted in it: concurrent
  invocations do not count each other's CPU. A ``process`` instance's CPU is its
  child's and is not counted here;
- bytes in are the payload's, bytes out an ``Ok`` result's (a replayed one too);
- an ``Ok`` larger than the capability's ``max_result`` counts as
  ``reject``/``result_too_large`` (what HTTP answers for it);
- labels are bounded: capabilities and triggers come from the app's declarations;
  codes are Thaw's own, a capability's own ones up to ``MAX_FUNCTION_CODES``, then
  ``other`` (like any value that is not a code).
"""

from __future__ import annotations

import random
import re
import time
import types
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Generator, Iterator
from time import perf_counter
from typing import Any

from thaw._errors import ConfigError, ThawError
from thaw._event import Event, Ok, Outcome, Reject
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS
from thaw.decisions._http import PROTOCOL_ERRORS
from thaw.declarations._app import CapabilitySpec

__all__ = [
    "MAX_FUNCTION_CODES",
    "OTHER_CODE",
    "TRIGGERS",
    "Accounted",
    "Accounting",
    "CapabilityAccount",
    "Histogram",
    "TriggerSeries",
    "cpu_clock",
    "cpu_of_steps",
    "trigger_tag",
]

TRIGGERS: tuple[str, ...] = ("http", "subject", "stream", "schedule", "kv", "objects", "call")
MAX_FUNCTION_CODES = 32
OTHER_CODE = "other"
CPU_SAMPLE_EVERY = 16
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_LATENCY = LATENCY_BOUNDS
_random = random.random


def _cpu_clock() -> Callable[[], float]:
    """The thread's CPU clock, or the process's where there is none (Pyodide may lack
    ``thread_time``; the edge runs one thread anyway), or a clock that reads 0."""
    for name in ("thread_time", "process_time"):
        clock = getattr(time, name, None)
        if clock is None:
            continue
        try:
            clock()
        except OSError:
            continue
        return clock  # type: ignore[no-any-return]
    return lambda: 0.0


cpu_clock = _cpu_clock()  # what every recorder reads (see the module docstring)
thread_time = cpu_clock


@types.coroutine
def cpu_of_steps(
    awaitable: Awaitable[Outcome], account: CapabilityAccount, weight: int
) -> Generator[Any, Any, Outcome]:
    """Await ``awaitable``, adding the CPU time of its own steps (times ``weight``) to
    ``account.cpu_seconds``: the clock is read around each step, and not while it is
    suspended. What it waits on passes through unchanged (the loop's futures,
    cancellation thrown in, close)."""
    steps = awaitable.__await__()
    send, throw, clock = steps.send, steps.throw, thread_time
    value: Any = None
    error: BaseException | None = None
    cpu = 0.0
    try:
        while True:
            start = clock()
            try:
                yielded = send(value) if error is None else throw(error)
            except StopIteration as stop:
                result: Outcome = stop.value
                return result
            finally:
                cpu += clock() - start
            error = value = None
            try:
                value = yield yielded
            except GeneratorExit:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as exc:  # cancellation included: the step receives it
                error = exc
    finally:
        account.cpu_seconds += cpu * weight


def _built_in_codes() -> frozenset[str]:
    codes = set(PROTOCOL_ERRORS) | {"result_invalid", "result_too_large", "idempotency_key_invalid"}
    classes: list[type[ThawError]] = [ThawError]
    while classes:  # the classes loaded now: Thaw's own (and the few an app defined)
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    return frozenset(codes)


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum of the values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


class CapabilityAccount:
    """What one capability has cost so far, over every trigger."""

    __slots__ = (
        "age",
        "completion",
        "cpu_countdown",
        "cpu_seconds",
        "cpu_stride",
        "declared",
        "function_codes",
        "in_flight",
        "max_result",
        "name",
        "triggers",
        "accounting",
    )

    def __init__(
        self,
        accounting: Accounting,
        name: str,
        max_result: int,
        declared: frozenset[str] = frozenset(),
    ) -> None:
        self.accounting = accounting
        self.name = name
        self.declared = declared  # the trigger kinds the capability declares
        self.max_result = max_result
        self.in_flight = 0
        self.cpu_seconds = 0.0
        self.age = Histogram(AGE_BOUNDS)  # publish -> processing starts, every delivery
        self.completion = Histogram(AGE_BOUNDS)  # publish -> ack or dead letter, once
        self.function_codes: set[str] = set()  # the capability's own codes with a series
        self.triggers: dict[str, TriggerSeries] = {}
        self.cpu_stride = 1
        self.cpu_countdown = 1  # the first call is sampled
        for trigger in declared:
            self.series(trigger)

    def series(self, trigger: str) -> TriggerSeries:
        """The series of one trigger kind (one of ``TRIGGERS``)."""
        found = self.triggers.get(trigger)
        if found is None:
            if trigger not in TRIGGERS:
                raise ConfigError(
                    f"trigger {trigger!r} is not one Thaw accounts for; use one of "
                    + ", ".join(TRIGGERS)
                )
            found = self.triggers[trigger] = TriggerSeries(self, trigger)
        return found

    @property
    def bytes_in(self) -> int:
        """Payload bytes in, over every trigger."""
        return sum(series.bytes_in for series in self.triggers.values())

    @property
    def bytes_out(self) -> int:
        """Result bytes out, over every trigger."""
        return sum(series.bytes_out for series in self.triggers.values())

    def cpu_sample(self) -> int:
        """Called when ``cpu_countdown`` reaches 0: the weight of the sample starting now
        (the stride it closes), and the next stride drawn."""
        weight = self.cpu_stride
        every = self.accounting.cpu_sample_every
        stride = 1 if every == 1 else 1 + int(_random() * (2 * every - 1))
        self.cpu_stride = self.cpu_countdown = stride
        return weight

    def code_label(self, code: str) -> str:
        if code in _BUILT_IN or code in self.function_codes:
            return code
        if len(self.function_codes) >= MAX_FUNCTION_CODES or not _CODE.match(code):
            return OTHER_CODE
        self.function_codes.add(code)
        return code


class TriggerSeries:
    """One capability's invocations through one trigger kind."""

    __slots__ = (
        "account",
        "buckets",
        "bytes_in",
        "bytes_out",
        "failures",
        "max_result",
        "ok",
        "seconds",
        "trigger",
    )

    def __init__(self, account: CapabilityAccount, trigger: str) -> None:
        self.account = account
        self.trigger = trigger
        self.max_result = account.max_result
        self.bytes_in = 0
        self.bytes_out = 0
        self.ok = 0
        self.failures: dict[tuple[str, str], int] = {}  # (outcome, code) -> count
        self.buckets = [0] * (len(_LATENCY) + 1)  # wall time; per bucket, last is +Inf
        self.seconds = 0.0

    def record(self, outcome: Outcome, seconds: float, size_in: int) -> None:
        """One finished invocation: its Outcome, wall time and payload size.

        The hot path: every counter it touches is this object's own (bytes too; the
        account sums its series when rendered), ~0.3 us per call."""
        self.bytes_in += size_in
        if outcome.__class__ is Ok:
            size = len(outcome.data)
            if size <= self.max_result:
                self.ok += 1
                self.bytes_out += size
            else:
                self._failure("reject", "result_too_large")
        elif isinstance(outcome, Reject):
            self._failure("reject", outcome.code)
        else:
            self._failure("retry", outcome.code)  # type: ignore[union-attr]
        self.buckets[bisect_left(_LATENCY, seconds)] += 1
        self.seconds += seconds

    def _failure(self, kind: str, code: str) -> None:
        key = (kind, code)
        count = self.failures.get(key)
        if count is None:  # a new series: only here is the label checked and capped
            key = (kind, self.account.code_label(code))
            count = self.failures.get(key, 0)
        self.failures[key] = count + 1

    @property
    def count(self) -> int:
        return sum(self.buckets)


class Accounting:
    """Every capability's account in one host; ``capabilities()`` for the renderer.

    ``cpu_sample_every``: CPU time is read for one invocation in about this many (1:
    every invocation; see the module docstring).
    """

    def __init__(self, *, cpu_sample_every: int = CPU_SAMPLE_EVERY) -> None:
        if isinstance(cpu_sample_every, bool) or not isinstance(cpu_sample_every, int):
            raise ConfigError(f"cpu_sample_every must be an int >= 1, got {cpu_sample_every!r}")
        if cpu_sample_every < 1:
            raise ConfigError(f"cpu_sample_every must be an int >= 1, got {cpu_sample_every!r}")
        self.cpu_sample_every = cpu_sample_every
        self._accounts: dict[str, CapabilityAccount] = {}

    def account(self, spec: CapabilitySpec | str) -> CapabilityAccount:
        """The account of a capability (made on first use)."""
        name = spec if isinstance(spec, str) else spec.name
        found = self._accounts.get(name)
        if found is None:
            if isinstance(spec, str):
                found = CapabilityAccount(self, name, 1 << 62)
            else:
                declared = frozenset(trigger_tag(t) for t in spec.triggers) & set(TRIGGERS)
                found = CapabilityAccount(self, name, spec.policy.max_result, declared)
            self._accounts[name] = found
        return found

    def series(self, spec: CapabilitySpec | str, trigger: str) -> TriggerSeries:
        return self.account(spec).series(trigger)

    def capabilities(self) -> Iterator[CapabilityAccount]:
        """The accounts, by capability name."""
        for name in sorted(self._accounts):
            yield self._accounts[name]


class Accounted:
    """A capability whose calls are counted in ``series`` (``ctx.call`` between siblings,
    an HTTP route of a bare Invoker): the same ``await capability(event) -> Outcome``."""

    __slots__ = ("_call", "_series", "name", "spec")

    def __init__(
        self,
        call: Callable[[Event], Awaitable[Outcome]],
        series: TriggerSeries,
        *,
        spec: CapabilitySpec | None = None,
    ) -> None:
        self._call = call
        self._series = series
        found = spec if spec is not None else getattr(call, "spec", None)
        if not isinstance(found, CapabilitySpec):
            raise ConfigError(f"Accounted needs the spec of {series.account.name!r}: pass spec=")
        self.spec: CapabilitySpec = found
        self.name = series.account.name

    def __getattr__(self, name: str) -> object:  # calls, in_flight...: the wrapped one's
        return getattr(self._call, name)

    async def peek_settled(self, event: Event) -> Outcome | None:
        """The wrapped capability's stored answer for ``event`` (None if it keeps none)."""
        peek = getattr(self._call, "peek_settled", None)
        return None if peek is None else await peek(event)

    async def __call__(self, event: Event) -> Outcome:
        series = self._series
        account = series.account
        account.in_flight += 1
        countdown = account.cpu_countdown - 1
        if countdown:
            account.cpu_countdown = countdown
            weight = 0
        else:
            weight = account.cpu_sample()
        start = perf_counter()
        try:
            if weight:
                outcome = await cpu_of_steps(self._call(event), account, weight)
            else:
                outcome = await self._call(event)
        finally:
            account.in_flight -= 1
        seconds = perf_counter() - start
        series.record(outcome, seconds, len(event.data))
        return outcome


def trigger_tag(trigger: object) -> str:
    """A trigger Struct's tag: ``http``, ``stream``, ``schedule``..."""
    tag = getattr(getattr(type(trigger), "__struct_config__", None), "tag", None)
    return tag if isinstance(tag, str) else ""


_BUILT_IN = _built_in_codes()
