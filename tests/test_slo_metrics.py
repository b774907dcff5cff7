"""The host side of SLOs: reading the exposition, the thaw_slo_* families, the wrapper.

Expositions are written here in the shape the host exports (Prometheus text 0.0.4:
thaw_invocations_total{capability,trigger,outcome,code}, the duration histogram by
capability and trigger, the message age and completion histograms by capability).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import Age, App, Availability, Completion, Latency, http, stream
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS
from thaw.adapters.http._wire import Request, Response
from thaw.adapters.telemetry.metrics_peers import merge
from thaw.adapters.telemetry.slo import (
    ExpositionError,
    SloEvaluator,
    SloMetricsService,
    counts,
    declared,
    parse_exposition,
    slo_metrics,
)

pytestmark = pytest.mark.anyio
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def histogram(
    family: str, labels: str, bounds: tuple[float, ...], observed: Mapping[float, int]
) -> list[str]:
    """A histogram's lines: ``observed`` maps a value to how many observations had it."""
    lines = []
    for bound in (*bounds, float("inf")):
        below = sum(n for value, n in observed.items() if value <= bound)
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(f'{family}_bucket{{{labels},le="{le}"}} {below}')
    total = sum(observed.values())
    lines.append(f"{family}_sum{{{labels}}} {sum(v * n for v, n in observed.items())}")
    lines.append(f"{family}_count{{{labels}}} {total}")
    return lines


def exposition(
    *,
    fast: int = 0,
    slow: int = 0,
    stream_slow: int = 0,
    faults: int = 0,
    caller_errors: int = 0,
    young: int = 0,
    old: int = 0,
) -> bytes:
    """``pay`` (http: fast 0.05 s or slow 1 s answers; stream: slow ones) and ``ship``
    (messages picked up after 1 s or 30 s, completed after the same)."""
    lines = ["# HELP thaw_invocations_total Invocations.", "# TYPE thaw_invocations_total counter"]
    lines.append(
        f'thaw_invocations_total{{capability="pay",trigger="http",outcome="ok",code=""}} '
        f"{fast + slow - faults - caller_errors}"
    )
    lines.append(
        'thaw_invocations_total{capability="pay",trigger="http",outcome="retry",'
        f'code="handler_error"}} {faults}'
    )
    lines.append(
        'thaw_invocations_total{capability="pay",trigger="http",outcome="reject",'
        f'code="contract_invalid"}} {caller_errors}'
    )
    lines += ["# TYPE thaw_invocation_duration_seconds histogram"]
    family = "thaw_invocation_duration_seconds"
    lines += histogram(
        family, 'capability="pay",trigger="http"', LATENCY_BOUNDS, {0.05: fast, 1.0: slow}
    )
    lines += histogram(
        family, 'capability="pay",trigger="stream"', LATENCY_BOUNDS, {1.0: stream_slow}
    )
    for family in ("thaw_message_age_seconds", "thaw_message_completion_seconds"):
        lines += [f"# TYPE {family} histogram"]
        lines += histogram(family, 'capability="ship"', AGE_BOUNDS, {1.0: young, 30.0: old})
    return ("\n".join(lines) + "\n").encode()


def shop() -> App:
    app = App("shop")

    @app.capability(
        http("POST", "/pay"),
        stream("pay.later"),
        slo=[Latency(0.99, within=0.1), Availability(0.99)],
    )
    async def pay(body: bytes) -> None: ...

    @app.capability(
        stream("ship.orders"), slo=[Age(0.9, within=5.0), Completion(0.99, within=50.0)]
    )
    async def ship(body: bytes) -> None: ...

    return app


# -- reading an exposition -----------------------------------------------------------------


def test_an_exposition_parses_with_escapes_timestamps_and_comments() -> None:
    text = (
        b'# HELP thaw_x A help line with {braces} and "quotes".\n'
        b"# TYPE thaw_x counter\n"
        b'thaw_x{a="q\\"uote",b="back\\\\slash",c="new\\nline",d="}{,="} 3 1700000000000\n'
        b"thaw_y 2.5e-3\n"
        b'thaw_z{le="+Inf",} +Inf\n'
        b"\n"
    )
    samples = parse_exposition(text)
    assert [s.name for s in samples] == ["thaw_x", "thaw_y", "thaw_z"]
    assert samples[0].labels == {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": "}{,="}
    assert samples[0].value == 3 and samples[1].value == 0.0025
    assert samples[2].labels == {"le": "+Inf"} and samples[2].value == float("inf")
    assert [s.name for s in parse_exposition(text, prefixes=("thaw_y",))] == ["thaw_y"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html><body>Not found</body></html>\n", "line 1 is not a sample"),
        (b'{"status": "ok"}', "line 1 is not a sample"),
        (b"thaw_x 1\nthaw_x{a=b} 2\n", "line 2: malformed labels"),
        (b'thaw_x{a="1" b="2"} 2\n', "malformed labels"),
        (b"thaw_x one\n", "'one' is not a number"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"thaw_x 1\n" + b"y" * 70_000 + b" 1\n", "line 2 is longer than"),
    ],
)
def test_what_is_no_exposition_is_refused_naming_the_line(body: bytes, says: str) -> None:
    with pytest.raises(ExpositionError, match=says):
        parse_exposition(body)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_samples_or_one_exposition_error(body: bytes) -> None:
    samples = []
    with contextlib.suppress(ExpositionError):  # the other way out: one clear error
        samples = parse_exposition(body)
    assert all(isinstance(s.value, float) for s in samples)


