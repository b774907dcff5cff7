"""Trigger constructors: every value they accept and every way they refuse one."""

from __future__ import annotations

import msgspec
import pytest

from thaw._errors import ConfigError
from thaw.declarations._cron import CronSpec, parse_cron
from thaw.declarations._triggers import (
    HTTP_METHODS,
    HttpTrigger,
    KvTrigger,
    ObjectsTrigger,
    ScheduleTrigger,
    StreamTrigger,
    SubjectTrigger,
    Trigger,
    http,
    kv,
    objects,
    schedule,
    stream,
    subject,
)

# -- http --------------------------------------------------------------------------


def test_http_without_params() -> None:
    assert http("GET", "/health") == HttpTrigger("GET", "/health", (), None)


def test_http_reads_path_params_with_types_in_order() -> None:
    trigger = http("POST", "/orgs/{org}/items/{id:int}/at/{x:float}/{ref:uuid}/files/{rest:path}")
    assert trigger.params == (
        ("org", "str"),
        ("id", "int"),
        ("x", "float"),
        ("ref", "uuid"),
        ("rest", "path"),
    )
    assert trigger.path == "/orgs/{org}/items/{id:int}/at/{x:float}/{ref:uuid}/files/{rest:path}"


def test_http_params_may_share_a_segment_with_literal_text() -> None:
    assert http("GET", "/files/{name}.{ext}").params == (("name", "str"), ("ext", "str"))


@pytest.mark.parametrize("method", sorted(HTTP_METHODS))
def test_http_method_is_normalised_to_upper_case(method: str) -> None:
    for spelling in (method, method.lower(), method.capitalize()):
        assert http(spelling, "/x").method == method


def test_http_accepts_reserved_characters_in_the_literal_path() -> None:
    path = "/a-b_c.d~e/!$&'()*+,;=:@/%20"
    assert http("GET", path).path == path


def test_http_path_length_limit_is_inclusive() -> None:
    path = "/" + "a" * 2047
    assert http("GET", path).path == path
    with pytest.raises(ConfigError, match="longer than 2048 characters"):
        http("GET", path + "a")


def test_http_enqueue_keeps_the_subject() -> None:
    assert http("POST", "/orders", enqueue="orders.created").enqueue == "orders.created"


@pytest.mark.parametrize(
    "method", ["FETCH", "", " GET", "GET ", "G ET", "CONNECT", "TRACE", None, 1]
)
def test_http_rejects_unknown_methods(method: object) -> None:
    with pytest.raises(ConfigError, match="is not one of") as info:
        http(method, "/x")  # type: ignore[arg-type]
    assert f"http method {method!r}" in info.value.message


@pytest.mark.parametrize("path", ["", "orders", "orders/", " /orders", "{id}", None, b"/x"])
def test_http_path_must_start_with_a_slash(path: object) -> None:
    with pytest.raises(ConfigError, match="must start with '/'") as info:
        http("GET", path)  # type: ignore[arg-type]
    assert repr(path) in info.value.message


@pytest.mark.parametrize("name", ["", "1id", "order-id", "id ", "a.b", "é"])
def test_http_param_names_must_be_identifiers(name: str) -> None:
    path = f"/items/{{{name}}}"
    with pytest.raises(ConfigError, match="is not an identifier") as info:
        http("GET", path)
    assert f"parameter {name!r}" in info.value.message
    assert repr(path) in info.value.message


@pytest.mark.parametrize("kind", ["integer", "INT", "bool", " int", "str:int"])
def test_http_param_type_must_be_known(kind: str) -> None:
    with pytest.raises(ConfigError, match="is not one of float, int, path, str, uuid") as info:
        http("GET", f"/items/{{id:{kind}}}")
    assert f"parameter type {kind!r}" in info.value.message


@pytest.mark.parametrize(
    ("path", "name"), [("/a/{id}/b/{id}", "id"), ("/a/{id}/{id:int}", "id"), ("/{x:int}{x}", "x")]
)
def test_http_param_may_not_appear_twice(path: str, name: str) -> None:
    with pytest.raises(ConfigError, match=f"parameter '{name}' appears twice"):
        http("GET", path)


@pytest.mark.parametrize(
    "path",
    [
        "/a b",
        "/a?b=1",
        "/a#frag",
        "/a\n",
        "/a\tb",
        "/caf\u00e9",
        "/a{b",
        "/a}b",
        "/a/{b}}",
        "/{{b}}",
        "/a\\b",
        '/a"b',
        "/a<b>",
        "/a^b",
        "/a|b",
        "/a`b",
        "/a[1]",
    ],
)
def test_http_rejects_characters_not_allowed_in_a_url_path(path: str) -> None:
    with pytest.raises(ConfigError, match="not allowed in a URL path") as info:
        http("GET", path)
    assert repr(path) in info.value.message


@pytest.mark.parametrize("enqueue", ["", "orders.*", "orders.>", "a..b", ".a", "a.", "a b", "a*"])
def test_http_rejects_bad_enqueue_subjects(enqueue: str) -> None:
    with pytest.raises(ConfigError, match="invalid subject") as info:
        http("POST", "/orders", enqueue=enqueue)
    assert repr(enqueue) in info.value.message


# -- subject / stream / kv / objects -----------------------------------------------


@pytest.mark.parametrize("name", ["orders", "orders.created", "orders.*.created", "orders.>", ">"])
def test_subject_accepts_subjects_and_patterns(name: str) -> None:
    assert subject(name) == SubjectTrigger(name, "")
    assert subject(name, queue="workers").queue == "workers"


