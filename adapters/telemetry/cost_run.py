"""A recorded run of a host: the difference of two scrapes of its ``/metrics``.

A scrape is Prometheus text (0.0.4), parsed with prometheus_client's parser; ``thaw
cost record`` saves one with a first line ``# thaw-scrape-time <unix seconds>`` (a
comment to every Prometheus parser), so two files make a run with its duration. One
scrape makes a run from the host's start (``process_start_time_seconds``).

What a run holds per capability: invocations by outcome, their rate, billed wall
seconds (the duration histogram's ``_sum``) and its buckets, CPU seconds, bytes in
and out, stream naks and dead letters, the attempts that did no lasting work (the
retry tax: naks, dead letters and retry answers of request/reply triggers), cold
starts; per host: process CPU and the largest resident memory.

Invariants: every figure is a delta of a monotonic counter; one that went down means
the host restarted between the scrapes and is an error (RunInvalid), never a negative
count; a run with no invocations or no duration is an error too.
"""

from __future__ import annotations

import base64
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

import msgspec

from thaw._errors import ConfigError

__all__ = [
    "MAX_SCRAPE",
    "SCRAPE_TIME_COMMENT",
    "CapabilityUsage",
    "HostUsage",
    "LatencyBucket",
    "Run",
    "RunInvalid",
    "Scrape",
    "ScrapeInvalid",
    "bucket_bound",
    "measure",
    "parse_exposition",
    "scrape",
]

SCRAPE_TIME_COMMENT = "# thaw-scrape-time "  # what ``thaw cost record`` writes first
MAX_SCRAPE = 64 * 1024 * 1024
_READ = ("thaw_invocation", "thaw_stream_deliveries", "thaw_cold_start", "process_")
_MESSAGE_TRIGGERS = frozenset({"stream", "kv", "objects", "schedule"})  # nak / dead letter


class ScrapeInvalid(ConfigError):
    """A scrape is not Prometheus text, or not a Thaw host's."""

    code = "scrape_invalid"


class RunInvalid(ConfigError):
    """Two scrapes do not make a run: a restart between them, no invocations, no time."""

    code = "run_invalid"


# -- scrapes -------------------------------------------------------------------------

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


class Scrape(msgspec.Struct, frozen=True):
    """One exposition: its samples by (name, sorted labels), and when it was taken."""

    samples: dict[str, float]  # rendered key -> value (JSON-friendly; see key_of)
    time: float | None = None  # Unix seconds; None when the file does not say

    def series(self) -> dict[Key, float]:
        return {_parse_key(key): value for key, value in self.samples.items()}


def _key(name: str, labels: Mapping[str, str]) -> str:
    return msgspec.json.encode([name, sorted(labels.items())]).decode()


def _parse_key(key: str) -> Key:
    name, labels = msgspec.json.decode(key, type=tuple[str, list[tuple[str, str]]])
    return name, tuple(labels)


def parse_exposition(text: str | bytes, *, source: str = "scrape") -> Scrape:
    """Prometheus text (0.0.4) as a Scrape; the time from a ``# thaw-scrape-time`` line."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise ConfigError(
            "thaw cost reads scrapes with prometheus_client: pip install 'thaw-runtime[report]'"
        ) from None

    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise ScrapeInvalid(f"{source} is not Prometheus text (not UTF-8)") from None
    taken: float | None = None
    first, _, _ = text.partition("\n")
    if first.startswith(SCRAPE_TIME_COMMENT):
        taken = _finite(first[len(SCRAPE_TIME_COMMENT) :].strip(), source, "its scrape time")
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                value = float(sample.value)
                if sample.name.startswith(_READ) and not (math.isfinite(value) and value >= 0):
                    raise ScrapeInvalid(
                        f"{source}: {sample.name} is {value}: not a count, a time or a size"
                    )
                samples[_key(sample.name, sample.labels)] = value
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        detail = str(exc)[:120] or "unparseable line"
        raise ScrapeInvalid(
            f"{source} is not Prometheus text exposition (0.0.4): {detail}; "
            "save a host's /metrics with `thaw cost record URL FILE`"
        ) from None
    if not any(_parse_key(key)[0] == "thaw_invocations_total" for key in samples):
        raise ScrapeInvalid(
            f"{source} has no thaw_invocations_total: it is not the /metrics of a Thaw host"
        )
    return Scrape(samples=samples, time=taken)


def _finite(text: str, source: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScrapeInvalid(f"{source}: {what} {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ScrapeInvalid(f"{source}: {what} {text[:40]!r} is not a time")
    return value


def scrape(url: str, *, timeout: float = 10.0) -> tuple[bytes, float]:
    """GET a host's /metrics: the body and the time it was taken (the request's midpoint)."""
    parts = urllib.parse.urlsplit(url)
    shown = _redact(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScrapeInvalid(f"{shown}: give an http:// or https:// URL of a host's /metrics")
    headers = {"Accept": "text/plain"}
    if parts.username is not None or parts.password is not None:  # urllib ignores user:pass@
        pair = f"{urllib.parse.unquote(parts.username or '')}:"
        pair += urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        url = _redact(url, query=True)
    request = urllib.request.Request(url, headers=headers)
    before = time.time()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body: bytes = answer.read(MAX_SCRAPE + 1)
    except urllib.error.HTTPError as exc:
        raise ScrapeInvalid(f"{shown} answered HTTP {exc.code}: not a scrape") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeInvalid(f"cannot scrape {shown}: {reason}") from None
    if len(body) > MAX_SCRAPE:
        raise ScrapeInvalid(f"{shown} answered more than {MAX_SCRAPE} bytes: not a scrape")
    return body, (before + time.time()) / 2


def _redact(url: str, *, query: bool = False) -> str:
    """The URL without user and password (a scrape URL may carry basic-auth credentials)
    and, unless ``query``, without its query (a token may be there)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        kept = parts.query if query else ""
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, kept, ""))[:2000]
    except ValueError:
        return "the URL"


