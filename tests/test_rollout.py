"""A host's revisions follow the deployed weights: preload, shift (sticky per event id),
retire; a revision that cannot be loaded here never gets traffic."""

from __future__ import annotations

import msgspec
import pytest
from snapshot_apps import build, write_app

from thaw import Event, Ok
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
