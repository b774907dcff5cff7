"""Shared by the edge tests: waiting for the Node host's "listening" line."""

from __future__ import annotations

import json
import select
import subprocess
import time
from typing import Any

import pytest


def wait_listening(process: subprocess.Popen[str], *, timeout: float) -> dict[str, Any]:
    """The JSON line the host prints once it listens; fail if it exits or takes too long."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"edge serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith("{"):
                document: dict[str, Any] = json.loads(line)
                return document
    pytest.fail(f"edge serve did not listen within {timeout:g}s")
