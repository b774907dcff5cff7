"""``thaw slo APP [--url URL] [--json]``: where each of APP's objectives stands on a running host.

It loads APP for the objectives it declares, scrapes the host's ``/metrics`` (default
``http://127.0.0.1:8000``) and reads the ``thaw_slo_*`` families the host computes
(``thaw.adapters.telemetry.slo``): one row per objective with its SLI over 1 h, 6 h
and 3 d, the error budget left, the burn rates and whether an alert fires. The host
does the window math, from its own history; this command only reads it, so it shows
the same numbers Prometheus scrapes.

Exit codes: 0 no alert fires; 3 a page or ticket alert fires (``--json`` says which);
1 it cannot tell: the host is unreachable, its answer is no Prometheus exposition, it
exports no objective of APP (it serves another app, or another revision of it), or
APP does not load; 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from thaw.adapters.telemetry.slo import ExpositionError, declared, parse_exposition
from thaw.declarations._slo import DAY, Availability, Objective
from thaw.host._slo_windows import SEVERITIES, WINDOWS

__all__ = ["EXIT_ALERT", "SloUnavailable", "add_slo_command", "read_standings"]

EXIT_OK, EXIT_FAILED, EXIT_ALERT = 0, 1, 3
DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = 5.0
MAX_BODY = 64 * 1024 * 1024
SHOWN_SLI = ("1h", "6h", "3d")


class SloUnavailable(Exception):
    """Where the objectives stand cannot be told (the message says why)."""


class Row(msgspec.Struct, kw_only=True):
    """One objective: as declared, and as the host exports it (``exported``)."""

    capability: str
    slo: str
    kind: str
    target: float
    within: float | None
    window_days: float
    exported: bool
    sli: dict[str, float | None]
    events: dict[str, float]
    burn_rate: dict[str, float]
    error_budget_remaining: float | None
    alerts: dict[str, bool]


def metrics_url(url: str) -> str:
    """``url``'s ``/metrics`` (a URL with a path of its own is taken as it is)."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = shown_url(url)[:200]
        raise SloUnavailable(f"--url {shown!r} is not an http(s) URL such as {DEFAULT_URL}")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def shown_url(url: str) -> str:
    """``url`` with the password of its user part (a proxy's credentials) masked."""
    scheme, found, rest = url.rpartition("://")
    userinfo, at, host = rest.partition("@")
    if not at or "/" in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{found}{user}:***@{host}"


def scrape(url: str, *, timeout: float = TIMEOUT) -> bytes:
    """The body of ``url``, or SloUnavailable saying why there is none. A user and
    password in the URL are sent as basic auth, and never shown."""
    parts = urlsplit(url)
    headers = {"Accept": "text/plain"}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(
            request, timeout=timeout
        ) as response:  # http(s) only: metrics_url
            body: bytes = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as error:
        detail = error.read(200).decode("utf-8", "replace").strip().splitlines()
        first = f": {detail[0][:200]}" if detail else ""
        raise SloUnavailable(f"{url} answered HTTP {error.code}{first}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SloUnavailable(
            f"cannot reach a host at {url}: {reason} (is `thaw serve APP` running there? "
            "pass its address with --url)"
        ) from None
    if len(body) > MAX_BODY:
        raise SloUnavailable(
            f"{url} answered more than {MAX_BODY} bytes: not a Thaw host's metrics"
        )
    return body


def read_standings(app: Any, body: bytes, *, url: str) -> list[Row]:
    """One row per objective ``app`` declares, filled from the exposition ``body``."""
    try:
        samples = parse_exposition(body, prefixes=("thaw_",))
    except ExpositionError as exc:
        raise SloUnavailable(f"{url} did not answer a Prometheus text exposition: {exc}") from None
    if not samples:
        raise SloUnavailable(
            f"{url} answered no Thaw metrics (no thaw_* sample): is it a Thaw host's /metrics?"
        )
    values: dict[tuple[str, str, str, str], float] = {}
    served: set[tuple[str, str]] = set()
    for sample in samples:
        if not sample.name.startswith("thaw_slo_"):
            continue
        labels = sample.labels
        key = (labels.get("capability", ""), labels.get("slo", ""))
        detail = labels.get("window", labels.get("severity", ""))
        values[(sample.name, *key, detail)] = sample.value
        if sample.name == "thaw_slo_objective":
            served.add(key)
    objectives = declared([app])
    wanted = {(capability, objective.key) for capability, objective in objectives}
    if not served:
        raise SloUnavailable(
            f"{url} exports no SLO metrics (thaw_slo_objective): the host there serves no app "
            f"with objectives, or a Thaw without them; is it serving {app.name}?"
        )
    if not served & wanted:
        others = ", ".join(f"{c}/{s}" for c, s in sorted(served)[:6])
        raise SloUnavailable(
            f"the host at {url} serves other objectives ({others}), none of app {app.name}'s: "
            f"is it serving {app.name}, and the same revision of it?"
        )
    return [_row(capability, objective, values, served) for capability, objective in objectives]


