"""The standard Prometheus process metrics of this process, read when ``/metrics`` is scraped.

``process_cpu_seconds_total`` (user + system CPU, ``getrusage``),
``process_resident_memory_bytes`` (``/proc/self/statm``; where there is no ``/proc``,
the family is left out rather than guessed), ``process_max_resident_memory_bytes``
(``ru_maxrss``) and ``process_start_time_seconds`` (seconds since the epoch, from
``/proc``; else when this module was imported). Under ``thaw serve --workers N``
the merge sums CPU and resident memory, takes the largest maximum and the earliest
start (``thaw.adapters.telemetry.metrics_peers``). Children of ``process`` isolation
are processes of their own and are not counted here.
"""

from __future__ import annotations

import os
import resource
import sys
import time

__all__ = ["process_samples"]

_IMPORTED_AT = time.time()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _start_time() -> float:
    """When this process started (epoch seconds): boot time plus its start in clock ticks."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            # The command name may hold spaces and parentheses: fields follow the last ")".
            fields = stat.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted from field 3 here
        with open("/proc/stat", "rb") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_STARTED_AT = _start_time()


def process_samples() -> list[tuple[str, str, str, float]]:
    """(family, type, help, value) of each process metric, read now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    samples: list[tuple[str, str, str, float]] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            usage.ru_utime + usage.ru_stime,
        ),
    ]
    resident = _resident_bytes()
    if resident is not None:
        samples.append(
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", resident)
        )
    samples.append(
        (
            "process_max_resident_memory_bytes",
            "gauge",
            "Largest resident memory size this process has had, in bytes.",
            usage.ru_maxrss * _MAXRSS_UNIT,
        )
    )
    samples.append(
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            _STARTED_AT,
        )
    )
    return samples
