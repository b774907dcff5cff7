"""``thaw policy export``: the permissions derived from the plan, and a real account held to them.

A nats-server user restricted to exactly what ``thaw policy export`` prints serves
the example apps end to end (HTTP and a stream trigger for ``hello``, an object
upload indexed into KV for ``uploads``), with no permission violation; the same
user is refused a subject outside the lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import msgspec
import nats
import pytest
from nats_fixtures import ConfiguredServer, wait_line, wait_until

from thaw import App, Context, http, schedule, stream, subject
from thaw.adapters.cli import command as cli
from thaw.adapters.cli.policy import Permissions, nats_config, permissions_for
from thaw.backbone._subjects import validate_subject
from thaw.snapshots._revision import load_target

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ADMIN, APP_PASSWORD = "admin-password", "app-password"
WAIT = 60.0


# -- the derivation ------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["hello", "bff", "uploads", "notification_fanout"])
def test_every_listed_subject_is_valid_and_the_inbox_is_the_only_open_end(example: str) -> None:
    permissions = permissions_for(load_target(str(EXAMPLES / example)))
    for subject_ in permissions.publish.allow + permissions.subscribe.allow:
        validate_subject(subject_, wildcards=True)
        assert subject_ not in (">", "*", "$JS.API.>", "$JS.>", "$KV.>", "$O.>")
    assert "_INBOX.>" in permissions.subscribe.allow
    assert permissions.publish.allow == sorted(permissions.publish.allow)


def test_hello_needs_its_stream_consumer_buckets_and_dead_letters() -> None:
    permissions = permissions_for(load_target(str(EXAMPLES / "hello")))
    publish = set(permissions.publish.allow)
    assert {
        "$JS.API.STREAM.CREATE.HELLO",
        "$JS.API.CONSUMER.MSG.NEXT.HELLO.hello-greet",
        "$JS.ACK.HELLO.hello-greet.>",
        "$KV.thaw_idempotency_hello.>",
        "$KV.thaw_keys.>",
        "hello.greeted",
        "thaw.dlq.hello.greet",
    } <= publish
    # Not what it consumes (others publish that), not other apps' dead letters.
    assert "hello.greet" not in publish and "thaw.dlq.>" not in publish
    assert not permissions.allow_responses


def test_a_scheduled_capability_publishes_its_ticks() -> None:
    app = App("nightly")

    @app.capability(schedule("0 2 * * *"))
    async def reconcile() -> None:
        return None

    publish = set(permissions_for(app).publish.allow)
    assert "thaw.tick.nightly.reconcile" in publish  # every host publishes each tick
    assert "$JS.ACK.NIGHTLY-TICKS.nightly-reconcile-tick.>" in publish


def test_subject_triggers_subscribe_and_answer_requests() -> None:
    app = App("svc")

    @app.capability(subject("svc.lookup", queue="q"), http("POST", "/in", enqueue="svc.jobs"))
    async def lookup(data: dict[str, str], ctx: Context) -> dict[str, str]:
        return data

    @app.capability(stream("svc.jobs"))
    async def job(data: dict[str, str], ctx: Context) -> None:
        return None

    permissions = permissions_for(app, inbox_prefix="_THAW_svc")
    assert permissions.allow_responses
    assert {"svc.lookup", "$SRV.PING", "$SRV.INFO.svc", "_THAW_svc.>"} <= set(
        permissions.subscribe.allow
    )
    assert "_INBOX.>" not in permissions.subscribe.allow
    assert "svc.jobs" in permissions.publish.allow  # the enqueue route publishes
    with pytest.raises(Exception, match="invalid subject"):
        permissions_for(app, inbox_prefix="bad prefix")


def test_the_config_block_quotes_every_subject_and_the_json_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hello = str(EXAMPLES / "hello")
    assert cli.main(["policy", "export", hello]) == 0
    text = capsys.readouterr().out
    assert "permissions: {" in text
    for line in text.splitlines():
        if "$" in line:
            assert line.strip().startswith('"$'), line  # never a nats-server variable
    target = tmp_path / "hello.json"
    assert cli.main(["policy", "export", hello, "--json", "-o", str(target)]) == 0
    decoded = msgspec.json.decode(target.read_bytes(), type=Permissions)
    assert decoded == permissions_for(load_target(hello))
    assert nats_config(decoded, app="hello") == text


# -- a real account held to the export -------------------------------------------------------


def _restricted_server(app: str, run_dir: Path) -> ConfiguredServer:
    block = nats_config(permissions_for(load_target(str(EXAMPLES / app))), app=app)
    config = (
        "authorization { users: [\n"
        f'  {{ user: admin, password: "{ADMIN}" }}\n'
        f'  {{ user: app, password: "{APP_PASSWORD}", {block} }}\n'
        "] }\n"
    )
    return ConfiguredServer(config, run_dir)


@contextmanager
def _serving(
    app: str, server: ConfiguredServer, tmp_path: Path, **extra_env: str
) -> Iterator[tuple[int, list[str]]]:
    """``thaw serve`` of an example as the restricted user: (HTTP port, its stderr lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_NATS_")}
    env.update(PYTHONPATH=str(ROOT), THAW_NATS_USER="app", **extra_env)
    env["THAW_NATS_PASSWORD"] = APP_PASSWORD
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(EXAMPLES / app)]
    command += ["--nats", server.url, "--http", "0", "--drain-timeout", "2"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    errors: list[str] = []
    try:
        line = wait_line(process, "serving app")
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0]) if "http://" in line else 0
        yield port, errors
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=WAIT)
        errors.extend(err.splitlines())


