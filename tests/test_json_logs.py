"""``thaw serve --log-format json``: one JSON object per line, with the fields, no secrets."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nats_fixtures import serve_http_port

from thaw.adapters.cli import command as cli
from thaw.adapters.http.access_log import AccessLog, access_line
from thaw.adapters.telemetry.logs import JsonFormatter, log_format

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
PASSWORD = "pw-Qx81-never-logged"
TOKEN = "tok-Zr55-never-logged"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"

APP = textwrap.dedent(
    """
    import msgspec
    from thaw import App, Context, http

    app = App("logs")

    class In(msgspec.Struct):
        name: str

    @app.capability(http("POST", "/hi"))
    async def hi(request: In, ctx: Context) -> dict:
        ctx.log.info("saying hi to %s", request.name)
        ctx.log.warning("calling out with password=%s and Bearer %s", "hunter2", "abc.def")
        return {"hi": request.name}

    @app.capability(http("POST", "/boom"))
    async def boom(request: In) -> dict:
        raise ValueError("it broke")
    """
)


def record(name: str, message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_object_with_its_fields() -> None:
    formatter = JsonFormatter(secrets=())
    line = formatter.format(
        record(
            "app.x",
            "done",
            trace_id=TRACE,
            span_id="00f067aa0ba902b7",
            revision="r1",
            event_id="ev-1",
            capability="pay",
        )
    )
    parsed = json.loads(line)
    assert "\n" not in line
    assert parsed["level"] == "INFO" and parsed["logger"] == "app.x"
    assert parsed["message"] == "done" and parsed["time"].endswith("Z")
    assert {
        k: parsed[k] for k in ("trace_id", "span_id", "capability", "revision", "event_id")
    } == {
        "trace_id": TRACE,
        "span_id": "00f067aa0ba902b7",
        "capability": "pay",
        "revision": "r1",
        "event_id": "ev-1",
    }


def test_ctx_log_prefix_and_access_log_pairs_become_fields() -> None:
    formatter = JsonFormatter(secrets=())
    parsed = json.loads(formatter.format(record("thaw.app", f"[{TRACE} greet] hello")))
    assert (parsed["trace_id"], parsed["capability"], parsed["message"]) == (
        TRACE,
        "greet",
        "hello",
    )
    line = access_line("127.0.0.1:5", None, 400, 12, 0.0015)
    parsed = json.loads(formatter.format(record("thaw.http.access", line)))
    assert parsed["status"] == "400" and parsed["remote"] == "127.0.0.1:5"
    assert "trace_id" not in parsed  # "-": not known


def test_secrets_are_scrubbed_from_messages_headers_and_exceptions() -> None:
    formatter = JsonFormatter(secrets=(PASSWORD,))
    made = record(
        "x",
        f"nats://u:{PASSWORD}@h:4222 password=p4ss Bearer t0k",
        headers={"Authorization": "Bearer zzz", "X-Api-Token": "yyy", "Accept": "*/*"},
    )
    try:
        raise RuntimeError(f"failed with {PASSWORD}")
    except RuntimeError:
        made.exc_info = sys.exc_info()
    line = formatter.format(made)
    for secret in (PASSWORD, "p4ss", "t0k", "zzz", "yyy"):
        assert secret not in line
    assert json.loads(line)["headers"]["Accept"] == "*/*"


def test_the_format_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THAW_LOG_FORMAT", raising=False)
    assert log_format(None) == "text"
    monkeypatch.setenv("THAW_LOG_FORMAT", "JSON")
    assert log_format(None) == "json"
    assert log_format("text") == "text"
    monkeypatch.setenv("THAW_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="THAW_LOG_FORMAT"):
        log_format(None)


def test_a_bad_log_format_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", str(ROOT / "examples" / "hello"), "--log-format", "xml"])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "--log-format" in capsys.readouterr().err


def test_access_log_through_logging_is_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "thaw.http.access")
    AccessLog().record("127.0.0.1:9", None, 431, 0, 0.001)
    parsed = json.loads(JsonFormatter(secrets=()).format(caplog.records[-1]))
    assert parsed["logger"] == "thaw.http.access" and parsed["status"] == "431"


def test_serve_json_lines_parse_carry_the_fields_and_hold_no_secret(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    env = dict(os.environ, PYTHONPATH=str(ROOT), THAW_LOG_FORMAT="json")
    env["THAW_NATS_PASSWORD"] = PASSWORD  # given to the process, never to be logged
    env["THAW_NATS_TOKEN"] = TOKEN
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(tmp_path / "app.py")]
    command += ["--backbone", "memory", "--http", "0", "--access-log"]
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path
        )
    try:
        port = serve_http_port(process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        connection.request(
            "POST",
            "/hi",
            body=b'{"name": "Ada"}',
            headers={"traceparent": TRACEPARENT, "authorization": f"Bearer {TOKEN}"},
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        connection.request(
            "POST", "/boom", body=b'{"name": "Ada"}', headers={"traceparent": TRACEPARENT}
        )
        failed = connection.getresponse()
        assert failed.status >= 500, failed.read()
        failed.read()
        connection.close()
    finally:
        process.terminate()
        process.wait(WAIT)
        if process.stdout is not None:
            process.stdout.read()
            process.stdout.close()
    text = stderr_path.read_text()
    lines = [json.loads(one) for one in text.splitlines() if one.strip()]
    assert all({"time", "level", "logger", "message"} <= set(one) for one in lines)
    said = [one for one in lines if one["message"] == "saying hi to Ada"]
    assert said, text
    assert said[0]["trace_id"] == TRACE and said[0]["capability"] == "hi"
    assert said[0]["event_id"] and said[0]["span_id"]  # ctx.log lines name their event
    assert len(said[0]["revision"]) >= 12  # and the revision serving it (thaw serve's build)
    (broke,) = [one for one in lines if one["level"] == "ERROR" and "boom" in one["message"]]
    assert (broke["capability"], broke["trace_id"]) == ("boom", TRACE), broke
    assert broke["event_id"] and "ValueError: it broke" in broke["exception"]
    assert broke["revision"] == said[0]["revision"] and broke["span_id"]
    (access,) = [
        one for one in lines if one["logger"] == "thaw.http.access" and one["target"] == "/hi"
    ]
    assert access["status"] == "200" and access["trace_id"] == TRACE, access
    for secret in (PASSWORD, TOKEN, "hunter2", "abc.def"):
        assert secret not in text
