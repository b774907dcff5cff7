"""benchmarks/compare.py refuses what it cannot compare with one line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("no-such-revision-anywhere", "."), "git:"),
        (("HEAD", ".", "--only", "nope"), "--only takes some of invoke, jetstream, http"),
        (("HEAD", ".", "--rounds", "0"), "--rounds >= 1"),
        (("HEAD",), "the following arguments are required: rev_b"),
    ],
)
def test_what_cannot_be_compared_is_refused_in_one_line(args: tuple[str, ...], says: str) -> None:
    done = compare(*args)
    assert done.returncode == 2
    assert says in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
