"""Deployment records (compare-and-set, weights, rollback, verified snapshots), the canary
verdict, and a host following its deployment on MemoryBackbone, automatic rollback included."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import anyio
import msgspec
import pytest

from thaw import App, CanaryPolicy, ConfigError, Event
from thaw.adapters.process.build import build_snapshot
from thaw.host._canary import WindowCounts, canary_verdict
from thaw.host._deployments import (
    DEPLOYMENT_BUCKET,
    SNAPSHOT_STORE,
    DeploymentError,
    deploy,
    ensure_deployment_stores,
    fetch_snapshot,
    read_deployment,
    revision_report,
    rollback,
    set_weights,
    watch_deployment,
)
from thaw.host._host import open_host
from thaw.host._rollout import Rollout, follow_deployment
from thaw.snapshots._revision import load_revision
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio

WAIT = 20.0

APP = """
from thaw import App, CanaryPolicy, http

VERSION = "{version}"
app = App("canaried", canary=CanaryPolicy(max_error_rate=0.2, window=60, min_calls=5))


@app.capability(http("GET", "/work"))
async def work() -> str:
    if VERSION == "bad":
        raise RuntimeError("this version is broken")
    return VERSION
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("deploy")
    built: dict[str, bytes] = {}
    for version in ("one", "two", "bad"):
        folder = root / version
        folder.mkdir()
        (folder / "app.py").write_text(textwrap.dedent(APP.format(version=version)))
        output = root / f"{version}.snap"
        build_snapshot(str(folder / "app.py"), str(output))
        built[version] = output.read_bytes()
    return built


