"""Metrics of a host in the Prometheus text exposition format (0.0.4).

Recording happens elsewhere, as plain increments: invocations in the core's
accounting (``thaw.invocation._accounting``: a host's ``ServedCapability`` for every
trigger kind, ``ctx.call`` in the invoker), connections and responses in the HTTP
server's ``ServerCounters``. Rendering happens only when ``/metrics`` is scraped.
Every histogram's bounds come from ``thaw._histogram``. Families (docs/observability.md
says what each one means):

- ``thaw_invocations_total{capability,trigger,outcome,code}`` counter: trigger is one
  of ``http``, ``subject``, ``stream``, ``schedule``, ``kv``, ``objects``, ``call``;
  outcome ``ok``, ``retry`` or ``reject``; code the stable error code (empty for ok).
  Bounded: Thaw's own codes always get their series; a capability's own codes
  (``Rejected(code=...)``) get at most ``MAX_FUNCTION_CODES`` series, and later
  ones, like any value that is not a code, are counted under ``code="other"``.
- ``thaw_invocation_duration_seconds{capability,trigger}`` histogram (LATENCY_BOUNDS):
  wall time of the invocation, a cold start's thaw included (the billed duration).
- ``thaw_invocation_cpu_seconds_total{capability}``, ``thaw_invocation_bytes_in_total``,
  ``thaw_invocation_bytes_out_total`` counters; ``thaw_invocations_in_flight`` gauge.
- ``thaw_message_age_seconds{capability}`` and ``thaw_message_completion_seconds``
  histograms (AGE_BOUNDS): publish -> processing starts (every delivery), publish ->
  ack or dead letter (once per message), for stream, kv, objects and schedule triggers.
- ``thaw_retry_budget_refusals_total``: retries the process-wide budget refused (delayed).
- ``thaw_http_connections_total`` counter, ``thaw_http_connections_open`` gauge,
  ``thaw_http_requests_in_flight`` gauge,
  ``thaw_http_responses_total{class}`` counter (``1xx`` .. ``5xx``),
  ``thaw_http_refusals_total{status}`` counter: requests the server refused
  itself (limits, timeouts, malformed or smuggling shapes, overload, drain).
- When the server serves a Host, its stream workers (stream, kv, objects and schedule
  triggers) too: ``thaw_stream_deliveries_total{capability,consumer,action}``
  counter, action ``ack`` (done), ``nak`` (retried later) or ``dead_letter`` (to
  the dead-letter stream); ``consumer`` is empty for a capability's own consumer
  and ``stream/durable`` for its further ones; ``thaw_stream_pending{capability,
  consumer}`` gauge: the consumer's lag (messages not yet delivered) as of the
  worker's last fetch. Revisions, instances and cold starts (``thaw_cold_starts_total``,
  ``thaw_cold_start_seconds``).
- ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
  ``process_max_resident_memory_bytes``, ``process_start_time_seconds``
  (``thaw.adapters.telemetry.process_metrics``).
- Under ``thaw serve --workers N`` whichever worker is scraped answers the merge of
  every worker's exposition (``thaw.adapters.telemetry.metrics_peers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from thaw import Outcome
from thaw.lowlevel import (
    AGE_BOUNDS,
    COLD_START_BUCKETS,
    LATENCY_BOUNDS,
    MAX_FUNCTION_CODES,
    Accounting,
    CapabilityAccount,
    ColdStartSeries,
    RouterStatistics,
    TriggerSeries,
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
BUCKETS: tuple[float, ...] = LATENCY_BOUNDS  # every invocation latency histogram's bounds


class CapabilityMetrics(CapabilityAccount):
    """One capability's account on its own, outside any host (``observe`` records an
    invocation of one trigger kind; a host records through its accounting instead)."""

    def __init__(self, name: str) -> None:
        super().__init__(Accounting(), name, 1 << 62)

    def observe(self, outcome: Outcome, seconds: float, *, trigger: str = "http") -> None:
        self.series(trigger).record(outcome, seconds, 0)


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
    capabilities: Iterable[CapabilityAccount],
    counters: ServerCounters,
    *,
    connections_open: int,
    connections_total: int,
    requests_in_flight: int,
    workers: Mapping[str, WorkerStatistics] | None = None,
    revisions: RouterStatistics | None = None,
    budget_refusals: int | None = None,
    process: bool = False,
) -> bytes:
    """The whole exposition, one family after the other (each family once).

    ``capabilities``: the accounts to show (``Accounting.capabilities()``);
    ``budget_refusals``: the host's retry budget's refusals (None: no family);
    ``process``: add the ``process_*`` families (one service per process does)."""
    caps = sorted(capabilities, key=lambda m: m.name)
    out = _Writer()
    _invocations(out, caps)
    if budget_refusals is not None:
        name = "thaw_retry_budget_refusals_total"
        out.family(name, "counter", "Retries the process-wide retry budget refused (delayed).")
        out.sample(name, (), budget_refusals)
    _server(out, counters, connections_open, connections_total, requests_in_flight)
    if workers:
        _workers(out, workers)
    if revisions is not None:
        _revisions(out, revisions)
    if process:
        # Imported here: the edge guest (Pyodide) renders this module's families too, and
        # has neither the telemetry package nor ``resource``.
        try:
            from thaw.adapters.telemetry.process_metrics import process_samples
        except ImportError:
            process_samples = _no_process_samples
        for name, kind, help_text, value in process_samples():
            out.family(name, kind, help_text)
            out.sample(name, (), value)
    out.lines.append("")
    return "\n".join(out.lines).encode()


def _no_process_samples() -> list[tuple[str, str, str, float]]:
    return []


def _shown(account: CapabilityAccount) -> list[tuple[str, TriggerSeries]]:
    """The trigger series to show: every one with calls, and the declared ones (zeros
    included, so a rate starts from a series that exists), by trigger name."""
    return sorted(
        (trigger, series)
        for trigger, series in account.triggers.items()
        if trigger in account.declared or any(series.buckets)
    )


def _invocations(out: _Writer, caps: list[CapabilityAccount]) -> None:
    shown = [(m, _shown(m)) for m in caps]
    name = "thaw_invocations_total"
    out.family(name, "counter", "Capability invocations by trigger, outcome and code.")
    for m, triggers in shown:
        for trigger, series in triggers:
            labels = (("capability", m.name), ("trigger", trigger))
            out.sample(name, (*labels, ("outcome", "ok"), ("code", "")), series.ok)
            for (kind, code), count in sorted(series.failures.items()):
                out.sample(name, (*labels, ("outcome", kind), ("code", code)), count)
    name = "thaw_invocation_duration_seconds"
    out.family(name, "histogram", "Wall time of an invocation (the billed duration).")
    for m, triggers in shown:
        for trigger, series in triggers:
            labels = (("capability", m.name), ("trigger", trigger))
            _histogram(out, name, labels, LATENCY_BOUNDS, series.buckets, series.seconds)
    for name, kind, help_text, attribute in (
        (
            "thaw_invocation_cpu_seconds_total",
            "counter",
            "CPU time of invocations' own steps (sampled; not what ran while they waited).",
            "cpu_seconds",
        ),
        ("thaw_invocation_bytes_in_total", "counter", "Payload bytes in.", "bytes_in"),
        ("thaw_invocation_bytes_out_total", "counter", "Result bytes out.", "bytes_out"),
        ("thaw_invocations_in_flight", "gauge", "Capability invocations running now.", "in_flight"),
    ):
        out.family(name, kind, help_text)
        for m in caps:
            out.sample(name, (("capability", m.name),), getattr(m, attribute))
    for name, help_text, attribute in (
        (
            "thaw_message_age_seconds",
            "From a message's publish to the start of its processing (every delivery).",
            "age",
        ),
        (
            "thaw_message_completion_seconds",
            "From a message's publish to its final action: ack or dead letter (once).",
            "completion",
        ),
    ):
        out.family(name, "histogram", help_text)
        for m in caps:
            histogram = getattr(m, attribute)
            if m.declared & _MESSAGE_TRIGGERS or any(histogram.counts):
                one = (("capability", m.name),)
                _histogram(out, name, one, AGE_BOUNDS, histogram.counts, histogram.total)


_MESSAGE_TRIGGERS = frozenset(("stream", "schedule", "kv", "objects"))


def _histogram(
    out: _Writer,
    name: str,
    labels: tuple[tuple[str, str], ...],
    bounds: tuple[float, ...],
    counts: list[int] | tuple[int, ...],
    total: float,
) -> None:
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        out.sample(f"{name}_bucket", (*labels, ("le", _number(bound))), cumulative)
    out.sample(f"{name}_sum", labels, total)
    out.sample(f"{name}_count", labels, cumulative)


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
        _histogram(out, name, cold, COLD_START_BUCKETS, one.buckets, one.total_seconds)


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
