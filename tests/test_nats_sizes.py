"""One message never costs the host its NATS connection (real nats-servers).

nats-py checks a message's payload against the server's ``max_payload`` but not its
headers, and nats-server closes the connection of a client that sends more; nats-py
then closed for good, and the host answered 503 forever while ``/healthz`` said 200.
Now the adapter sizes payload plus header block before sending (``payload_too_large``,
nothing sent), a connection the server closed for a protocol error reconnects with
its subscriptions, and one closed for good (an authorization violation: credentials
revoked by a config reload) makes the backbone not alive: ``/healthz`` 503, the
``open_jetstream_backbone`` block cancelled with a ``BackboneError``, and ``thaw
serve`` exits non-zero for its supervisor.

The servers here are started from a config file (max_payload, users), each bound to
127.0.0.1, and stopped by PID.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from nats_fixtures import nats_server, wait_until  # noqa: F401
from test_http_support import RawClient, request

from thaw import App, Idempotency, Rejected, http, stream
from thaw._errors import ConfigError, PayloadTooLarge
from thaw.adapters.http import open_http_server
from thaw.adapters.nats import (
    EmbeddedServer,
    JetStreamBackbone,
    find_nats_server,
    open_jetstream_backbone,
)
from thaw.adapters.nats.server import pick_free_ports
from thaw.lowlevel import (
    BackboneError,
    ConsumerConfig,
    KvConfig,
    ObjectStoreConfig,
    StreamConfig,
    open_host,
)

pytestmark = pytest.mark.anyio
START_LIMIT = 20.0  # seconds for a nats-server to listen
RECOVERY_LIMIT = 20.0  # seconds for the client to notice a closed connection and act on it
ROOT = Path(__file__).resolve().parent.parent


class ConfiguredServer:
    """A nats-server run from a config file we write; reloaded with SIGHUP, stopped by PID."""

    def __init__(self, directory: Path, settings: str) -> None:
        self.directory = directory
        self.port = pick_free_ports(1)[0]
        self.conf = directory / "nats.conf"
        self.write(settings)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write(self, settings: str) -> None:
        store = self.directory / "store"
        self.conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\njetstream {{ store_dir: "{store}" }}\n{settings}\n'
        )

    def start(self) -> None:
        with open(self.directory / "nats.log", "ab") as log:
            self.process = subprocess.Popen(
                [find_nats_server(), "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.directory / "nats.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # the server is still starting: poll its port, bounded
        pytest.fail(f"nats-server did not listen on {self.port} within {START_LIMIT}s")

    def reload(self, settings: str) -> None:
        self.write(settings)
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)  # nats-server's "reload the config file"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ConfiguredServer]:
    server = ConfiguredServer(tmp_path, "max_payload: 65536")
    server.start()
    try:
        yield server
    finally:
        server.stop()


USERS = """authorization {
  users = [
    {user: "host", password: "host-secret"}
    %s
  ]
}"""
OTHER_USER = '{user: "other", password: "other-secret"}'


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[ConfiguredServer]:
    server = ConfiguredServer(tmp_path, USERS % OTHER_USER)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def revoke_host(server: ConfiguredServer) -> None:
    """Reload the server without the user the backbone connected as."""
    server.reload(USERS.replace('{user: "host", password: "host-secret"}', "") % OTHER_USER)


def host_url(server: ConfiguredServer) -> str:
    return f"nats://host:host-secret@127.0.0.1:{server.port}"


async def wait_for(check: Callable[[], bool]) -> None:
    """Wait (bounded) for a client-side condition the nats-py callbacks set on their own
    schedule: there is no event to await, so look again every few milliseconds."""

    async def holds() -> bool:
        return check()

    await wait_until(holds, limit=RECOVERY_LIMIT)


# -- sizes: nothing oversized reaches the socket ------------------------------------


async def test_an_oversized_publish_is_refused_before_the_socket(
    small_server: ConfiguredServer,
) -> None:
    async with open_jetstream_backbone(small_server.url) as backbone:
        assert backbone.max_payload == 65536
        await backbone.add_stream(StreamConfig(name="SIZES", subjects=("sizes.>",)))
        sent = backbone.client.stats["out_msgs"]
        data = b"x" * (backbone.max_payload - 10)  # nats-py alone would send this
        with pytest.raises(PayloadTooLarge, match="max_payload"):
            await backbone.publish("sizes.a", data, headers={"Thaw-Dead-Letter": "x" * 40})
        assert backbone.client.stats["out_msgs"] == sent
        assert backbone.client.stats["reconnects"] == 0
        assert (await backbone.publish("sizes.a", b"small")).seq == 1


async def test_a_subject_past_the_control_line_is_refused_before_the_socket(
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    """nats-server closes a connection whose command line passes max_control_line (4096
    bytes): a subject or KV key that long (say, a key taken from a request) is a
    ConfigError before anything is sent."""
    async with open_jetstream_backbone(nats_server.url) as backbone:
        bucket = await backbone.add_kv(KvConfig(bucket=f"long{os.getpid()}"))
        try:
            with pytest.raises(ConfigError, match="max_control_line"):
                await backbone.publish("long." + "a" * 5000, b"x")
            with pytest.raises(ConfigError, match="max_control_line"):
                await bucket.put("k" * 5000, b"x")
            with pytest.raises(ConfigError, match="max_control_line"):
                await backbone.request("long." + "a" * 5000, b"x", timeout=1.0)
            assert await bucket.put("short", b"x") >= 1
            assert backbone.client.stats["reconnects"] == 0
        finally:
            await backbone.client.jsm().delete_stream(f"KV_long{os.getpid()}")


async def test_objects_larger_than_max_payload_are_chunked_to_fit(
    small_server: ConfiguredServer,
) -> None:
    async with open_jetstream_backbone(small_server.url) as backbone:
        store = await backbone.add_object_store(ObjectStoreConfig(bucket="files"))
        data = os.urandom(200 * 1024)  # more than one 128 KiB chunk, and the server takes 64
        info = await store.put("big", data)
        assert info.chunks == 4
        assert await store.get("big") == data
        assert backbone.client.stats["reconnects"] == 0


# -- a connection the server closed is re-established --------------------------------


async def test_a_connection_the_server_closed_for_a_bad_message_reconnects(
    small_server: ConfiguredServer,
) -> None:
    """The issue's mechanism, sent on purpose: a payload under max_payload whose headers
    push it over. nats-server answers -ERR and closes; the client reconnects, keeps its
    subscriptions, and the consumer goes on."""
    async with open_jetstream_backbone(small_server.url) as backbone:
        await backbone.add_stream(StreamConfig(name="RIDE", subjects=("ride.>",)))
        await backbone.add_consumer("RIDE", ConsumerConfig(durable="worker", ack_wait=30.0))
        client = backbone.client
        await client.publish("ride.raw", b"x" * 65000, headers={"pad": "y" * 1000})
        await wait_for(lambda: client.stats["reconnects"] >= 1 and backbone.connected)
        assert backbone.alive and not client.is_closed
        await backbone.publish("ride.a", b"after")
        messages = await backbone.fetch("RIDE", "worker", batch=1, timeout=5.0)
        assert [m.data for m in messages] == [b"after"]
        await messages[0].ack()


# -- a connection closed for good: not alive, and the process ends --------------------


async def test_a_connection_closed_for_good_makes_the_backbone_not_alive(
    auth_server: ConfiguredServer,
) -> None:
    opened: list[JetStreamBackbone] = []

    async def serve_until_lost() -> None:
        async with open_jetstream_backbone(host_url(auth_server)) as backbone:
            opened.append(backbone)
            assert backbone.alive
            await anyio.to_thread.run_sync(revoke_host, auth_server)
            with anyio.fail_after(RECOVERY_LIMIT):
                await anyio.sleep_forever()  # cancelled once the connection is lost for good

    with pytest.raises(BackboneError, match="closed for good"):
        await serve_until_lost()
    (backbone,) = opened
    assert not backbone.alive
    with pytest.raises(BackboneError, match="closed for good"):
        await backbone.publish("any.subject", b"x")


def liveness_app() -> App:
    made = App("alive")

    @made.capability(http("GET", "/ping"), stream("alive.pings"))
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    return made


async def get(port: int, path: str) -> int:
    async with RawClient.connect(port) as raw:
        await raw.send(request("GET", path))
        return (await raw.response()).status


async def test_healthz_is_503_once_the_backbone_is_lost_for_good(
    auth_server: ConfiguredServer,
) -> None:
    backbone = await JetStreamBackbone.connect(host_url(auth_server))
    try:
        async with (
            open_host(liveness_app(), backbone) as host,
            open_http_server(host) as server,
        ):
            assert await get(server.port, "/healthz") == 200
            await anyio.to_thread.run_sync(revoke_host, auth_server)
            await wait_for(lambda: not backbone.alive)
            assert await get(server.port, "/healthz") == 503
            assert await get(server.port, "/readyz") == 503
    finally:
        await backbone.aclose()


def test_thaw_serve_exits_non_zero_when_the_connection_is_lost_for_good(
    auth_server: ConfiguredServer, tmp_path: Path
) -> None:
    app_file = tmp_path / "app.py"
    app_file.write_text(
        "from thaw import App, stream\n"
        "app = App('lost')\n"
        "@app.capability(stream('lost.events'))\n"
        "async def consume(data: bytes) -> None:\n"
        "    return None\n"
    )
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(app_file), "--no-http"]
    command += ["--nats", host_url(auth_server), "--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the "serving app" line (or EOF if it failed)
        assert "serving app lost" in line, process.communicate(timeout=30)
        revoke_host(auth_server)
        out, err = process.communicate(timeout=RECOVERY_LIMIT + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 1, err
    assert "closed for good" in err and "authorization violation" in err.lower(), err
    assert "host-secret" not in err + out


# -- the request: an enqueue body just under 1 MiB ---------------------------


class Order(msgspec.Struct):
    note: str


def intake_app() -> App:
    made = App("bigintake")

    @made.capability(
        http("POST", "/orders", enqueue="bigintake.orders"),
        stream("bigintake.orders"),
        idempotency=Idempotency(),
    )
    async def place(order: Order) -> None:
        return None

    return made


async def post(port: int, body: bytes) -> int:
    async with RawClient.connect(port) as raw:
        await raw.send(request("POST", "/orders", body, {"content-type": "application/json"}))
        return (await raw.response()).status


async def test_an_enqueue_body_just_under_the_limit_is_a_413_and_the_host_stays_up(
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    from nats_fixtures import remove_app

    app = intake_app()
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        async with open_host(app, backbone) as host, open_http_server(host) as server:
            # 20 bytes under max_payload (and the body limit); its message id does not fit
            body = msgspec.json.encode(Order("x" * (backbone.max_payload - 20 - 11)))
            assert len(body) == backbone.max_payload - 20
            assert await post(server.port, body) == 413
            assert await get(server.port, "/readyz") == 200
            assert await post(server.port, msgspec.json.encode(Order("small"))) == 202
            assert backbone.client.stats["reconnects"] == 0
        await remove_app(backbone, app)
    finally:
        await backbone.aclose()


# -- a dead letter that does not fit: visible, survived, nothing lost ----------------


def rejecting_app() -> App:
    made = App("bigdead")

    @made.capability(stream("bigdead.in"))
    async def refuse(data: bytes) -> None:
        raise Rejected("refused on purpose", code="refused")

    return made


async def test_a_dead_letter_too_large_for_the_server_is_written_without_its_body(
    nats_server: EmbeddedServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message that fits alone but not with the dead-letter headers: the full dead
    letter is refused before the socket (the connection stays up), and the worker
    writes it without its body instead, pointing at the original, which a replay reads."""
    from nats_fixtures import remove_app, wait_until

    from thaw.lowlevel import list_dead_letters

    app = rejecting_app()
    caplog.set_level(logging.WARNING, logger="thaw")
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        async with open_host(app, backbone, fetch_timeout=0.2) as host:
            body = b"x" * (backbone.max_payload - 100)
            await backbone.publish("bigdead.in", body)

            async def lettered() -> bool:
                letters = await list_dead_letters(backbone, app="bigdead")
                return len(letters) == 1

            await wait_until(lettered)
            [letter] = await list_dead_letters(backbone, app="bigdead")
            assert letter.data == b""
            assert letter.headers["Thaw-Body-Omitted"] == str(len(body))
            assert host.workers  # still serving
            assert backbone.alive and backbone.connected
            assert backbone.client.stats["reconnects"] == 0
            info = await backbone.stream_info("BIGDEAD")
            assert info.messages == 1  # the original, kept for the replay
        await remove_app(backbone, app)
    finally:
        await backbone.aclose()