def _assert_no_violation(server: ConfiguredServer, errors: list[str]) -> None:
    seen = [line for line in errors if "ermission" in line or "iolation" in line]
    assert not seen, seen
    assert "Violation" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.anyio
async def test_hello_runs_end_to_end_under_exactly_the_exported_permissions(
    tmp_path: Path,
) -> None:
    server = _restricted_server("hello", tmp_path / "server")
    server.start()
    try:
        # Provisioned before by an operator with another dead-letter age: the host's own
        # provisioning changes it back (a stream update it must be allowed).
        env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_NATS_")}
        env.update(PYTHONPATH=str(ROOT), THAW_NATS_USER="admin")
        env["THAW_NATS_PASSWORD"] = ADMIN
        command = [sys.executable, "-m", "thaw.adapters.cli", "provision", str(EXAMPLES / "hello")]
        command += ["--nats", server.url, "--dlq-max-age", "1d"]
        with anyio.fail_after(WAIT):
            await anyio.run_process(command, env=env)
        with _serving("hello", server, tmp_path) as (port, errors):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/greet", data=b'{"name": "Ada"}', method="POST"
            )
            reply = await anyio.to_thread.run_sync(
                lambda: urllib.request.urlopen(request, timeout=WAIT).read()
            )
            assert json.loads(reply)["message"] == "Hello, Ada!"
            admin = await nats.connect(server.url, user="admin", password=ADMIN)
            try:
                js = admin.jetstream()
                await js.publish("hello.greet", b'{"name": "Grace", "language": "fr"}')

                async def greeted() -> bool:
                    try:
                        message = await js.get_last_msg("HELLO", "hello.greeted")
                    except nats.js.errors.NotFoundError:
                        return False
                    return b"Bonjour, Grace!" in message.data

                await wait_until(greeted, limit=WAIT)
                # The idempotency results went to KV, under the app's own user.
                bucket = await js.key_value("thaw_idempotency_hello")
                assert len(await bucket.keys()) >= 2
            finally:
                await admin.close()
        _assert_no_violation(server, errors)
        assert any("max age changed from 1d to 14d" in line for line in errors), errors
        await _refused_outside(server)
    finally:
        server.stop()


async def _refused_outside(server: ConfiguredServer) -> None:
    """The app's user may not publish to, or subscribe to, what its lists do not name."""
    violations: list[str] = []
    both = anyio.Event()

    async def on_error(error: Exception) -> None:
        violations.append(str(error))
        if len(violations) >= 2:
            both.set()

    client = await nats.connect(
        server.url, user="app", password=APP_PASSWORD, error_cb=on_error, connect_timeout=5
    )
    try:
        await client.publish("payments.secret", b"x")
        await client.subscribe("hello.greet")
        with anyio.fail_after(WAIT):
            await both.wait()
    finally:
        await client.close()
    assert any('publish to "payments.secret"' in v for v in violations), violations
    assert any('subscription to "hello.greet"' in v for v in violations), violations


@pytest.mark.anyio
async def test_uploads_runs_objects_to_kv_under_exactly_the_exported_permissions(
    tmp_path: Path,
) -> None:
    server = _restricted_server("uploads", tmp_path / "server")
    server.start()
    try:
        with _serving("uploads", server, tmp_path) as (_port, errors):
            admin = await nats.connect(server.url, user="admin", password=ADMIN)
            try:
                js = admin.jetstream()
                store = await js.object_store("uploads")
                await store.put("report.csv", b"a,b\n1,2\n3,4\n")
                index = await js.key_value("upload_index")

                async def indexed() -> bool:
                    try:
                        return bool(await index.keys())
                    except nats.js.errors.NoKeysError:
                        return False

                await wait_until(indexed, limit=WAIT)
            finally:
                await admin.close()
        _assert_no_violation(server, errors)
    finally:
        server.stop()


@pytest.mark.anyio
async def test_subject_services_answer_under_exactly_the_exported_permissions(
    tmp_path: Path,
) -> None:
    server = _restricted_server("bff", tmp_path / "server")
    server.start()
    try:
        # BFF_BACKENDS=nats: the page sends NATS requests to the host's own services.
        with _serving("bff", server, tmp_path, BFF_BACKENDS="nats") as (port, errors):
            admin = await nats.connect(server.url, user="admin", password=ADMIN)
            try:
                # Replies go to the requester's inbox: allow_responses lets them through.
                reply = await admin.request("bff.profile", b'{"user": "u1"}', timeout=WAIT)
                assert json.loads(reply.data) == {"name": "Ada Lovelace", "tier": "gold"}
                ping = await admin.request("$SRV.PING.bff", b"", timeout=WAIT)
                assert json.loads(ping.data)["name"] == "bff"
            finally:
                await admin.close()
            page = await anyio.to_thread.run_sync(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/page/u1", timeout=WAIT)
            )
            with page:
                assert page.status == 200
        _assert_no_violation(server, errors)
    finally:
        server.stop()
