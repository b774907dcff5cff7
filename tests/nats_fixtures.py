"""Fixtures for tests against a real nats-server: one server per session, a namespace per test.

Import the fixtures into a test module (``from nats_fixtures import nats_server,
jetstream_harness  # noqa: F401``). The session server is started synchronously
(a subprocess and a bounded wait for its port), so it needs no session-scoped
event loop; it binds 127.0.0.1 on a port it picks itself and keeps JetStream
data in a pytest temp directory. Each test gets a fresh name prefix and its own
connection; afterwards every stream the test created is deleted, whatever its
name: the server's stream names are listed before and after the test, so app
streams (upper-cased app names), per-app idempotency buckets
(``KV_thaw_idempotency_<app>``), the shared dead-letter stream (when this test
created it) and buckets under the prefix all go, and the next test starts from
the same server state.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from thaw import App
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone, ServerConfig
from thaw.adapters.nats.server import find_nats_server
from thaw.host._dead_letters import purge_dead_letters
from thaw.lowlevel import DEAD_LETTER_STREAM, plan_for

__all__ = [
    "ConfiguredServer",
    "JetStreamHarness",
    "configured_server",
    "wait_line",
    "nats_server",
    "jetstream_harness",
    "delete_streams",
    "remove_app",
    "delete_new_streams",
    "stream_names",
    "wait_until",
]

GRACE = 0.3  # seconds the server may act after a deadline (timers, expiry sweeps)
ROOT = Path(__file__).resolve().parent.parent
WAIT_LIMIT = 10.0  # seconds before wait_fetching gives up
POLL = 0.01


@contextmanager
def embedded_server(store: Path) -> Iterator[EmbeddedServer]:
    """A nats-server of a test's own (JetStream data in ``store``), stopped at the end."""
    server = EmbeddedServer(ServerConfig(store_dir=str(store)))
    server.start(timeout=20.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with embedded_server(tmp_path_factory.mktemp("nats-store")) as server:
        yield server


@dataclass
class JetStreamHarness:
    """The contract's ``BackboneHarness`` on a real server: time passes for real."""

    backbone: JetStreamBackbone
    prefix: str
    grace: float = GRACE

    async def elapse(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def wait_fetching(self, stream: str, durable: str, count: int) -> None:
        jsm = self.backbone.client.jsm()

        async def parked() -> bool:
            return bool((await jsm.consumer_info(stream, durable)).num_waiting >= count)

        await wait_until(parked)


async def wait_until(check: Callable[[], Awaitable[bool]], *, limit: float = WAIT_LIMIT) -> None:
    """Poll the server until ``check()`` holds; fail after ``limit`` seconds.

    Server-side state (parked pull requests, processed acks) has no local event to
    wait on, so this asks again every few milliseconds, boundedly.
    """
    with anyio.fail_after(limit):
        while True:
            if await check():
                return
            await anyio.sleep(POLL)


async def stream_names(client: Client) -> set[str]:
    """Every stream on the server (the JetStream API pages its answer)."""
    names: list[str] = []
    while True:
        request = json.dumps({"offset": len(names)}).encode()
        reply = json.loads((await client.request("$JS.API.STREAM.NAMES", request, 5)).data)
        batch = reply.get("streams") or []
        names += batch
        if not batch or len(names) >= reply["total"]:
            return set(names)


async def _delete_each(client: Client, names: Iterable[str]) -> None:
    jsm = client.jsm()
    for name in sorted(names):
        try:
            await jsm.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass  # the test (or its host) removed it already


async def delete_streams(backbone: JetStreamBackbone, prefix: str) -> None:
    """Delete every stream named ``<prefix>...`` and every bucket ``KV_<prefix>...``.

    Case-insensitive, so an app named ``<prefix>x`` (stream ``<PREFIX>X``) goes too.
    """
    wanted = (prefix.upper(), f"KV_{prefix}".upper(), f"OBJ_{prefix}".upper())
    names = await stream_names(backbone.client)
    await _delete_each(backbone.client, (n for n in names if n.upper().startswith(wanted)))


async def remove_app(backbone: JetStreamBackbone, app: App) -> None:
    """Delete what provisioning created for ``app``: its streams, buckets and dead letters."""
    if backbone.client.is_closed:
        return
    plan = plan_for(app)
    jsm = backbone.client.jsm()
    with anyio.fail_after(10):
        await purge_dead_letters(backbone, app=app.name)
        for config in plan.streams:
            if config.name != DEAD_LETTER_STREAM:
                await jsm.delete_stream(config.name)
        for bucket in plan.buckets:
            await jsm.delete_stream(f"KV_{bucket.bucket}")


@pytest.fixture
async def jetstream_harness(nats_server: EmbeddedServer) -> AsyncIterator[JetStreamHarness]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        before = await stream_names(backbone.client)
        yield JetStreamHarness(backbone, prefix)
        await delete_new_streams(nats_server, backbone, before)
    finally:
        await backbone.aclose()


async def delete_new_streams(
    server: EmbeddedServer, backbone: JetStreamBackbone, before: set[str]
) -> None:
    """Delete the streams (and so the buckets) that appeared on the server during the test."""
    client = backbone.client
    own = None
    if client.is_closed:  # the test closed the harness connection: clean up on a new one
        own = client = await nats.connect(server.url, connect_timeout=2)
    try:
        with anyio.fail_after(WAIT_LIMIT):
            await _delete_each(client, await stream_names(client) - before)
    finally:
        if own is not None:
            await own.close()


class ConfiguredServer:
    """A nats-server run with a configuration file (authorization, TLS), on 127.0.0.1.

    ``config`` is nats-server configuration text; JetStream (with its store in the
    run folder) and the listen address are added here. Started like EmbeddedServer:
    a ports file and an INFO line on a TCP connection, within a bound. ``stop`` ends
    only the process it started, by PID.
    """

    def __init__(self, config: str, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = json.dumps(str(run_dir / "store"))
        self.config_file = run_dir / "server.conf"
        self.config_file.write_text(f"jetstream {{ store_dir: {store} }}\n{config}\n")
        self.log_file = run_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, timeout: float = 20.0) -> None:
        command = [find_nats_server(), "-c", str(self.config_file), "-a", "127.0.0.1"]
        command += ["-p", "-1", "--ports_file_dir", str(self.run_dir)]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        ports = self.run_dir / f"nats-server_{self.process.pid}.ports"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_text()[-2000:]}")
            try:
                self.port = int(json.loads(ports.read_text())["nats"][0].rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if conn.recv(5) == b"INFO ":
                        return
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start: {self.log_text()[-2000:]}")
            time.sleep(POLL)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@contextmanager
def configured_server(config: str, run_dir: Path) -> Iterator[ConfiguredServer]:
    """A ConfiguredServer for the block (see there)."""
    server = ConfiguredServer(config, run_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_line(process: subprocess.Popen[str], needle: str, *, limit: float = 60.0) -> str:
    """The first stdout line of ``process`` holding ``needle``, within ``limit`` seconds
    (a thread reads it; the process exiting first fails)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                lines.put(line)
        except (ValueError, OSError):
            pass  # the caller, done with the process, closed its stdout under this thread
        lines.put("")  # EOF

    threading.Thread(target=read, daemon=True).start()
    while True:
        line = lines.get(timeout=limit)
        assert line, "the process exited before printing " + repr(needle)
        if needle in line:
            return line


def serve_http_port(process: subprocess.Popen[str], *, limit: float = 60.0) -> int:
    """The HTTP port a ``thaw serve --http 0`` child says it serves on (its ready line
    ``... http on http://127.0.0.1:PORT ...``), within ``limit`` seconds."""
    line = wait_line(process, "http://127.0.0.1:", limit=limit)
    return int(line.split("http://127.0.0.1:")[1].split(";")[0].split("/")[0].split()[0])


@contextmanager
def thaw_serve(
    arguments: list[str],
    cwd: Path,
    *,
    ready: str = "thaw: serving app",
    limit: float = 60.0,
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A ``thaw serve ARGUMENTS`` child of this test, its stderr in ``cwd/host.log``:
    (the process, the HTTP port its ``ready`` line names) once it printed that line.
    Leaving drains it with SIGTERM (killed if it is not gone within ``limit`` seconds);
    a test checks ``process.returncode`` after the block."""
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", *arguments]
    with (cwd / "host.log").open("w") as log:  # a stderr pipe nobody reads would fill
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=cwd,
        )
        try:
            line = wait_line(process, ready, limit=limit)
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert found, line
            yield process, int(found.group(1))
        finally:
            if process.poll() is None:  # only the host this test started, by its handle
                process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=limit)


def _said_ready(line: str) -> bool:
    return line.strip() == "ready"


def wait_ready(
    process: subprocess.Popen[str],
    log: Path,
    *,
    limit: float = 30.0,
    ready: Callable[[str], bool] = _said_ready,
) -> None:
    """Block until a line of the host's stdout is ``ready`` (or what ``ready`` accepts);
    fail with the end of its ``log`` if it exits first or takes longer than ``limit``."""
    assert process.stdout is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the host exited {process.returncode}: {log.read_text()[-2000:]}")
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable and ready(process.stdout.readline()):
            return
    pytest.fail(f"the host was not ready within {limit:g}s: {log.read_text()[-2000:]}")


def end_process(process: subprocess.Popen[str]) -> None:
    """Kill a host this test started (by PID) if it still runs, reap it, close its stdout."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()
