"""Where each declared SLO stands, computed from the host's own ``/metrics`` and appended
to it as the ``thaw_slo_*`` families.

``slo_metrics(front, apps, metrics_path)`` wraps the HTTP front service (after
``peer_metrics``, so under ``thaw serve --workers N`` the exposition it reads is the
merge of every worker's): every ``THAW_SLO_INTERVAL`` seconds (5) it asks the front for
``/metrics``, reads each objective's good and total counts from it, and records them
in the objective's ``History`` (``thaw.host._slo_windows``, the pure window math).
A scrape of ``/metrics`` gets the front's exposition followed by:

- ``thaw_slo_objective{capability,slo}``: the target ratio;
- ``thaw_slo_sli{capability,slo,window}``: good / total over 5m, 30m, 1h, 6h, 3d
  (absent for a window without events);
- ``thaw_slo_events{capability,slo,window}``: the events in that window;
- ``thaw_slo_burn_rate{capability,slo,window}``: how fast the budget burns (1 = on
  budget);
- ``thaw_slo_error_budget_remaining{capability,slo}``: the share of the budget left over
  the budget window, or the part of it this process has seen; negative once overspent;
- ``thaw_slo_alert{capability,slo,severity}``: 1 while the multi-window burn-rate rule
  of that severity (``page``, ``ticket``) holds.

What each objective counts (``counts``): ``Latency`` the buckets of
``thaw_invocation_duration_seconds`` of its sync triggers (http, subject, call),
``Age`` and ``Completion`` those of ``thaw_message_age_seconds`` and
``thaw_message_completion_seconds``, ``Availability`` ``thaw_invocations_total`` less
its fault codes. The history lives in this process: a restarted host starts its
windows again (the burn rates then cover what it has seen).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from thaw import App
from thaw._histogram import is_bound
from thaw.adapters.http.metrics import escape_label
from thaw.adapters.telemetry.metrics_peers import MetricsFront
from thaw.declarations._slo import Availability, Latency, Objective
from thaw.host._slo_windows import SEVERITIES, WINDOWS, History, Standing, fault_codes, standing

if TYPE_CHECKING:  # thaw.adapters.http imports telemetry modules: no cycle at run time
    from thaw.adapters.http._wire import Request, Response

__all__ = [
    "DEFAULT_INTERVAL",
    "FAMILIES",
    "INTERVAL_ENV",
    "SYNC_TRIGGERS",
    "ExpositionError",
    "Sample",
    "SloEvaluator",
    "SloMetricsService",
    "counts",
    "declared",
    "parse_exposition",
    "slo_metrics",
]

log = logging.getLogger("thaw.slo")

INTERVAL_ENV = "THAW_SLO_INTERVAL"
DEFAULT_INTERVAL = 5.0
SYNC_TRIGGERS = frozenset({"http", "subject", "call"})
FAMILIES = {
    "latency": "thaw_invocation_duration_seconds",
    "age": "thaw_message_age_seconds",
    "completion": "thaw_message_completion_seconds",
}
MAX_LINE = 64 * 1024  # a sample line longer than this is no Prometheus exposition of ours
_FAULTS = fault_codes()
_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)"  # metric name
    r"(?:\{(.*)\})?"  # labels (checked below)
    r"[ \t]+(\S+)"  # value
    r"(?:[ \t]+-?[0-9]+)?[ \t]*\Z"  # optional timestamp
)
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|\Z)')
_UNESCAPE = re.compile(r"\\(.)")
_LE = re.compile(r'(?:^|,)[ \t]*le[ \t]*=[ \t]*"([^"]*)"')


class ExpositionError(ValueError):
    """The text is not a Prometheus text exposition (0.0.4)."""


class Sample(NamedTuple):
    name: str
    labels: Mapping[str, str]
    value: float


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str, number: int) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None or match.end() == position:
            raise ExpositionError(f"line {number}: malformed labels {text[position:][:60]!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        position = match.end()
        if not match.group(3):
            break
    if position < len(text) and text[position:].strip():
        raise ExpositionError(f"line {number}: malformed labels {text[position:][:60]!r}")
    return labels


def parse_exposition(
    body: bytes,
    *,
    prefixes: tuple[str, ...] = (),
    keep: Callable[[str, str], bool] | None = None,
) -> list[Sample]:
    """The samples of a Prometheus text exposition (0.0.4); only those whose name starts
    with one of ``prefixes`` when given, and for which ``keep(name, labels text)`` holds
    (the others are checked for shape only: their labels are not read).
    Raises ``ExpositionError`` naming the first line that is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExpositionError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    samples: list[Sample] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        if len(line) > MAX_LINE:
            raise ExpositionError(f"line {number} is longer than {MAX_LINE} characters")
        match = _SAMPLE.match(line)
        if match is None:
            raise ExpositionError(f"line {number} is not a sample: {line[:80]!r}")
        name, labels, value = match.groups()
        try:
            number_value = float(value)
        except ValueError:
            raise ExpositionError(f"line {number}: {value[:40]!r} is not a number") from None
        if prefixes and not name.startswith(prefixes):
            continue
        if keep is not None and not keep(name, labels or ""):
            continue
        samples.append(Sample(name, _labels(labels or "", number), number_value))
    return samples


