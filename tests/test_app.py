"""App and capability declarations: what registration records and what it refuses."""

import importlib.util
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from thaw._errors import ConfigError
from thaw.declarations._app import App, CapabilitySpec
from thaw.declarations._context import Context
from thaw.declarations._cron import parse_cron
from thaw.declarations._policy import Backoff, Idempotency, Policy, RetryPolicy
from thaw.declarations._triggers import http, kv, schedule, stream, subject


class Order(msgspec.Struct):
    id: str
    amount: int


class Receipt(msgspec.Struct):
    order_id: str


class Opaque:
    """A plain class: msgspec cannot decode or encode it without hooks."""


class HoldsOpaque(msgspec.Struct):
    inner: Opaque


class First(msgspec.Struct):
    a: int


class Second(msgspec.Struct):
    b: int


@pytest.fixture
def app() -> App:
    return App("shop")


def only(app: App) -> CapabilitySpec:
    (spec,) = app.capabilities.values()
    return spec


# -- App names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "payments", "A-b_9", "x" * 64, "Shop-2"])
def test_app_accepts_valid_names(name: str) -> None:
    app = App(name)
    assert app.name == name
    assert app.capabilities == {}
    assert app.start_hooks == ()
    assert app.stop_hooks == ()
    assert repr(app) == f"App({name!r}, capabilities=[])"


@pytest.mark.parametrize(
    "name",
    ["", "1shop", "-shop", "_shop", "my shop", "shop.eu", "x" * 65, "caf\u00e9", "shop\n", None, 7],
)
def test_app_rejects_invalid_names(name: object) -> None:
    with pytest.raises(ConfigError, match="must start with a letter") as info:
        App(name)  # type: ignore[arg-type]
    assert f"app name {name!r}" in info.value.message


# -- the four function shapes ------------------------------------------------------


def test_shape_without_arguments(app: App) -> None:
    async def ping() -> Receipt:
        return Receipt("x")

    assert app.capability()(ping) is ping
    spec = app.capabilities["ping"]
    assert spec.handler is ping
    assert (spec.takes_payload, spec.takes_context) == (False, False)
    assert spec.input_type is None
    assert spec.output_type is Receipt


def test_shape_with_payload(app: App) -> None:
    @app.capability()
    async def place(order: Order) -> Receipt:
        return Receipt(order.id)

    spec = app.capabilities["place"]
    assert spec.handler is place
    assert (spec.takes_payload, spec.takes_context) == (True, False)
    assert spec.input_type is Order
    assert spec.output_type is Receipt


def test_shape_with_context_only(app: App) -> None:
    @app.capability()
    async def tick(ctx: Context) -> dict[str, int]:
        return {}

    spec = app.capabilities["tick"]
    assert (spec.takes_payload, spec.takes_context) == (False, True)
    assert spec.input_type is None
    assert spec.output_type == dict[str, int]


def test_shape_with_payload_and_context(app: App) -> None:
    @app.capability()
    async def place(order: Order, ctx: Context) -> list[Receipt]:
        return []

    spec = app.capabilities["place"]
    assert (spec.takes_payload, spec.takes_context) == (True, True)
    assert spec.input_type is Order
    assert spec.output_type == list[Receipt]


def test_positional_only_parameters_are_accepted(app: App) -> None:
    @app.capability()
    async def place(order: Order, ctx: Context, /) -> None:
        return None

    spec = only(app)
    assert (spec.takes_payload, spec.takes_context) == (True, True)


def test_return_none_means_no_output_and_no_annotation_means_any(app: App) -> None:
    @app.capability()
    async def fire(order: Order) -> None:
        return None

    @app.capability()
    async def loose(order: Order):  # type: ignore[no-untyped-def]
        return order

    assert app.capabilities["fire"].output_type is None
    assert app.capabilities["loose"].output_type is Any


def test_bytes_payload_and_scalar_contracts(app: App) -> None:
    @app.capability()
    async def raw(data: bytes) -> bytes:
        return data

    @app.capability()
    async def number(n: int | None) -> str:
        return ""

    assert app.capabilities["raw"].input_type is bytes
    assert app.capabilities["raw"].output_type is bytes
    assert app.capabilities["number"].input_type == int | None