# -- a run: the difference of two scrapes -------------------------------------------


class LatencyBucket(msgspec.Struct, frozen=True):
    """Invocations whose duration fell in (the previous bucket's ``le``, ``le``]."""

    le: str  # the bucket's upper bound as exported ("0.001", "+Inf")
    count: int


class CapabilityUsage(msgspec.Struct, frozen=True):
    name: str
    invocations: int
    per_second: float
    ok: int
    retried: int  # outcome retry
    rejected: int  # outcome reject
    wall_seconds: float  # the duration histogram's _sum: billed wall time
    cpu_seconds: float
    bytes_in: int
    bytes_out: int
    naks: int  # stream deliveries nak'ed (retried later)
    dead_letters: int  # stream deliveries given up
    retry_tax_invocations: int  # attempts that did no lasting work: retried or given up
    cold_starts: int
    cold_start_seconds: float
    latency: list[LatencyBucket]


class HostUsage(msgspec.Struct, frozen=True):
    cpu_seconds: float | None  # process_cpu_seconds_total (every worker), None if absent
    max_resident_bytes: float | None  # the peak RSS (of the largest worker)
    resident_bytes: float | None
    start_time: float | None


class Run(msgspec.Struct, frozen=True):
    """What a host did between two scrapes."""

    seconds: float
    started_at: float | None
    ended_at: float | None
    invocations: int
    per_second: float
    capabilities: list[CapabilityUsage]
    host: HostUsage
    notes: list[str]


def measure(start: Scrape | None, end: Scrape, *, seconds: float | None = None) -> Run:
    """The run from ``start`` to ``end``; with no ``start``, since the host started.

    ``seconds`` overrides the interval the scrapes' times give.
    """
    after = end.series()
    before = start.series() if start is not None else {}
    notes: list[str] = []
    started_at, ended_at = (start.time if start else None), end.time
    start_time = _gauge(after, "process_start_time_seconds")
    if start is None and seconds is None:
        if start_time is None or ended_at is None or not 0 < start_time <= ended_at:
            raise RunInvalid(
                "one scrape makes a run only with its time (thaw cost record) and a "
                "process_start_time_seconds before it (one worker): give two scrapes "
                "(--from A --to B) or --over SECONDS"
            )
        started_at = start_time
    if start is not None:
        _check_no_reset(before, after, start_time, _gauge(before, "process_start_time_seconds"))
    if seconds is None:
        if started_at is None or ended_at is None:
            raise RunInvalid(
                "the scrapes do not say when they were taken: record them with "
                "`thaw cost record URL FILE`, or give the interval with --over SECONDS"
            )
        seconds = ended_at - started_at
    if not (math.isfinite(seconds) and seconds > 0):
        raise RunInvalid(
            f"the run lasted {seconds:.3f} s: the second scrape must be taken after the first"
        )
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    capabilities = _capabilities(delta, seconds)
    total = sum(c.invocations for c in capabilities)
    if total <= 0:
        raise RunInvalid(
            "no invocations in the run (thaw_invocations_total did not grow): send "
            "traffic between the scrapes, or scrape the host that served it"
        )
    host = HostUsage(
        cpu_seconds=_sum_named(delta, "process_cpu_seconds_total"),
        max_resident_bytes=_gauge(after, "process_max_resident_memory_bytes"),
        resident_bytes=_gauge(after, "process_resident_memory_bytes"),
        start_time=start_time,
    )
    if host.cpu_seconds is None:
        notes.append("no process_cpu_seconds_total: container sizing uses invocation CPU only")
    return Run(
        seconds=seconds,
        started_at=started_at,
        ended_at=ended_at,
        invocations=total,
        per_second=total / seconds,
        capabilities=capabilities,
        host=host,
        notes=notes,
    )


_MONOTONIC = ("_total", "_sum", "_count", "_bucket", "_created")


