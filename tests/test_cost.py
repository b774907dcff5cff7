"""thaw cost: the arithmetic against hand-worked figures, hostile price files and
scrapes, and the command end to end on recorded files and on a live /metrics."""

from __future__ import annotations

import http.server
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import thaw
from thaw._errors import ConfigError
from thaw.adapters.cli.command import main
from thaw.adapters.cli.cost_command import default_prices, parse_duration
from thaw.adapters.telemetry.cost_run import (
    SCRAPE_TIME_COMMENT,
    LatencyBucket,
    RunInvalid,
    ScrapeInvalid,
    measure,
    parse_exposition,
)
from thaw.adapters.telemetry.pricing import (
    Container,
    PricesInvalid,
    Serverless,
    billed_seconds,
    break_even,
    container_instances,
    cost_report,
    monthly_cost,
    parse_prices,
)

BOUNDS = ("0.0001", "0.001", "0.002", "0.005", "0.01", "0.1", "1.0", "+Inf")


def exposition(
    capabilities: Mapping[str, Mapping[str, object]],
    *,
    taken: float | None = None,
    process_cpu: float | None = None,
    max_rss: float | None = None,
    start_time: float | None = 1000.0,
) -> str:
    """An exposition in the shape a Thaw host's /metrics has (the families thaw cost reads).

    Per capability: ok, retry, reject counts (trigger http unless given), ``buckets``
    (per bucket counts on BOUNDS), ``sum``, ``cpu``, ``bytes_in``, ``bytes_out``,
    ``nak``, ``dead``, ``cold``.
    """
    lines = [] if taken is None else [f"{SCRAPE_TIME_COMMENT}{taken}"]
    lines += ["# HELP thaw_invocations_total Invocations.", "# TYPE thaw_invocations_total counter"]
    for name, c in capabilities.items():
        trigger = c.get("trigger", "http")
        for outcome, code in (("ok", ""), ("retry", "retry_later"), ("reject", "card_declined")):
            labels = f'capability="{name}",trigger="{trigger}",outcome="{outcome}",code="{code}"'
            lines.append(f"thaw_invocations_total{{{labels}}} {c.get(outcome, 0)}")
    lines.append("# TYPE thaw_invocation_duration_seconds histogram")
    for name, c in capabilities.items():
        trigger = c.get("trigger", "http")
        counts = list(c.get("buckets", [0] * len(BOUNDS)))  # type: ignore[call-overload]
        running = 0
        for bound, count in zip(BOUNDS, counts, strict=True):
            running += count
            labels = f'capability="{name}",trigger="{trigger}",le="{bound}"'
            lines.append(f"thaw_invocation_duration_seconds_bucket{{{labels}}} {running}")
        labels = f'capability="{name}",trigger="{trigger}"'
        lines.append(f"thaw_invocation_duration_seconds_sum{{{labels}}} {c.get('sum', 0.0)}")
        lines.append(f"thaw_invocation_duration_seconds_count{{{labels}}} {running}")
    for family, key in (
        ("thaw_invocation_cpu_seconds_total", "cpu"),
        ("thaw_invocation_bytes_in_total", "bytes_in"),
        ("thaw_invocation_bytes_out_total", "bytes_out"),
        ("thaw_cold_starts_total", "cold"),
    ):
        lines.append(f"# TYPE {family} counter")
        for name, c in capabilities.items():
            lines.append(f'{family}{{capability="{name}"}} {c.get(key, 0)}')
    lines.append("# TYPE thaw_stream_deliveries_total counter")
    for name, c in capabilities.items():
        for action, key in (("ack", "ack"), ("nak", "nak"), ("dead_letter", "dead")):
            labels = f'capability="{name}",consumer="",action="{action}"'
            lines.append(f"thaw_stream_deliveries_total{{{labels}}} {c.get(key, 0)}")
    if process_cpu is not None:
        lines += ["# TYPE process_cpu_seconds_total counter"]
        lines += [f"process_cpu_seconds_total {process_cpu}"]
    if max_rss is not None:
        lines += ["# TYPE process_max_resident_memory_bytes gauge"]
        lines += [f"process_max_resident_memory_bytes {max_rss}"]
    if start_time is not None:
        lines += ["# TYPE process_start_time_seconds gauge"]
        lines += [f"process_start_time_seconds {start_time}"]
    return "\n".join(lines) + "\n"


