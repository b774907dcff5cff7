"""`thaw dlq` reaches the embedded server a running `thaw serve` keeps, never a second one.

Before, `thaw dlq list/replay` without `--nats` started a nats-server of its own on
the store the running `thaw serve` used: two servers on one store, and the replay
landed in the copy, never reaching the running host. Now the embedded server
claims its store (a lock) and records its URL there; `thaw dlq` connects to it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import nats
import nats.js.errors
import pytest

from thaw.adapters.nats.server import (
    RECORD_NAME,
    NatsStoreInUse,
    ServerRecord,
    StoreClaim,
    find_running_server,
    open_embedded_server,
    read_server_record,
)

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT = 60.0  # seconds for `thaw serve` to start its server and its host
WAIT_LIMIT = 30.0

APP = """
import os
from pathlib import Path

import msgspec

from thaw import App, Rejected, RetryPolicy, stream

# Not Path(__file__).parent: thaw serve runs a snapshot, whose files are its own copy.
HERE = Path(os.environ["FLAKY_DIR"])
app = App("flaky")


class Job(msgspec.Struct):
    name: str


@app.capability(stream("flaky.run"), retry=RetryPolicy(max_attempts=1))
async def run(job: Job) -> None:
    if not (HERE / "allow").exists():
        raise Rejected("not allowed yet", code="not_allowed")
    with open(HERE / "ledger", "a") as ledger:
        ledger.write(job.name + "\\n")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("THAW_NATS_URL", None)  # these tests are about the embedded server
    return env


def _thaw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "thaw.adapters.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=WAIT_LIMIT * 2
    )


