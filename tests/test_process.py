"""The ``process`` isolation: instances forked from the preloaded parent (Linux only)."""

from __future__ import annotations

import glob
import os
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest

from thaw import Event, Ok, Reject, Retry
from thaw._errors import ConfigError
from thaw.adapters.process.build import build_snapshot
from thaw.adapters.process.pool import ProcessPool, fork_and_answer
from thaw.adapters.process.wire import _Answer, _Channel, _frame, _ProtocolError
from thaw.backbone._contract import StreamConfig
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.host._instances import InstancePool
from thaw.snapshots._revision import Revision, load_revision
from thaw.testing import FakeClock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks (Linux)")
ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0  # seconds; every wait in these tests is bounded by it

APP = """
import asyncio
import os
import time

import msgspec

from thaw import App, Context

app = App("forked")
COUNTER = 0
STARTED_IN = None
CANCELLED = None


class Item(msgspec.Struct, frozen=True):
    n: int


@app.on_start
async def started() -> None:
    global STARTED_IN, CANCELLED
    if os.environ.get("THAW_TEST_FAIL_START"):
        raise RuntimeError("on_start refused")
    while not os.path.exists(os.environ.get("THAW_TEST_START_GATE", "/")):
        await asyncio.sleep(0.005)
    STARTED_IN = os.getpid()
    CANCELLED = asyncio.Event()


@app.on_stop
async def stopped() -> None:
    path = os.environ.get("THAW_TEST_STOP_FILE")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{os.getpid()} {COUNTER}\\n")


@app.capability()
async def hello(item: Item) -> dict:
    return {"hello": item.n}


@app.capability()
async def count() -> dict:
    global COUNTER
    COUNTER += 1
    return {"counter": COUNTER, "pid": os.getpid(), "started_in": STARTED_IN}


@app.capability()
async def echo(item: Item) -> Item:
    await asyncio.sleep((item.n % 7) * 0.002)  # answers come back out of order
    return item


@app.capability(timeout=10)
async def gate() -> int:
    while not os.path.exists(os.environ["THAW_TEST_GATE"]):  # opened by the test
        await asyncio.sleep(0.005)
    return os.getpid()


@app.capability()
async def publishes(ctx: Context) -> dict:
    ack = await ctx.publish("forked.out", {"from": os.getpid()})
    return {"stream": ack.stream, "seq": ack.seq}


@app.capability()
async def crash() -> None:
    os._exit(1)


@app.capability(timeout=0.2)
async def slow() -> None:
    await asyncio.sleep(30)


@app.capability(timeout=0.2)
async def blocks() -> None:
    time.sleep(30)  # blocks the child's event loop: only the parent can end this


@app.capability(timeout=30)
async def waits() -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED.set()
        raise


@app.capability(timeout=10)
async def was_cancelled() -> bool:
    await CANCELLED.wait()
    return True
"""

ORPHAN = """
import os, sys
import anyio
import anyio.abc
from thaw.adapters.process.pool import ProcessPool
from thaw.snapshots._revision import load_revision

async def main():
    pool = ProcessPool(load_revision(sys.argv[1], data_dir=sys.argv[2]))
    print(await pool.thaw(), flush=True)
    os._exit(0)  # the parent dies without stopping its child

anyio.run(main)
"""


def constant() -> float:
    return 0.5


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forked")
    (root / "forked.py").write_text(textwrap.dedent(APP))
    out = root / "forked.snap"
    build_snapshot(str(root / "forked.py"), str(out))
    return out


@pytest.fixture
def revision(snapshot: Path, tmp_path: Path) -> Iterator[Revision]:
    loaded = load_revision(snapshot, data_dir=tmp_path / "data")
    yield loaded
    loaded.unload()


@pytest.fixture
def stop_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stopped.txt"
    monkeypatch.setenv("THAW_TEST_STOP_FILE", str(path))
    return path


@pytest.fixture
def open_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Shut the ``gate`` capability's gate; call the result to let its calls finish."""
    path = tmp_path / "gate"
    monkeypatch.setenv("THAW_TEST_GATE", str(path))
    return path.touch


def module(revision: Revision) -> Any:
    return revision.namespace.modules["forked"]


def text(path: Path) -> str | None:
    """The file's text, or None if it does not exist (kept out of the async tests)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def children() -> set[int]:
    """This process's children, zombies included (from /proc); tests compare with a baseline."""
    found: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as handle:
            found.update(int(pid) for pid in handle.read().split())
    return found


def reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def count(pool: ProcessPool) -> dict[str, int]:
    outcome = await pool.invoke("count", Event(id="c"))
    assert isinstance(outcome, Ok), outcome
    result: dict[str, int] = msgspec.json.decode(outcome.data)
    return result


