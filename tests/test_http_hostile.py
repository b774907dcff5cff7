"""Hostile HTTP input never takes the host down: each case gets a clear answer.

Deeply nested JSON (also through the stream path, which shares the invoker's
decode), Host header values (RFC 9112 section 3.2 over RFC 3986's grammar, by
hypothesis), chunk extensions and trailers without end, a function's own error
codes as metric labels, results larger than the capability serves, and the
server's body limit raised per server.
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_http_support import RawClient, request, serving

from thaw import App, Reject, Rejected, RetryPolicy, ThawError, http, stream
from thaw.adapters.http import HttpConfig
from thaw.adapters.http.metrics import CapabilityMetrics, ServerCounters, render
from thaw.decisions._http import valid_host
from thaw.lowlevel import DEAD_LETTER_STREAM, Invoker, StreamWorker
from thaw.testing import MemoryBackbone, make_event

pytestmark = pytest.mark.anyio

DEEP = b"[" * 1000 + b"]" * 1000  # 2 KB, past the decoder's recursion limit
DEEPER = b'{"a":' * 5000 + b"1" + b"}" * 5000


class Order(msgspec.Struct):
    item: Any
    count: int = 1


def orders_app(events: list[object] | None = None) -> App:
    app = App("orders")

    @app.capability(http("POST", "/orders"), http("POST", "/orders/{shop}"))
    async def place(order: dict[str, Any]) -> dict[str, Any]:
        return {"placed": len(order)}

    @app.capability(
        http("POST", "/typed"), stream("orders.typed"), retry=RetryPolicy(max_attempts=1)
    )
    async def typed(order: Order) -> int:
        if events is not None:
            events.append(order)
        return order.count

    return app


def problem(reply: object) -> dict[str, Any]:
    return msgspec.json.decode(reply.body)  # type: ignore[attr-defined,no-any-return]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


# -- deeply nested JSON -------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEPER, b'{"item":' + DEEP + b"}"], ids=["object", "field"])
@pytest.mark.parametrize("target", ["/orders", "/orders/main", "/typed"])
async def test_deeply_nested_json_is_payload_malformed_without_a_traceback(
    body: bytes, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(orders_app()) as server, RawClient.connect(server.port) as client:
        for _ in range(3):  # the connection and the server stay usable
            await client.send(request("POST", target, body))
            reply = await client.response()
            assert reply.status == 400, reply
            answer = problem(reply)
            assert answer["code"] == "payload_malformed"
            assert "nested too deeply" in str(answer["detail"])
        await client.send(request("POST", target, b'{"item": 1}'))
        assert (await client.response()).status == 200
    assert tracebacks(caplog) == []


class Picky(msgspec.Struct):
    name: str

    def __post_init__(self) -> None:
        raise LookupError("a contract bug, not the caller's")


async def test_the_invoker_turns_any_decoder_failure_into_payload_malformed() -> None:
    app = App("picky")

    @app.capability()
    async def take(value: Picky) -> None:
        return None

    @app.capability()
    async def deep(value: list[Any]) -> None:
        return None

    invoker = Invoker(app)
    outcome = await invoker.invoke("deep", make_event(DEEP))
    assert isinstance(outcome, Reject) and outcome.code == "payload_malformed"
    outcome = await invoker.invoke("take", make_event(b'{"name": "x"}'))
    assert isinstance(outcome, Reject) and outcome.code == "payload_malformed"
    assert "LookupError" in outcome.reason


async def test_a_deeply_nested_stream_message_is_dead_lettered_not_a_crash() -> None:
    backbone = MemoryBackbone()
    seen: list[object] = []
    app = orders_app(seen)
    from thaw.host._provision import apply_plan, plan_for

    plan = plan_for(app)
    await apply_plan(plan, backbone)
    await backbone.publish("orders.typed", b'{"item":' + DEEP + b"}", msg_id="deep-1")
    await backbone.publish("orders.typed", b'{"item": 1, "count": 2}', msg_id="fine-1")
    invoker = Invoker(app, backbone=backbone)
    (consumer,) = [c for c in plan.consumers if c.capability == "typed"]
    worker = StreamWorker(
        invoker, backbone, consumer.capability, stream=consumer.stream, consumer=consumer.config
    )
    await worker.run_until_idle()
    assert seen == [Order(item=1, count=2)]
    letters = [m async for m in _stored(backbone, DEAD_LETTER_STREAM)]
    assert [m.headers.get("Thaw-Error-Code") for m in letters] == ["payload_malformed"]


async def _stored(backbone: MemoryBackbone, name: str):  # type: ignore[no-untyped-def]
    info = await backbone.stream_info(name)
    for seq in range(info.first_seq, info.last_seq + 1):
        yield await backbone.get_message(name, seq)


# -- Host ------------------------------------------------------------------------------

_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_SUB_DELIMS = "!$&'()*+,;="
_HEX = "0123456789abcdefABCDEF"
_pct = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(_HEX), st.sampled_from(_HEX))
_reg_name = st.lists(
    st.one_of(st.sampled_from(_UNRESERVED + _SUB_DELIMS), _pct), min_size=1, max_size=40
).map("".join)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_future = st.builds(
    lambda v, rest: f"[v{v}.{rest}]",
    st.text(_HEX, min_size=1, max_size=3),
    st.text(_UNRESERVED + _SUB_DELIMS + ":", min_size=1, max_size=20),
)
_port = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"), st.just(":"))
VALID_HOSTS = st.builds(
    lambda host, port: host + port, st.one_of(_reg_name, _ipv4, _ipv6, _future), _port
)
# One character no part of the grammar allows, placed anywhere in a valid value.
_FORBIDDEN = ' "<>\\^`{|}#/?@\t' + "\x7f\x80\xff\x01"
INVALID_HOSTS = st.builds(
    lambda host, bad, where: host[:where] + bad + host[where:],
    VALID_HOSTS,
    st.sampled_from(_FORBIDDEN),
    st.integers(0, 60),
)
NAMED_INVALID = [
    "a b",
    "@evil",
    "user@host",
    "[::1",
    "::1",
    "[::1]x",
    "[fe80::1%eth0]",
    "[1.2.3.4]",
    "[v1]",
    "host:80:80",
    "host:port",
    "host:123456",
    "host:99999",
    "ex%zzample",
    "ex%4",
    "",
]


def test_valid_host_accepts_the_grammar_and_names() -> None:
    for host in (
        "example.com",
        "example.com:8080",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:443",
        "[::ffff:1.2.3.4]",
        "[v7.fe:80]",
        "xn--bcher-kva.example",
        "a%20b",
        "host:",
    ):
        assert valid_host(host), host
    for host in NAMED_INVALID:
        assert not valid_host(host), host


@given(VALID_HOSTS)
def test_valid_host_accepts_every_value_of_the_grammar(host: str) -> None:
    assert valid_host(host), host


@given(INVALID_HOSTS)
def test_valid_host_refuses_any_forbidden_character(host: str) -> None:
    assert not valid_host(host), host


@given(st.text(max_size=30))
def test_valid_host_agrees_with_the_rfc_grammar_on_any_text(host: str) -> None:
    assert valid_host(host) == _oracle(host), host


def _oracle(value: str) -> bool:
    """RFC 3986 host [":" port], written differently from the server's check."""
    import ipaddress

    if value.startswith("["):
        inside, close, port = value[1:].partition("]")
        if not close:
            return False
        if inside[:1] in ("v", "V"):
            version, dot, rest = inside[1:].partition(".")
            ok = bool(dot and version and rest) and all(c in _HEX for c in version)
            ok = ok and all(c in _UNRESERVED + _SUB_DELIMS + ":" for c in rest)
        else:
            try:
                address = ipaddress.ip_address(inside)
                ok = "%" not in inside and isinstance(address, ipaddress.IPv6Address)
            except ValueError:
                ok = False
        host = "x"  # checked
    else:
        ok = True
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
        port = (":" + port) if ":" in value else ""
        if not host:
            return False
        i = 0
        while i < len(host):
            c = host[i]
            if c == "%":
                if not (
                    i + 2 < len(host) + 0
                    and all(h in _HEX for h in host[i + 1 : i + 3])
                    and len(host[i + 1 : i + 3]) == 2
                ):
                    return False
                i += 3
                continue
            if c not in _UNRESERVED + _SUB_DELIMS:
                return False
            i += 1
    if not ok:
        return False
    if port:
        digits = port[1:]
        if port[0] != ":" or not all(c in string.digits for c in digits) or len(digits) > 5:
            return False
        if digits and int(digits) > 65535:
            return False
    return True