LAMBDA = Serverless(per_million_requests=0.20, per_gb_second=0.0000166667, memory_mb=512)
WORKERS = Serverless(
    per_month=5.0,
    included_requests=10_000_000,
    per_million_requests=0.30,
    included_cpu_ms=30_000_000,
    per_million_cpu_ms=0.02,
)
FARGATE = Container(per_vcpu_hour=0.04, per_gb_hour=0.004, vcpus=1, memory_gb=2, utilisation=0.5)


def one_run(**capability: object) -> tuple[str, str]:
    """Two scrapes 100 s apart of one capability ``pay`` (the second has ``capability``)."""
    start = exposition({"pay": {}}, taken=2000.0, process_cpu=5.0, max_rss=100 * 2**20)
    end = exposition(
        {"pay": capability},
        taken=2100.0,
        process_cpu=5.0 + float(capability.get("host_cpu", 0.0)),  # type: ignore[arg-type]
        max_rss=100 * 2**20,
    )
    return start, end


# -- arithmetic, worked by hand ------------------------------------------------------


def test_workers_standard_matches_the_vendors_worked_example() -> None:
    # Cloudflare's pricing page: 15 million requests a month at 7 ms CPU each cost
    # 5.00 + 1.50 (requests over 10M) + 1.50 (CPU ms over 30M) = 8.00 USD.
    month = 730 * 3600
    rate = 15_000_000 / month
    invocations = round(rate * 100)  # what 100 s at that rate hold
    cpu = 0.007 * invocations
    start, end = one_run(ok=invocations, cpu=cpu, host_cpu=cpu)
    run = measure(parse_exposition(start), parse_exposition(end))
    assert run.per_second == pytest.approx(rate, rel=1e-3)
    cost = monthly_cost(WORKERS, run, 15_000_000 / month)
    assert cost == pytest.approx(8.00, abs=0.01)


def test_lambda_cost_per_million_by_hand() -> None:
    # 1000 invocations in the (2, 5] ms bucket, 2.5 s in all, over 100 s. Billed per 1 ms
    # rounded up: a duration uniform in (2, 5] ms rounds up by 0.5 ms on average, so
    # 2.5 s + 1000 x 0.5 ms = 3.0 s of 0.5 GB at 0.0000166667 USD/GB-s; plus 0.20 USD
    # per million requests: 0.20 + 1e6 x 0.003 x 0.5 x 0.0000166667 = 0.225 USD per million.
    start, end = one_run(ok=1000, sum=2.5, buckets=[0, 0, 0, 1000, 0, 0, 0, 0])
    run = measure(parse_exposition(start), parse_exposition(end))
    assert run.seconds == 100.0 and run.invocations == 1000
    billed = billed_seconds(run.capabilities[0].latency, 2.5, 0.001)
    assert billed == pytest.approx(3.0, rel=1e-9)
    report = cost_report(run, parse_prices(_toml({"l": LAMBDA})))
    lam = report.models[0]
    assert lam.per_million == pytest.approx(0.225, rel=1e-6)
    month = 730 * 3600  # 10 invocations/s for a month
    assert lam.monthly == pytest.approx(0.225 * 10 * month / 1e6, rel=1e-6)
    assert lam.billed_ms_per_invocation == pytest.approx(3.0)
    assert lam.memory_mb == 512


def test_billed_seconds_never_below_one_granule_and_adds_half_a_granule_when_long() -> None:
    short = [LatencyBucket("0.0001", 100), LatencyBucket("+Inf", 0)]
    assert billed_seconds(short, 0.001, 0.001) == pytest.approx(0.1)  # 100 x 1 ms
    # 10 invocations above every bound (sum 20 s): +g/2 each.
    long = [LatencyBucket("1.0", 0), LatencyBucket("+Inf", 10)]
    assert billed_seconds(long, 20.0, 0.001) == pytest.approx(20.005)
    # 100 ms granularity, durations in (10, 100] ms: every one bills 100 ms.
    mid = [LatencyBucket("0.01", 0), LatencyBucket("0.1", 7)]
    assert billed_seconds(mid, 0.3, 0.1) == pytest.approx(0.7)