def _row(
    capability: str,
    objective: Objective,
    values: dict[tuple[str, str, str, str], float],
    served: set[tuple[str, str]],
) -> Row:
    key = objective.key

    def get(family: str, detail: str = "") -> float | None:
        return values.get((family, capability, key, detail))

    exported = (capability, key) in served
    return Row(
        capability=capability,
        slo=key,
        kind=objective.kind,
        target=objective.target,
        within=None if isinstance(objective, Availability) else objective.within,
        window_days=objective.window / DAY,
        exported=exported,
        sli={window: get("thaw_slo_sli", window) for window, _ in WINDOWS},
        events={window: get("thaw_slo_events", window) or 0.0 for window, _ in WINDOWS},
        burn_rate={window: get("thaw_slo_burn_rate", window) or 0.0 for window, _ in WINDOWS},
        error_budget_remaining=get("thaw_slo_error_budget_remaining"),
        alerts={s: (get("thaw_slo_alert", s) or 0.0) >= 1 for s in SEVERITIES},
    )


def _seconds(value: float) -> str:
    if value < 0.001:
        return f"{value * 1e6:g}us"
    if value < 1:
        return f"{value * 1e3:g}ms"
    return f"{value:g}s"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value * 100:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _objective(row: Row) -> str:
    if row.within is None:
        return f"availability {_percent(row.target)}"
    word = {"latency": "latency", "age": "age", "completion": "completion"}[row.kind]
    return f"{word} <= {_seconds(row.within)} for {_percent(row.target)}"


def _alert(row: Row) -> str:
    if not row.exported:
        return "not exported"
    firing = [severity for severity in SEVERITIES if row.alerts[severity]]
    return "+".join(firing).upper() if firing else "ok"


def table(rows: list[Row], *, app: str, url: str) -> str:
    header = ["CAPABILITY", "OBJECTIVE", *(f"SLI {w}" for w in SHOWN_SLI), "BUDGET LEFT"]
    header += ["BURN 5m/1h/6h/3d", "ALERT"]
    lines = [header]
    for row in rows:
        burns = "/".join(f"{row.burn_rate[w]:.3g}" for w in ("5m", "1h", "6h", "3d"))
        budget = row.error_budget_remaining
        lines.append(
            [
                row.capability,
                _objective(row),
                *(_percent(row.sli[w]) for w in SHOWN_SLI),
                "-" if budget is None else _percent(budget),
                burns if row.exported else "-",
                _alert(row),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"app {app}: {len(rows)} objectives at {url}"]
    out += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(out) + "\n"


def add_slo_command(commands: Any) -> None:
    """``thaw slo APP [--url URL] [--json]``."""
    parser = commands.add_parser(
        "slo",
        help="where each service level objective stands on a running host",
        description="Read a running host's /metrics and print, for each objective APP "
        "declares, its SLI over 1h/6h/3d, the error budget left, the burn rates and the "
        "alerts. Exit 0: no alert fires; 3: an alert fires; 1: cannot tell (unreachable "
        "host, not Prometheus, another app). See docs/slo.md.",
    )
    parser.add_argument("app", metavar="APP", help="app or snapshot (for its objectives)")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the host's address or /metrics URL ({DEFAULT_URL})"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    parser.set_defaults(handler=_cmd_slo)


def _cmd_slo(args: argparse.Namespace) -> int:
    from thaw.snapshots._revision import load_target

    app = load_target(args.app)
    if not declared([app]):
        print(
            f"app {app.name} declares no service level objectives "
            "(slo=... on @app.capability; see docs/slo.md)"
        )
        return EXIT_OK
    try:
        url = metrics_url(args.url)
        shown = shown_url(url)
        rows = read_standings(app, scrape(url), url=shown)
    except SloUnavailable as exc:
        print(f"thaw slo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    missing = [row for row in rows if not row.exported]
    for row in missing:
        print(
            f"thaw slo: {shown} does not export {row.capability}/{row.slo} (the host serves "
            "another revision of the app?)",
            file=sys.stderr,
        )
    firing = any(any(row.alerts.values()) for row in rows)
    if args.json:
        document = {"app": app.name, "url": shown, "firing": firing, "objectives": rows}
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(rows, app=app.name, url=shown))
    return EXIT_ALERT if firing else EXIT_OK
