"""A host's revisions follow the deployed weights: preload, shift (sticky per event id),
retire; a revision that cannot be loaded here never gets traffic."""

from __future__ import annotations

import http.client

import anyio
import anyio.to_thread
import msgspec
import pytest
from snapshot_apps import build, write_app

from thaw import Event, Ok
from thaw.adapters.http import open_http_server
from thaw.adapters.threads import run_in_thread
from thaw.host._host import Host, open_host
from thaw.host._rollout import Rollout
from thaw.snapshots._revision import load_revision
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Three revisions of one app (other greetings: other revision ids), by id."""
    root = tmp_path_factory.mktemp("rollout")
    found: dict[str, bytes] = {}
    for greeting in ("hello", "bonjour", "hallo"):
        folder = write_app(root / greeting, greeting=greeting)
        blob = build(root, folder, f"{greeting}.snap").read_bytes()
        found[load_revision(blob).revision_id] = blob
    return found


def ids(snapshots: dict[str, bytes]) -> list[str]:
    return list(snapshots)


async def greeting(host: Host, event_id: str) -> str:
    outcome = await host.invoke("hello", Event(id=event_id, data=b'{"who": "x"}'))
    assert isinstance(outcome, Ok), outcome
    text: str = msgspec.json.decode(outcome.data)["text"]
    return text.split()[0]


async def test_a_canary_gets_its_share_sticky_by_event_id(snapshots: dict[str, bytes]) -> None:
    v1, v2, _ = ids(snapshots)
    fetched: list[str] = []

    async def fetch(rid: str) -> bytes:
        fetched.append(rid)
        return snapshots[rid]

    async with open_host(load_revision(snapshots[v1]), MemoryBackbone()) as host:
        rollout = Rollout(host.router, fetch, run_blocking=run_in_thread, app="greeter")
        state = await rollout.apply({v1: 100})
        assert fetched == [] and state.weights == {v1: 100}
        state = await rollout.apply({v1: 90, v2: 10})
        assert fetched == [v2] and state.weights == {v1: 90, v2: 10} and state.pending == {}
        answers = [await greeting(host, f"event-{n}") for n in range(400)]
        share = answers.count("BONJOUR") / len(answers)
        assert 0.04 < share < 0.2, share  # a hash of the id, not a draw: about 10%
        for n in range(0, 400, 37):  # a redelivery (same id) reaches the same revision
            assert await greeting(host, f"event-{n}") == answers[n]
        state = await rollout.apply({v2: 100})
        assert list(host.router.loaded) == [v2]  # v1 is no longer named: retired
        assert {await greeting(host, f"e{n}") for n in range(20)} == {"BONJOUR"}
        assert state.generation == 3  # three applies


async def test_a_revision_that_cannot_load_here_never_gets_traffic(
    snapshots: dict[str, bytes],
) -> None:
    v1, v2, v3 = ids(snapshots)

    async def fetch(rid: str) -> bytes:
        if rid == v3:
            return b"THAWSNAP garbage"
        return snapshots[v1]  # whatever is asked, v1's bytes: a mismatch for v2

    async with open_host(load_revision(snapshots[v1]), MemoryBackbone()) as host:
        rollout = Rollout(host.router, fetch, app="greeter")
        state = await rollout.apply({v1: 50, v3: 50})
        assert state.weights == {v1: 100}  # unchanged
        assert "snapshot_invalid" in state.pending[v3]
        state = await rollout.apply({v2: 100})
        assert "revision_mismatch" in state.pending[v2]
        assert state.weights == {v1: 100}
        assert await greeting(host, "still") == "HELLO"
        state = await rollout.apply({v1: 0})
        assert state.weights == {v1: 100} and state.pending
        assert rollout.not_ready() is None


async def test_weights_may_keep_a_standby_revision_loaded(snapshots: dict[str, bytes]) -> None:
    v1, v2, _ = ids(snapshots)

    async def fetch(rid: str) -> bytes:
        return snapshots[rid]

    async with open_host(load_revision(snapshots[v1]), MemoryBackbone()) as host:
        rollout = Rollout(host.router, fetch, app="greeter")
        await rollout.apply({v1: 0, v2: 100})
        assert set(host.router.loaded) == {v1, v2}  # v1 stays loaded for a fast rollback
        assert await greeting(host, "a") == "BONJOUR"
        await rollout.apply({v1: 100, v2: 0})
        assert await greeting(host, "a") == "HELLO"


async def test_readiness_names_the_revision_loading_beside_the_serving_one(
    snapshots: dict[str, bytes],
) -> None:
    v1, v2, _ = ids(snapshots)
    asked, release = anyio.Event(), anyio.Event()

    async def fetch(rid: str) -> bytes:
        asked.set()
        await release.wait()  # the preload holds here until the test has looked
        return snapshots[rid]

    def ready(port: int) -> tuple[int, dict[str, str]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            return response.status, msgspec.json.decode(response.read())
        finally:
            connection.close()

    async with (
        open_host(load_revision(snapshots[v1]), MemoryBackbone()) as host,
        open_http_server(host) as server,
    ):
        rollout = Rollout(host.router, fetch, run_blocking=run_in_thread, app="greeter")
        async with anyio.create_task_group() as group:
            group.start_soon(rollout.apply, {v1: 50, v2: 50})
            with anyio.fail_after(10):
                await asked.wait()
            assert host.router.preloading == v2
            status, body = await anyio.to_thread.run_sync(ready, server.port)
            assert (status, body) == (200, {"status": "ready", "preloading": v2})
            assert await greeting(host, "during") == "HELLO"  # v1 serves meanwhile
            release.set()
        assert host.router.preloading is None
        assert await anyio.to_thread.run_sync(ready, server.port) == (
            200,
            {"status": "ready"},
        )
