"""The examples work end to end: the hello app and the `make demo` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from example_loader import FROM_SNAPSHOT, load_example

from thaw import Ok, Reject
from thaw.testing import invoke

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"


@pytest.mark.anyio
async def test_hello_greets_in_several_languages() -> None:
    app, _ = load_example("hello")
    outcome = await invoke(app, "greet", {"name": "Ada", "language": "de"})
    assert outcome == Ok(b'{"message":"Hallo, Ada!","attempt":1}')
    rejected = await invoke(app, "greet", {"name": "Ada", "language": "tlh"})
    assert isinstance(rejected, Reject)
    assert rejected.code == "unknown_language"


def test_example_tests_pass_unchanged_from_snapshots() -> None:
    if FROM_SNAPSHOT:  # already inside the snapshot run: do not recurse
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), THAW_EXAMPLES_FROM="snapshot")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not test_example_tests_pass_unchanged_from_snapshots",
            str(ROOT / "tests" / "test_examples.py"),
            str(ROOT / "tests" / "test_example_payment_webhook.py"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout


def run_demo(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a demo script as a user would; stdin is not a terminal, so it never waits."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


def test_demo_runs_and_reports_what_happened() -> None:
    result = run_demo(HELLO / "demo.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Bonjour, Ada!" in out
    assert "(duplicate, not stored)" in out
    assert "worker: 2 acked, 1 retried, 2 dead-lettered" in out
    assert "[unknown_language]" in out
    assert "[contract_invalid]" in out


def test_make_demo_walks_through_the_payment_webhook_and_the_bff() -> None:
    result = run_demo(ROOT / "examples" / "demo.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "served on an embedded nats-server with JetStream" in out
    assert "balance 12107 cents after 1 entry(ies) (idempotent on the payment)" in out
    assert '"duplicate":true' in out
    assert "signed with another secret -> 401" in out
    assert "no signature -> 401" in out
    assert "signed, but breaks the contract -> 422" in out
    assert "[schema_unsupported]" in out
    assert "GET /page/u1 -> 200" in out
    assert "GET /page/nobody -> 404" in out
    assert "curl -s -X POST http://127.0.0.1:" in out
    assert "serving" not in out  # it did not wait for Ctrl-C


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_the_demo_refuses_a_bad_serve_for(value: str) -> None:
    result = run_demo(ROOT / "examples" / "demo.py", "--serve-for", value, timeout=60)
    assert result.returncode == 2
    assert "--serve-for" in result.stderr