async def wait_until(condition: Callable[[], bool]) -> None:
    """Bounded: the router's weights have no event to await, so look every few ms."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 - nothing to await but the condition
            await anyio.sleep(0.01)


def rid(blob: bytes) -> str:
    return load_revision(blob).revision_id


async def test_deploy_canary_weights_and_rollback(versions: dict[str, bytes]) -> None:
    backbone = MemoryBackbone()
    one, two = rid(versions["one"]), rid(versions["two"])
    record = await deploy(backbone, versions["one"], note="first")
    assert record.weights() == {one: 100} and record.stable == one and record.generation == 1
    record = await deploy(backbone, versions["two"], weight=10)
    assert record.weights() == {one: 90, two: 10} and record.canary() == two
    record = await set_weights(backbone, "canaried", {two[:8]: 50, one[:8]: 50})
    assert record.weights() == {one: 50, two: 50}
    record = await rollback(backbone, "canaried")
    assert record.weights() == {one: 100, two: 0} and record.canary() is None
    record = await deploy(backbone, versions["two"])  # full rollout: two is the stable one
    assert record.weights() == {one: 0, two: 100} and record.stable == two
    assert [c.action for c in record.history] == [
        "deploy",
        "deploy",
        "weights",
        "rollback",
        "deploy",
    ]
    assert await fetch_snapshot(backbone, "canaried", two) == versions["two"]


async def test_bad_requests_are_clear_errors(versions: dict[str, bytes]) -> None:
    backbone = MemoryBackbone()
    with pytest.raises(DeploymentError, match="not a Thaw snapshot"):
        await deploy(backbone, b"definitely not a snapshot")
    with pytest.raises(DeploymentError, match="from 0 to 100"):
        await deploy(backbone, versions["one"], weight=101)
    await ensure_deployment_stores(backbone)
    with pytest.raises(DeploymentError, match="not deployed"):
        await rollback(backbone, "canaried")
    await deploy(backbone, versions["one"])
    with pytest.raises(DeploymentError, match="matches no revision"):
        await set_weights(backbone, "canaried", {"ffff": 100})
    with pytest.raises(DeploymentError, match="above 0"):
        await set_weights(backbone, "canaried", {rid(versions["one"]): 0})
    with pytest.raises(DeploymentError, match="not deployed"):
        await fetch_snapshot(backbone, "canaried", "0" * 32)


async def test_concurrent_deploys_lose_nothing(versions: dict[str, bytes]) -> None:
    backbone = MemoryBackbone()
    await ensure_deployment_stores(backbone)
    async with anyio.create_task_group() as group:
        for version in ("one", "two", "bad"):
            group.start_soon(deploy, backbone, versions[version])
    record, _ = await read_deployment(backbone, "canaried")
    assert record is not None and record.generation == 3
    assert {r.revision for r in record.revisions} == {rid(b) for b in versions.values()}
    assert sum(record.weights().values()) == 100


async def test_a_tampered_snapshot_or_record_is_refused_and_replaced(
    versions: dict[str, bytes],
) -> None:
    backbone = MemoryBackbone()
    await deploy(backbone, versions["one"])
    one = rid(versions["one"])
    store = await backbone.object_store(SNAPSHOT_STORE)
    await store.put(f"canaried/{one}", versions["two"])  # someone swapped the bytes
    with pytest.raises(DeploymentError, match="does not match its deployment record"):
        await fetch_snapshot(backbone, "canaried", one)
    bucket = await backbone.kv(DEPLOYMENT_BUCKET)
    await bucket.put("canaried", b"\xff{garbage")
    with pytest.raises(DeploymentError, match="damaged"):
        await read_deployment(backbone, "canaried")
    seen = []
    with anyio.move_on_after(0.2):
        async for record in watch_deployment(backbone, "canaried", poll=0.02):
            seen.append(record)  # a damaged record is skipped, never the end
    assert seen == []
    record = await deploy(backbone, versions["two"])  # a deploy replaces it
    assert record.weights() == {rid(versions["two"]): 100}
    with pytest.raises(ConfigError):
        async for _ in watch_deployment(backbone, "canaried", poll=0):
            pass


def test_the_canary_verdict_table() -> None:
    policy = CanaryPolicy(max_error_rate=0.1, window=30, min_calls=10)
    cases = [
        (WindowCounts(5, 5), WindowCounts(100, 0), "keep"),  # too few calls
        (WindowCounts(100, 10), WindowCounts(100, 0), "keep"),  # at the budget
        (WindowCounts(100, 11), WindowCounts(100, 0), "rollback"),
        (WindowCounts(100, 50), WindowCounts(100, 60), "keep"),  # stable fails as much
        (WindowCounts(100, 50), WindowCounts(3, 3), "rollback"),  # stable too quiet to judge
        (WindowCounts(10, 20), WindowCounts(0, 0), "rollback"),  # pre-call faults: rate capped
    ]
    for canary, stable, action in cases:
        verdict = canary_verdict(policy, canary, stable)
        assert verdict.action == action, (canary, stable, verdict.reason)
        assert f"{canary.faults}/{canary.calls}" in verdict.reason
    with pytest.raises(ConfigError, match="max_error_rate"):
        CanaryPolicy(max_error_rate=1.5)
    with pytest.raises(ConfigError, match="min_calls"):
        CanaryPolicy(min_calls=0)
    with pytest.raises(ConfigError, match="canary must be a CanaryPolicy"):
        App("x", canary=0.1)  # type: ignore[arg-type]


async def test_a_host_follows_its_deployment_and_rolls_a_failing_canary_back(
    versions: dict[str, bytes],
) -> None:
    from thaw._clock import SystemClock

    backbone = MemoryBackbone()
    one, bad = rid(versions["one"]), rid(versions["bad"])
    await deploy(backbone, versions["one"])
    revision = load_revision(await fetch_snapshot(backbone, "canaried", one))

    async def fetch(wanted: str) -> bytes:
        return await fetch_snapshot(backbone, "canaried", wanted)

    async with open_host(revision, backbone) as host:
        rollout = Rollout(host.router, fetch, app="canaried")
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: follow_deployment(
                    rollout, backbone, revision.app, host_id="h1", clock=SystemClock(), poll=0.02
                )
            )
            await deploy(backbone, versions["bad"], weight=50)
            await wait_until(lambda: host.router.weights.get(bad) == 50)
            answers = [await host.invoke("work", Event(id=f"e{n}", data=b"")) for n in range(60)]
            assert {type(a).__name__ for a in answers} == {"Ok", "Retry"}  # both serve
            with anyio.fail_after(WAIT):
                while True:
                    record, _ = await read_deployment(backbone, "canaried")
                    assert record is not None
                    if record.history[-1].action == "auto_rollback":
                        break
                    await anyio.sleep(0.01)
            assert record.weights() == {one: 100, bad: 0}
            assert "over budget" in record.history[-1].note
            await wait_until(lambda: host.router.weights.get(bad) == 0)
            after = await host.invoke("work", Event(id="after", data=b""))
            assert msgspec.json.decode(after.data) == "one"  # type: ignore[union-attr]
            with anyio.fail_after(WAIT):  # the report of a later round has the faults
                while not any(  # noqa: ASYNC110 - the bucket has no event to await
                    r.counts.get(bad) and r.counts[bad].faults
                    for r in await revision_report(backbone, "canaried")
                ):
                    await anyio.sleep(0.01)
            reports = await revision_report(backbone, "canaried")
            assert [r.host for r in reports] == ["h1"]
            group.cancel_scope.cancel()


def test_deployment_records_are_plain_json() -> None:
    from thaw.host._deployments import DeployedRevision, Deployment

    record = Deployment(
        app="a",
        revisions=[
            DeployedRevision(
                revision="r", weight=100, snapshot="a/r", size=1, sha256="x", deployed_at="t"
            )
        ],
    )
    assert msgspec.json.decode(msgspec.json.encode(record), type=Deployment) == record


async def test_a_revision_dropped_from_the_record_loses_its_stored_snapshot(
    versions: dict[str, bytes],
) -> None:
    from thaw.host._deployments import MAX_REVISIONS
    from thaw.snapshots._format import decode_snapshot, encode_snapshot, revision_id

    base = decode_snapshot(versions["one"])
    blobs = []
    for n in range(MAX_REVISIONS + 3):  # distinct revisions: other data, other ids
        data = {"n.txt": str(n).encode()}
        rid = revision_id(base.manifest, base.modules, data)
        blobs.append(encode_snapshot(msgspec.structs.replace(base, data=data, revision=rid)))
    backbone = MemoryBackbone()
    for blob in blobs:
        record = await deploy(backbone, blob)
    assert len(record.revisions) == MAX_REVISIONS
    store = await backbone.object_store(SNAPSHOT_STORE)
    stored = {info.name for info in await store.list()}
    assert stored == {r.snapshot for r in record.revisions}  # the 3 oldest are gone
    for revision in record.revisions:  # and what is named still fetches and verifies
        assert await fetch_snapshot(backbone, "canaried", revision.revision)
