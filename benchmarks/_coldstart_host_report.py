"""The tables and target checks of ``coldstart_host.py`` (its numbers, formatted).

Every function takes the series and memory records ``coldstart_host.py`` builds and
returns text; nothing here measures.
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import table

WAIT_ZERO_LIMIT = 5.0  # seconds a scale to zero may take before a trial is given up


def series_table(series: list[dict[str, Any]]) -> str:
    rows = []
    for one in series:
        s = one["summary"]
        rows.append(
            [
                one["target"],
                one["trigger"],
                int(s["n"]),
                s["cold_p50_ms"],
                s["cold_p99_ms"],
                s["warm_p50_ms"],
                s["warm_p99_ms"],
                s["cold_minus_warm_p50_ms"],
                s["cold_minus_warm_p99_ms"],
                _counted(one),
                one["host_thaw_mean_ms"],
            ]
        )
    headers = ["target", "trigger", "n", "cold p50 ms", "cold p99", "warm p50", "warm p99"]
    headers += ["cold-warm p50", "cold-warm p99", "host cold starts", "host thaw mean"]
    return table(headers, [[_ms(c) for c in row] for row in rows])


def _counted(series: dict[str, Any]) -> str:
    counted = series["cold_starts_counted_by_host"]
    return "-" if counted != counted else f"{counted:.0f}/{series['pairs']}"


def _ms(value: Any) -> Any:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}"
    return value


def floor_table(series: list[dict[str, Any]]) -> str:
    rows = [
        [
            f"{one['target']} {one['trigger']}",
            one["summary"]["cold_minus_warm_p50_ms"],
            one["summary"]["cold_minus_warm_p99_ms"],
            one["summary"]["fork_floor_p50_ms"],
            one["summary"]["fork_floor_p99_ms"],
            f"{one['summary']['x_fork_floor_p50']:.2f}x",
            f"{one['summary']['x_fork_floor_p99']:.2f}x",
            one["host_thaw_mean_ms"],
        ]
        for one in series
        if "fork_floor_p50_ms" in one["summary"]
    ]
    headers = ["process isolation", "cold-warm p50 ms", "p99", "fork floor p50 ms", "p99"]
    headers += ["x floor p50", "x floor p99", "host thaw mean ms"]
    return table(headers, [[_ms(c) for c in r] for r in rows])


def memory_table(memory: list[dict[str, Any]]) -> str:
    rows = [
        [
            m["app"],
            m["count"],
            m["rss_kib"]["imported"] / 1024,
            m["per_revision_kib"],
            m["per_instance_kib"],
            m["per_instance_with_first_call_kib"],
            m["rss_kib"]["scaled_to_zero"] / 1024,
        ]
        for m in memory
    ]
    headers = ["app", "revisions", "RSS before MiB", "KiB/revision", "KiB/instance"]
    return table([*headers, "KiB/instance+call", "RSS all at zero MiB"], rows)


def check_targets(series: list[dict[str, Any]], memory: list[dict[str, Any]]) -> list[str]:
    lines = []
    for one in series:
        s = one["summary"]
        if one["isolation"] == "shared":
            met = s["cold_minus_warm_p99_ms"] <= 1.0
            lines.append(
                f"{one['target']} {one['trigger']} shared: cold-warm p99 "
                f"{s['cold_minus_warm_p99_ms']:.3f} ms [<= 1 ms: {'met' if met else 'MISSED'}]"
            )
        if "x_fork_floor_p50" in s:
            met = s["x_fork_floor_p50"] <= 1.5
            lines.append(
                f"{one['target']} {one['trigger']} process: cold-warm p50 "
                f"{s['cold_minus_warm_p50_ms']:.3f} ms = {s['x_fork_floor_p50']:.2f}x the fork "
                f"floor {s['fork_floor_p50_ms']:.3f} ms [<= 1.5x: {'met' if met else 'MISSED'}]"
            )
        if one["scale_to_zero_not_seen"]:
            lines.append(
                f"{one['target']} {one['trigger']}: {one['scale_to_zero_not_seen']} trials "
                f"skipped: no scale to zero within {WAIT_ZERO_LIMIT:g} s"
            )
    for m in memory:
        if m["app"].startswith("gen"):
            met = m["per_instance_kib"] <= 64
            lines.append(
                f"{m['app']}: a shared instance adds {m['per_instance_kib']:.2f} KiB "
                f"[<= 64 KiB: {'met' if met else 'MISSED'}]"
            )
        else:
            total = m["rss_kib"]["scaled_to_zero"] / 1024
            verdict = "met" if total < 200 else "MISSED"
            if m["count"] < 100:
                verdict = f"not checked: {m['count']} revisions only"
            lines.append(
                f"{m['app']}: {m['count']} revisions, every instance at zero: {total:.1f} MiB RSS "
                f"[< 200 MiB for 100: {verdict}]"
            )
    return lines
