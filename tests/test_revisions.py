"""Several revisions: background preload, weights, sticky routing, retire."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from snapshot_apps import build, write_app

from thaw import Event, Ok, Retry
from thaw._errors import ConfigError
from thaw.adapters.threads import run_in_thread
from thaw.host._router import RevisionRouter

pytestmark = pytest.mark.anyio


@pytest.fixture
def snapshots(tmp_path: Path) -> tuple[Path, Path]:
    one = build(tmp_path, write_app(tmp_path / "v1", greeting="hello"), "v1.snap")
    two = build(tmp_path, write_app(tmp_path / "v2", greeting="bonjour"), "v2.snap")
    return one, two


def greeting(outcome: object) -> str:
    assert isinstance(outcome, Ok)
    return outcome.data.split(b'"')[3].split(b" ")[0].decode()


async def test_preload_in_background_gets_no_traffic_until_weighted(
    snapshots: tuple[Path, Path],
) -> None:
    router = RevisionRouter(run_blocking=run_in_thread)
    blue = await router.preload(snapshots[0], weight=1)
    green = await router.preload(snapshots[1])  # weight 0: loaded, warm, no traffic
    assert green.revision_id in router.revisions
    for i in range(50):
        outcome = await router.invoke("hello", Event(id=f"e{i}", data=b'{"who":"x"}'))
        assert greeting(outcome) == "HELLO"
    assert not router.statistics().live_instances[green.revision_id]
    router.set_weights({blue.revision_id: 0, green.revision_id[:8]: 1})  # switch over
    outcome = await router.invoke("hello", Event(id="after", data=b'{"who":"x"}'))
    assert greeting(outcome) == "BONJOUR"
    await router.aclose()


async def test_canary_weights_split_traffic_and_routing_is_sticky(
    snapshots: tuple[Path, Path],
) -> None:
    router = RevisionRouter(run_blocking=run_in_thread)
    stable = await router.preload(snapshots[0], weight=9)
    canary = await router.preload(snapshots[1], weight=1)
    seen = Counter()
    for i in range(2000):
        seen[router.pick(f"event-{i}").revision.revision_id] += 1
    share = seen[canary.revision_id] / 2000
    assert 0.06 < share < 0.14
    assert seen[stable.revision_id] + seen[canary.revision_id] == 2000
    assert {router.pick("same-id").revision.revision_id for _ in range(20)} == {
        router.pick("same-id").revision.revision_id
    }
    await router.aclose()


async def test_retire_and_errors(snapshots: tuple[Path, Path]) -> None:
    router = RevisionRouter()
    outcome = await router.invoke("hello", Event(id="x"))
    assert isinstance(outcome, Retry)
    assert outcome.code == "no_revision"
    one = await router.preload(snapshots[0], weight=1)  # the default: run_inline
    with pytest.raises(ConfigError, match="already loaded"):
        await router.preload(snapshots[0])
    with pytest.raises(ConfigError, match="matches no"):
        router.set_weights({"ffff": 1})
    with pytest.raises(ConfigError, match="non-negative"):
        router.set_weights({one.revision_id: -1})
    await router.retire(one.revision_id[:10])
    assert router.revisions == {}
    assert isinstance(await router.invoke("hello", Event(id="x")), Retry)
