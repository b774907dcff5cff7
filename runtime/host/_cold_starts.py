"""Cold starts, counted and timed: what ``/metrics`` shows as ``thaw_cold_starts_total`` and
the ``thaw_cold_start_seconds`` histogram.

A cold start is an event that found no live instance of its capability's pool: its
thaw (a ``shared`` instance's ``on_start``, a ``fresh`` instance's module bodies and
``on_start``, a ``process`` instance's fork and ``on_start``) is timed from the
event's arrival at the pool to the instance being ready, and recorded under the
capability whose event caused it. Only the thawing event records; events that
wait for the same thaw do not. The recorder is plain counters (no lock: one event
loop), cheap enough for every thaw, and bounded: one series per capability the
app declares. Durations come from ``time.perf_counter``, never a test's fake clock.
"""

from __future__ import annotations

from bisect import bisect_left

import msgspec

from thaw._histogram import LATENCY_BOUNDS

__all__ = ["COLD_START_BUCKETS", "ColdStartSeries", "ColdStarts"]

# Seconds: the shared latency bounds (thaw._histogram), from 10 microseconds (a shared
# thaw is tens of them) to the seconds a slow on_start or a fork of a large host can take.
COLD_START_BUCKETS: tuple[float, ...] = LATENCY_BOUNDS


class ColdStartSeries(msgspec.Struct, frozen=True):
    """One capability's cold starts in one revision: per-bucket counts (last is +Inf)."""

    revision: str
    capability: str
    isolation: str
    count: int
    total_seconds: float
    buckets: tuple[int, ...]


class ColdStarts:
    """Cold starts of one revision's pools, per capability."""

    __slots__ = ("revision", "_series")

    def __init__(self, revision: str) -> None:
        self.revision = revision
        self._series: dict[tuple[str, str], list[float]] = {}  # -> [count, sum, *buckets]

    def observe(self, capability: str, isolation: str, seconds: float) -> None:
        series = self._series.get((capability, isolation))
        if series is None:
            series = self._series[(capability, isolation)] = [0.0] * (
                2 + len(COLD_START_BUCKETS) + 1
            )
        series[0] += 1
        series[1] += seconds
        series[2 + bisect_left(COLD_START_BUCKETS, seconds)] += 1

    def series(self) -> list[ColdStartSeries]:
        return [
            ColdStartSeries(
                revision=self.revision,
                capability=capability,
                isolation=isolation,
                count=int(values[0]),
                total_seconds=values[1],
                buckets=tuple(int(v) for v in values[2:]),
            )
            for (capability, isolation), values in sorted(self._series.items())
        ]
