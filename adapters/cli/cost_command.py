"""``thaw cost``: what a recorded run of a host would cost under price models.

A run is two scrapes of a host's ``/metrics``, or one scrape and the host's start:

- ``thaw cost --metrics URL --over 60s``: scrape, wait, scrape again, use the difference;
- ``thaw cost --metrics URL``: one scrape, from the host's start
  (``process_start_time_seconds``; one worker);
- ``thaw cost record URL FILE``: save a scrape with the time it was taken (a first line
  ``# thaw-scrape-time <unix seconds>``, a comment to any Prometheus parser), then
  ``thaw cost --from A.prom --to B.prom`` (or ``--to B.prom`` alone, from the host's
  start). A file saved with curl has no such line: its modification time is used, and
  ``--over SECONDS`` says the interval outright.

Prices come from ``--prices FILE`` (TOML; the shipped ``prices.toml`` by default).
The table goes to stdout; ``--json`` prints the whole report instead; ``--html FILE``
writes the self-contained HTML report with plots (the ``report`` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from thaw._errors import ConfigError

if TYPE_CHECKING:  # imported when the command runs: `thaw --help` stays quick
    from thaw.adapters.telemetry.cost_run import Scrape
    from thaw.adapters.telemetry.pricing import CostReport, Prices

__all__ = ["add_cost_command", "format_table", "parse_duration", "run_cost"]

MAX_OVER = 24 * 3600.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``60s``, ``2m``, ``1.5h``, ``90`` (seconds) as seconds; argparse's type."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a duration such as 60s, 2m, 90")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_OVER:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: give more than 0 and at most 24h")
    return seconds


def add_cost_command(commands: Any) -> None:
    cost = commands.add_parser(
        "cost",
        help="cost per million invocations and per month of a recorded run, under price models",
        description=(
            "Turn a recorded run of a host (two scrapes of its /metrics, or one and the "
            "host's start) into cost per million invocations and per month under price "
            "models, with the break-even load between serverless and container models."
        ),
    )
    source = cost.add_mutually_exclusive_group()
    source.add_argument("--metrics", metavar="URL", help="a running host's /metrics URL")
    source.add_argument("--from", dest="from_file", metavar="FILE", help="the first scrape")
    cost.add_argument("--to", dest="to_file", metavar="FILE", help="the last scrape")
    cost.add_argument(
        "--over",
        type=parse_duration,
        metavar="DURATION",
        help="with --metrics: scrape twice this far apart (60s, 2m); with files: the "
        "interval between them, whatever their times say",
    )
    cost.add_argument(
        "--prices", metavar="FILE", help="price models (TOML); default: the shipped example"
    )
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.add_argument("--html", metavar="FILE", help="write the HTML report with plots")
    cost.set_defaults(handler=_cmd_cost)
    actions = cost.add_subparsers(dest="cost_command", metavar="ACTION")
    record = actions.add_parser(
        "record",
        help="save a scrape of a host's /metrics with the time it was taken",
        description="Save a scrape of URL to FILE, first line # thaw-scrape-time <unix seconds>.",
    )
    record.add_argument("url", metavar="URL")
    record.add_argument("file", metavar="FILE")
    record.set_defaults(handler=_cmd_record)
    shipped = actions.add_parser(
        "prices",
        help="print the shipped example price file (a start for your own --prices FILE)",
    )
    shipped.set_defaults(handler=_cmd_prices)


def _cmd_prices(args: argparse.Namespace) -> int:
    sys.stdout.write(_shipped_prices().decode())
    return 0


def _shipped_prices() -> bytes:
    import importlib.resources

    return importlib.resources.files("thaw.adapters.telemetry").joinpath("prices.toml").read_bytes()


def default_prices() -> Prices:
    from thaw.adapters.telemetry.pricing import parse_prices

    return parse_prices(_shipped_prices(), source="the shipped prices.toml")


def _read_scrape(path: str) -> Scrape:
    from thaw.adapters.telemetry.cost_run import (
        MAX_SCRAPE,
        SCRAPE_TIME_COMMENT,
        ScrapeInvalid,
        parse_exposition,
    )

    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCRAPE + 1)
            modified = os.fstat(file.fileno()).st_mtime
    except OSError as exc:
        raise ScrapeInvalid(f"cannot read the scrape {path}: {exc.strerror}") from None
    if len(data) > MAX_SCRAPE:
        raise ScrapeInvalid(f"{path} is larger than {MAX_SCRAPE} bytes: not a scrape")
    recorded = parse_exposition(data, source=path)
    if recorded.time is None:
        print(
            f"thaw cost: {path} has no '{SCRAPE_TIME_COMMENT.strip()}' line: its "
            "modification time is taken as the time of the scrape",
            file=sys.stderr,
        )
        recorded = msgspec.structs.replace(recorded, time=modified)
    return recorded


def run_cost(
    *,
    metrics: str | None = None,
    from_file: str | None = None,
    to_file: str | None = None,
    over: float | None = None,
    prices: Prices | None = None,
) -> CostReport:
    """The report of a run given as thaw cost's options are (see the module's docstring)."""
    from thaw.adapters.telemetry.cost_run import measure, parse_exposition, scrape
    from thaw.adapters.telemetry.pricing import cost_report

    prices = prices if prices is not None else default_prices()
    if metrics is not None:
        if to_file is not None:
            raise ConfigError("thaw cost: --metrics scrapes the host itself; drop --to")
        body, taken = scrape(metrics)
        first = msgspec.structs.replace(parse_exposition(body, source=metrics), time=taken)
        if over is None:
            return cost_report(measure(None, first), prices)
        print(f"thaw cost: scraping {metrics} again in {over:g} s", file=sys.stderr)
        time.sleep(over)
        body, taken = scrape(metrics)
        last = msgspec.structs.replace(parse_exposition(body, source=metrics), time=taken)
        return cost_report(measure(first, last), prices)
    if to_file is None:
        raise ConfigError(
            "thaw cost: give a run: --metrics URL [--over 60s], or --from A.prom --to B.prom "
            "(files from `thaw cost record URL FILE`), or --to B.prom (from the host's start)"
        )
    start = _read_scrape(from_file) if from_file is not None else None
    end = _read_scrape(to_file)
    return cost_report(measure(start, end, seconds=over), prices)


def _cmd_cost(args: argparse.Namespace) -> int:
    from thaw.adapters.telemetry.pricing import load_prices

    prices = load_prices(args.prices) if args.prices else None
    if args.html:
        from thaw.adapters.telemetry.cost_report import require_plotting

        require_plotting()  # before a --over wait, not after it
    report = run_cost(
        metrics=args.metrics,
        from_file=args.from_file,
        to_file=args.to_file,
        over=args.over,
        prices=prices,
    )
    if args.html:
        from thaw.adapters.telemetry.cost_report import write_report

        write_report(report, args.html)
        print(f"thaw cost: wrote {args.html}", file=sys.stderr)
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        sys.stdout.write(format_table(report))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from thaw.adapters.telemetry.cost_run import SCRAPE_TIME_COMMENT, parse_exposition, scrape

    body, taken = scrape(args.url)
    parse_exposition(body, source=args.url)  # refuse to save what thaw cost cannot read
    try:
        with open(args.file, "wb") as file:
            file.write(f"{SCRAPE_TIME_COMMENT}{taken:.6f}\n".encode() + body)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"thaw cost: saved the scrape of {time.ctime(taken)} to {args.file}", file=sys.stderr)
    return 0


# -- the table ---------------------------------------------------------------------


def _money(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4f}" if abs(value) >= 0.0001 else f"{value:.2e}"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value >= 1 else f"{value:.3g}"


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(report: CostReport) -> str:
    from thaw.adapters.telemetry.pricing import billing_detail

    run = report.run
    lines = [
        f"run: {run.seconds:,.1f} s, {run.invocations:,} invocations, {_rate(run.per_second)}/s",
        "",
    ]
    caps = [
        [
            c.name,
            f"{c.invocations:,}",
            _rate(c.per_second),
            f"{c.wall_seconds * 1000 / c.invocations:.3f}",
            f"{c.cpu_seconds * 1000 / c.invocations:.3f}",
            f"{c.bytes_in / c.invocations:,.0f}",
            f"{c.bytes_out / c.invocations:,.0f}",
            f"{c.retried:,}",
            f"{c.dead_letters:,}",
            f"{100 * c.retry_tax_invocations / c.invocations:.1f}",
            f"{c.cold_starts:,}",
        ]
        for c in run.capabilities
    ]
    header = ["capability", "invocations", "/s", "wall ms", "cpu ms", "in B", "out B"]
    header += ["retried", "dead", "tax %", "cold"]
    lines += _rows(header, caps)
    host = run.host
    parts = []
    if host.cpu_seconds is not None:
        parts.append(
            f"process CPU {host.cpu_seconds:.2f} s ({host.cpu_seconds / run.seconds:.2f} cores)"
        )
    if host.max_resident_bytes:
        parts.append(f"max RSS {host.max_resident_bytes / 2**20:.0f} MiB")
    if parts:
        lines.append("host: " + ", ".join(parts))
    lines.append("(wall, cpu, in and out per invocation)")
    lines.append("")
    currency = report.currency
    models = []
    for m in report.models:
        detail = billing_detail(report, m.name)
        models.append(
            [
                m.name,
                m.kind,
                _money(m.monthly),
                _money(m.per_million),
                _money(m.compute),
                _money(m.requests),
                _money(m.fixed),
                _money(m.retry_tax),
                detail,
            ]
        )
    header = ["model", "kind", f"{currency}/month", "per 1M inv", "compute", "requests"]
    header += ["fixed", "retry tax", "at the measured rate"]
    lines += _rows(header, models)
    lines.append("")
    for pair in report.break_even:
        if pair.rates:
            where = ", ".join(f"{_rate(r)} req/s" for r in pair.rates)
            lines.append(f"break-even {pair.serverless} = {pair.container} at {where}")
        else:
            lines.append(f"break-even {pair.serverless} / {pair.container}: none up to 1e6 req/s")
        lines.append(
            f"  at the measured {_rate(run.per_second)} req/s {pair.cheaper_at_measured} is cheaper"
        )
    lines += ["", "notes:"] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