@pytest.mark.parametrize(
    "name", ["", "a..b", ".a", "a.", "a b", ">.a", "a.>.b", "a*", "a.b>", "\x00"]
)
def test_subject_rejects_invalid_subjects(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid subject") as info:
        subject(name)
    assert repr(name) in info.value.message


@pytest.mark.parametrize("queue", ["a.b", "a b", "q*", "q>", "a/b", "x" * 256])
def test_subject_rejects_invalid_queue_groups(queue: str) -> None:
    with pytest.raises(ConfigError, match="invalid queue group name"):
        subject("orders", queue=queue)


def test_stream_defaults_and_options() -> None:
    assert stream("orders.>") == StreamTrigger("orders.>", None, None)
    trigger = stream("orders.created", stream="ORDERS", durable="billing-worker")
    assert (trigger.subject, trigger.stream, trigger.durable) == (
        "orders.created",
        "ORDERS",
        "billing-worker",
    )


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"stream": "ORD.ERS"}, "stream"),
        ({"stream": ""}, "stream"),
        ({"stream": "a b"}, "stream"),
        ({"durable": "dur.able"}, "durable consumer"),
        ({"durable": "d*"}, "durable consumer"),
        ({"durable": ""}, "durable consumer"),
    ],
)
def test_stream_rejects_invalid_names(kwargs: dict[str, str], kind: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid {kind} name"):
        stream("orders.created", **kwargs)  # type: ignore[arg-type]


def test_stream_rejects_invalid_subjects() -> None:
    with pytest.raises(ConfigError, match=r"invalid subject 'orders\.\.created'"):
        stream("orders..created")


def test_kv_defaults_to_every_key() -> None:
    assert kv("profiles") == KvTrigger("profiles", ">")
    assert kv("profiles", key="users.*").key == "users.*"


@pytest.mark.parametrize("bucket", ["", "my.bucket", "my bucket", "b/x", "b:x", "b*", "x" * 256])
def test_kv_and_objects_reject_invalid_buckets(bucket: str) -> None:
    with pytest.raises(ConfigError, match="invalid kv bucket name"):
        kv(bucket)
    with pytest.raises(ConfigError, match="invalid object store bucket name"):
        objects(bucket)


@pytest.mark.parametrize("key", ["", "a..b", "a.", "a b", "a.>.b"])
def test_kv_rejects_invalid_key_patterns(key: str) -> None:
    with pytest.raises(ConfigError, match="invalid subject"):
        kv("profiles", key=key)


def test_objects_bucket() -> None:
    assert objects("photos_2024-raw") == ObjectsTrigger("photos_2024-raw")


# -- schedule ----------------------------------------------------------------------


def test_schedule_parses_the_cron_and_defaults_to_utc_skip() -> None:
    trigger = schedule("*/15 9-17 * * mon-fri")
    assert isinstance(trigger.cron, CronSpec)
    assert trigger.cron == parse_cron("*/15 9-17 * * mon-fri")
    assert trigger.cron.expression == "*/15 9-17 * * mon-fri"
    assert trigger.timezone == "UTC"
    assert trigger.missed == "skip"


def test_schedule_accepts_iana_time_zones_and_run_once() -> None:
    trigger = schedule("@daily", timezone="Europe/Berlin", missed="run_once")
    assert trigger == ScheduleTrigger(parse_cron("@daily"), "Europe/Berlin", "run_once")
    assert schedule("0 0 * * *", timezone="America/Argentina/Buenos_Aires").timezone == (
        "America/Argentina/Buenos_Aires"
    )


@pytest.mark.parametrize(
    "timezone",
    ["Mars/Olympus_Mons", "", "Europe/", "../../etc/passwd", "/etc/localtime", "Europe/Berlin\x00"],
)
def test_schedule_rejects_unknown_time_zones(timezone: str) -> None:
    with pytest.raises(ConfigError, match="is not a known IANA time zone") as info:
        schedule("@hourly", timezone=timezone)
    assert repr(timezone) in info.value.message


def test_schedule_rejects_a_non_string_time_zone() -> None:
    with pytest.raises(ConfigError, match="is not a known IANA time zone"):
        schedule("@hourly", timezone=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("missed", ["always", "", "SKIP", None])
def test_schedule_rejects_unknown_missed_policies(missed: object) -> None:
    with pytest.raises(ConfigError, match="must be 'skip' or 'run_once'") as info:
        schedule("@hourly", missed=missed)  # type: ignore[arg-type]
    assert f"missed={missed!r}" in info.value.message


def test_schedule_rejects_bad_cron_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="cron hour value 25 is outside 0-23"):
        schedule("0 25 * * *")


# -- triggers as values ------------------------------------------------------------


def test_triggers_are_frozen_values() -> None:
    trigger = http("get", "/x/{id:int}")
    assert trigger == http("GET", "/x/{id:int}")
    assert hash(trigger) == hash(http("GET", "/x/{id:int}"))
    with pytest.raises(AttributeError):
        trigger.path = "/y"  # type: ignore[misc]


@pytest.mark.parametrize(
    "trigger",
    [
        http("PUT", "/a/{id:uuid}", enqueue="a.put"),
        subject("a.*", queue="q"),
        stream("a.>", stream="A", durable="d"),
        schedule("5 4 * * sun", timezone="Europe/Berlin", missed="run_once"),
        objects("bucket"),
        kv("bucket", key="k.*"),
    ],
)
def test_triggers_round_trip_through_json_as_a_tagged_union(trigger: Trigger) -> None:
    assert msgspec.json.decode(msgspec.json.encode(trigger), type=Trigger) == trigger