def test_container_instances_and_break_even_by_hand() -> None:
    # 2 ms of process CPU per invocation, 1 vCPU at 50 %: 250 invocations/s per instance;
    # an instance costs (0.04 + 2 x 0.004) x 730 = 35.04 USD a month.
    assert container_instances(FARGATE, 250.0, 0.002) == 1
    assert container_instances(FARGATE, 250.1, 0.002) == 2
    assert container_instances(FARGATE, 0.0, 0.002) == 1
    start, end = one_run(ok=1000, sum=2.5, buckets=[0, 0, 0, 1000, 0, 0, 0, 0], host_cpu=2.0)
    run = measure(parse_exposition(start), parse_exposition(end))
    assert monthly_cost(FARGATE, run, 10.0) == pytest.approx(35.04)
    assert monthly_cost(FARGATE, run, 300.0) == pytest.approx(2 * 35.04)
    # Lambda costs 0.225e-6 USD per invocation (above): 0.225e-6 x 2,628,000 s = 0.5913
    # USD a month per req/s; it reaches one instance's 35.04 at 59.26 req/s, and with a
    # slope above the container's (35.04 per 250 req/s) it never comes back below.
    assert break_even(LAMBDA, FARGATE, run) == [pytest.approx(35.04 / 0.5913, rel=1e-6)]
    assert monthly_cost(LAMBDA, run, 59.0) < monthly_cost(FARGATE, run, 59.0)
    assert monthly_cost(LAMBDA, run, 60.0) > monthly_cost(FARGATE, run, 60.0)


def test_retry_tax_and_the_split_add_up() -> None:
    # 1000 attempts: 800 ok, 200 retried over a stream (naks 150, dead letters 50).
    start, end = one_run(
        ok=800,
        retry=200,
        trigger="stream",
        nak=150,
        dead=50,
        sum=2.5,
        buckets=[0, 0, 0, 1000, 0, 0, 0, 0],
        cpu=1.0,
    )
    run = measure(parse_exposition(start), parse_exposition(end))
    (pay,) = run.capabilities
    assert (pay.invocations, pay.retried, pay.naks, pay.dead_letters) == (1000, 200, 150, 50)
    assert pay.retry_tax_invocations == 200  # naks + dead letters, not counted twice
    report = cost_report(run, parse_prices(_toml({"l": LAMBDA, "c": FARGATE})))
    lam = report.models[0]
    (share,) = lam.capabilities
    assert share.retry_tax == pytest.approx(0.2 * lam.monthly)
    assert share.compute + share.requests + share.retry_tax + share.fixed == pytest.approx(
        lam.monthly
    )
    assert share.total == pytest.approx(lam.monthly)


def test_two_capabilities_split_by_what_each_used() -> None:
    start = exposition({"a": {}, "b": {}}, taken=0.5, process_cpu=0.0)
    end = exposition(
        {
            "a": {"ok": 300, "sum": 3.0, "buckets": [0, 0, 0, 0, 300, 0, 0, 0], "cpu": 0.3},
            "b": {"ok": 100, "sum": 0.01, "buckets": [100, 0, 0, 0, 0, 0, 0, 0], "cpu": 0.1},
        },
        taken=10.5,
        process_cpu=0.4,
    )
    run = measure(parse_exposition(start), parse_exposition(end))
    assert [c.name for c in run.capabilities] == ["a", "b"]
    report = cost_report(run, parse_prices(_toml({"l": LAMBDA, "c": FARGATE})))
    lam, box = report.models
    a, b = lam.capabilities
    assert a.requests == pytest.approx(3 * b.requests)  # 300 vs 100 requests
    assert sum(c.total for c in lam.capabilities) == pytest.approx(lam.monthly)
    assert box.capabilities[0].compute == pytest.approx(3 * box.capabilities[1].compute)
    assert sum(c.total for c in box.capabilities) == pytest.approx(box.monthly)


def test_invocation_cpu_is_capped_at_the_process_cpu() -> None:
    # Per-invocation CPU on one event loop can count what concurrent invocations ran:
    # 40 s of "invocation CPU" in a process that used 10 s. Workers-like CPU pricing then
    # uses 10 s (10,000 ms per 1000 invocations -> 10 ms each) and says so.
    start, end = one_run(ok=1000, cpu=40.0, host_cpu=10.0)
    run = measure(parse_exposition(start), parse_exposition(end))
    cpu_only = Serverless(per_million_cpu_ms=1.0)
    month = 730 * 3600
    assert monthly_cost(cpu_only, run, 1.0) == pytest.approx(month * 10.0 / 1e6)
    report = cost_report(run, parse_prices(_toml({"w": cpu_only})))
    assert any("more than the process's" in note for note in report.notes)


def test_one_scrape_runs_from_the_host_start() -> None:
    end = exposition({"pay": {"ok": 50}}, taken=1100.0, start_time=1000.0)
    run = measure(None, parse_exposition(end))
    assert run.seconds == 100.0 and run.per_second == 0.5