def _check_no_reset(
    before: Mapping[Key, float],
    after: Mapping[Key, float],
    start_after: float | None,
    start_before: float | None,
) -> None:
    for key, old in before.items():
        name, labels = key
        if not name.startswith(("thaw_", "process_cpu")) or not name.endswith(_MONOTONIC):
            continue
        new = after.get(key)
        if new is not None and new < old:
            shown = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels)[:160] + "}"
            raise RunInvalid(
                f"{shown} went from {old:g} to {new:g}: the host restarted between the "
                "scrapes (its counters started from zero again); record the run again"
            )
    if start_after is not None and start_before is not None and start_after != start_before:
        raise RunInvalid(
            "process_start_time_seconds changed between the scrapes: the host restarted; "
            "record the run again"
        )


def _gauge(series: Mapping[Key, float], name: str) -> float | None:
    values = [v for (n, _), v in series.items() if n == name and math.isfinite(v)]
    return sum(values) if values else None


def _sum_named(series: Mapping[Key, float], name: str) -> float | None:
    return _gauge(series, name)


def _by_capability(
    delta: Mapping[Key, float], name: str, where: Callable[[dict[str, str]], bool] | None = None
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, labels), value in delta.items():
        if sample != name:
            continue
        label = dict(labels)
        if where is not None and not where(label):
            continue
        capability = label.get("capability", "")
        out[capability] = out.get(capability, 0.0) + value
    return out


def _capabilities(delta: Mapping[Key, float], seconds: float) -> list[CapabilityUsage]:
    def count(name: str, **match: str | frozenset[str]) -> dict[str, float]:
        def where(labels: dict[str, str]) -> bool:
            for label, wanted in match.items():
                value = labels.get(label, "")
                if isinstance(wanted, frozenset):
                    if value not in wanted:
                        return False
                elif value != wanted:
                    return False
            return True

        return _by_capability(delta, name, where)

    invocations = count("thaw_invocations_total")
    ok = count("thaw_invocations_total", outcome="ok")
    retried = count("thaw_invocations_total", outcome="retry")
    rejected = count("thaw_invocations_total", outcome="reject")
    retried_sync = _by_capability(
        delta,
        "thaw_invocations_total",
        lambda labels: (
            labels.get("outcome") == "retry" and labels.get("trigger", "") not in _MESSAGE_TRIGGERS
        ),
    )
    wall = count("thaw_invocation_duration_seconds_sum")
    cpu = count("thaw_invocation_cpu_seconds_total")
    bytes_in = count("thaw_invocation_bytes_in_total")
    bytes_out = count("thaw_invocation_bytes_out_total")
    naks = count("thaw_stream_deliveries_total", action="nak")
    dead = count("thaw_stream_deliveries_total", action="dead_letter")
    cold = count("thaw_cold_starts_total")
    cold_seconds = count("thaw_cold_start_seconds_sum")
    names = sorted(n for n, v in invocations.items() if v > 0)
    out = []
    for name in names:
        total = round(invocations[name])
        tax = round(naks.get(name, 0) + dead.get(name, 0) + retried_sync.get(name, 0))
        out.append(
            CapabilityUsage(
                name=name,
                invocations=total,
                per_second=total / seconds,
                ok=round(ok.get(name, 0)),
                retried=round(retried.get(name, 0)),
                rejected=round(rejected.get(name, 0)),
                wall_seconds=max(0.0, wall.get(name, 0.0)),
                cpu_seconds=max(0.0, cpu.get(name, 0.0)),
                bytes_in=round(bytes_in.get(name, 0)),
                bytes_out=round(bytes_out.get(name, 0)),
                naks=round(naks.get(name, 0)),
                dead_letters=round(dead.get(name, 0)),
                retry_tax_invocations=min(total, tax),
                cold_starts=round(cold.get(name, 0)),
                cold_start_seconds=max(0.0, cold_seconds.get(name, 0.0)),
                latency=_latency(delta, name),
            )
        )
    return out


def _latency(delta: Mapping[Key, float], capability: str) -> list[LatencyBucket]:
    """The duration histogram of one capability over every trigger, per bucket."""
    cumulative: dict[str, float] = {}
    for (sample, labels), value in delta.items():
        if sample != "thaw_invocation_duration_seconds_bucket":
            continue
        label = dict(labels)
        if label.get("capability") != capability or "le" not in label:
            continue
        cumulative[label["le"]] = cumulative.get(label["le"], 0.0) + value
    ordered = sorted(cumulative.items(), key=lambda item: bucket_bound(item[0]))
    out: list[LatencyBucket] = []
    previous = 0.0
    for le, value in ordered:
        out.append(LatencyBucket(le=le, count=max(0, round(value - previous))))
        previous = max(previous, value)
    return out


def bucket_bound(le: str) -> float:
    """A bucket's ``le`` label as a number (+Inf, and anything unreadable, as infinity)."""
    try:
        value = float(le)
    except ValueError:
        return math.inf
    return value if not math.isnan(value) else math.inf