def _same_bound(text: str, seconds: float) -> bool:
    """Whether an ``le`` label's text is the bound ``seconds`` (``thaw._histogram``'s rule)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and is_bound(value, (seconds,))


def counts(
    objective: Objective, capability: str, samples: Iterable[Sample]
) -> tuple[float, float] | None:
    """(good, total) of ``objective`` for ``capability`` in ``samples``; None when the
    capability has events but its histogram has no bucket at the objective's threshold
    (an exposition from a host with other bounds)."""
    if isinstance(objective, Availability):
        good = total = 0.0
        for sample in samples:
            labels = sample.labels
            if sample.name != "thaw_invocations_total" or labels.get("capability") != capability:
                continue
            total += sample.value
            if labels.get("outcome") == "ok" or labels.get("code", "") not in _FAULTS:
                good += sample.value
        return good, total
    family = FAMILIES[objective.kind]
    sync = isinstance(objective, Latency)
    bucket, count = f"{family}_bucket", f"{family}_count"
    good = total = 0.0
    found = False
    for sample in samples:
        labels = sample.labels
        if labels.get("capability") != capability or sample.name not in (bucket, count):
            continue
        # an exposition without the trigger label (an older host) counts every trigger
        if sync and labels.get("trigger", "http") not in SYNC_TRIGGERS:
            continue
        if sample.name == count:
            total += sample.value
        elif _same_bound(labels.get("le", ""), objective.within):
            good += sample.value
            found = True
    if total > 0 and not found:
        return None
    return good, total


def declared(apps: Iterable[App]) -> list[tuple[str, Objective]]:
    """(capability, objective) of every objective the apps declare, once each."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, Objective]] = []
    for app in apps:
        for spec in app.capabilities.values():
            for objective in spec.policy.slo:
                if (spec.name, objective.key) not in seen:
                    seen.add((spec.name, objective.key))
                    out.append((spec.name, objective))
    return out


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf")


class _Tracked:
    __slots__ = ("capability", "history", "labels", "objective", "standing", "warned")

    def __init__(self, capability: str, objective: Objective) -> None:
        self.capability = capability
        self.objective = objective
        self.history = History(budget_window=objective.window)
        self.labels = f'capability="{escape_label(capability)}",slo="{escape_label(objective.key)}"'
        self.standing: Standing = standing(self.history, target=objective.target)
        self.warned = False