@pytest.mark.anyio
async def test_outcomes_match_the_in_process_pool(revision: Revision) -> None:
    events = [
        ("hello", Event(id="1", data=b'{"n": 7}')),
        ("hello", Event(id="2", data=b'{"n": "seven"}')),  # contract error: Reject
        ("hello", Event(id="3", data=b"{")),  # malformed: Reject
        ("slow", Event(id="4")),  # the child's invoker enforces the timeout
        ("missing", Event(id="5")),
    ]
    in_process = InstancePool(revision, rand=constant)
    forked = ProcessPool(revision, rand=constant)
    try:
        with anyio.fail_after(BOUND):
            for name, event in events:
                assert await forked.invoke(name, event) == await in_process.invoke(name, event)
    finally:
        await in_process.aclose()
        await forked.aclose()
    assert forked.statistics().isolation == "process"


@pytest.mark.anyio
async def test_module_state_and_on_start_live_in_the_child(revision: Revision) -> None:
    pool = ProcessPool(revision)
    try:
        with anyio.fail_after(BOUND):
            first = [await count(pool) for _ in range(3)]
            assert [r["counter"] for r in first] == [1, 2, 3]
            pid = first[0]["pid"]
            assert pid == pool.pid != os.getpid()
            assert first[0]["started_in"] == pid  # on_start ran in the child
            assert module(revision).COUNTER == 0  # nothing leaked back
            assert module(revision).STARTED_IN is None
            await pool.scale_to_zero()
            again = await count(pool)
    finally:
        await pool.aclose()
    assert again["counter"] == 1  # a new child starts from the preloaded state
    assert again["pid"] != pid
    assert pool.statistics().thaws == 2


@pytest.mark.anyio
async def test_on_stop_runs_in_the_child_at_scale_to_zero(
    revision: Revision, stop_file: Path
) -> None:
    pool = ProcessPool(revision)
    try:
        with anyio.fail_after(BOUND):
            pid = (await count(pool))["pid"]
            await count(pool)
            assert text(stop_file) is None
            await pool.scale_to_zero()
    finally:
        await pool.aclose()
    assert text(stop_file) == f"{pid} 2\n"
    assert not pool.live
    assert pool.statistics().drops == 1
    assert reaped(pid)


@pytest.mark.anyio
async def test_concurrent_invokes_each_get_their_own_answer(revision: Revision) -> None:
    pool = ProcessPool(revision)
    results: dict[int, object] = {}

    async def call(n: int) -> None:
        results[n] = await pool.invoke("echo", Event(id=str(n), data=b'{"n": %d}' % n))

    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                for n in range(200):
                    group.start_soon(call, n)
    finally:
        await pool.aclose()
    assert results == {n: Ok(b'{"n":%d}' % n) for n in range(200)}
    assert pool.statistics().thaws == 1  # the burst forked once


@pytest.mark.anyio
async def test_a_crash_mid_request_is_retried_and_the_pool_recovers(revision: Revision) -> None:
    pool = ProcessPool(revision)
    try:
        with anyio.fail_after(BOUND):
            pid = await pool.thaw()
            outcome = await pool.invoke("crash", Event(id="x"))
            assert isinstance(outcome, Retry)
            assert outcome.code == "instance_crashed"
            assert f"process {pid} died" in outcome.reason
            assert "exit status 1" in outcome.reason
            assert not pool.live
            assert reaped(pid)
            after = await count(pool)
    finally:
        await pool.aclose()
    assert after["counter"] == 1
    assert after["pid"] != pid


@pytest.mark.anyio
async def test_a_crash_fails_every_call_in_flight_on_that_child(revision: Revision) -> None:
    pool = ProcessPool(revision)
    outcomes: list[object] = []

    async def wait() -> None:
        outcomes.append(await pool.invoke("waits", Event(id="w")))

    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                await pool.thaw()
                group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()  # its call frame is out
                outcomes.append(await pool.invoke("crash", Event(id="x")))
    finally:
        await pool.aclose()
    assert [(type(o), getattr(o, "code", None)) for o in outcomes] == [
        (Retry, "instance_crashed"),
        (Retry, "instance_crashed"),
    ]


@pytest.mark.anyio
async def test_a_crash_on_the_last_attempt_gives_up(revision: Revision) -> None:
    pool = ProcessPool(revision)
    try:
        with anyio.fail_after(BOUND):
            outcome = await pool.invoke("crash", Event(id="x", attempt=5))
    finally:
        await pool.aclose()
    assert isinstance(outcome, Reject)
    assert outcome.code == "instance_crashed"
    assert outcome.reason.startswith("gave up after 5 attempts")


