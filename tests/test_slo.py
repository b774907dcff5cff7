"""Declaring SLOs: ``@app.capability(..., slo=...)`` and the objectives' own checks."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import (
    Age,
    App,
    Availability,
    Completion,
    ConfigError,
    Latency,
    http,
    kv,
    objects,
    schedule,
    stream,
    subject,
)
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS, is_bound
from thaw.declarations._slo import DAY, DEFAULT_BUDGET_WINDOW, Objective, nearest_bounds


def test_objectives_take_the_target_first_and_derive_their_names() -> None:
    assert Latency(0.99, within=0.2).key == "latency_p99_200ms"
    assert Latency(0.5, within=0.00002).key == "latency_p50_20us"
    assert Age(0.999, within=5.0).key == "age_p99.9_5s"
    assert Completion(0.99, within=100.0).key == "completion_p99_100s"
    assert Availability(0.9995).key == "availability_99.95"
    assert Latency(0.99, within=0.2, name="checkout").key == "checkout"
    assert Latency(0.99, within=0.2).window == DEFAULT_BUDGET_WINDOW == 30 * DAY
    with pytest.raises(TypeError):
        Latency(0.99, 0.2, 30 * DAY)  # type: ignore[misc]  # options are keyword-only


def test_objectives_round_trip_as_a_tagged_union() -> None:
    given = (Latency(0.99, within=0.2), Age(0.9, within=1.0, name="fresh"), Availability(0.9))
    encoded = msgspec.json.encode(given)
    assert b'"type":"latency"' in encoded
    assert msgspec.json.decode(encoded, type=tuple[Objective, ...]) == given
    with pytest.raises(ConfigError, match="not a bucket bound"):  # decoding checks too
        msgspec.json.decode(b'{"type":"latency","target":0.9,"within":0.3}', type=Objective)


def test_a_capability_records_its_objectives_in_its_policy() -> None:
    app = App("shop")

    @app.capability(http("POST", "/pay"), slo=[Latency(0.99, within=0.2), Availability(0.999)])
    async def pay(body: bytes) -> None: ...

    @app.capability(stream("orders.>"), slo=Age(0.99, within=5.0))
    async def ship(body: bytes) -> None: ...

    @app.capability(http("GET", "/plain"))
    async def plain() -> None: ...

    assert app.capabilities["pay"].policy.slo == (Latency(0.99, within=0.2), Availability(0.999))
    assert app.capabilities["ship"].policy.slo == (Age(0.99, within=5.0),)
    assert app.capabilities["plain"].policy.slo == ()


@pytest.mark.parametrize(
    "trigger", [stream("a.b"), kv("bucket"), objects("bucket"), schedule("*/5 * * * *")]
)
def test_a_sync_objective_on_a_capability_that_only_consumes_messages_is_refused(
    trigger: object,
) -> None:
    app = App("shop")
    with pytest.raises(ConfigError, match="Latency is an objective of sync paths.*Age"):

        @app.capability(trigger, slo=Latency(0.99, within=0.2))  # type: ignore[arg-type]
        async def consume(body: bytes) -> None: ...

    assert "consume" not in app.capabilities


@pytest.mark.parametrize("objective", [Age(0.99, within=5.0), Completion(0.99, within=50.0)])
def test_an_async_objective_needs_an_async_trigger(objective: Age | Completion) -> None:
    app = App("shop")
    with pytest.raises(ConfigError, match=f"capability 'answer'.*{type(objective).__name__}"):

        @app.capability(http("GET", "/x"), subject("x.y"), slo=objective)
        async def answer() -> None: ...

    # An enqueue route only publishes: its messages are measured where they are consumed.
    with pytest.raises(ConfigError, match="stream\\(...\\) trigger consumes the enqueued"):

        @app.capability(http("POST", "/intake", enqueue="intake.jobs"), slo=objective)
        async def intake(body: bytes) -> None: ...

    @app.capability(
        http("POST", "/later", enqueue="later.jobs"), stream("later.jobs"), slo=objective
    )
    async def later(body: bytes) -> None: ...  # the route's messages run here, from the stream

    assert app.capabilities["later"].policy.slo == (objective,)


def test_a_capability_without_triggers_is_called_and_may_have_latency() -> None:
    app = App("shop")

    @app.capability(slo=Latency(0.9, within=0.001))
    async def helper() -> None: ...

    assert app.capabilities["helper"].policy.slo[0].within == 0.001


def test_duplicates_and_things_that_are_not_objectives_are_refused() -> None:
    app = App("shop")
    with pytest.raises(ConfigError, match="two objectives are named 'latency_p99_200ms'"):

        @app.capability(http("GET", "/a"), slo=[Latency(0.99, within=0.2)] * 2)
        async def a() -> None: ...

    with pytest.raises(ConfigError, match="two objectives are named 'fast'"):

        @app.capability(
            http("GET", "/b"),
            slo=[Latency(0.99, within=0.2, name="fast"), Latency(0.9, within=0.1, name="fast")],
        )
        async def b() -> None: ...

    for wrong in ("latency", 0.99, {"target": 0.99}, [Latency(0.99, within=0.2), None]):
        with pytest.raises(ConfigError, match="is not an objective; use Latency"):

            @app.capability(http("GET", "/c"), slo=wrong)  # type: ignore[arg-type]
            async def c() -> None: ...

    @app.capability(http("GET", "/d"), slo=(Latency(0.99, within=0.2), Latency(0.999, within=0.2)))
    async def d() -> None: ...  # one threshold at two targets: two objectives

    assert len(app.capabilities["d"].policy.slo) == 2


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans())
def test_a_target_is_a_ratio_strictly_between_0_and_1(target: float) -> None:
    valid = not isinstance(target, bool) and math.isfinite(target) and 0 < target < 1
    for make in (
        lambda: Latency(target, within=0.2),
        lambda: Age(target, within=5.0),
        lambda: Completion(target, within=5.0),
        lambda: Availability(target),
    ):
        if valid:
            assert make().target == target
        else:
            with pytest.raises(ConfigError, match="strictly between 0 and 1"):
                make()


@given(st.floats(min_value=1e-7, max_value=1e5))
def test_a_threshold_must_be_a_bucket_bound_and_the_error_names_the_nearest(
    seconds: float,
) -> None:
    for make, bounds in (
        (lambda: Latency(0.99, within=seconds), LATENCY_BOUNDS),
        (lambda: Age(0.99, within=seconds), AGE_BOUNDS),
        (lambda: Completion(0.99, within=seconds), AGE_BOUNDS),
    ):
        if is_bound(seconds, bounds):
            assert make().within == seconds
            continue
        with pytest.raises(ConfigError) as raised:
            make()
        near = nearest_bounds(seconds, bounds)
        assert 1 <= len(near) <= 2
        assert f"use within={' or '.join(f'{b:g}' for b in near)} " in str(raised.value)


@pytest.mark.parametrize("within", [0, -1, math.nan, math.inf, "0.2", None, True])
def test_a_threshold_is_a_positive_number(within: object) -> None:
    with pytest.raises(ConfigError, match="within must be a positive number"):
        Latency(0.99, within=within)  # type: ignore[arg-type]


def test_every_bound_is_accepted() -> None:
    for bound in LATENCY_BOUNDS:
        assert Latency(0.99, within=bound).within == bound
    for bound in AGE_BOUNDS:
        assert Age(0.99, within=bound).within == Completion(0.99, within=bound).within


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_the_budget_window_holds_the_three_day_ticket_window(window: float) -> None:
    if math.isfinite(window) and 3 * DAY <= window <= 366 * DAY:
        assert Availability(0.99, window=window).window == window
    else:
        with pytest.raises(ConfigError, match="window"):
            Availability(0.99, window=window)


@pytest.mark.parametrize("name", ["Bad Name", "x" * 65, 'q"uote', "new\nline", 7])
def test_a_name_is_a_short_label_value(name: object) -> None:
    with pytest.raises(ConfigError, match="becomes the slo label"):
        Latency(0.99, within=0.2, name=name)  # type: ignore[arg-type]