def test_measured_memory_is_rounded_up_and_at_least_the_minimum() -> None:
    prices = parse_prices(
        '[models.l]\nkind = "serverless"\nper_gb_second = 1.0\nmemory_step_mb = 64\n'
    )
    for rss_mb, billed_mb in ((100, 128), (129.5, 192), (300, 320)):
        start = exposition({"pay": {}}, taken=0.0, max_rss=0)
        end = exposition({"pay": {"ok": 1}}, taken=1.0, max_rss=rss_mb * 2**20)
        report = cost_report(measure(parse_exposition(start), parse_exposition(end)), prices)
        assert report.models[0].memory_mb == billed_mb


# -- bad runs ------------------------------------------------------------------------


def test_a_counter_that_went_backwards_is_a_restart() -> None:
    start = exposition({"pay": {"ok": 500}}, taken=1.0)
    end = exposition({"pay": {"ok": 20}}, taken=2.0)
    with pytest.raises(RunInvalid, match=r"went from 500 to 20: the host restarted"):
        measure(parse_exposition(start), parse_exposition(end))


def test_a_changed_start_time_is_a_restart() -> None:
    start = exposition({"pay": {"ok": 5}}, taken=1.0, start_time=1.0)
    end = exposition({"pay": {"ok": 20}}, taken=2.0, start_time=1.5)
    with pytest.raises(RunInvalid, match="restarted"):
        measure(parse_exposition(start), parse_exposition(end))


def test_zero_invocations_and_zero_time_are_refused() -> None:
    same = parse_exposition(exposition({"pay": {"ok": 5}}, taken=1.0))
    later = parse_exposition(exposition({"pay": {"ok": 5}}, taken=9.0))
    with pytest.raises(RunInvalid, match="no invocations in the run"):
        measure(same, later)
    with pytest.raises(RunInvalid, match="must be taken after the first"):
        measure(later, same)
    untimed = parse_exposition(exposition({"pay": {"ok": 5}}))
    with pytest.raises(RunInvalid, match="do not say when"):
        measure(untimed, untimed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html><body>login</body></html>", "not Prometheus text"),
        ('thaw_invocations_total{capability="a" 1\n', "not Prometheus text"),
        ("# TYPE x wat\nx 1\n", "not Prometheus text"),
        ("process_cpu_seconds_total 3\n", "no thaw_invocations_total"),
        (b"\xff\xfe", "not UTF-8"),
        (f"{SCRAPE_TIME_COMMENT}yesterday\nthaw_invocations_total 1\n", "not a number"),
        (f"{SCRAPE_TIME_COMMENT}-5\nthaw_invocations_total 1\n", "not a time"),
    ],
)
def test_a_scrape_that_is_not_a_hosts_metrics(text: str | bytes, message: str) -> None:
    with pytest.raises(ScrapeInvalid, match=message):
        parse_exposition(text, source="x.prom")


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_hostile_expositions_parse_or_raise_scrape_invalid(text: str | bytes) -> None:
    try:
        scrape = parse_exposition(text)
    except ScrapeInvalid:
        return  # the only error it may raise
    try:
        measure(None, scrape, seconds=1.0)
    except RunInvalid:
        pass


_LINE = st.sampled_from(
    [
        'thaw_invocations_total{capability="p",outcome="ok"} ',
        'thaw_invocation_duration_seconds_bucket{capability="p",le="0.001"} ',
        'thaw_invocation_duration_seconds_bucket{capability="p",le="+Inf"} ',
        'thaw_invocation_duration_seconds_bucket{capability="p",le="x"} ',
        'thaw_invocation_duration_seconds_sum{capability="p"} ',
        'thaw_stream_deliveries_total{capability="p",action="nak"} ',
        'thaw_cold_starts_total{capability="p\\"q"} ',
        "process_cpu_seconds_total ",
        "process_max_resident_memory_bytes ",
        "process_start_time_seconds ",
    ]
)
_VALUE = st.sampled_from(["0", "1", "-3", "1e308", "NaN", "+Inf", "-Inf", "7.5", "12"])