class SloEvaluator:
    """The histories of some objectives, fed expositions, rendering ``thaw_slo_*``."""

    def __init__(self, objectives: Iterable[tuple[str, Objective]]) -> None:
        self._tracked = [_Tracked(capability, objective) for capability, objective in objectives]
        self._rendered = self._render()
        # Only the samples some objective reads get their labels parsed: the counters and
        # counts, and of the buckets those at a threshold (one line in twenty or so).
        self._names = {"thaw_invocations_total"}
        self._bounds: dict[str, set[float]] = {}
        for tracked in self._tracked:
            objective = tracked.objective
            if not isinstance(objective, Availability):
                family = FAMILIES[objective.kind]
                self._names.add(f"{family}_count")
                self._bounds.setdefault(f"{family}_bucket", set()).add(objective.within)

    def _keep(self, name: str, labels: str) -> bool:
        bounds = self._bounds.get(name)
        if bounds is None:
            return name in self._names
        found = _LE.search(labels)
        return found is not None and any(_same_bound(found.group(1), b) for b in bounds)

    def __bool__(self) -> bool:
        return bool(self._tracked)

    def observe(self, body: bytes, now: float) -> None:
        """Record the counts in exposition ``body`` read at ``now`` (monotonic seconds)."""
        samples = parse_exposition(body, prefixes=("thaw_",), keep=self._keep)
        for tracked in self._tracked:
            found = counts(tracked.objective, tracked.capability, samples)
            if found is None:
                if not tracked.warned:
                    tracked.warned = True
                    log.warning(
                        "SLO %s of %s: %s has no bucket le=%g: it cannot be evaluated",
                        tracked.objective.key,
                        tracked.capability,
                        FAMILIES[tracked.objective.kind],
                        getattr(tracked.objective, "within", 0.0),
                    )
                continue
            if tracked.history.add(now, *found):
                tracked.standing = standing(tracked.history, target=tracked.objective.target)
        self._rendered = self._render()

    def render(self) -> bytes:
        """The ``thaw_slo_*`` families as of the last ``observe``."""
        return self._rendered

    def _render(self) -> bytes:
        if not self._tracked:
            return b""
        lines: list[str] = []

        def family(name: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")

        family("thaw_slo_objective", "The target ratio of a service level objective.")
        for t in self._tracked:
            lines.append(f"thaw_slo_objective{{{t.labels}}} {_number(t.objective.target)}")
        family("thaw_slo_sli", "Good events over all events in the window (none: no events).")
        for t in self._tracked:
            for window, _ in WINDOWS:
                value = t.standing.sli[window]
                if value is not None:
                    lines.append(f'thaw_slo_sli{{{t.labels},window="{window}"}} {_number(value)}')
        family("thaw_slo_events", "Events an objective counted in the window.")
        for t in self._tracked:
            for window, _ in WINDOWS:
                events = _number(t.standing.events[window])
                lines.append(f'thaw_slo_events{{{t.labels},window="{window}"}} {events}')
        family("thaw_slo_burn_rate", "How fast the error budget burns (1: exactly on budget).")
        for t in self._tracked:
            for window, _ in WINDOWS:
                rate = _number(t.standing.burn[window])
                lines.append(f'thaw_slo_burn_rate{{{t.labels},window="{window}"}} {rate}')
        family(
            "thaw_slo_error_budget_remaining",
            "Share of the error budget left over the budget window seen so far.",
        )
        for t in self._tracked:
            left = _number(t.standing.budget_remaining)
            lines.append(f"thaw_slo_error_budget_remaining{{{t.labels}}} {left}")
        family("thaw_slo_alert", "1 while the multi-window burn-rate alert of a severity holds.")
        for t in self._tracked:
            for severity in SEVERITIES:
                firing = 1 if t.standing.alerts[severity] else 0
                lines.append(f'thaw_slo_alert{{{t.labels},severity="{severity}"}} {firing}')
        lines.append("")
        return "\n".join(lines).encode()


def _metrics_request(path: str) -> Request:
    from thaw.adapters.http._wire import Request

    return Request("GET", path, path, "", "1.1", {}, True, 0)


async def _answer(service: Any, request: Request) -> Response:
    """What ``service`` answers ``request`` (the protocol's two steps: check, then handle)."""
    answer: Response | None = service.check(request)
    if answer is None:
        answer = await service.handle(request)
    return answer


class SloMetricsService(MetricsFront):
    """A ``Service`` whose ``/metrics`` is the inner one's plus the ``thaw_slo_*`` families."""

    def __init__(self, inner: Any, metrics_path: str, evaluator: SloEvaluator) -> None:
        super().__init__(inner, metrics_path)
        self.evaluator = evaluator

    async def sample(self, now: float) -> bool:
        """Read the inner ``/metrics`` once into the evaluator; False when it did not answer."""
        response = await _answer(self._inner, _metrics_request(self._path))
        if response.status != 200 or response.body is None:
            return False
        try:
            self.evaluator.observe(bytes(response.body), now)
        except ExpositionError as exc:
            log.warning("SLOs not updated: the host's /metrics did not parse: %s", exc)
            return False
        return True

    async def _scrape(self, request: Request) -> Response:
        from thaw.adapters.http._wire import Response

        request.route = None
        response = await _answer(self._inner, request)
        if response.status != 200 or response.body is None:
            return response
        body = bytes(response.body) + self.evaluator.render()
        return Response(200, body, response.content_type)


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.05 <= value <= 300:
        from thaw import ConfigError

        raise ConfigError(
            f"{INTERVAL_ENV}={raw[:40]!r} must be seconds from 0.05 to 300 (default 5)"
        )
    return value


@asynccontextmanager
async def slo_metrics(
    front: Any,
    apps: Iterable[App],
    metrics_path: str,
    *,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Any]:
    """``front`` as a ``SloMetricsService`` sampling its ``/metrics`` every ``interval``
    seconds (``THAW_SLO_INTERVAL``, 5) while open; ``front`` itself when no app declares
    an objective or there is no /metrics."""
    evaluator = SloEvaluator(declared(apps))
    if not evaluator or not metrics_path:
        yield front
        return
    period = interval if interval is not None else _interval()
    wrapped = SloMetricsService(front, metrics_path, evaluator)

    async def sample_once() -> None:
        try:
            await wrapped.sample(clock())
        except Exception:  # a sample lost is a gap in the windows, never a dead host
            log.exception("SLO sampling failed; trying again in %g s", period)

    async def sample_forever() -> None:
        while True:
            await anyio.sleep(period)
            await sample_once()

    # The first sample before the server takes requests: the windows start from the
    # counters as they were then (zero, in a process of its own), not from a later one.
    await sample_once()
    async with anyio.create_task_group() as group:
        group.start_soon(sample_forever)
        try:
            yield wrapped
        finally:
            group.cancel_scope.cancel()
