"""`thaw serve`, `thaw provision` and `thaw dlq` on the in-memory backbone."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from thaw.adapters.cli import command as cli

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")


def test_provision_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", HELLO, "--dry-run", "--backbone", "memory"]) == 0
    out = capsys.readouterr().out
    assert "stream HELLO: hello.greet, hello.greeted" in out
    assert "consumer HELLO/hello-greet for greet" in out


def test_provision_applies_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", HELLO, "--backbone", "memory"]) == 0
    assert "provisioned app hello" in capsys.readouterr().out


def test_dlq_commands_on_an_empty_memory_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dlq", "list", "--backbone", "memory"]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert cli.main(["dlq", "purge", "--backbone", "memory"]) == cli.EXIT_USAGE
    assert "--yes" in capsys.readouterr().err
    assert cli.main(["dlq", "purge", "--backbone", "memory", "--yes"]) == 0
    assert "purged 0" in capsys.readouterr().out


def test_dlq_show_of_a_missing_letter_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["dlq", "show", "7", "--backbone", "memory"])
    assert code == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "stream_not_found" in err or "message_not_found" in err


def test_unknown_backbone_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dlq", "list", "--backbone", "carrier-pigeon"])
    assert exit_info.value.code == cli.EXIT_USAGE


def test_serve_runs_until_sigterm_and_drains(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thaw.adapters.cli",
            "serve",
            HELLO,
            "--backbone",
            "memory",
            "--http",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the host is up (bounded below)
        assert "serving app hello on the memory backbone" in line
        assert "greet" in line
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/greet", body=b'{"name": "Ada", "language": "de"}')
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"message": "Hallo, Ada!", "attempt": 1}
        connection.close()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "SIGTERM: draining" in out
    assert "thaw: stopped" in out


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The flags write THAW_* variables for child processes: restore them afterwards."""
    for name in ("THAW_DLQ_MAX_AGE", "THAW_STREAM_MAX_AGE", "THAW_REDACT_HEADERS"):
        monkeypatch.setenv(name, "")  # recorded, so what the command sets is undone too
        monkeypatch.delenv(name)
    return monkeypatch


def test_provision_shows_and_takes_age_limits(
    capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    assert cli.main(["provision", HELLO, "--dry-run", "--backbone", "memory"]) == 0
    assert "stream THAW_DLQ: thaw.dlq.> (max age 14d)" in capsys.readouterr().out
    argv = ["provision", HELLO, "--dry-run", "--backbone", "memory"]
    assert cli.main([*argv, "--dlq-max-age", "3d", "--stream-max-age", "12h"]) == 0
    out = capsys.readouterr().out
    assert "stream THAW_DLQ: thaw.dlq.> (max age 3d)" in out
    assert "stream HELLO: hello.greet, hello.greeted (max age 12h)" in out
    assert os.environ["THAW_DLQ_MAX_AGE"] == "3d"  # for the children a host starts


def test_bad_age_limits_are_clear_errors(
    capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["provision", HELLO, "--backbone", "memory", "--dlq-max-age", "2 weeks"])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "is not a duration" in capsys.readouterr().err
    clean_environment.setenv("THAW_DLQ_MAX_AGE", "forever")
    assert cli.main(["provision", HELLO, "--backbone", "memory"]) == cli.EXIT_FAILED
    assert "THAW_DLQ_MAX_AGE 'forever' is not a duration" in capsys.readouterr().err


def test_dlq_list_json_on_an_empty_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dlq", "list", "--json", "--backbone", "memory"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dead_letters": [], "more": False}
    assert cli.main(["dlq", "replay", "1", "--json", "--backbone", "memory"]) == cli.EXIT_FAILED


def test_dead_letters_written_before_redaction_are_shown_redacted() -> None:
    from thaw.adapters.cli.ops import _letter_document
    from thaw.host._dead_letters import DeadLetterRecord

    old = DeadLetterRecord(
        seq=3,
        app="a",
        capability="c",
        code="boom",
        message="db postgres://app:hunter2@db/shop refused",
        attempts=1,
        original_subject="a.c",
        original_stream="A",
        original_seq=9,
        event_id="e",
        data=b"\xff{}",
        headers={"Authorization": "Bearer s3cr3t-token", "Content-Type": "text/plain"},
    )
    document = _letter_document(old)
    text = json.dumps(document)
    assert "hunter2" not in text and "s3cr3t-token" not in text
    assert document["headers"] == {"Authorization": "[redacted]", "Content-Type": "text/plain"}
    assert document["message"] == "db postgres://app:***@db/shop refused"
    assert document["data"] == "\ufffd{}" and document["data_base64"] == "/3t9"