# -- what each objective counts ------------------------------------------------------------


def test_latency_counts_sync_triggers_at_the_threshold_bucket() -> None:
    samples = parse_exposition(exposition(fast=90, slow=10, stream_slow=50))
    assert counts(Latency(0.99, within=0.1), "pay", samples) == (90, 100)  # not the stream's
    assert counts(Latency(0.99, within=1.0), "pay", samples) == (100, 100)
    assert counts(Latency(0.99, within=0.01), "pay", samples) == (0, 100)
    assert counts(Latency(0.99, within=0.1), "nobody", samples) == (0, 0)


def test_age_and_completion_count_the_message_histograms() -> None:
    samples = parse_exposition(exposition(young=8, old=2))
    assert counts(Age(0.9, within=5.0), "ship", samples) == (8, 10)
    assert counts(Completion(0.99, within=50.0), "ship", samples) == (10, 10)
    assert counts(Age(0.9, within=5.0), "pay", samples) == (0, 0)


def test_availability_counts_faults_as_bad_and_caller_errors_as_served() -> None:
    samples = parse_exposition(exposition(fast=100, faults=3, caller_errors=5))
    assert counts(Availability(0.99), "pay", samples) == (97, 100)


def test_a_histogram_without_the_thresholds_bucket_cannot_be_counted() -> None:
    text = (
        b'thaw_invocation_duration_seconds_bucket{capability="pay",le="0.25"} 4\n'
        b'thaw_invocation_duration_seconds_bucket{capability="pay",le="+Inf"} 5\n'
        b'thaw_invocation_duration_seconds_count{capability="pay"} 5\n'
    )
    samples = parse_exposition(text)
    assert counts(Latency(0.99, within=0.2), "pay", samples) is None
    # an exposition without a trigger label (an older host) counts every trigger
    text += b'thaw_invocation_duration_seconds_bucket{capability="pay",le="0.2"} 3\n'
    assert counts(Latency(0.99, within=0.2), "pay", parse_exposition(text)) == (3, 5)


def test_declared_lists_every_objective_of_every_app_once() -> None:
    app = shop()
    found = [(capability, objective.key) for capability, objective in declared([app, app])]
    assert found == [
        ("pay", "latency_p99_100ms"),
        ("pay", "availability_99"),
        ("ship", "age_p90_5s"),
        ("ship", "completion_p99_50s"),
    ]


# -- the thaw_slo_* families ---------------------------------------------------------------


def values(body: bytes) -> dict[tuple[str, ...], float]:
    out = {}
    for sample in parse_exposition(body, prefixes=("thaw_slo_",)):
        labels = sample.labels
        detail = labels.get("window", labels.get("severity", ""))
        out[(sample.name, labels["capability"], labels["slo"], detail)] = sample.value
    return out


def test_the_evaluator_exports_objectives_slis_budgets_burn_rates_and_alerts() -> None:
    evaluator = SloEvaluator(declared([shop()]))
    before = values(evaluator.render())
    assert before[("thaw_slo_objective", "pay", "latency_p99_100ms", "")] == 0.99
    assert ("thaw_slo_sli", "pay", "latency_p99_100ms", "5m") not in before  # no events yet
    assert before[("thaw_slo_error_budget_remaining", "ship", "age_p90_5s", "")] == 1.0
    evaluator.observe(exposition(), 1000.0)
    evaluator.observe(exposition(fast=95, slow=5, faults=1, young=10), 1005.0)
    got = values(evaluator.render())
    key = ("pay", "latency_p99_100ms")
    assert got[("thaw_slo_sli", *key, "5m")] == pytest.approx(0.95)
    assert got[("thaw_slo_events", *key, "1h")] == 100
    assert got[("thaw_slo_burn_rate", *key, "5m")] == pytest.approx(5.0)  # 5 % bad of a 1 % budget
    assert got[("thaw_slo_error_budget_remaining", *key, "")] == pytest.approx(-4.0)
    assert got[("thaw_slo_alert", *key, "page")] == 0  # 5 is below 14.4 and 6
    assert got[("thaw_slo_alert", *key, "ticket")] == 1  # above 1 in 3 d and 6 h
    assert got[("thaw_slo_sli", "pay", "availability_99", "1h")] == pytest.approx(0.99)
    assert got[("thaw_slo_burn_rate", "ship", "age_p90_5s", "3d")] == 0
    assert got[("thaw_slo_alert", "ship", "age_p90_5s", "ticket")] == 0
    evaluator.observe(exposition(fast=95, slow=25, young=10, old=10), 1010.0)
    got = values(evaluator.render())
    assert got[("thaw_slo_burn_rate", *key, "1h")] == pytest.approx(25 / 120 / 0.01)
    assert got[("thaw_slo_alert", *key, "page")] == 1
    assert got[("thaw_slo_sli", "ship", "completion_p99_50s", "5m")] == pytest.approx(1.0)
    assert got[("thaw_slo_sli", "ship", "age_p90_5s", "5m")] == pytest.approx(0.5)