@given(st.lists(st.tuples(_LINE, _VALUE), max_size=12), st.lists(st.tuples(_LINE, _VALUE)))
def test_hostile_values_give_a_report_or_a_clear_error(
    first: list[tuple[str, str]], second: list[tuple[str, str]]
) -> None:
    """Families thaw cost reads, with values a broken or hostile host might send."""
    texts = [
        "\n".join(
            ['thaw_invocations_total{capability="p",outcome="ok"} 0'] + [a + b for a, b in lines]
        )
        + "\n"
        for lines in (first, second)
    ]
    try:
        start, end = (parse_exposition(t) for t in texts)
        report = cost_report(measure(start, end, seconds=10.0), default_prices())
    except (ScrapeInvalid, RunInvalid):
        return
    for model in report.models:
        assert model.monthly >= 0 or math.isnan(model.monthly)


# -- price files ---------------------------------------------------------------------


def _toml(models: Mapping[str, Serverless | Container]) -> str:
    lines = []
    for name, model in models.items():
        lines.append(f"[models.{name}]")
        kind = "serverless" if isinstance(model, Serverless) else "container"
        lines.append(f'kind = "{kind}"')
        for field, value in msgspec.structs.asdict(model).items():
            lines.append(f"{field} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def test_the_shipped_prices_load_and_name_their_sources() -> None:
    prices = default_prices()
    assert {"serverless", "container"} <= {
        "serverless" if isinstance(m, Serverless) else "container" for m in prices.models.values()
    }
    assert all(m.source for m in prices.models.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = {}", "at `models`"),
        ('[models.lam]\nkind = "serverless"\nper_gb_second = "cheap"', "models.lam.per_gb_second"),
        ('[models.lam]\nkind = "serverless"\nper_gb_second = -1', "models.lam.per_gb_second"),
        ('[models.box]\nkind = "container"\nutilisation = 1.5', "models.box.utilisation"),
        ('[models.box]\nkind = "container"\nvcpus = 0', "models.box.vcpus"),
        ('[models.box]\nkind = "container"\nmin_instances = 0', "models.box.min_instances"),
        ('[models.vm]\nkind = "vm"', "models.vm.kind"),
        ("[models.lam]\nper_gb_second = 1", "missing required field `kind` - at `models.lam`"),
        ('[models.lam]\nkind = "serverless"\nper_gb_secnd = 1', "unknown field `per_gb_secnd`"),
        ('[models.lam]\nkind = "serverless"\nmemory_mb = "lots"', "models.lam.memory_mb"),
        ('[models."a b"]\nkind = "container"', "model name 'a b'"),
        ('month_hours = 0\n[models.c]\nkind = "container"', "at `month_hours`"),
        ("models = [", "is not TOML"),
        (b"\xff", "is not TOML"),
    ],
)
def test_bad_price_files_name_the_field(text: str | bytes, message: str) -> None:
    with pytest.raises(PricesInvalid, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_prices(text, source="p.toml")


_TOML_VALUE = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(max_size=10).map(json.dumps),
    st.sampled_from(['"serverless"', '"container"', '"measured"', "true", "[]", "{}"]),
)
_FIELD = st.sampled_from(
    [
        *("kind", "per_gb_second", "memory_mb", "billing_ms", "utilisation", "vcpus"),
        *("min_instances", "per_month", "included_requests", "zzz", "per_hour", "memory_gb"),
    ]
)


@given(st.lists(st.tuples(_FIELD, _TOML_VALUE), max_size=8), st.text(max_size=40))
def test_hostile_price_files_load_or_raise_prices_invalid(
    fields: list[tuple[str, str]], junk: str
) -> None:
    body = "\n".join(f"{name} = {value}" for name, value in dict(fields).items())
    for text in (f"[models.m]\n{body}\n", junk, f"[models.m]\n{junk}"):
        try:
            prices = parse_prices(text)
        except PricesInvalid:
            continue  # the only error it may raise
        for model in prices.models.values():
            assert isinstance(model, Serverless | Container)


def test_durations() -> None:
    assert parse_duration("60s") == 60.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("90") == 90.0
    assert parse_duration("500ms") == 0.5
    for bad in ("0s", "soon", "-1s", "25h", "1e3"):
        with pytest.raises(Exception, match="duration|at most"):
            parse_duration(bad)


# -- the command, end to end ------------------------------------------------------------


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path]:
    start, end = one_run(
        ok=990, retry=10, sum=2.5, buckets=[0, 0, 0, 1000, 0, 0, 0, 0], cpu=1.0, host_cpu=2.0
    )
    a, b = tmp_path / "a.prom", tmp_path / "b.prom"
    a.write_text(start)
    b.write_text(end)
    return a, b


