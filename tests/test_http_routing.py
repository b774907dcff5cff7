"""Routing and the pure HTTP decisions, without sockets."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import App, ConfigError, Event, Ok, Reject, Retry, http
from thaw.adapters.http import HttpConfig, Response, Route, compile_router
from thaw.adapters.http._wire import response_from_answer
from thaw.adapters.http.routing import EventIds, _Refused
from thaw.decisions._http import (
    answer_outcome,
    keep_alive,
    problem_answer,
    retry_after_seconds,
    status_for,
)
from thaw.lowlevel import Invoker


class Query(msgspec.Struct, frozen=True):
    id: int
    limit: int = 10
    tags: list[str] = []
    flag: bool = False


class Item(msgspec.Struct, frozen=True):
    id: int
    name: str


app = App("routes")


@app.capability(http("GET", "/items/{id:int}"))
async def get_item(query: Query) -> Query:
    return query


@app.capability(http("PUT", "/items/{id:int}"))
async def put_item(item: Item) -> Item:
    return item


@app.capability(http("GET", "/items/new"))
async def new_item() -> dict[str, str]:
    return {"new": "yes"}


@app.capability(http("GET", "/files/{rest:path}"))
async def files(params: dict[str, str]) -> dict[str, str]:
    return params


@app.capability(http("GET", "/users/{user:uuid}/score/{score:float}"))
async def score(params: dict[str, Any]) -> dict[str, Any]:
    return params


@app.capability(http("GET", "/names/{name}"))
async def names(params: dict[str, str]) -> dict[str, str]:
    return params


@app.capability(http("POST", "/raw"))
async def raw(body: bytes) -> bytes:
    return body


@app.capability(http("DELETE", "/items/{id:int}"))
async def delete_item() -> None:
    return None


router = compile_router(Invoker(app), max_body=1 << 20)
ids = EventIds()


def match(method: str, path: str) -> tuple[Route, dict[str, Any]]:
    found = router.match(method, path)
    assert not isinstance(found, Response), (found.status, found.body)
    return found


def refused(method: str, path: str) -> Response:
    found = router.match(method, path)
    assert isinstance(found, Response)
    return found


# -- matching ---------------------------------------------------------------------


def test_static_route_wins_over_a_parameter() -> None:
    route, params = match("GET", "/items/new")
    assert (route.name, params) == ("new_item", {})
    route, params = match("GET", "/items/42")
    assert (route.name, params) == ("get_item", {"id": 42})


def test_typed_parameters() -> None:
    user = uuid.uuid4()
    _, params = match("GET", f"/users/{str(user).upper()}/score/2.5")
    assert params == {"user": str(user), "score": 2.5}
    assert match("GET", "/files/a/b%20c.txt")[1] == {"rest": "a/b c.txt"}


def test_an_encoded_slash_stays_inside_its_parameter() -> None:
    assert match("GET", "/names/a%2Fb")[1] == {"name": "a/b"}
    assert refused("GET", "/names/a/b").status == 404


@pytest.mark.parametrize(
    "path", ["/items/abc", "/items/-1", "/items/", "/items/1/", "/users/x/score/1", "/nope", "/"]
)
def test_paths_that_do_not_match_any_route_are_404(path: str) -> None:
    answer = refused("GET", path)
    assert answer.status == 404
    assert msgspec.json.decode(answer.body)["code"] == "route_not_found"


def test_bad_utf8_in_a_parameter_is_not_a_match() -> None:
    assert refused("GET", "/names/%ff").status == 404


def test_405_lists_what_is_allowed() -> None:
    answer = refused("POST", "/items/3")
    assert answer.status == 405
    assert dict(answer.headers)["allow"] == "DELETE, GET, HEAD, OPTIONS, PUT"
    assert msgspec.json.decode(answer.body)["allow"] == ["DELETE", "GET", "HEAD", "OPTIONS", "PUT"]
    assert dict(refused("GET", "/raw").headers)["allow"] == "OPTIONS, POST"


def test_head_is_served_by_get_and_options_by_the_router() -> None:
    assert match("HEAD", "/items/1")[0].name == "get_item"
    options = refused("OPTIONS", "/items/1")
    assert options.status == 204
    assert dict(options.headers)["allow"] == "DELETE, GET, HEAD, OPTIONS, PUT"
    assert refused("OPTIONS", "*").status == 204


def test_routes_colliding_with_operational_paths_are_refused() -> None:
    from thaw.adapters.http import HttpService

    clash = App("clash")

    @clash.capability(http("GET", "/healthz"))
    async def health() -> None:
        return None

    with pytest.raises(ConfigError, match="operational path"):
        HttpService(Invoker(clash), config=HttpConfig())
    HttpService(Invoker(clash), config=HttpConfig(health_path="/live"))


# -- the request becomes an Event ---------------------------------------------------


def event(method: str, target: str, body: bytes = b"", **headers: str) -> Event:
    path, _, query = target.partition("?")
    route, params = match(method, path)
    return route.event(body, query, params, {"host": "t", **headers}, ids)


def test_get_payload_is_built_from_path_and_query_with_contract_types() -> None:
    data = event("GET", "/items/7?limit=3&tags=a&tags=b&flag=true&unknown=x").data
    assert msgspec.json.decode(data) == {
        "limit": 3,
        "tags": ["a", "b"],
        "flag": True,
        "unknown": "x",
        "id": 7,
    }
    assert msgspec.json.decode(event("GET", "/items/7").data) == {"id": 7}


def test_a_query_value_that_does_not_fit_names_the_field() -> None:
    with pytest.raises(_Refused) as caught:
        event("GET", "/items/7?limit=lots")
    assert caught.value.status == 422
    assert caught.value.detail == "Expected `int`, got `str` - at `$.limit`"


def test_conflicts_between_url_and_body_are_refused() -> None:
    with pytest.raises(_Refused, match="both a path and a query"):
        event("GET", "/items/7?id=8")
    with pytest.raises(_Refused, match="repeats"):
        event("GET", "/items/7?limit=1&limit=2")
    with pytest.raises(_Refused, match="both in the URL and the body"):
        event("PUT", "/items/7", b'{"id": 8, "name": "x"}')
    with pytest.raises(_Refused, match="must be a JSON object"):
        event("PUT", "/items/7", b"[1]")
    with pytest.raises(_Refused, match="not valid JSON"):
        event("PUT", "/items/7", b"{")


def test_body_and_path_parameters_merge() -> None:
    data = event("PUT", "/items/7", b'{"name": "lamp"}').data
    assert msgspec.json.decode(data) == {"name": "lamp", "id": 7}


def test_raw_and_payloadless_capabilities() -> None:
    assert event("POST", "/raw?x=1", b"\x00\xff").data == b"\x00\xff"
    assert event("DELETE", "/items/7", b"ignored").data == b""


def test_event_id_header_and_trace() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    got = event("GET", "/items/1", **{"idempotency-key": "order-1:v2", "traceparent": tp})
    assert got.id == "order-1:v2"
    assert got.traceparent == tp
    assert got.headers["host"] == "t"
    assert got.subject == ""
    generated = {event("GET", "/items/1").id for _ in range(100)}
    assert len(generated) == 100 and all(g.startswith("~") for g in generated)


@pytest.mark.parametrize("key", ["", "a b", "~x", "é", "x" * 256])
def test_bad_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(_Refused) as caught:
        event("GET", "/items/1", **{"idempotency-key": key})
    assert (caught.value.status, caught.value.code) == (400, "idempotency_header_invalid")


# -- Outcome -> answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Ok(b'{"a":1}'), 200),
        (Ok(b""), 204),
        (Reject("payload_malformed", "bad json"), 400),
        (Reject("contract_invalid", "Expected `int` - at `$.id`"), 422),
        (Reject("payload_too_large", "too big"), 413),
        (Reject("capability_unknown", "no such"), 404),
        (Reject("card_declined", "a function's own code"), 422),
        (Reject("idempotency_key_invalid", "x"), 422),
        (Reject("result_invalid", "x"), 500),
        (Reject("handler_error", "gave up after 3 attempts: KeyError: 'secret'"), 500),
        (Retry(0.05, "at limit", "overloaded"), 503),
        (Retry(2.5, "ValueError: password=hunter2", "handler_error"), 500),
        (Retry(1.0, "cancelled after 1s", "deadline_exceeded"), 504),
        (Retry(1.0, "x", "duplicate_in_progress"), 409),
        (Retry(1.0, "x", "some_future_code"), 503),
    ],
)
def test_outcomes_map_to_statuses(outcome: Any, status: int) -> None:
    answer = answer_outcome(outcome, event_id="e-1")
    assert answer.status == status
    if type(outcome) is Ok:
        return
    problem = msgspec.json.decode(answer.body)
    assert answer.content_type == "application/problem+json"
    assert problem["status"] == status
    assert problem["code"] == outcome.code
    assert problem["type"] == f"urn:thaw:error:{outcome.code}"
    assert problem["event_id"] == "e-1"
    assert (answer.retry_after is not None) == (type(outcome) is Retry)
    if status >= 500 and outcome.code not in ("overloaded", "deadline_exceeded"):
        assert outcome.reason not in problem["detail"]  # internals stay in the log
        assert "secret" not in answer.body.decode() and "hunter2" not in answer.body.decode()
    elif status < 500:
        assert problem["detail"] == outcome.reason


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert [retry_after_seconds(d) for d in (0, 0.05, 1.0, 1.01, 59.2)] == [1, 1, 1, 2, 60]
    assert retry_after_seconds(float("inf")) == 1
    headers = dict(response_from_answer(answer_outcome(Retry(2.5, "x", "overloaded"))).headers)
    assert headers["retry-after"] == "3"


def test_replayed_results_say_so() -> None:
    response = response_from_answer(answer_outcome(Ok(b"1", replayed=True)))
    assert dict(response.headers)["idempotent-replayed"] == "true"


@given(st.binary(max_size=40), st.booleans(), st.sampled_from(["GET /items/1", "POST /raw"]))
def test_the_fast_ok_path_agrees_with_the_decision_table(
    data: bytes, replayed: bool, where: str
) -> None:
    method, path = where.split()
    route, _ = match(method, path)
    outcome = Ok(data, replayed=replayed)
    fast = route.answer(outcome, Event(id="x"))
    table = response_from_answer(answer_outcome(outcome, content_type=route.content_type))
    assert (fast.status, fast.body, fast.content_type, fast.headers) == (
        table.status,
        table.body,
        table.content_type,
        table.headers,
    )


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ("1.1", "", True),
        ("1.1", "close", False),
        ("1.1", "Keep-Alive, Close", False),
        ("1.1", "keep-alive", True),
        ("1.0", "", False),
        ("1.0", "keep-alive", True),
        ("1.0", "close, keep-alive", False),
        ("0.9", "", False),
    ],
)
def test_keep_alive_table(version: str, connection: str, expected: bool) -> None:
    assert keep_alive(version, connection) is expected


def test_protocol_refusals_have_fixed_statuses() -> None:
    assert status_for("headers_too_large", retryable=False) == 431
    assert status_for("request_timeout", retryable=False) == 408
    answer = problem_answer("overloaded", "busy")
    assert (answer.status, answer.retry_after) == (503, 1)
    hidden = problem_answer("internal_error", "Traceback (most recent call last): ...")
    assert b"Traceback" not in hidden.body


@pytest.mark.parametrize(
    "options",
    [{"max_body": 0}, {"max_headers": True}, {"keepalive_timeout": 0}, {"ready_path": "readyz"}],
)
def test_config_is_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HttpConfig(**options)
