"""Histogram bounds shared by every latency metric and every SLO threshold.

A 1-2-5 series, so the thresholds people write (200 ms, 500 us, 2 s) are bucket
bounds: an SLO's "good" count is then an exact bucket count, the same one a
Prometheus recording rule reads from the exported histogram. Invocations start at
10 us (an in-process call of a small function takes tens of microseconds); message
ages (publish to processing) run on to about an hour and a half.
"""

from __future__ import annotations

__all__ = ["AGE_BOUNDS", "LATENCY_BOUNDS", "is_bound"]

LATENCY_BOUNDS: tuple[float, ...] = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)

AGE_BOUNDS: tuple[float, ...] = (
    *LATENCY_BOUNDS[LATENCY_BOUNDS.index(0.001) :],
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
)


def is_bound(seconds: float, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> bool:
    """Whether ``seconds`` is one of ``bounds`` (within float rounding)."""
    return any(abs(seconds - bound) <= bound * 1e-9 for bound in bounds)
