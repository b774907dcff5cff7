"""``thaw edge serve`` / ``thaw edge build``: the bundle answers HTTP from itself alone.

Node runs as a subprocess on 127.0.0.1 with bounded waits; each test kills only the
process it started, by its PID. The Node tests need the edge cache (``python -m
thaw.adapters.edge.prepare``, which ``make test`` runs first) and fail, never skip,
without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from edge_support import wait_listening
from nats_fixtures import configured_server, nats_server, remove_app, wait_until  # noqa: F401

from thaw.adapters.edge import cli, prepare
from thaw.adapters.edge.bundle import (
    MANIFEST,
    PYODIDE_FILES,
    BundleManifest,
    build_bundle,
    nats_client_packages,
)
from thaw.adapters.nats import EmbeddedServer
from thaw.adapters.process.build import build_snapshot

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")
# `thaw edge ...` without relying on the entry point being installed.
HARNESS = (
    "import argparse, sys\n"
    "from thaw.adapters.edge.cli import register\n"
    "parser = argparse.ArgumentParser(prog='thaw')\n"
    "register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.handler(args))\n"
)


@pytest.fixture(scope="module")
def node() -> str:
    problems = prepare.check(test_wheels=False)
    if problems:
        pytest.fail("the edge host cannot run:\n  " + "\n  ".join(problems), pytrace=False)
    return prepare.find_node().node


@pytest.fixture(scope="module")
def bundle(node: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("edge") / "hello-bundle"
    assert thaw("edge", "build", HELLO, "-o", str(output)) == 0
    return output


def thaw(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="thaw")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    result: int = args.handler(args)
    return result


@contextmanager
def running(command: list[str], *, cwd: Path, timeout: float = 120) -> Iterator[str]:
    """Start ``command``, yield its base URL once it listens, then stop it (SIGTERM, exit 0)."""
    with listening(command, cwd=cwd, timeout=timeout) as line:
        yield str(line["listening"])


@contextmanager
def listening(command: list[str], *, cwd: Path, timeout: float = 120) -> Iterator[dict[str, Any]]:
    """Start ``command``, yield its "listening" line, then stop it (SIGTERM, exit 0)."""
    env = {k: v for k, v in os.environ.items() if k != "THAW_EDGE_CACHE"}
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield wait_listening(process, timeout=timeout)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def post(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


# -- the bundle -----------------------------------------------------------------------


@pytest.mark.slow
def test_the_bundle_holds_what_it_needs_and_says_so(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["app"] == "app/hello"
    assert manifest["snapshot"] == "app.snap"
    assert manifest["python"].startswith("3.14")
    listed = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert listed - set(manifest["files"]) == {MANIFEST, "README.md"}
    for name, size in manifest["files"].items():
        assert (bundle / name).stat().st_size == size
    assert sorted(os.listdir(bundle / "node_modules" / "pyodide")) == sorted(PYODIDE_FILES)
    assert any(name.startswith("msgspec-") for name in os.listdir(bundle / "wheels" / "runtime"))
    assert (bundle / "thaw" / "runtime" / "__init__.py").is_file()
    assert (bundle / "thaw" / "adapters" / "http" / "service.py").is_file()
    assert not list(bundle.rglob("__pycache__"))
    sizes = manifest["sizes"]
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")
    assert 10_000_000 < sizes["total"] < 25_000_000
    assert "node thaw_edge.mjs serve" in (bundle / "README.md").read_text()
    for package in nats_client_packages():  # serve --nats from the bundle alone
        assert (bundle / "node_modules" / package / "package.json").is_file(), package
    assert (bundle / "node_modules" / "tweetnacl").is_dir()  # a dependency, found by the lock
    assert 100_000 < sizes["nats_client"] < 5_000_000


def test_the_nats_client_closure_comes_from_the_lock(tmp_path: Path) -> None:
    packages = nats_client_packages()
    assert {"@nats-io/transport-node", "@nats-io/jetstream", "@nats-io/kv"} <= set(packages)
    assert "@nats-io/nats-core" in packages and "tweetnacl" in packages
    assert "pyodide" not in packages and "ws" not in packages
    broken = tmp_path / "package-lock.json"
    broken.write_text(json.dumps({"packages": {"node_modules/@nats-io/kv": {}}}))
    with pytest.raises(prepare.EdgeSetupError, match="is not in adapters/edge/package-lock"):
        nats_client_packages(broken)


@pytest.mark.slow
def test_the_bundle_serves_its_snapshot_alone(
    node: str, bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Moved away from the project, started from elsewhere: only the bundle is read.
    moved = tmp_path_factory.mktemp("deployed") / "site"
    bundle.rename(moved)
    try:
        elsewhere = tmp_path_factory.mktemp("cwd")
        with running(
            [node, str(moved / "thaw_edge.mjs"), "serve", "--port", "0"], cwd=elsewhere
        ) as base:
            assert base.startswith("http://127.0.0.1:")
            status, body = post(f"{base}/greet", b'{"name": "Ada", "language": "fr"}')
            assert (status, body) == (200, {"message": "Bonjour, Ada!", "attempt": 1})
            status, body = post(f"{base}/greet", b'{"name": 42}')
            assert (status, body["code"]) == (422, "contract_invalid")
        with running(
            [node, "thaw_edge.mjs", "serve", "app/hello", "--port", "0"], cwd=moved
        ) as base:
            status, body = post(f"{base}/greet", b'{"name": "Grace"}')
            assert (status, body["message"]) == (200, "Hello, Grace!")
    finally:
        moved.rename(bundle)


@pytest.mark.slow
def test_a_bundle_with_a_memory_snapshot_boots_from_it(node: str, tmp_path: Path) -> None:
    output = tmp_path / "bundle"
    assert (
        thaw("edge", "build", HELLO, "-o", str(output), "--no-snapshot", "--memory-snapshot") == 0
    )
    manifest = json.loads((output / MANIFEST).read_text())
    assert (manifest["snapshot"], manifest["memory_snapshot"]) == (None, "app.mem")
    assert manifest["sizes"]["memory_snapshot"] == (output / "app.mem").stat().st_size > 1_000_000
    assert "app.mem" in (output / "README.md").read_text()
    with listening([node, "thaw_edge.mjs", "serve", "--port", "0"], cwd=output) as line:
        assert line["sizes"]["memory_snapshot"] > 1_000_000  # booted from it
        status, body = post(f"{line['listening']}/greet", b'{"name": "Ada", "language": "de"}')
        assert (status, body) == (200, {"message": "Hallo, Ada!", "attempt": 1})


def test_build_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(prepare.EdgeSetupError, match="not empty"):
        build_bundle(HELLO, tmp_path)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_build_and_serve_name_the_prepare_step_without_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check = prepare.check
    monkeypatch.setattr(prepare, "check", lambda **_: check(tmp_path / "empty"))
    assert thaw("edge", "serve", HELLO) == cli.EXIT_SETUP
    assert thaw("edge", "build", HELLO, "-o", str(tmp_path / "out")) == cli.EXIT_SETUP
    err = capsys.readouterr().err
    assert err.count("thaw.adapters.edge.prepare") >= 2
    assert not (tmp_path / "out").exists()


def test_the_manifest_struct_matches_what_build_writes() -> None:
    fields = set(BundleManifest.__struct_fields__)
    assert {"app", "snapshot", "sizes", "files", "pyodide", "python"} <= fields


# -- thaw edge serve and snapshots -------------------------------------------------------


@pytest.mark.slow
def test_thaw_edge_serve_runs_the_host(node: str, tmp_path: Path) -> None:
    command = [sys.executable, "-c", HARNESS, "edge", "serve", HELLO, "--port", "0"]
    with running(command, cwd=ROOT) as base:
        status, body = post(f"{base}/greet", b'{"name": "Ada", "language": "es"}')
        assert (status, body) == (200, {"message": "Hola, Ada!", "attempt": 1})


@pytest.mark.slow
def test_a_native_snapshot_is_refused_by_the_host_naming_both_pythons(
    node: str, tmp_path: Path
) -> None:
    snapshot = tmp_path / "native.snap"
    build_snapshot(HELLO, str(snapshot))
    completed = subprocess.run(
        prepare.host_command("handle", str(snapshot)),
        input="[]",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 3
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith("thaw edge: ")
    assert "3.11" in message and "3.14" in message
    assert "wasm" not in completed.stderr  # the reason, not a stack through Pyodide


# -- memory-snapshot boot -----------------------------------------------------------------

GREET = [{"method": "POST", "path": "/greet", "body": '{"name": "Ada"}'}]


def handle(*args: str, requests: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        prepare.host_command("handle", *args),
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.slow
def test_the_host_boots_from_a_memory_snapshot_and_compiles_edited_sources_again(
    node: str, tmp_path: Path
) -> None:
    app = tmp_path / "hello"
    shutil.copytree(HELLO, app, ignore=shutil.ignore_patterns("__pycache__"))
    memory = tmp_path / "hello.mem"
    made = subprocess.run(
        prepare.host_command("memory-snapshot", str(app), "--output", str(memory)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads(made.stdout.strip().splitlines()[-1])["modules"] > 200
    booted = handle(str(app), "--memory-snapshot", str(memory), requests=GREET)
    assert booted.returncode == 0, booted.stderr[-2000:]
    document = json.loads(booted.stdout.strip().splitlines()[-1])
    assert document["responses"][0]["status"] == 200
    assert json.loads(document["responses"][0]["body"])["message"] == "Hello, Ada!"
    # The bytecode kept in the snapshot is checked against the source: an edit wins.
    source = app / "app.py"
    source.write_text(source.read_text().replace('"en": "Hello"', '"en": "Howdy"'))
    edited = handle(str(app), "--memory-snapshot", str(memory), requests=GREET)
    assert edited.returncode == 0, edited.stderr[-2000:]
    answer = json.loads(edited.stdout.strip().splitlines()[-1])["responses"][0]
    assert json.loads(answer["body"])["message"] == "Howdy, Ada!"


def test_a_file_that_is_not_a_memory_snapshot_is_refused(node: str, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mem"
    bogus.write_bytes(b"\0asm" + bytes(64))
    refused = handle(HELLO, "--memory-snapshot", str(bogus), requests=[])
    assert refused.returncode == 3
    assert "is not a Thaw edge memory snapshot" in refused.stderr
    stale = tmp_path / "stale.mem"
    stale.write_bytes(
        b'thaw-edge-memory-snapshot/1\n{"pyodide": "0.1.0", "modules": 1}\n' + bytes(8)
    )
    refused = handle(HELLO, "--memory-snapshot", str(stale), requests=[])
    assert refused.returncode == 3
    assert "Pyodide 0.1.0" in refused.stderr


# -- the guest's snapshot helpers, in CPython (Pyodide runs the same code) ---------------


def test_preloadable_modules_are_stdlib_source_modules_only() -> None:
    import asyncio  # noqa: F401  (loaded, so listed)

    import msgspec  # noqa: F401  (a compiled third-party module: never listed)

    from thaw.adapters.edge._guest import preloadable_modules

    names = preloadable_modules()
    assert "asyncio" in names
    assert "sys" in names  # built in: no file, safe
    assert not {"msgspec", "anyio", "thaw", "thaw.adapters.edge._guest"} & set(names)
    assert not [name for name in names if name.startswith(("thaw.", "_pytest", "pytest"))]


def test_preloadable_site_modules_leave_out_distributions_with_compiled_modules() -> None:
    import anyio  # noqa: F401  (pure Python: listed)
    import msgspec  # noqa: F401  (has a compiled module: none of its modules is listed)

    from thaw.adapters.edge._guest import preloadable_site_modules

    names = preloadable_site_modules()
    assert "anyio" in names
    assert not [name for name in names if name.partition(".")[0] in {"msgspec", "thaw"}]


@pytest.mark.anyio
async def test_a_snapshot_built_in_process_serves_through_the_edge_runtime(tmp_path: Path) -> None:
    from thaw.adapters.edge._guest import EdgeRuntime, build_snapshot_bytes

    snapshot = tmp_path / "hello.snap"
    snapshot.write_bytes(build_snapshot_bytes(HELLO))
    edge = EdgeRuntime.load(str(snapshot))
    await edge.start()
    try:
        answer = await edge.handle("POST", "/greet", [], b'{"name": "Ada"}')
    finally:
        await edge.stop()
    assert (answer.status, json.loads(answer.body)["message"]) == (200, "Hello, Ada!")


def test_the_webloop_patch_is_a_no_op_outside_pyodide() -> None:
    from thaw.adapters.edge._webloop import patch

    assert patch() is False


@pytest.mark.slow
def test_the_bundle_consumes_jetstream_from_itself(
    node: str,
    bundle: Path,
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import anyio
    import msgspec

    from thaw.adapters.nats import open_jetstream_backbone
    from thaw.lowlevel import (
        apply_plan,
        load_app,
        plan_for,
    )

    app = load_app(HELLO)
    [consumer] = plan_for(app).consumers

    async def provision() -> None:
        async with open_jetstream_backbone(nats_server.url) as backbone:
            await apply_plan(plan_for(app), backbone)

    async def publish_and_settle() -> None:
        async with open_jetstream_backbone(nats_server.url) as backbone:
            await backbone.publish("hello.greet", msgspec.json.encode({"name": "Ada"}))

            async def settled() -> bool:
                info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
                return (
                    info.num_pending == 0
                    and info.num_ack_pending == 0
                    and info.num_redelivered == 0
                )

            await wait_until(settled, limit=60)
            greeted = await backbone.stream_info(consumer.stream)
            assert greeted.messages == 2  # the input and the function's hello.greeted output

    async def remove() -> None:
        async with open_jetstream_backbone(nats_server.url) as backbone:
            await remove_app(backbone, app)

    moved = tmp_path_factory.mktemp("deployed-nats") / "site"
    bundle.rename(moved)
    anyio.run(provision)
    try:
        elsewhere = tmp_path_factory.mktemp("cwd-nats")
        command = [node, str(moved / "thaw_edge.mjs"), "serve", "--port", "0"]
        with listening([*command, "--nats", nats_server.url], cwd=elsewhere) as line:
            assert line["nats"] == nats_server.url
            anyio.run(publish_and_settle)
    finally:
        moved.rename(bundle)
        anyio.run(remove)


# -- credentials -------------------------------------------------------------------------

EDGE_SECRET = "edge-pa55word-never-printed"
EDGE_USERS = f'authorization {{ users: [ {{ user: ann, password: "{EDGE_SECRET}" }} ] }}'


def _edge_serve(url: str, cwd: Path, env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("THAW_NATS_", "THAW_EDGE"))}
    command = [sys.executable, "-c", HARNESS, "edge", "serve", HELLO, "--port", "0"]
    return subprocess.Popen(
        [*command, "--nats", url, *flags],
        cwd=cwd,
        env={**full, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_the_edge_host_authenticates_and_never_prints_the_password(
    node: str, tmp_path: Path
) -> None:
    import anyio
    import msgspec

    from thaw.adapters.nats import JetStreamOptions, open_jetstream_backbone
    from thaw.lowlevel import apply_plan, load_app, plan_for

    app = load_app(HELLO)
    [consumer] = plan_for(app).consumers
    options = JetStreamOptions(user="ann", password=EDGE_SECRET)
    with configured_server(EDGE_USERS, tmp_path / "server") as server:

        async def provision() -> None:
            async with open_jetstream_backbone(server.url, options=options) as backbone:
                await apply_plan(plan_for(app), backbone)

        async def publish_and_settle() -> None:
            async with open_jetstream_backbone(server.url, options=options) as backbone:
                await backbone.publish("hello.greet", msgspec.json.encode({"name": "Ada"}))

                async def settled() -> bool:
                    info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
                    return info.num_pending == 0 and info.num_ack_pending == 0

                await wait_until(settled, limit=60)
                assert (await backbone.stream_info(consumer.stream)).messages == 2

        anyio.run(provision)
        # The password in the URL: Node's command line, its start-up line and its
        # errors hold the URL without it; it authenticates from its environment.
        secret_url = f"nats://ann:{EDGE_SECRET}@127.0.0.1:{server.port}"
        process = _edge_serve(secret_url, tmp_path, {})
        try:
            line = wait_listening(process, timeout=120)
            assert line["nats"] == f"nats://127.0.0.1:{server.port}"
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
            assert "thaw_edge.mjs" in cmdline and EDGE_SECRET not in cmdline
            anyio.run(publish_and_settle)
        finally:
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
        assert EDGE_SECRET not in err

        # Wrong credentials: one clear line, within a bound, the password nowhere.
        for url, env in (
            (server.url, {"THAW_NATS_USER": "ann", "THAW_NATS_PASSWORD": "wrong-secret-x"}),
            (f"nats://ann:wrong-secret-x@127.0.0.1:{server.port}", {}),
        ):
            process = _edge_serve(url, tmp_path, env)
            out, err = process.communicate(timeout=120)
            assert process.returncode != 0, out
            assert "wrong-secret-x" not in out + err
            assert "cannot connect to NATS at nats://" in err
            assert "uthorization" in err, err


@pytest.mark.slow
def test_the_edge_host_speaks_mutual_tls_with_a_token(node: str, tmp_path: Path) -> None:
    import anyio
    import msgspec
    from nats_pki import make_pki, tls_config

    from thaw.adapters.nats import JetStreamOptions, open_jetstream_backbone
    from thaw.lowlevel import apply_plan, load_app, plan_for

    pki = make_pki(tmp_path / "pki")
    token_file = tmp_path / "token"
    token_file.write_text(EDGE_SECRET + "\n")
    config = f'{tls_config(pki, verify=True)}\nauthorization {{ token: "{EDGE_SECRET}" }}'
    app = load_app(HELLO)
    [consumer] = plan_for(app).consumers
    options = JetStreamOptions(
        token=EDGE_SECRET,
        tls_ca_file=str(pki / "ca.pem"),
        tls_cert_file=str(pki / "client.pem"),
        tls_key_file=str(pki / "client.key"),
    )
    with configured_server(config, tmp_path / "server") as server:
        url = f"tls://127.0.0.1:{server.port}"

        async def provision() -> None:
            async with open_jetstream_backbone(url, options=options) as backbone:
                await apply_plan(plan_for(app), backbone)

        async def publish_and_settle() -> None:
            async with open_jetstream_backbone(url, options=options) as backbone:
                await backbone.publish("hello.greet", msgspec.json.encode({"name": "Ada"}))

                async def settled() -> bool:
                    info = await backbone.consumer_info(consumer.stream, consumer.config.durable)
                    return info.num_pending == 0 and info.num_ack_pending == 0

                await wait_until(settled, limit=60)
                assert (await backbone.stream_info(consumer.stream)).messages == 2

        anyio.run(provision)
        flags = ["--nats-token-file", str(token_file), "--nats-tls-ca", str(pki / "ca.pem")]
        flags += ["--nats-tls-cert", str(pki / "client.pem")]
        flags += ["--nats-tls-key", str(pki / "client.key"), "--nats-tls-server-name", "nats.test"]
        process = _edge_serve(url, tmp_path, {}, *flags)
        try:
            assert wait_listening(process, timeout=120)["nats"] == url
            anyio.run(publish_and_settle)
        finally:
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
        assert EDGE_SECRET not in err
        # Without the client certificate the server refuses the handshake.
        process = _edge_serve(url, tmp_path, {}, *flags[:4])
        out, err = process.communicate(timeout=120)
        assert process.returncode != 0 and "cannot connect to NATS at tls://" in err, out + err
        assert EDGE_SECRET not in out + err


@pytest.mark.slow
def test_the_edge_host_runs_under_the_exported_permissions(node: str, tmp_path: Path) -> None:
    import anyio
    import nats

    from thaw.adapters.cli.policy import nats_config, permissions_for
    from thaw.adapters.nats import JetStreamOptions, open_jetstream_backbone
    from thaw.lowlevel import apply_plan, load_app, plan_for

    app = load_app(HELLO)
    block = nats_config(permissions_for(app), app="hello")
    users = f'{{ user: admin, password: "{EDGE_SECRET}" }}\n{{ user: app, password: app, {block} }}'
    with configured_server(f"authorization {{ users: [\n{users}\n] }}", tmp_path) as server:
        admin = JetStreamOptions(user="admin", password=EDGE_SECRET)

        async def provision() -> None:
            async with open_jetstream_backbone(server.url, options=admin) as backbone:
                await apply_plan(plan_for(app), backbone)

        async def publish_and_read() -> None:
            client = await nats.connect(server.url, user="admin", password=EDGE_SECRET)
            try:
                js = client.jetstream()
                await js.publish("hello.greet", b'{"name": "Grace"}')

                async def greeted() -> bool:
                    try:
                        message = await js.get_last_msg("HELLO", "hello.greeted")
                    except nats.js.errors.NotFoundError:
                        return False
                    return b"Hello, Grace!" in message.data

                await wait_until(greeted, limit=60)
            finally:
                await client.close()

        anyio.run(provision)
        env = {"THAW_NATS_USER": "app", "THAW_NATS_PASSWORD": "app"}
        process = _edge_serve(server.url, tmp_path, env)
        try:
            base = wait_listening(process, timeout=120)["listening"]
            status, body = post(f"{base}/greet", b'{"name": "Ada"}')
            assert (status, body) == (200, {"message": "Hello, Ada!", "attempt": 1})
            anyio.run(publish_and_read)
        finally:
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
        assert "iolation" not in err and "Violation" not in server.log_text()
