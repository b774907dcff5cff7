"""Metrics of the HTTP server in the Prometheus text exposition format (0.0.4).

Recording is a handful of integer increments per request (no locks: one event
loop owns a server); rendering happens only when ``/metrics`` is scraped.

Families:

- ``thaw_invocations_total{capability,outcome,code}`` counter: outcome is
  ``ok``, ``retry`` or ``reject``; code is the stable error code (empty for ok).
  Bounded: Thaw's own codes always get their series; a capability's own codes
  (``Rejected(code=...)``) get at most ``MAX_FUNCTION_CODES`` series, and later
  ones, like any value that is not a code, are counted under ``code="other"``.
- ``thaw_invocation_duration_seconds{capability}`` histogram of handler time
  (buckets from 10 µs to 10 s).
- ``thaw_invocations_in_flight{capability}`` gauge.
- ``thaw_http_connections_total`` counter, ``thaw_http_connections_open`` gauge,
  ``thaw_http_requests_in_flight`` gauge,
  ``thaw_http_responses_total{class}`` counter (``1xx`` .. ``5xx``),
  ``thaw_http_refusals_total{status}`` counter: requests the server refused
  itself (limits, timeouts, malformed or smuggling shapes, overload, drain).
- When the server serves a Host, its stream workers (stream, kv and objects
  triggers) too: ``thaw_stream_deliveries_total{capability,consumer,action}``
  counter, action ``ack`` (done), ``nak`` (retried later) or ``dead_letter`` (to
  the dead-letter stream); ``consumer`` is empty for a capability's own consumer
  and ``stream/durable`` for its further ones; ``thaw_stream_pending{capability,
  consumer}`` gauge: the consumer's lag (messages not yet delivered) as of the
  worker's last fetch.
- Under ``thaw serve --workers N`` whichever worker is scraped answers the sum of
  every worker's exposition (``thaw.adapters.telemetry.metrics_peers``).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping

from thaw import Ok, Outcome, Reject, ThawError
from thaw.lowlevel import (
    COLD_START_BUCKETS,
    PROTOCOL_ERRORS,
    ColdStartSeries,
    RouterStatistics,
    WorkerStatistics,
)

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "MAX_FUNCTION_CODES",
    "CapabilityMetrics",
    "ServerCounters",
    "escape_label",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From 10 µs: an in-process invocation of a small function takes tens of microseconds.
BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


MAX_FUNCTION_CODES = 32
OTHER_CODE = "other"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def _built_in_codes() -> frozenset[str]:
    codes = set(PROTOCOL_ERRORS) | {"result_invalid", "result_too_large", "idempotency_key_invalid"}
    classes: list[type[ThawError]] = [ThawError]
    while classes:  # the classes loaded now: Thaw's own (and the few an app defined)
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    return frozenset(codes)


_BUILT_IN = _built_in_codes()


class CapabilityMetrics:
    """Counters of one capability's HTTP invocations."""

    __slots__ = (
        "buckets",
        "failures",
        "function_codes",
        "in_flight",
        "name",
        "ok",
        "total_seconds",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.failures: dict[tuple[str, str], int] = {}  # (outcome, code) -> count
        self.function_codes: set[str] = set()  # the capability's own codes with a series
        self.in_flight = 0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.total_seconds = 0.0

    def observe(self, outcome: Outcome, seconds: float) -> None:
        if isinstance(outcome, Ok):
            self.ok += 1
        else:
            key = ("reject" if isinstance(outcome, Reject) else "retry", outcome.code)
            count = self.failures.get(key)
            if count is None:  # a new series: only here is the label checked and capped
                key = (key[0], self._label(key[1]))
                count = self.failures.get(key, 0)
            self.failures[key] = count + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def _label(self, code: str) -> str:
        if code in _BUILT_IN or code in self.function_codes:
            return code
        if len(self.function_codes) >= MAX_FUNCTION_CODES or not _CODE.match(code):
            return OTHER_CODE
        self.function_codes.add(code)
        return code


class ServerCounters:
    """What one server counts besides its connections' own state."""

    __slots__ = ("refusals", "responses")

    def __init__(self) -> None:
        self.responses = [0] * 10  # index: status // 100 (statuses are 100-999)
        self.refusals: dict[int, int] = {}  # status -> count

    def refused(self, status: int) -> None:
        self.refusals[status] = self.refusals.get(status, 0) + 1


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == float("inf"):
        return "+Inf"
    return repr(value)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def render(
    capabilities: Iterable[CapabilityMetrics],
    counters: ServerCounters,
    *,
    connections_open: int,
    connections_total: int,
    requests_in_flight: int,
    workers: Mapping[str, WorkerStatistics] | None = None,
    revisions: RouterStatistics | None = None,
) -> bytes:
    """The whole exposition, one family after the other (each family once)."""
    caps = sorted(capabilities, key=lambda m: m.name)
    out = _Writer()
    out.family(
        "thaw_invocations_total", "counter", "Capability invocations over HTTP by outcome and code."
    )
    for m in caps:
        cap = ("capability", m.name)
        out.sample("thaw_invocations_total", (cap, ("outcome", "ok"), ("code", "")), m.ok)
        for (kind, code), count in sorted(m.failures.items()):
            out.sample("thaw_invocations_total", (cap, ("outcome", kind), ("code", code)), count)
    out.family("thaw_invocation_duration_seconds", "histogram", "Time a capability took to answer.")
    for m in caps:
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), m.buckets, strict=True):
            cumulative += count
            labels = (("capability", m.name), ("le", _number(bound)))
            out.sample("thaw_invocation_duration_seconds_bucket", labels, cumulative)
        out.sample(
            "thaw_invocation_duration_seconds_sum", (("capability", m.name),), m.total_seconds
        )
        out.sample("thaw_invocation_duration_seconds_count", (("capability", m.name),), cumulative)
    out.family("thaw_invocations_in_flight", "gauge", "Capability invocations running now.")
    for m in caps:
        out.sample("thaw_invocations_in_flight", (("capability", m.name),), m.in_flight)
    _server(out, counters, connections_open, connections_total, requests_in_flight)
    if workers:
        _workers(out, workers)
    if revisions is not None:
        _revisions(out, revisions)
    out.lines.append("")
    return "\n".join(out.lines).encode()