def test_annotated_constraints_are_kept_on_the_contract(app: App) -> None:
    positive = Annotated[int, msgspec.Meta(ge=0)]

    @app.capability()
    async def count(n: positive) -> None:  # type: ignore[valid-type]
        return None

    contract = only(app).input_type
    assert contract == positive
    decode = msgspec.json.Decoder(contract).decode
    assert decode(b"3") == 3
    with pytest.raises(msgspec.ValidationError):
        decode(b"-1")


def test_docstring_becomes_the_description(app: App) -> None:
    @app.capability()
    async def documented() -> None:
        """Place an order.

        Charges the card first.
        """

    @app.capability()
    async def bare() -> None:
        return None

    assert (
        app.capabilities["documented"].description == "Place an order.\n\nCharges the card first."
    )
    assert app.capabilities["bare"].description == ""


def test_string_annotations_resolve(tmp_path: Path) -> None:
    source = tmp_path / "future_mod.py"
    source.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            import msgspec

            from thaw.declarations._app import App
            from thaw.declarations._context import Context

            class Item(msgspec.Struct):
                sku: str

            class Stock(msgspec.Struct):
                count: int

            app = App("future")

            @app.capability()
            async def check(item: Item, ctx: Context) -> Stock:
                return Stock(0)

            @app.capability()
            async def clear(ctx: Context) -> None:
                return None
            """
        )
    )
    spec_ = importlib.util.spec_from_file_location("future_mod", source)
    assert spec_ is not None
    assert spec_.loader is not None
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    check = module.app.capabilities["check"]
    assert check.input_type is module.Item
    assert check.output_type is module.Stock
    assert (check.takes_payload, check.takes_context) == (True, True)
    clear = module.app.capabilities["clear"]
    assert (clear.takes_payload, clear.takes_context, clear.output_type) == (False, True, None)


def test_unresolvable_string_annotation_is_a_config_error(app: App) -> None:
    async def place(order: "NoSuchType") -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(ConfigError, match="cannot resolve its annotations") as info:
        app.capability()(place)
    assert "capability 'place'" in info.value.message
    assert "NoSuchType" in info.value.message


# -- names, triggers and policy reach the spec -------------------------------------


def test_explicit_name_triggers_and_policy_are_recorded(app: App) -> None:
    retry = RetryPolicy(max_attempts=3, backoff=Backoff(initial=1.0))
    idempotency = Idempotency(ttl=60)
    triggers = (http("post", "/orders"), stream("orders.created"), schedule("@daily"))

    @app.capability(
        *triggers,
        name="place-order",
        timeout=2.5,
        retry=retry,
        idempotency=idempotency,
        concurrency=4,
        max_payload=0,
    )
    async def place(order: Order) -> Receipt:
        return Receipt(order.id)

    assert list(app.capabilities) == ["place-order"]
    spec = app.capabilities["place-order"]
    assert spec.name == "place-order"
    assert spec.triggers == triggers
    assert spec.policy == Policy(
        timeout=2.5, retry=retry, idempotency=idempotency, concurrency=4, max_payload=0
    )
    assert "place-order" in repr(app)


def test_default_policy(app: App) -> None:
    @app.capability()
    async def ping() -> None:
        return None

    assert only(app).policy == Policy()
    assert only(app).triggers == ()


def test_one_function_can_be_registered_under_two_names(app: App) -> None:
    async def handle(order: Order) -> None:
        return None

    app.capability(name="a")(handle)
    app.capability(name="b")(handle)
    assert list(app.capabilities) == ["a", "b"]
    assert app.capabilities["a"].handler is app.capabilities["b"].handler


# -- rejected functions ------------------------------------------------------------


def test_sync_function_is_refused(app: App) -> None:
    def place(order: Order) -> None:
        return None

    with pytest.raises(ConfigError, match="must be an 'async def' function") as info:
        app.capability()(place)  # type: ignore[arg-type]
    assert "capability 'place'" in info.value.message
    assert app.capabilities == {}


def test_async_generator_is_refused(app: App) -> None:
    async def stream_out() -> Any:
        yield 1

    with pytest.raises(ConfigError, match=r"capability 'stream_out'.*must be an 'async def'"):
        app.capability()(stream_out)


def test_unannotated_payload_is_refused(app: App) -> None:
    async def place(order, ctx: Context) -> None:  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ConfigError, match="annotate the payload parameter 'order'") as info:
        app.capability()(place)
    assert "capability 'place'" in info.value.message


@pytest.mark.parametrize("shape", ["extra", "out-of-order", "payload-after-two"])
def test_extra_or_out_of_order_parameters_are_refused(app: App, shape: str) -> None:
    async def extra(order: Order, other: Order) -> None:
        return None

    async def out_of_order(ctx: Context, order: Order) -> None:
        return None

    async def payload_after_two(order: Order, ctx: Context, more: int) -> None:
        return None

    function, bad = {
        "extra": (extra, "other"),
        "out-of-order": (out_of_order, "order"),
        "payload-after-two": (payload_after_two, "more"),
    }[shape]
    with pytest.raises(ConfigError, match="is extra or out of order") as info:
        app.capability()(function)
    assert f"parameter {bad!r}" in info.value.message
    assert "expected (payload, ctx: Context)" in info.value.message


def test_keyword_only_parameters_are_refused(app: App) -> None:
    async def place(order: Order, *, ctx: Context) -> None:
        return None

    with pytest.raises(ConfigError, match="parameter 'ctx' must be positional") as info:
        app.capability()(place)
    assert "capability 'place'" in info.value.message


@pytest.mark.parametrize("kind", ["args", "kwargs"])
def test_variadic_parameters_are_refused(app: App, kind: str) -> None:
    async def with_args(*args: Order) -> None:
        return None

    async def with_kwargs(**kwargs: Order) -> None:
        return None

    function = with_args if kind == "args" else with_kwargs
    with pytest.raises(ConfigError, match=f"parameter '{kind}' must be positional"):
        app.capability()(function)


def test_two_context_parameters_are_refused(app: App) -> None:
    async def place(ctx: Context, again: Context) -> None:
        return None

    with pytest.raises(ConfigError, match="takes two Context parameters") as info:
        app.capability()(place)
    assert "capability 'place'" in info.value.message


@pytest.mark.parametrize(
    ("contract", "direction"),
    [
        (Opaque, "input"),
        (list[Opaque], "input"),
        (HoldsOpaque, "input"),
        (First | Second, "input"),  # two untagged Structs: ambiguous
        (str | bytes, "input"),
        (Opaque, "output"),
        (dict[str, Opaque], "output"),
    ],
)
def test_unsupported_contract_types_are_refused(app: App, contract: Any, direction: str) -> None:
    if direction == "input":

        async def handle(payload: contract) -> None:  # type: ignore[valid-type]
            return None

    else:

        async def handle(payload: Order) -> contract:  # type: ignore[valid-type]
            return None

    with pytest.raises(ConfigError, match="is not a supported contract type") as info:
        app.capability()(handle)
    message = info.value.message
    assert "capability 'handle'" in message
    assert f"its {direction} type" in message
    assert "\n" not in message
    assert app.capabilities == {}


@pytest.mark.parametrize(
    "not_a_trigger", ["GET /orders", None, parse_cron("@daily"), Policy(), ("GET", "/x")]
)
def test_something_that_is_not_a_trigger_is_refused(app: App, not_a_trigger: object) -> None:
    with pytest.raises(ConfigError, match=r"is not a trigger; use thaw\.http") as info:
        app.capability(http("GET", "/ok"), not_a_trigger)  # type: ignore[arg-type]
    assert repr(not_a_trigger) in info.value.message


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -3}, "concurrency"),
        ({"max_payload": -1}, "max_payload"),
    ],
)
def test_invalid_policy_values_are_refused(app: App, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        app.capability(**options)


@pytest.mark.parametrize("name", ["", "<lambda>", "1st", "two words", "x" * 65])
def test_invalid_function_names_are_refused(app: App, name: str) -> None:
    async def handle() -> None:
        return None

    handle.__name__ = name
    with pytest.raises(ConfigError, match="must start with a letter") as info:
        app.capability()(handle)
    assert f"capability name {name!r}" in info.value.message


@pytest.mark.parametrize("name", ["1st", "two words", "x" * 65, "a.b", "_private"])
def test_invalid_explicit_names_are_refused(app: App, name: str) -> None:
    async def handle() -> None:
        return None

    with pytest.raises(ConfigError, match="must start with a letter") as info:
        app.capability(name=name)(handle)
    assert f"capability name {name!r}" in info.value.message
    assert app.capabilities == {}


# -- conflicts between capabilities ------------------------------------------------


def test_duplicate_capability_name_is_refused(app: App) -> None:
    @app.capability(http("GET", "/a"))
    async def place() -> None:
        return None

    async def other() -> None:
        return None

    with pytest.raises(ConfigError) as info:
        app.capability(http("GET", "/b"), name="place")(other)
    assert info.value.message == "app 'shop' already has a capability named 'place'"
    assert app.capabilities["place"].handler is place


def test_duplicate_http_route_across_capabilities_is_refused(app: App) -> None:
    @app.capability(http("POST", "/orders"))
    async def place() -> None:
        return None

    async def again() -> None:
        return None

    with pytest.raises(ConfigError) as info:
        app.capability(subject("orders.place"), http("post", "/orders"))(again)
    assert info.value.message == "route POST /orders is already served by capability 'place'"
    assert list(app.capabilities) == ["place"]


def test_same_path_with_another_method_or_other_triggers_may_repeat(app: App) -> None:
    @app.capability(http("GET", "/orders"), subject("orders.get"), kv("orders"))
    async def read() -> None:
        return None

    @app.capability(http("POST", "/orders"), subject("orders.get"), kv("orders"))
    async def write() -> None:
        return None

    assert list(app.capabilities) == ["read", "write"]


# -- lifecycle hooks ---------------------------------------------------------------


def test_hooks_are_recorded_in_order(app: App) -> None:
    async def open_db() -> None:
        return None

    async def open_cache() -> None:
        return None

    async def close_db() -> None:
        return None

    assert app.on_start(open_db) is open_db
    assert app.on_start(open_cache) is open_cache
    assert app.on_stop(close_db) is close_db
    assert app.start_hooks == (open_db, open_cache)
    assert app.stop_hooks == (close_db,)


@pytest.mark.parametrize("register", ["on_start", "on_stop"])
def test_hooks_must_be_async(app: App, register: str) -> None:
    def sync_hook() -> None:
        return None

    with pytest.raises(
        ConfigError, match=f"{register} hook .*sync_hook.* must be an async function"
    ):
        getattr(app, register)(sync_hook)
    assert app.start_hooks == ()
    assert app.stop_hooks == ()


def test_routes_differing_only_in_parameter_names_collide() -> None:
    from thaw import http

    app = App("routes")

    @app.capability(http("GET", "/items/{id}"))
    async def first() -> None:
        return None

    with pytest.raises(ConfigError, match="already served by capability 'first'"):

        @app.capability(http("GET", "/items/{key:int}"))
        async def second() -> None:
            return None


def test_same_route_twice_on_one_capability_is_refused() -> None:
    from thaw import http

    app = App("routes")
    with pytest.raises(ConfigError, match="already served"):

        @app.capability(http("GET", "/a"), http("GET", "/a"))
        async def twice() -> None:
            return None


def test_empty_capability_name_is_refused() -> None:
    app = App("names")
    with pytest.raises(ConfigError, match="capability name ''"):

        @app.capability(name="")
        async def fn() -> None:
            return None


@pytest.mark.parametrize("field", ["concurrency", "max_payload"])
def test_booleans_are_not_counts(field: str) -> None:
    app = App("bools")
    with pytest.raises(ConfigError, match=field):
        app.capability(**{field: True})


class _Named(msgspec.Struct):
    name: str
    size: int = 0


class _Unnamed(msgspec.Struct):
    size: int = 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (str, "the payload type <class 'str'> cannot hold it: take a Struct"),
        (int, "cannot hold it"),
        (list[int], "cannot hold it"),
        (_Unnamed, "path parameter 'name', which is not a field of _Unnamed"),
    ],
)
def test_a_path_parameter_the_payload_cannot_hold_is_refused_at_import(
    payload: Any, message: str
) -> None:
    app = App("shop")

    async def put(item: Any) -> None:
        return None

    put.__annotations__["item"] = payload
    with pytest.raises(ConfigError, match=re.escape(message)):
        app.capability(http("PUT", "/items/{name}"))(put)


@pytest.mark.parametrize("payload", [bytes, _Named, dict[str, Any], Any])
def test_a_path_parameter_has_a_home_in_these_payloads(payload: Any) -> None:
    app = App("shop")

    async def put(item: Any) -> None:
        return None

    put.__annotations__["item"] = payload
    app.capability(http("PUT", "/items/{name}"))(put)
    assert "put" in app.capabilities
