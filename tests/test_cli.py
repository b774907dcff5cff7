"""The `thaw` command line: run, list, help, and hostile arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thaw.adapters.cli import command as cli

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_ok_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", HELLO, "--capability", "greet", "--data", '{"name":"Ada"}')
    assert code == cli.EXIT_OK
    assert out.startswith("ok ")
    assert "Hello, Ada!" in out


def test_run_provisions_the_buckets_the_app_declares(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "ledger_app.py"
    source.write_text(
        "from thaw import Access, App, Context\n"
        "app = App('ledgerapp')\n"
        "@app.capability(access=Access(buckets=('ledger',)))\n"
        "async def write(ctx: Context) -> str:\n"
        "    await (await ctx.kv('ledger')).put('k', b'v')\n"
        "    return 'done'\n"
    )
    code, out, err = run(capsys, "run", str(source), "--capability", "write")
    assert (code, out.strip()) == (cli.EXIT_OK, 'ok "done"'), err


def test_run_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "run", HELLO, "-c", "greet", "-d", '{"name":"Ada","language":"es"}', "--json"
    )
    assert code == 0
    assert json.loads(out) == {"outcome": "ok", "data": {"message": "Hola, Ada!", "attempt": 1}}


def test_contract_error_names_the_field_and_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "-d", '{"name": 1}')
    assert code == cli.EXIT_REJECT
    assert "contract_invalid" in out
    assert "$.name" in out


def test_malformed_json_argument(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "-d", '{"name": ')
    assert code == cli.EXIT_REJECT
    assert "payload_malformed" in out


def test_function_rejection_and_retry_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "-d", '{"name":"A","language":"xx"}')
    assert code == cli.EXIT_REJECT
    assert "unknown_language" in out
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "-d", '{"name":"Flaky"}')
    assert code == cli.EXIT_RETRY
    assert out.startswith("retry in ")
    code, out, _ = run(
        capsys, "run", HELLO, "-c", "greet", "-d", '{"name":"Flaky"}', "--attempt", "2"
    )
    assert code == cli.EXIT_OK


def test_unknown_capability(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", HELLO, "-c", "nope", "-d", "{}")
    assert code == cli.EXIT_FAILED
    assert "capability_unknown" in err
    assert "greet" in err


def test_missing_app(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "run", str(tmp_path / "nothing.py"), "-c", "x")
    assert code == cli.EXIT_FAILED
    assert "app_load_failed" in err
    assert "does not exist" in err


def test_data_file_and_stdin(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = tmp_path / "p.json"
    payload.write_bytes(b'{"name":"File"}')
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "--data-file", str(payload))
    assert code == 0 and "File" in out
    code, _, err = run(capsys, "run", HELLO, "-c", "greet", "--data-file", str(tmp_path / "no"))
    assert code == cli.EXIT_USAGE
    assert "cannot read --data-file" in err


def test_oversized_data_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "MAX_CLI_DATA", 100)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    code, _, err = run(capsys, "run", HELLO, "-c", "greet", "--data-file", str(big))
    assert code == cli.EXIT_USAGE
    assert "larger than 100 bytes" in err


def test_payload_over_the_capability_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b'{"name":"' + b"x" * (2 * 1024 * 1024) + b'"}')
    code, out, _ = run(capsys, "run", HELLO, "-c", "greet", "--data-file", str(big))
    assert code == cli.EXIT_REJECT
    assert "payload_too_large" in out


@pytest.mark.parametrize("attempt", ["0", "-1", "abc", "99999999999"])
def test_bad_attempt_is_a_usage_error(capsys: pytest.CaptureFixture[str], attempt: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", HELLO, "-c", "greet", "--attempt", attempt])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "--attempt" in capsys.readouterr().err


def test_data_and_data_file_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", HELLO, "-c", "greet", "-d", "{}", "--data-file", "x"])
    assert exit_info.value.code == cli.EXIT_USAGE


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == cli.EXIT_USAGE
    assert "run" in out and "list" in out


EVERY_COMMAND = (
    "run list snapshot bench serve dev provision dlq deploy revisions rollback policy slo cost edge"
).split()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in EVERY_COMMAND:
        assert f"    {name} " in listed or f"    {name}\n" in listed, name


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_a_named_command_parses_alone_as_in_the_whole_parser(name: str) -> None:
    """The parser built for one named command (what `thaw serve ...` builds, importing only
    that command's module) knows the command's options as the whole parser does."""
    alone = cli._parser([name])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    whole = cli._parser([])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert alone[name].format_usage() == whole[name].format_usage()


def test_serve_imports_only_its_own_command_module() -> None:
    code = (
        "import sys\n"
        "from thaw.adapters.cli.command import _parser\n"
        "_parser(['serve', 'app.py']).parse_args(['serve', 'app.py'])\n"
        "others = ('slo', 'cost_command', 'deploy', 'policy')\n"
        "print([m for m in others if 'thaw.adapters.cli.' + m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("value", ["carrier-pigeon", "s3cret-typed-in-the-wrong-flag", ""])
def test_an_unknown_backbone_is_a_usage_error_that_does_not_echo_it(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", HELLO, "--backbone", value])
    assert exit_info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no such backbone here (available: memory, nats" in err
    assert not value or value not in err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", HELLO)
    assert code == 0
    assert "greet" in out
    assert "http POST /greet" in out
    assert "stream hello.greet" in out
    assert "idempotent: yes" in out


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "thaw"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "thaw.adapters.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0
    assert "capability functions" in result.stdout
    assert "run" in result.stdout


def test_snapshot_build_inspect_and_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    output = tmp_path / "hello.snap"
    code, out, _ = run(capsys, "snapshot", "build", HELLO, "-o", str(output))
    assert code == 0
    assert "revision" in out
    assert output.exists()
    code, out, _ = run(capsys, "snapshot", "inspect", str(output))
    assert code == 0
    assert "app          hello" in out
    assert "greet  <- http POST /greet, stream hello.greet" in out
    code, out, _ = run(capsys, "snapshot", "inspect", str(output), "--json")
    assert json.loads(out)["app"] == "hello"
    code, out, _ = run(capsys, "run", str(output), "-c", "greet", "-d", '{"name":"Snap"}')
    assert code == 0
    assert "Hello, Snap!" in out
    code, out, _ = run(capsys, "list", str(output))
    assert "greet" in out


def test_snapshot_errors_are_clear(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.snap"
    bogus.write_bytes(b"not a snapshot at all")
    code, _, err = run(capsys, "snapshot", "inspect", str(bogus))
    assert code == cli.EXIT_FAILED
    assert "snapshot_invalid" in err
    assert "not a Thaw snapshot" in err
    code, _, err = run(capsys, "run", str(bogus), "-c", "greet")
    assert code == cli.EXIT_FAILED
    code, _, err = run(capsys, "snapshot", "inspect", str(tmp_path / "missing.snap"))
    assert code == cli.EXIT_FAILED
    assert "cannot read snapshot" in err
    code, _, err = run(capsys, "snapshot", "build", str(tmp_path / "nope"), "-o", str(bogus))
    assert code == cli.EXIT_FAILED
    assert "does not exist" in err


def test_snapshot_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "snapshot")
    assert code == cli.EXIT_USAGE
    assert "build" in out


def test_bench_coldstart_runs_on_a_fresh_user_app(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    app = tmp_path / "mine.py"
    app.write_text(
        "import msgspec\n"
        "from thaw import App\n"
        "app = App('mine')\n"
        "class In(msgspec.Struct):\n"
        "    n: int\n"
        "    label: str\n"
        "@app.capability()\n"
        "async def double(x: In) -> int:\n"
        "    return x.n * 2\n"
    )
    report = tmp_path / "cold.json"
    code, out, _ = run(
        capsys,
        "bench",
        "coldstart",
        str(app),
        "--trials",
        "6",
        "--process-trials",
        "3",
        "--json",
        str(report),
    )
    assert code == 0
    assert "capability double (outcome: ok)" in out
    assert "(a) instance thaw, shared" in out
    assert "(e) fork of preloaded parent" in out
    document = json.loads(report.read_text())
    assert document["app"] == "mine"
    assert document["layers"]["a_shared:double"]["n"] == 6
    assert document["capabilities"]["double"]["outcome_shared"] == "ok"


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "app.py", "--nats-pass=s3cret-value"],  # ambiguous: two flags start so
        ["serve", "app.py", "--nats-tok=s3cret-value"],
        ["dlq", "list", "--bogus=s3cret-value"],  # unrecognized
        ["--bogus=s3cret-value"],
    ],
)
def test_usage_errors_never_repeat_an_options_value(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "=***" in err  # the option is still named, so the mistake can be found