@pytest.mark.anyio
async def test_a_failing_on_start_is_instance_start_failed(
    revision: Revision, stop_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ProcessPool(revision)
    before = children()
    monkeypatch.setenv("THAW_TEST_FAIL_START", "1")
    try:
        with anyio.fail_after(BOUND):
            outcome = await pool.invoke("count", Event(id="c"))
            assert isinstance(outcome, Retry)
            assert outcome.code == "instance_start_failed"
            assert "RuntimeError: on_start refused" in outcome.reason
            assert not pool.live
            assert children() == before  # the child that failed to start is reaped
            monkeypatch.delenv("THAW_TEST_FAIL_START")
            assert (await count(pool))["counter"] == 1
    finally:
        await pool.aclose()
    assert pool.statistics().thaws == 1
    assert (text(stop_file) or "").count("\n") == 1  # on_stop only for the one that started


@pytest.mark.anyio
async def test_aclose_reaps_the_child(revision: Revision, stop_file: Path) -> None:
    pool = ProcessPool(revision)
    with anyio.fail_after(BOUND):
        pid = await pool.thaw()
        assert pid in children()
        await pool.aclose()
    assert reaped(pid)
    assert pid not in children()
    assert text(Path(f"/proc/{pid}/stat")) is None
    assert text(stop_file) == f"{pid} 0\n"
    assert pool.statistics().live is False


@pytest.mark.anyio
async def test_aclose_kills_a_child_still_starting(
    revision: Revision, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THAW_TEST_START_GATE", str(tmp_path / "never"))
    pool = ProcessPool(revision)
    before = children()
    outcomes: list[object] = []

    async def call() -> None:
        outcomes.append(await pool.invoke("count", Event(id="c")))

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await anyio.wait_all_tasks_blocked()  # forked; on_start waits on its gate
            assert len(children() - before) == 1
            await pool.aclose()
    assert children() == before
    assert [(type(o), getattr(o, "code", None)) for o in outcomes] == [
        (Retry, "instance_start_failed")
    ]
    assert "killed by SIGKILL" in getattr(outcomes[0], "reason", "")
    assert not pool.live


@pytest.mark.anyio
async def test_scale_to_zero_lets_calls_in_flight_finish(
    revision: Revision, open_gate: Callable[[], None]
) -> None:
    pool = ProcessPool(revision)
    outcomes: list[object] = []

    async def call() -> None:
        outcomes.append(await pool.invoke("gate", Event(id="g")))

    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                pid = await pool.thaw()
                group.start_soon(call)
                await anyio.wait_all_tasks_blocked()  # the call is out; the gate is shut
                assert pool.statistics().in_flight == 1
                group.start_soon(pool.scale_to_zero)  # the stop frame queues behind it
                await anyio.wait_all_tasks_blocked()
                assert not pool.live
                open_gate()
    finally:
        await pool.aclose()
    assert outcomes == [Ok(str(pid).encode())]
    assert reaped(pid)


@pytest.mark.anyio
async def test_callers_cancelled_together_leave_the_others_answered(
    revision: Revision, open_gate: Callable[[], None]
) -> None:
    # The first caller reads for everyone; cancelling it and the one it hands the
    # reader role to must still leave someone reading for the third.
    pool = ProcessPool(revision)
    outcomes: list[object] = []

    async def call() -> None:
        outcomes.append(await pool.invoke("gate", Event(id="g")))

    try:
        with anyio.fail_after(BOUND):
            pid = await pool.thaw()
            async with anyio.create_task_group() as group:
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(call)
                    doomed.start_soon(call)
                    await anyio.wait_all_tasks_blocked()
                    group.start_soon(call)
                    await anyio.wait_all_tasks_blocked()
                    doomed.cancel_scope.cancel()
                open_gate()
    finally:
        await pool.aclose()
    assert outcomes == [Ok(str(pid).encode())]


@pytest.mark.anyio
async def test_a_blocked_child_is_killed_after_its_timeout_and_grace(revision: Revision) -> None:
    pool = ProcessPool(revision, grace=0.3)
    try:
        with anyio.fail_after(BOUND):
            pid = await pool.thaw()
            outcome = await pool.invoke("blocks", Event(id="b"))
            assert isinstance(outcome, Retry)
            assert outcome.code == "deadline_exceeded"
            assert "it was killed" in outcome.reason
            assert reaped(pid)
            assert (await count(pool))["pid"] != pid
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_a_cancelled_invoke_is_cancelled_in_the_child(revision: Revision) -> None:
    pool = ProcessPool(revision)
    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                await pool.thaw()
                group.start_soon(pool.invoke, "waits", Event(id="w"))
                await anyio.wait_all_tasks_blocked()
                group.cancel_scope.cancel()
            assert await pool.invoke("was_cancelled", Event(id="q")) == Ok(b"true")
            assert pool.statistics().in_flight == 0
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_drop_idle_after_idle_timeout(revision: Revision, stop_file: Path) -> None:
    clock = FakeClock()
    pool = ProcessPool(revision, idle_timeout=60, clock=clock)
    try:
        with anyio.fail_after(BOUND):
            pid = (await count(pool))["pid"]
            clock.advance(59)
            assert not await pool.drop_idle()
            clock.advance(1)
            assert await pool.drop_idle()
            assert not pool.live
    finally:
        await pool.aclose()
    assert text(stop_file) == f"{pid} 1\n"


async def make_backbone() -> MemoryBackbone:
    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="OUT", subjects=("forked.>",)))
    return backbone


