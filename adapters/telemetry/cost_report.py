"""``thaw cost --html FILE``: the cost report as one self-contained HTML file with plots.

Three figures, drawn with matplotlib (the ``report`` extra) as inline SVG, so the file
opens anywhere with no network and no script:

- monthly cost against load (requests/s, log scales) for every model, the break-even
  loads marked, the measured load drawn across;
- per model, each capability's monthly cost stacked as compute / requests / retry tax
  / fixed fee;
- per capability, the latency histogram of the run (invocations per bucket).

Then the tables of the text report and the notes on what is estimated. Everything from
the scrape (capability names, model names, descriptions) is escaped: names are data.
Each plotted series is an SVG group with a stable id (``series-<model>``,
``break-even-<n>``, ``measured-load``, bars ``bars-<model>-<part>-<n>`` and
``latency-<capability>-<n>``) that the browser test looks for.
"""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any

from thaw._errors import ConfigError
from thaw.adapters.telemetry.cost_run import bucket_bound
from thaw.adapters.telemetry.pricing import CostReport, billing_detail, monthly_cost

__all__ = ["render_report", "require_plotting", "write_report"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
_PARTS = (
    ("compute", "#4c72b0"),
    ("requests", "#55a868"),
    ("retry_tax", "#c44e52"),
    ("fixed", "#8172b2"),
)


def require_plotting() -> Any:
    """matplotlib with its SVG backend, or a ConfigError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("svg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "thaw cost --html draws its plots with matplotlib: pip install 'thaw-runtime[report]'"
        ) from None
    return plt


def _gid(prefix: str, name: str) -> str:
    return prefix + "-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # no XML prolog or DOCTYPE inside HTML


def _load_figure(plt: Any, report: CostReport) -> str:
    run = report.run
    figure, axes = plt.subplots(figsize=(8.5, 4.8))
    measured = run.per_second
    low = max(1e-3, min(measured / 1000, 0.01))
    high = max(measured * 1000, 100.0)
    count = 240
    rates = [low * (high / low) ** (i / count) for i in range(count + 1)]
    models = report.prices.models
    for index, cost in enumerate(report.models):
        model = models.get(cost.name)
        if model is None:
            continue
        values = [
            max(monthly_cost(model, run, r, month_hours=report.month_hours), 1e-6) for r in rates
        ]
        (line,) = axes.plot(
            rates,
            values,
            label=f"{cost.name} ({cost.kind})",
            color=_COLOURS[index % len(_COLOURS)],
            linewidth=2,
            drawstyle="steps-post" if cost.kind == "container" else "default",
        )
        line.set_gid(_gid("series", cost.name))
    marks = 0
    for pair in report.break_even:
        model = models.get(pair.serverless)
        for rate in pair.rates:
            if model is None or not low <= rate <= high:
                continue
            y = max(monthly_cost(model, run, rate, month_hours=report.month_hours), 1e-6)
            (point,) = axes.plot([rate], [y], "o", color="black", markersize=7, zorder=5)
            point.set_gid(f"break-even-{marks}")
            axes.annotate(
                f"{pair.serverless} = {pair.container}\n{rate:.3g} req/s",
                (rate, y),
                textcoords="offset points",
                xytext=(8, -22 - 24 * marks),
                fontsize=8,
            )
            marks += 1
    line = axes.axvline(measured, color="grey", linestyle="--", linewidth=1.2)
    line.set_gid("measured-load")
    axes.annotate(
        f"measured {measured:.3g} req/s",
        (measured, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="dimgrey",
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for axis in (axes.xaxis, axes.yaxis):  # plain numbers: no TeX (parse_math is off)
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("load (requests per second)")
    axes.set_ylabel(f"{report.currency} per month")
    axes.set_title("Monthly cost against load, with the measured mix of capabilities")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="upper left")
    try:
        return _svg(figure)
    finally:
        plt.close(figure)


def _split_figure(plt: Any, report: CostReport) -> str:
    models = report.models
    figure, grid = plt.subplots(
        len(models), 1, figsize=(8.5, 0.9 + 0.55 * len(report.run.capabilities) * len(models))
    )
    axes_list = list(grid) if len(models) > 1 else [grid]
    for axes, cost in zip(axes_list, models, strict=True):
        names = [c.name for c in cost.capabilities]
        left = [0.0] * len(names)
        for part, colour in _PARTS:
            widths = [getattr(c, part) for c in cost.capabilities]
            if not any(widths):
                continue
            bars = axes.barh(names, widths, left=left, color=colour, label=part.replace("_", " "))
            for index, patch in enumerate(bars):
                patch.set_gid(f"{_gid('bars', cost.name)}-{part}-{index}")
            left = [a + b for a, b in zip(left, widths, strict=True)]
        axes.set_title(
            f"{cost.name}: {cost.monthly:,.2f} {report.currency}/month at the measured rate",
            fontsize=9,
        )
        axes.invert_yaxis()
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # off the bars
        axes.set_xlabel(f"{report.currency} per month", fontsize=8)
        axes.tick_params(labelsize=8)
    figure.tight_layout()
    try:
        return _svg(figure)
    finally:
        plt.close(figure)


def _latency_figure(plt: Any, report: CostReport) -> str:
    caps = report.run.capabilities
    figure, grid = plt.subplots(len(caps), 1, figsize=(8.5, 2.3 * len(caps)), squeeze=False)
    for axes, capability in zip((row[0] for row in grid), caps, strict=True):
        buckets = [b for b in capability.latency]
        labels = [_duration(bucket_bound(b.le)) for b in buckets]
        counts = [b.count for b in buckets]
        bars = axes.bar(range(len(counts)), counts, color="#4c72b0")
        for index, patch in enumerate(bars):
            patch.set_gid(f"{_gid('latency', capability.name)}-{index}")
        axes.set_xticks(range(len(counts)), labels, rotation=60, fontsize=7)
        mean = capability.wall_seconds / capability.invocations * 1000
        axes.set_title(
            f"{capability.name}: {capability.invocations:,} invocations, mean {mean:.3g} ms",
            fontsize=9,
        )
        axes.set_ylabel("invocations", fontsize=8)
    if caps:
        grid[-1][0].set_xlabel("duration, at most (bucket upper bound)", fontsize=8)
    figure.tight_layout()
    try:
        return _svg(figure)
    finally:
        plt.close(figure)


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "+Inf"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:g} ms"
    return f"{seconds:g} s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CAPABILITY_HEADER = [
    *("capability", "invocations", "per s", "wall ms/inv", "CPU ms/inv", "bytes in/inv"),
    *("bytes out/inv", "retried", "dead letters", "retry tax", "cold starts"),
]
_MODEL_HEADER = [
    *("per 1M invocations", "compute", "requests", "retry tax", "fixed"),
    *("at the measured rate", "source"),
]


def _tables(report: CostReport) -> tuple[str, str, str]:
    run = report.run
    caps = _table(
        _CAPABILITY_HEADER,
        [
            [
                c.name,
                f"{c.invocations:,}",
                f"{c.per_second:.3g}",
                f"{c.wall_seconds * 1000 / c.invocations:.3f}",
                f"{c.cpu_seconds * 1000 / c.invocations:.3f}",
                f"{c.bytes_in / c.invocations:,.0f}",
                f"{c.bytes_out / c.invocations:,.0f}",
                f"{c.retried:,}",
                f"{c.dead_letters:,}",
                f"{100 * c.retry_tax_invocations / c.invocations:.1f} %",
                f"{c.cold_starts:,}",
            ]
            for c in run.capabilities
        ],
    )
    currency = report.currency
    models = _table(
        ["model", "kind", f"{currency}/month", *_MODEL_HEADER],
        [
            [
                m.name,
                m.kind,
                f"{m.monthly:,.4g}",
                f"{m.per_million:,.4g}",
                f"{m.compute:,.4g}",
                f"{m.requests:,.4g}",
                f"{m.retry_tax:,.4g}",
                f"{m.fixed:,.4g}",
                billing_detail(report, m.name),
                m.source or m.description,
            ]
            for m in report.models
        ],
    )
    pairs = _table(
        ["serverless", "container", "break-even (req/s)", "cheaper at the measured load"],
        [
            [
                p.serverless,
                p.container,
                ", ".join(f"{r:.3g}" for r in p.rates) or "none up to 1e6",
                p.cheaper_at_measured,
            ]
            for p in report.break_even
        ],
    )
    return caps, models, pairs


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 62em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td:last-child { max-width: 18em; text-align: left; overflow-wrap: anywhere; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
.summary { font-size: 1.05em; background: #f5f7fa; padding: 0.8em 1em; }
"""


def render_report(report: CostReport) -> str:
    """The report as one HTML document (plots inline as SVG, no external URL)."""
    plt = require_plotting()
    import matplotlib

    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays text (searchable), no embedded glyph paths
            "svg.hashsalt": "thaw-cost",  # stable ids: the same report is the same file
            "text.parse_math": False,  # a "$" in a capability name is not TeX
        }
    ):
        load = _load_figure(plt, report)
        split = _split_figure(plt, report)
        latency = _latency_figure(plt, report)
    caps, models, pairs = _tables(report)
    run = report.run
    cheapest = min(report.models, key=lambda m: m.monthly)
    summary = (
        f"{run.invocations:,} invocations in {run.seconds:,.1f} s ({run.per_second:.3g}/s). "
        f"At that rate, {cheapest.name} is the cheapest model: "
        f"{cheapest.monthly:,.2f} {report.currency} a month, "
        f"{cheapest.per_million:,.3g} {report.currency} per million invocations."
    )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in report.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Thaw cost report</title><style>{_STYLE}</style></head>
<body>
<h1>Thaw cost report</h1>
<p class="summary">{html.escape(summary)}</p>
<h2>Cost against load</h2>
<figure id="cost-vs-load">{load}</figure>
{pairs}
<h2>Cost per capability</h2>
<figure id="cost-split">{split}</figure>
{models}
<h2>Latency per capability</h2>
<figure id="latency">{latency}</figure>
{caps}
<h2>What is estimated</h2>
<ul>{notes}</ul>
<p>Prices are the price file's examples, not quotes.</p>
</body></html>
"""


def write_report(report: CostReport, path: str) -> None:
    text = render_report(report)
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {path}: {exc.strerror}") from None