def test_cli_table_from_recorded_files(
    recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = recorded
    assert main(["cost", "--from", str(a), "--to", str(b)]) == 0
    out = capsys.readouterr().out
    assert "run: 100.0 s, 1,000 invocations, 10.0/s" in out
    for name in ("lambda-arm64", "workers", "fargate-arm", "break-even", "pay"):
        assert name in out


def test_cli_json_and_the_price_file(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = recorded
    prices = tmp_path / "p.toml"
    prices.write_text(_toml({"lam": LAMBDA, "box": FARGATE}))
    assert main(["cost", "--from", str(a), "--to", str(b), "--prices", str(prices), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in report["models"]] == ["lam", "box"]
    assert report["run"]["invocations"] == 1000
    assert report["break_even"][0]["serverless"] == "lam"


def test_cli_errors_are_clear(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = recorded
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nkind = "serverless"\nper_gb_second = "free"\n')
    assert main(["cost", "--from", str(a), "--to", str(b), "--prices", str(bad)]) == 1
    assert "models.x.per_gb_second" in capsys.readouterr().err
    assert main(["cost", "--from", str(b), "--to", str(a)]) == 1
    assert "the host restarted between the scrapes" in capsys.readouterr().err
    assert main(["cost"]) == 1
    assert "give a run" in capsys.readouterr().err
    page = tmp_path / "page.html"
    page.write_text("<html>Sign in</html>")
    assert main(["cost", "--to", str(page)]) == 1
    assert "not Prometheus text" in capsys.readouterr().err


def test_cli_files_without_a_time_use_their_modification_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.prom", tmp_path / "b.prom"
    a.write_text(exposition({"pay": {}}))
    b.write_text(exposition({"pay": {"ok": 600, "buckets": [600, 0, 0, 0, 0, 0, 0, 0]}}))
    os.utime(a, (5000.0, 5000.0))
    os.utime(b, (5060.0, 5060.0))
    assert main(["cost", "--from", str(a), "--to", str(b)]) == 0
    captured = capsys.readouterr()
    assert "run: 60.0 s, 600 invocations, 10.0/s" in captured.out
    assert "modification time" in captured.err
    assert main(["cost", "--from", str(a), "--to", str(b), "--over", "2m"]) == 0
    assert "run: 120.0 s" in capsys.readouterr().out


class _Exposition(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_GET(self) -> None:
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def host() -> Iterator[str]:
    """A stand-in /metrics on 127.0.0.1 (thaw serve's own is checked in docs/cost.md's run)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:s3cret@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_cli_scrapes_twice_and_records(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _Exposition.bodies = [
        exposition({"pay": {"ok": 10}}).encode(),
        exposition({"pay": {"ok": 30, "buckets": [30, 0, 0, 0, 0, 0, 0, 0]}}).encode(),
    ]
    assert main(["cost", "--metrics", f"{host}/metrics", "--over", "50ms", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["invocations"] == 20
    saved = tmp_path / "run.prom"
    assert main(["cost", "record", f"{host}/metrics", str(saved)]) == 0
    assert saved.read_text().startswith(SCRAPE_TIME_COMMENT)
    assert parse_exposition(saved.read_bytes()).time is not None
    assert main(["cost", "record", f"{host}/nothing", str(saved)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "s3cret" not in err


def test_html_needs_the_report_extra_or_says_so(
    recorded: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from thaw.adapters.telemetry.cost_report import require_plotting

    with pytest.raises(ConfigError, match=r"thaw-runtime\[report\]"):
        require_plotting()


def test_the_worked_example_reproduces_from_its_committed_scrapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/cost.md's table, from the two scrapes of a real thaw serve committed beside it
    (so the family names thaw cost reads are the ones a host exports)."""
    docs = Path(thaw.__file__).resolve().parents[1] / "docs"  # runtime/ is thaw
    before, after = docs / "cost" / "before.prom", docs / "cost" / "after.prom"
    assert main(["cost", "--from", str(before), "--to", str(after)]) == 0
    table = capsys.readouterr().out
    page = (docs / "cost.md").read_text()
    for line in table.splitlines()[:14]:  # the run, capabilities, models, break-even
        assert line in page, line


def test_thaw_cost_prices_prints_the_shipped_example_a_user_can_start_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["cost", "prices"]) == 0
    printed = capsys.readouterr().out
    assert "EXAMPLES, NOT QUOTES" in printed
    prices = parse_prices(printed.encode(), source="printed")  # the printout is a valid file
    assert {"lambda-arm64", "workers", "fargate-arm"} <= set(prices.models)
