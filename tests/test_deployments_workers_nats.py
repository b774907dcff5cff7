"""``thaw serve --deployed APP --workers N`` on a real nats-server: every worker reads the
deployment record and follows it, so a deploy and a rollback reach all of them."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from nats_fixtures import nats_server, thaw_serve  # noqa: F401
from test_deployments_nats import built, with_backbone

from thaw.adapters.nats.server import EmbeddedServer
from thaw.host._deployments import deploy, rollback

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
WORKERS = 2

APP = """
import os

from thaw import App, http

app = App("{name}")


@app.capability(http("GET", "/version"))
async def version() -> dict[str, str]:
    return {{"version": "{version}", "pid": str(os.getpid())}}
"""


@contextmanager
def workers(tmp_path: Path, url: str, name: str) -> Iterator[int]:
    arguments = ["--deployed", name, "--url", url, "--http", "0", "--workers", str(WORKERS)]
    arguments += ["--state-dir", str(tmp_path / "state"), "--no-access-log"]
    ready = f"with {WORKERS} workers on the"
    with thaw_serve(arguments, tmp_path, ready=ready, limit=WAIT) as (process, port):
        yield port
    assert process.returncode == 0, (tmp_path / "host.log").read_text()[-3000:]


def answers(port: int) -> tuple[str, int]:
    """One request on a new connection (the kernel spreads connections over workers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/version")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
    finally:
        connection.close()
    found = json.loads(body)
    return found["version"], int(found["pid"])


def until_every_worker_serves(port: int, wanted: str) -> set[int]:
    """New connections (bounded) until every worker has answered ``wanted`` and then 20
    answers in a row were ``wanted``: the pids that answered it."""
    deadline = time.monotonic() + WAIT
    pids: set[int] = set()
    streak = 0
    while time.monotonic() < deadline:
        version, pid = answers(port)
        if version == wanted:
            pids.add(pid)
            streak += 1
            if len(pids) == WORKERS and streak >= 20:
                return pids
        else:
            streak = 0
    pytest.fail(f"not every worker serves {wanted!r}: only pids {sorted(pids)}")


def test_every_worker_follows_deploys_and_rollbacks(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    name = f"depw{os.getpid()}"
    one, two = built(tmp_path, name, "one", APP), built(tmp_path, name, "two", APP)
    anyio.run(with_backbone, nats_server.url, lambda b: deploy(b, one))
    with workers(tmp_path, nats_server.url, name) as port:
        first = until_every_worker_serves(port, "one")
        anyio.run(with_backbone, nats_server.url, lambda b: deploy(b, two))
        assert until_every_worker_serves(port, "two") == first  # the same workers moved
        anyio.run(with_backbone, nats_server.url, lambda b: rollback(b, name))
        assert until_every_worker_serves(port, "one") == first


def test_deployed_with_workers_on_the_memory_backbone_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", "--deployed", "anything"]
    command += ["--backbone", "memory", "--workers", "2", "--state-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    assert done.returncode == 2
    assert "--deployed with --workers needs a shared backbone (NATS)" in done.stderr