@pytest.mark.anyio
async def test_the_backbone_is_built_in_the_child(revision: Revision) -> None:
    pool = ProcessPool(revision, backbone_factory=make_backbone)
    try:
        with anyio.fail_after(BOUND):
            first = await pool.invoke("publishes", Event(id="p1"))
            second = await pool.invoke("publishes", Event(id="p2"))
    finally:
        await pool.aclose()
    assert first == Ok(b'{"stream":"OUT","seq":1}')
    assert second == Ok(b'{"stream":"OUT","seq":2}')


@pytest.mark.anyio
async def test_fork_and_answer(revision: Revision) -> None:
    before = children()
    with anyio.fail_after(BOUND):
        outcome = await fork_and_answer(revision, "hello", Event(id="h", data=b'{"n": 1}'))
    assert outcome == Ok(b'{"hello":1}')
    assert children() == before


@pytest.mark.anyio
async def test_frames_survive_arriving_one_byte_at_a_time() -> None:
    left, right = socket.socketpair()
    with anyio.fail_after(BOUND):
        sender = await anyio.abc.UNIXSocketStream.from_socket(left)
        receiver = _Channel(await anyio.abc.UNIXSocketStream.from_socket(right))
        async with sender, receiver.stream:
            frames = [_frame(_Answer(n, ok=Ok(b"x" * n))) for n in range(5)]
            wire = b"".join(frames)
            for i in range(len(wire)):
                await sender.send(wire[i : i + 1])
            for expected in frames:
                assert await receiver.receive() == expected[4:]
            await sender.send(b"\xff\xff\xff\xff")  # a length no frame has
            with pytest.raises(_ProtocolError):
                await receiver.receive()


@pytest.mark.anyio
async def test_a_stream_cut_mid_frame_is_end_of_stream() -> None:
    left, right = socket.socketpair()
    with anyio.fail_after(BOUND):
        sender = await anyio.abc.UNIXSocketStream.from_socket(left)
        receiver = _Channel(await anyio.abc.UNIXSocketStream.from_socket(right))
        async with receiver.stream:
            async with sender:
                await sender.send(_frame(_Answer(1, ok=Ok(b"abc")))[:-1])
            with pytest.raises(anyio.EndOfStream):
                await receiver.receive()


def test_the_child_stops_when_its_parent_dies(snapshot: Path, tmp_path: Path) -> None:
    stop_file = tmp_path / "orphan.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), THAW_TEST_STOP_FILE=str(stop_file))
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(snapshot), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=BOUND,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    orphan = int(done.stdout)
    try:
        pidfd = os.pidfd_open(orphan)
    except ProcessLookupError:
        pass  # already gone
    else:
        try:
            assert select.select([pidfd], [], [], BOUND)[0] == [pidfd], "the orphan lives on"
        finally:
            os.close(pidfd)
    assert stop_file.read_text() == f"{orphan} 0\n"  # EOF: it ran on_stop and left


def test_platforms_without_fork_get_a_config_error(
    revision: Revision, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "fork")
    with pytest.raises(ConfigError, match="needs Linux with os.fork"):
        ProcessPool(revision)
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "emscripten")
    with pytest.raises(ConfigError, match="'emscripten'"):
        ProcessPool(revision)


def test_bad_options_are_config_errors(revision: Revision) -> None:
    with pytest.raises(ConfigError, match="idle_timeout"):
        ProcessPool(revision, idle_timeout=0)
    with pytest.raises(ConfigError, match="grace"):
        ProcessPool(revision, grace=-1)


def test_the_core_never_imports_the_process_module() -> None:
    script = (
        "import sys, thaw, thaw.lowlevel, thaw.testing, thaw.host._instances\n"
        "print('thaw.adapters.process.pool' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=BOUND,
        check=False,
    )
    assert done.stdout.strip() == "False", done.stderr