def test_an_exposition_that_does_not_parse_leaves_the_standing_as_it_was() -> None:
    evaluator = SloEvaluator(declared([shop()]))
    evaluator.observe(exposition(fast=10), 1.0)
    rendered = evaluator.render()
    with pytest.raises(ExpositionError):
        evaluator.observe(b"<html>", 2.0)
    assert evaluator.render() == rendered


def test_workers_merged_keep_one_value_of_each_slo_series() -> None:
    one, two = SloEvaluator(declared([shop()])), SloEvaluator(declared([shop()]))
    for evaluator in (one, two):
        evaluator.observe(exposition(), 1.0)
        evaluator.observe(exposition(fast=95, slow=5), 6.0)
    merged = values(merge([one.render(), two.render()]))
    assert merged == values(one.render())


# -- the service wrapper -------------------------------------------------------------------


class Front:
    """A service answering /metrics with whatever ``body`` holds, and 404 elsewhere."""

    def __init__(self) -> None:
        self.body = exposition()
        self.status = 200
        self.scrapes = 0
        self.sampled: anyio.Event | None = None  # set at the third scrape
        self.extra = "reachable through the wrapper"

    def check(self, request: Request) -> Response | None:
        if request.path == "/metrics":
            return None  # answered in handle, as a merging front does
        return Response(404, b"nope", "text/plain")

    async def handle(self, request: Request) -> Response:
        self.scrapes += 1
        if self.scrapes == 3 and self.sampled is not None:
            self.sampled.set()
        return Response(self.status, self.body, CONTENT_TYPE)


def request(method: str, path: str) -> Request:
    return Request(method, path, path, "", "1.1", {}, True, 0)


async def answer(service: SloMetricsService, method: str, path: str) -> Response:
    asked = request(method, path)
    found = service.check(asked)
    return found if found is not None else await service.handle(asked)


async def test_the_wrapper_appends_the_slo_families_to_metrics_only() -> None:
    front = Front()
    service = SloMetricsService(front, "/metrics", SloEvaluator(declared([shop()])))
    assert await service.sample(1.0)
    front.body = exposition(fast=50, slow=50)
    assert await service.sample(2.0)
    scraped = await answer(service, "GET", "/metrics")
    assert scraped.status == 200 and scraped.content_type == CONTENT_TYPE
    assert scraped.body.startswith(front.body)
    got = values(scraped.body)
    assert got[("thaw_slo_sli", "pay", "latency_p99_100ms", "5m")] == 0.5
    assert (await answer(service, "HEAD", "/metrics")).body == scraped.body
    assert (await answer(service, "GET", "/other")).status == 404
    assert service.extra == "reachable through the wrapper"
    front.status = 503  # a sibling did not answer: the scrape fails, nothing is appended
    failed = await answer(service, "GET", "/metrics")
    assert failed.status == 503 and b"thaw_slo_" not in failed.body
    assert not await service.sample(3.0)
    front.status, front.body = 200, b"<html>"
    assert not await service.sample(4.0)  # logged, the standing unchanged
    assert values(service.evaluator.render()) == got


async def test_slo_metrics_samples_the_front_while_open() -> None:
    front = Front()
    front.sampled = anyio.Event()
    async with slo_metrics(front, [shop()], "/metrics", interval=0.05) as wrapped:
        assert isinstance(wrapped, SloMetricsService)
        with anyio.fail_after(10):
            await front.sampled.wait()
    scrapes = front.scrapes
    await anyio.sleep(0.2)  # not a race: whether anything still samples after the close
    assert front.scrapes == scrapes


async def test_without_objectives_or_metrics_the_front_is_served_as_it_is() -> None:
    front = Front()
    async with slo_metrics(front, [App("plain")], "/metrics") as wrapped:
        assert wrapped is front
    async with slo_metrics(front, [shop()], "") as wrapped:
        assert wrapped is front


async def test_a_bad_sampling_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from thaw import ConfigError

    monkeypatch.setenv("THAW_SLO_INTERVAL", "fast")
    with pytest.raises(ConfigError, match="THAW_SLO_INTERVAL='fast' must be seconds"):
        async with slo_metrics(Front(), [shop()], "/metrics"):
            pass