def _consumer_labels(worker: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """A host's worker key as labels: the capability, and the consumer (``stream/durable``)
    of a capability's further consumers (empty for its first): bounded by the app."""
    capability, _, consumer = worker.partition("/")
    return ("capability", capability), ("consumer", consumer)


def _workers(out: _Writer, workers: Mapping[str, WorkerStatistics]) -> None:
    name = "thaw_stream_deliveries_total"
    out.family(name, "counter", "Stream deliveries handled by a host's workers, by action.")
    for worker in sorted(workers):
        numbers = workers[worker]
        labels = _consumer_labels(worker)
        for action, count in (
            ("ack", numbers.acked),
            ("nak", numbers.naked),
            ("dead_letter", numbers.dead_lettered),
        ):
            out.sample(name, (*labels, ("action", action)), count)
    lag = "thaw_stream_pending"
    out.family(lag, "gauge", "Messages a consumer has not delivered yet (its last fetch).")
    for worker in sorted(workers):
        if workers[worker].pending >= 0:
            out.sample(lag, _consumer_labels(worker), workers[worker].pending)


def _revisions(out: _Writer, revisions: RouterStatistics) -> None:
    """Revisions, their instances and cold starts (one series per loaded revision and
    capability: bounded by what the host has loaded; ids cut to 12 characters)."""
    out.family("thaw_revision_weight", "gauge", "A loaded revision's share of traffic.")
    for rid, weight in sorted(revisions.weights.items()):
        out.sample("thaw_revision_weight", (("revision", rid[:12]),), weight)
    out.family("thaw_revision_calls_total", "counter", "Calls a loaded revision ran.")
    for health in revisions.health:
        out.sample("thaw_revision_calls_total", (("revision", health.revision[:12]),), health.calls)
    out.family(
        "thaw_revision_faults_total",
        "counter",
        "Calls of a revision that failed by the function's or the runtime's fault.",
    )
    for health in revisions.health:
        out.sample(
            "thaw_revision_faults_total", (("revision", health.revision[:12]),), health.faults
        )
    out.family("thaw_instances", "gauge", "Live instances, by revision and isolation.")
    for pool in revisions.pools:
        labels = (("revision", pool.revision[:12]), ("isolation", pool.isolation))
        out.sample("thaw_instances", labels, 1 if pool.live else 0)
    out.family("thaw_instance_stops_total", "counter", "Instances stopped (scale to zero).")
    for pool in revisions.pools:
        labels = (("revision", pool.revision[:12]), ("isolation", pool.isolation))
        out.sample("thaw_instance_stops_total", labels, pool.drops)
    out.family(
        "thaw_cold_starts_total", "counter", "Events that found no live instance and thawed one."
    )
    series = revisions.cold_starts
    for one in series:
        out.sample("thaw_cold_starts_total", _cold_labels(one), one.count)
    name = "thaw_cold_start_seconds"
    out.family(name, "histogram", "From a cold event's arrival to its instance being ready.")
    for one in series:
        cold = _cold_labels(one)
        cumulative = 0
        for bound, count in zip((*COLD_START_BUCKETS, float("inf")), one.buckets, strict=True):
            cumulative += count
            out.sample(f"{name}_bucket", (*cold, ("le", _number(bound))), cumulative)
        out.sample(f"{name}_sum", cold, one.total_seconds)
        out.sample(f"{name}_count", cold, cumulative)


def _cold_labels(series: ColdStartSeries) -> tuple[tuple[str, str], ...]:
    return (
        ("capability", series.capability),
        ("revision", series.revision[:12]),
        ("isolation", series.isolation),
    )


def _server(
    out: _Writer,
    counters: ServerCounters,
    connections_open: int,
    connections_total: int,
    requests_in_flight: int,
) -> None:
    out.family("thaw_http_connections_total", "counter", "Connections accepted.")
    out.sample("thaw_http_connections_total", (), connections_total)
    out.family("thaw_http_connections_open", "gauge", "Connections open now.")
    out.sample("thaw_http_connections_open", (), connections_open)
    out.family("thaw_http_requests_in_flight", "gauge", "Requests being handled now.")
    out.sample("thaw_http_requests_in_flight", (), requests_in_flight)
    out.family("thaw_http_responses_total", "counter", "Responses sent, by status class.")
    for index in range(1, 6):
        out.sample(
            "thaw_http_responses_total", (("class", f"{index}xx"),), counters.responses[index]
        )
    out.family(
        "thaw_http_refusals_total",
        "counter",
        "Requests the server refused itself (limits, timeouts, malformed input, overload).",
    )
    refusals: Mapping[int, int] = counters.refusals
    for status in sorted(refusals):
        out.sample("thaw_http_refusals_total", (("status", str(status)),), refusals[status])