def hello_app() -> App:
    app = App("hello")

    @app.capability(http("GET", "/hello"))
    async def hello() -> str:
        return "hi"

    return app


def _head(host_lines: list[str], version: str = "1.1") -> bytes:
    lines = [f"GET /hello HTTP/{version}", *host_lines, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize("value", NAMED_INVALID)
async def test_a_request_with_an_invalid_host_is_400_and_closed(value: str) -> None:
    async with serving(hello_app()) as server, RawClient.connect(server.port) as client:
        await client.send(_head([f"Host: {value}"]))
        reply = await client.response()
        assert reply.status == 400
        assert problem(reply)["code"] == "host_invalid"
        assert reply.headers["connection"] == "close"


@pytest.mark.parametrize(
    "lines",
    [[], ["Host: a", "Host: a"], ["Host: a", "host: b"], ["Host:"]],
    ids=["missing", "twice", "two-values", "empty"],
)
async def test_a_missing_or_repeated_host_is_400(lines: list[str]) -> None:
    async with serving(hello_app()) as server, RawClient.connect(server.port) as client:
        await client.send(_head(lines))
        assert (await client.response()).status == 400


async def test_http10_may_omit_host_but_not_send_a_bad_one() -> None:
    async with serving(hello_app()) as server:
        async with RawClient.connect(server.port) as client:
            await client.send(_head([], "1.0"))
            assert (await client.response()).status == 200
        async with RawClient.connect(server.port) as client:
            await client.send(_head(["Host: a b"], "1.0"))
            assert (await client.response()).status == 400


@settings(max_examples=60, deadline=None)
@given(valid=VALID_HOSTS, invalid=INVALID_HOSTS.filter(lambda h: h == h.strip(" \t")))
def test_the_server_answers_valid_hosts_and_refuses_invalid_ones(valid: str, invalid: str) -> None:
    import anyio

    async def main() -> None:
        async with serving(hello_app()) as server:
            for value, status in ((valid, 200), (invalid, 400)):
                async with RawClient.connect(server.port) as client:
                    await client.send(_head([f"Host: {value}"]))
                    assert (await client.response()).status == status, value

    anyio.run(main)


# -- chunk extensions and trailers ---------------------------------------------------


def _chunked_head(target: str = "/orders") -> bytes:
    return request("POST", target, b"", {"Transfer-Encoding": "chunked"})


async def test_an_endless_chunk_extension_is_refused_before_it_ends() -> None:
    async with serving(orders_app()) as server, RawClient.connect(server.port) as client:
        await client.send(_chunked_head() + b"2;name=")
        try:
            for _ in range(128):  # 8 MiB of extension, as the finding, and no end of line
                await client.send(b"v" * 65536)
        except (ConnectionError, OSError):
            pass
        reply = await client.response()  # before: no answer until receive_timeout (60 s)
        assert reply.status == 400
        assert problem(reply)["code"] == "http_malformed"
        assert "chunk" in str(problem(reply)["detail"])
        assert reply.headers["connection"] == "close"


async def test_an_endless_trailer_is_refused() -> None:
    async with serving(orders_app()) as server, RawClient.connect(server.port) as client:
        await client.send(_chunked_head() + b"2\r\n{}\r\n0\r\nX-Trailer: ")
        try:
            for _ in range(64):
                await client.send(b"v" * 65536)
        except (ConnectionError, OSError):
            pass
        reply = await client.response()
        assert reply.status == 400
        assert "trailer" in str(problem(reply)["detail"])


async def test_many_small_chunks_with_short_extensions_still_work() -> None:
    document = b'{"item": 1, "n": "' + b"x" * 3000 + b'"}'
    body = b"".join(b"1;k=v\r\n%s\r\n" % bytes([c]) for c in document)  # 1 byte a chunk
    async with serving(orders_app()) as server, RawClient.connect(server.port) as client:
        await client.send(_chunked_head() + body + b"0\r\nX-One: 1\r\n\r\n")
        reply = await client.response()
        assert reply.status == 200, reply
        assert problem(reply) == {"placed": 2}


# -- error codes as metric labels -----------------------------------------------------


def coded_app() -> App:
    app = App("coded")

    @app.capability(http("POST", "/refuse"), retry=RetryPolicy(max_attempts=1))
    async def refuse(code: str) -> None:
        raise Rejected("no", code=code)

    return app


async def test_a_functions_codes_are_a_bounded_label_set() -> None:
    async with serving(coded_app()) as server, RawClient.connect(server.port) as client:
        for n in range(300):
            await client.send(request("POST", "/refuse", msgspec.json.encode(f"code_{n}")))
            reply = await client.response()
            assert reply.status == 422
        await client.send(request("GET", "/metrics"))
        text = (await client.response()).body.decode()
    series = re.findall(r'^thaw_invocations_total\{capability="refuse",[^}]*\} (\d+)$', text, re.M)
    assert 1 < len(series) <= 66, len(series)
    assert sum(int(n) for n in series) == 300  # every invocation counted, some under "other"
    assert 'code="other"' in text


@pytest.mark.parametrize(
    "code", ["has space", "Upper", "new\nline", "x" * 65, "", "9lives", "dash-ed", "é"]
)
async def test_an_invalid_code_a_function_raises_is_replaced(code: str) -> None:
    async with serving(coded_app()) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/refuse", msgspec.json.encode(code)))
        reply = await client.response()
        assert reply.status == 422
        assert problem(reply)["code"] == "rejected"
        assert "not a valid error code" in str(problem(reply)["detail"])


def test_an_error_class_with_an_invalid_code_is_refused_when_defined() -> None:
    with pytest.raises(ThawError, match="code"):

        class Bad(Rejected):
            code = "Not A Code"


def test_metrics_cap_codes_even_when_recorded_directly() -> None:
    metrics = CapabilityMetrics("direct")
    for n in range(500):
        metrics.observe(Reject(f"c{n}", "no", 1), 0.001)
    metrics.observe(Reject("bad label\n", "no", 1), 0.001)
    text = render(
        [metrics], ServerCounters(), connections_open=0, connections_total=0, requests_in_flight=0
    ).decode()
    assert len(re.findall(r"^thaw_invocations_total\{", text, re.M)) <= 66
    assert "bad label" not in text


# -- result size ---------------------------------------------------------------------


def big_app(size: int) -> App:
    app = App("big")

    @app.capability(http("GET", "/big"))
    async def big() -> bytes:
        return b"x" * size

    @app.capability(http("GET", "/small"))
    async def small() -> bytes:
        return b"y" * 100

    return app


async def test_a_result_over_the_capabilitys_limit_is_not_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    app = big_app(9 << 20)  # the default max_result is 8 MiB
    async with serving(app) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/big"))
        reply = await client.response()
        assert reply.status == 500
        assert problem(reply)["code"] == "result_too_large"
        assert len(reply.body) < 1024
        await client.send(request("GET", "/small"))
        assert (await client.response()).body == b"y" * 100
    assert any(
        "result_too_large" in r.getMessage() or "max_result" in r.getMessage()
        for r in caplog.records
    )


async def test_max_result_is_per_capability() -> None:
    app = big_app(1000)
    spec = app.capabilities["big"]
    policy = msgspec.structs.replace(spec.policy, max_result=999)
    app._capabilities["big"] = msgspec.structs.replace(spec, policy=policy)
    async with serving(app) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/big"))
        assert problem(await client.response())["code"] == "result_too_large"


def test_max_result_is_validated() -> None:
    from thaw.lowlevel import Policy

    for bad in (-1, 0, 1.5, True, "8"):
        with pytest.raises(ThawError, match="max_result"):
            Policy(max_result=bad)  # type: ignore[arg-type]


# -- the body limit of a server -----------------------------------------------------------


async def test_the_servers_body_limit_can_be_raised() -> None:
    app = App("upload")

    @app.capability(http("POST", "/upload"), max_payload=4 << 20)
    async def upload(data: bytes) -> int:
        return len(data)

    body = b"z" * (2 << 20)
    async with serving(app) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/upload", body))
        assert (await client.response()).status == 413  # the server's default is 1 MiB
    async with (
        serving(app, HttpConfig(max_body=8 << 20)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", "/upload", body))
        reply = await client.response()
        assert reply.status == 200 and reply.body == str(2 << 20).encode()
        await client.send(request("POST", "/upload", b"z" * ((4 << 20) + 1)))
        assert (await client.response()).status == 413  # the capability's own limit


@pytest.mark.parametrize(
    ("hosts", "version", "status"),
    [
        (["test:8000"], "1.1", 200),
        (["[::1]:80"], "1.1", 200),
        ([], "2", 200),  # HTTP/2 names the authority in its own pseudo-header
        (["a b"], "1.1", 400),
        (["@evil"], "1.1", 400),
        (["[::1"], "1.1", 400),
        (["a", "b"], "1.1", 400),
        ([], "1.1", 400),
    ],
)
async def test_the_asgi_adapter_checks_host_too(
    hosts: list[str], version: str, status: int
) -> None:
    from thaw.adapters.asgi import asgi_app

    app = asgi_app(Invoker(hello_app()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": version,
        "method": "GET",
        "scheme": "http",
        "path": "/hello",
        "raw_path": b"/hello",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", h.encode()) for h in hosts],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == status
    if status == 400:
        assert msgspec.json.decode(sent[1]["body"])["code"] == "host_invalid"


async def test_open_http_server_takes_a_body_limit_as_thaw_serve_does() -> None:
    from thaw.adapters.http import open_http_server

    app = App("upload")

    @app.capability(http("POST", "/upload"), max_payload=4 << 20)
    async def upload(data: bytes) -> int:
        return len(data)

    async with (
        open_http_server(Invoker(app), max_body=3 << 20) as server,
        RawClient.connect(server.port) as client,
    ):
        assert server.config.max_body == 3 << 20
        await client.send(request("POST", "/upload", b"z" * (2 << 20)))
        assert (await client.response()).status == 200


def test_thaw_serve_max_body_flag_reaches_the_workers() -> None:
    from thaw.adapters.cli.command import _parser
    from thaw.adapters.cli.supervise import worker_command

    parser = _parser()
    args = parser.parse_args(["serve", "app.py", "--max-body", "8MiB"])
    assert args.max_body == 8 << 20
    assert parser.parse_args(["serve", "app.py", "--max-body", "1000"]).max_body == 1000
    assert parser.parse_args(["serve", "app.py"]).max_body is None
    command = worker_command(args, kind="memory", url=None, port=8000)
    assert command[command.index("--max-body") + 1] == str(8 << 20)
    for bad in ("0", "-1", "1.5MiB", "8MB", "lots", "5GiB"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "app.py", "--max-body", bad])