def _wait_for_line(process: subprocess.Popen[str], needle: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"thaw serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready and needle in process.stdout.readline():
            return
    pytest.fail(f"thaw serve did not print {needle!r} within {START_LIMIT:g}s")


def _wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {WAIT_LIMIT:g}s")
        time.sleep(0.05)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """`thaw serve` of the flaky app on the default (embedded) store; (app dir, state dir)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    state = tmp_path / "state"
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(app_dir / "app.py")]
    command += ["--no-http", "--state-dir", str(state)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(_env(), FLAKY_DIR=str(app_dir)),
        cwd=tmp_path,
    )
    try:
        _wait_for_line(process, "serving app flaky on the nats backbone")
        yield app_dir, state
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)


async def _publish(url: str, subject: str, data: bytes) -> None:
    client = await nats.connect(url, connect_timeout=5)
    try:
        await client.jetstream().publish(subject, data, timeout=5)
    finally:
        await client.close()


async def _dead_letters(url: str) -> int:
    client = await nats.connect(url, connect_timeout=5)
    try:
        try:
            info = await client.jetstream().stream_info("THAW_DLQ")
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await client.close()


def test_dlq_list_and_replay_go_to_the_running_server(serving: tuple[Path, Path]) -> None:
    app_dir, state = serving
    record = read_server_record(state / "nats")
    assert record is not None, "thaw serve did not record its embedded server"
    anyio.run(_publish, record.url, "flaky.run", b'{"name": "first"}')
    _wait_for(lambda: anyio.run(_dead_letters, record.url) >= 1, "the dead-lettering")

    listed = _thaw("dlq", "list", "--json", "--state-dir", str(state), cwd=app_dir)
    assert listed.returncode == 0, listed.stderr
    assert f"using the running nats-server at {record.url}" in listed.stderr
    letters = json.loads(listed.stdout)["dead_letters"]
    assert [(d["capability"], d["code"]) for d in letters] == [("run", "not_allowed")]

    (app_dir / "allow").touch()
    replayed = _thaw(
        "dlq", "replay", str(letters[0]["seq"]), "--json", "--state-dir", str(state), cwd=app_dir
    )
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["replayed"][0]["dead_letter"] == letters[0]["seq"]
    ledger = app_dir / "ledger"
    _wait_for(lambda: ledger.exists() and ledger.read_text() == "first\n", "the replayed run")
    assert read_server_record(state / "nats") == record  # still the one server, untouched
    again = _thaw("dlq", "list", "--json", "--state-dir", str(state), cwd=app_dir)
    assert json.loads(again.stdout) == {"dead_letters": [], "more": False}


def test_dlq_list_says_when_there_are_more_than_its_limit(serving: tuple[Path, Path]) -> None:
    app_dir, state = serving
    record = read_server_record(state / "nats")
    assert record is not None
    for name in ("one", "two"):
        anyio.run(_publish, record.url, "flaky.run", b'{"name": "%s"}' % name.encode())
    _wait_for(lambda: anyio.run(_dead_letters, record.url) >= 2, "two dead letters")
    one = _thaw("dlq", "list", "--json", "--limit", "1", "--state-dir", str(state), cwd=app_dir)
    assert one.returncode == 0, one.stderr
    document = json.loads(one.stdout)
    assert (len(document["dead_letters"]), document["more"]) == (1, True)
    assert "there are more" in one.stderr
    both = _thaw("dlq", "list", "--json", "--limit", "2", "--state-dir", str(state), cwd=app_dir)
    assert json.loads(both.stdout)["more"] is False and "there are more" not in both.stderr


def test_a_locked_store_with_no_answering_server_is_a_clear_error(tmp_path: Path) -> None:
    store = tmp_path / "state" / "nats"
    claim = StoreClaim(store)
    claim.acquire()  # a process holds the store and has not (yet) recorded a server
    try:
        result = _thaw("dlq", "list", "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    finally:
        claim.release()
    assert result.returncode == 1
    assert "nats_store_in_use" in result.stderr
    assert "--nats URL" in result.stderr
    assert not (store / "jetstream").exists()  # no server was started on it


@pytest.mark.anyio
async def test_a_second_embedded_server_never_starts_on_a_store_in_use(tmp_path: Path) -> None:
    async with open_embedded_server(data_dir=tmp_path / "store") as first:
        with pytest.raises(NatsStoreInUse) as caught:
            async with open_embedded_server(data_dir=tmp_path / "store"):
                pytest.fail("a second server started on the store")
        assert f"--nats {first.url}" in str(caught.value)
        assert f"pid {first.pid}" in str(caught.value)
        found = await anyio.to_thread.run_sync(lambda: find_running_server(tmp_path / "store"))
        assert found == first.url
    assert not (tmp_path / "store" / RECORD_NAME).exists()  # removed on a clean stop
    assert find_running_server(tmp_path / "store") is None  # free again: nothing runs
    async with open_embedded_server(data_dir=tmp_path / "store") as again:  # and usable
        assert again.running


def test_a_record_of_a_dead_server_is_ignored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(done.stdout)  # a process that has exited
    stale = ServerRecord(
        url="nats://127.0.0.1:9", host="127.0.0.1", port=9, server_pid=pid, owner_pid=pid
    )
    (store / RECORD_NAME).write_bytes(msgspec.json.encode(stale))
    assert read_server_record(store) is None
    assert find_running_server(store) is None
    (store / RECORD_NAME).write_bytes(b"{not json")
    assert read_server_record(store) is None
    alive = msgspec.structs.replace(stale, server_pid=os.getpid())  # alive, but no server
    (store / RECORD_NAME).write_bytes(msgspec.json.encode(alive))
    assert read_server_record(store) == alive
    assert find_running_server(store) is None  # nothing answers and nothing holds the store


LAUNCHER = """
import sys, anyio
from thaw.adapters.nats.server import open_embedded_server

async def main():
    async with open_embedded_server(data_dir=sys.argv[1]) as server:
        print(server.url, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


ROOT = Path(__file__).resolve().parent.parent


async def _store_one(url: str) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.a", b"kept")
    finally:
        await client.close()


async def _restart_on(store: Path, orphan: int) -> tuple[bool, int]:
    """(whether the orphan still ran once the new server was up, messages kept)."""
    async with open_embedded_server(data_dir=store) as again:
        still = _pid_alive_here(orphan)
        client = await nats.connect(again.url)
        try:
            info = await client.jetstream().stream_info("KEEP")
        finally:
            await client.close()
    return still, int(info.state.messages)


def test_a_server_orphaned_by_a_killed_launcher_is_stopped_and_its_store_reused(
    tmp_path: Path,
) -> None:
    """kill -9 of the launcher leaves its nats-server running and holding the store; the
    next embedded server on that store stops the orphan and starts, the data kept."""
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(store)], stdout=subprocess.PIPE, text=True, env=env
    )
    orphan = 0
    try:
        assert launcher.stdout is not None
        ready, _, _ = select.select([launcher.stdout], [], [], 30)
        assert ready, "the launcher did not start its server"
        url = launcher.stdout.readline().strip()
        record = read_server_record(store)
        assert record is not None and record.url == url
        orphan = record.server_pid
        anyio.run(_store_one, url)
        launcher.kill()  # the launcher only, by its PID: its server is left running
        launcher.wait(10)
        assert _pid_alive_here(orphan), "the server died with its launcher"
        still, kept = anyio.run(_restart_on, store, orphan)
        assert not still  # stopped before the new server started
        assert kept == 1  # what the orphan stored is still there
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        if launcher.stdout is not None:
            launcher.stdout.close()
        if orphan and _pid_alive_here(orphan):
            os.kill(orphan, 9)  # the server our launcher started: never left behind


def _pid_alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_live_launchers_server_is_never_stopped_as_an_orphan(tmp_path: Path) -> None:
    from thaw.adapters.nats.server import stop_orphaned_server

    async def check() -> None:
        async with open_embedded_server(data_dir=tmp_path / "store") as server:
            assert not stop_orphaned_server(str(tmp_path / "store"))  # its launcher: us
            assert server.running

    anyio.run(check)
