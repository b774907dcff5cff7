"""A clean shutdown on NATS is quiet: no "connection lost; reconnecting" at the end.

The line used to appear when ``thaw serve`` was stopped with Ctrl-C: the terminal
signals the whole foreground process group, so the embedded nats-server (a child
in the same group) stopped on its own while Thaw was still draining, and the
client saw the connection drop. The server now runs in a session of its own and
Thaw stops it after closing the connection.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from nats_fixtures import wait_until

from thaw import App, stream
from thaw.adapters.nats import open_backbone, open_embedded_server
from thaw.lowlevel import open_host

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")
START_LIMIT = 30.0  # seconds for `thaw serve` to start (imports, nats-server, provisioning)

needs_process_groups = pytest.mark.skipif(
    sys.platform == "win32", reason="process groups and SIGINT to a group are POSIX"
)


class Note(msgspec.Struct, frozen=True):
    text: str


@needs_process_groups
@pytest.mark.anyio
async def test_the_embedded_server_is_out_of_reach_of_the_terminals_ctrl_c() -> None:
    async with open_embedded_server() as server:
        assert server.pid is not None
        assert os.getpgid(server.pid) != os.getpgid(0)
        assert os.getsid(server.pid) == server.pid  # a session leader: no controlling terminal


@pytest.mark.anyio
async def test_closing_a_host_on_the_embedded_backbone_logs_no_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("quiet")
    seen: list[str] = []

    @app.capability(stream("quiet.notes"))
    async def note(message: Note) -> None:
        seen.append(message.text)

    caplog.set_level(logging.INFO, logger="thaw")
    async with (
        open_backbone(state_dir=str(tmp_path)) as backbone,
        open_host(app, backbone, fetch_timeout=0.2, drain_timeout=5.0),
    ):
        await backbone.publish("quiet.notes", msgspec.json.encode(Note("hi")), msg_id="n1")

        async def noted() -> bool:
            return seen == ["hi"]

        await wait_until(noted)
    assert any("started nats-server" in r.getMessage() for r in caplog.records)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


def _wait_for_line(process: subprocess.Popen[str], needle: str, *, timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"thaw serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if needle in line:
                return line
    pytest.fail(f"thaw serve did not print {needle!r} within {timeout:g}s")


@needs_process_groups
def test_ctrl_c_to_thaw_serve_drains_and_stops_without_connection_noise(tmp_path: Path) -> None:
    """SIGINT to the process group, as a terminal sends it, reaches Thaw and not its server."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", HELLO, "--no-http"]
    command += ["--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )
    try:
        _wait_for_line(process, "serving app hello on the nats backbone", timeout=START_LIMIT)
        os.killpg(process.pid, signal.SIGINT)  # its group: the leader is the process we started
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "SIGINT: draining" in out
    assert "thaw: stopped" in out
    noise = [
        line
        for line in err.splitlines()
        if "lost; reconnecting" in line or "refused" in line or "EOF" in line
    ]
    assert noise == [], err
