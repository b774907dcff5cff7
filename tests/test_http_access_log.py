"""The access log: one line per answer, trace ids, no secrets, hostile targets kept on one line."""

from __future__ import annotations

import io
import logging
import re

import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, ConfigError, Context, http
from thaw.adapters.http import HttpConfig
from thaw.adapters.http._wire import Request
from thaw.adapters.http.access_log import MAX_TARGET, StreamAccessLog, access_line, clean_target

pytestmark = pytest.mark.anyio
LOGGER = "thaw.http.access"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
LINE = re.compile(
    r"remote=127\.0\.0\.1:\d+ method=(\S+) target=(\S+) status=(\d+) bytes=(\d+) "
    r"ms=\d+\.\d\d trace=(\S+) capability=(\S+)\Z"
)


class Greeting(msgspec.Struct):
    name: str


def app() -> App:
    made = App("logged")

    @made.capability(http("POST", "/greet"))
    async def greet(greeting: Greeting) -> dict[str, str]:
        return {"hello": greeting.name}

    @made.capability(http("GET", "/trace"))
    async def trace(ctx: Context) -> dict[str, str]:
        return {"trace": ctx.trace.trace_id}

    return made


def lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    found = []
    for record in caplog.records:
        if record.name == LOGGER:
            match = LINE.match(record.getMessage())
            assert match is not None, record.getMessage()
            found.append(match)
    return found


async def test_one_line_per_request_with_trace_and_capability(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    secret = "Bearer s3cr3t-token"
    async with (
        serving(app(), HttpConfig(access_log=True)) as server,
        RawClient.connect(server.port) as client,
    ):
        headers = {"traceparent": TRACEPARENT, "Authorization": secret}
        body = b'{"name": "Ada-secret-body"}'
        await client.send(request("POST", "/greet?token=abc123&x=1", body, headers))
        assert (await client.response()).status == 200
        await client.send(request("GET", "/nowhere"))
        assert (await client.response()).status == 404
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
        await client.send(request("HEAD", "/healthz"))
        assert (await client.response(head=True)).status == 200
    found = lines(caplog)
    assert [m.group(1, 2, 3) for m in found] == [
        ("POST", "/greet?token=*&x=*", "200"),
        ("GET", "/nowhere", "404"),
        ("GET", "/healthz", "200"),
        ("HEAD", "/healthz", "200"),
    ]
    assert found[0].group(5, 6) == (TRACE, "greet")
    assert int(found[0].group(4)) == len(b'{"hello":"Ada-secret-body"}')
    assert found[3].group(4) == "0"  # HEAD sends no body
    assert found[1].group(6) == "-"
    text = caplog.text
    for leaked in ("s3cr3t", "abc123", "Ada-secret-body"):
        assert leaked not in text


async def test_a_request_without_traceparent_gets_one_the_function_sees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        serving(app(), HttpConfig(access_log=True)) as server,
        RawClient.connect(server.port) as client,
    ):
        for traceparent in (None, "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"):
            headers = {"traceparent": traceparent} if traceparent else {}
            await client.send(request("GET", "/trace", headers=headers))
            reply = await client.response()
            assert reply.status == 200, reply
            logged = lines(caplog)[-1].group(5)
            assert re.fullmatch("[0-9a-f]{32}", logged)
            assert msgspec.json.decode(reply.body) == {"trace": logged}


async def test_faults_are_logged_without_a_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        serving(app(), HttpConfig(access_log=True)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await client.response()).status == 400
        await client.closed()
    (found,) = lines(caplog)
    assert found.group(1, 2, 3, 5, 6) == ("-", "-", "400", "-", "-")


async def test_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with serving(app()) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
    assert not [r for r in caplog.records if r.name == LOGGER]


async def test_a_hostile_target_stays_on_one_escaped_capped_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        serving(app(), HttpConfig(access_log=True)) as server,
        RawClient.connect(server.port) as client,
    ):
        # llhttp refuses raw controls, quotes and high bytes in a target; what it lets
        # through is escaped all the same (defence in depth), and capped.
        target = "/x%22%0D%0A/" + "a" * 5000
        await client.send(request("GET", target))
        assert (await client.response()).status == 404
    (found,) = lines(caplog)
    logged = found.group(2)
    assert len(logged) <= MAX_TARGET
    assert logged.startswith("/x%2522%250D%250A/aaa")


def test_clean_target_and_line_shapes() -> None:
    assert clean_target("/a?b=1&c=&d") == "/a?b=*&c=*&d=*"
    assert clean_target("/a b\r\nc") == "/a%20b%0D%0Ac"
    assert clean_target("/%2F") == "/%252F"
    assert len(clean_target("/" + "x" * 10_000)) == MAX_TARGET
    req = Request("GET", "/a?k=v", "/a", "k=v", "1.1", {"traceparent": "bad"}, True, 10)
    line = access_line("1.2.3.4:5", req, 200, 3, 0.0015)
    assert line == (
        "remote=1.2.3.4:5 method=GET target=/a?k=* status=200 bytes=3 ms=1.50 trace=- capability=-"
    )
    assert "\n" not in access_line("-", None, 400, 0, 0.0)


def test_config_flag_is_validated() -> None:
    with pytest.raises(ConfigError, match="access_log must be a bool"):
        HttpConfig(access_log="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="access_log_stream must be"):
        HttpConfig(access_log=True, access_log_stream="syslog")  # type: ignore[arg-type]


# -- the buffered stream writer (what thaw serve uses) -----------------------------------


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("the disk is full")


def test_the_stream_log_holds_lines_until_flushed_or_full() -> None:
    stream = io.StringIO()
    sink = StreamAccessLog(stream)
    sink.record("1.2.3.4:5", None, 400, 0, 0.001)
    assert stream.getvalue() == ""  # buffered
    sink.flush()
    assert (
        stream.getvalue()
        == f"{StreamAccessLog.PREFIX}{access_line('1.2.3.4:5', None, 400, 0, 0.001)}\n"
    )
    for _ in range(StreamAccessLog.BUFFERED_LINES):
        sink.record("-", None, 200, 1, 0.0)
    assert stream.getvalue().count("\n") == 1 + StreamAccessLog.BUFFERED_LINES  # full: written
    sink.flush()  # nothing left: writes nothing
    assert stream.getvalue().count("\n") == 1 + StreamAccessLog.BUFFERED_LINES


def test_a_broken_stream_loses_lines_not_answers(caplog: pytest.LogCaptureFixture) -> None:
    sink = StreamAccessLog(Broken())
    sink.record("-", None, 200, 1, 0.0)
    sink.flush()
    assert "could not write 1 access-log lines: the disk is full" in caplog.text


async def test_a_served_stream_log_is_written_by_the_time_the_server_closes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = HttpConfig(access_log=True, access_log_stream="stderr")
    async with serving(app(), config) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/greet", b'{"name": "Ada"}'))
        assert (await client.response()).status == 200
    written = capsys.readouterr().err.splitlines()
    [line] = [text for text in written if "method=POST" in text]
    assert line.startswith("thaw: thaw.http.access: remote=127.0.0.1:")
    assert "target=/greet status=200" in line and "capability=greet" in line
