"""``thaw serve --deployed`` on a real nats-server: a host serves what is deployed, moves
to a new revision when it is deployed (no failed request meanwhile) and back on rollback."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from nats_fixtures import nats_server, thaw_serve  # noqa: F401

from thaw.adapters.nats import JetStreamBackbone
from thaw.adapters.nats.server import EmbeddedServer
from thaw.adapters.process.build import build_snapshot
from thaw.host._deployments import deploy, read_deployment, rollback

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0

APP = """
from thaw import App, http

app = App("{name}")


@app.capability(http("GET", "/version"))
async def version() -> str:
    return "{version}"
"""


def built(tmp_path: Path, name: str, version: str, app: str = APP) -> bytes:
    """The snapshot of ``app`` (a template of ``name`` and ``version``), as bytes."""
    folder = tmp_path / f"{name}-{version}"
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(app.format(name=name, version=version)))
    output = tmp_path / f"{name}-{version}.snap"
    build_snapshot(str(folder / "app.py"), str(output))
    return output.read_bytes()


async def with_backbone(url: str, work):  # type: ignore[no-untyped-def]
    backbone = await JetStreamBackbone.connect(url)
    try:
        return await work(backbone)
    finally:
        await backbone.aclose()


@contextmanager
def host(tmp_path: Path, url: str, name: str) -> Iterator[int]:
    arguments = ["--deployed", name, "--url", url, "--http", "0"]
    arguments += ["--state-dir", str(tmp_path / "state")]
    with thaw_serve(arguments, tmp_path) as (_, port):
        yield port


def get_version(connection: http.client.HTTPConnection) -> str:
    connection.request("GET", "/version")
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body
    return body.decode().strip('"')


def until(connection: http.client.HTTPConnection, wanted: str, seen: list[str]) -> None:
    """Ask (bounded) until every answer is ``wanted``; every answer must be a 200."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        seen.append(get_version(connection))
        if seen[-5:] == [wanted] * 5:
            return
    pytest.fail(f"never only {wanted!r}: last answers {seen[-10:]}")


def test_a_host_follows_deploys_and_rollbacks_without_failing_a_request(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    name = f"dep{os.getpid()}"
    one, two = built(tmp_path, name, "one"), built(tmp_path, name, "two")
    anyio.run(with_backbone, nats_server.url, lambda b: deploy(b, one))
    with host(tmp_path, nats_server.url, name) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        seen: list[str] = []
        assert get_version(connection) == "one"
        anyio.run(with_backbone, nats_server.url, lambda b: deploy(b, two))
        until(connection, "two", seen)
        anyio.run(with_backbone, nats_server.url, lambda b: rollback(b, name))
        until(connection, "one", seen)
        assert set(seen) <= {"one", "two"}  # every request answered (get_version asserts 200)
        connection.close()
    record, _ = anyio.run(with_backbone, nats_server.url, lambda b: read_deployment(b, name))
    assert record is not None and [c.action for c in record.history] == [
        "deploy",
        "deploy",
        "rollback",
    ]


def test_serving_an_app_that_is_not_deployed_fails_clearly(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "thaw.adapters.cli", "serve", "--deployed", "nobody_here"),
            *("--url", nats_server.url, "--no-http", "--state-dir", str(tmp_path / "s")),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "app 'nobody_here' is not deployed: run `thaw deploy` first" in done.stderr
