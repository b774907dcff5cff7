"""``thaw deploy``, ``thaw revisions`` and ``thaw rollback`` end to end: on a real
nats-server (``--url``), from source and from a snapshot file, with hosts' reports in
``thaw_hosts``; and their one-line errors (bad usage exits 2, the rest 1)."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from nats_fixtures import delete_new_streams, nats_server, stream_names  # noqa: F401

from thaw.adapters.cli import command as cli
from thaw.adapters.nats import JetStreamBackbone
from thaw.adapters.nats.server import EmbeddedServer
from thaw.adapters.process.build import build_snapshot
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.host._deployments import (
    DEPLOYMENT_BUCKET,
    HOSTS_BUCKET,
    DeploymentError,
    HostReport,
    RevisionCounts,
    ensure_deployment_stores,
    read_deployment,
    write_host_report,
)

APP = """
from thaw import App, http

app = App("{name}")


@app.capability(http("GET", "/version"))
async def version() -> str:
    return "{version}"
"""


@pytest.fixture
def new_streams_removed(nats_server: EmbeddedServer) -> Iterator[None]:  # noqa: F811
    """The buckets and stores a test created on the shared server go with it."""

    async def names() -> set[str]:
        backbone = await JetStreamBackbone.connect(nats_server.url)
        try:
            return await stream_names(backbone.client)
        finally:
            await backbone.aclose()

    async def remove(before: set[str]) -> None:
        backbone = await JetStreamBackbone.connect(nats_server.url)
        try:
            await delete_new_streams(nats_server, backbone, before)
        finally:
            await backbone.aclose()

    before = anyio.run(names)
    yield
    anyio.run(remove, before)


def source(tmp_path: Path, name: str, version: str) -> Path:
    folder = tmp_path / version
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(APP.format(name=name, version=version)))
    return folder / "app.py"


def thaw(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_of(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    code, out, err = thaw(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def _reports(url: str, app: str, one: str, two: str) -> None:
    backbone = await JetStreamBackbone.connect(url)
    try:
        await ensure_deployment_stores(backbone)
        for host, calls, faults in (("h1", 30, 1), ("h2", 10, 3)):
            await write_host_report(
                backbone,
                HostReport(
                    host=host,
                    app=app,
                    at="2026-01-01T00:00:00+00:00",
                    weights={one: 90, two: 10},
                    counts={one: RevisionCounts(calls, 0), two: RevisionCounts(calls, faults)},
                ),
            )
        hosts = await backbone.kv(HOSTS_BUCKET)
        await hosts.put(f"{app}.h3", b"\x00not a report")  # a hostile report is skipped
        await write_host_report(
            backbone,
            HostReport(
                host="h4",
                app=app,
                at="2026-01-01T00:00:00+00:00",
                weights={one: 100},
                pending={two: "[snapshot_invalid] built for another Python"},
            ),
        )
    finally:
        await backbone.aclose()


def test_deploy_revisions_and_rollback_through_the_command_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    nats_server: EmbeddedServer,  # noqa: F811
    new_streams_removed: None,
) -> None:
    name = f"cli{uuid.uuid4().hex[:8]}"
    url = ["--url", nats_server.url, "--state-dir", str(tmp_path / "state")]
    code, out, err = thaw(capsys, "deploy", str(source(tmp_path, name, "one")), *url)
    assert code == 0, err
    assert f"deployed app {name} revision " in out and "100%" in out
    two_snapshot = tmp_path / "two.snap"
    build_snapshot(str(source(tmp_path, name, "two")), str(two_snapshot))
    deployed = json_of(
        capsys, "deploy", str(two_snapshot), "--weight", "10", "--note", "try two", *url
    )
    two = deployed["deployed"]
    weights = {row["revision"]: row["weight"] for row in deployed["revisions"]}
    (one,) = set(weights) - {two}
    assert weights == {one: 90, two: 10}
    assert deployed["stable"] == one and deployed["canary"] == two

    anyio.run(_reports, nats_server.url, name, one, two)
    document = json_of(capsys, "revisions", name, *url)
    rows = {row["revision"]: row for row in document["revisions"]}
    assert rows[two]["calls"] == 40 and rows[two]["faults"] == 4
    assert rows[two]["error_rate"] == pytest.approx(0.1)
    assert rows[one]["faults"] == 0 and rows[one]["hosts"] == ["h1", "h2", "h4"]
    assert rows[two]["hosts"] == ["h1", "h2"] and rows[two]["note"] == "try two"
    assert rows[two]["pending"] == {"h4": "[snapshot_invalid] built for another Python"}
    assert sorted(r["host"] for r in document["hosts"]) == ["h1", "h2", "h4"]
    code, out, err = thaw(capsys, "revisions", name, *url)
    assert code == 0, err
    assert "stable" in out and "canary" in out and "10.0%" in out
    assert "not loaded on h4: [snapshot_invalid]" in out and "try two" in out
    assert f"`thaw rollback {name}` goes to: {one[:12]}" in out

    code, out, err = thaw(capsys, "rollback", name, "--note", "two is slow", *url)
    assert code == 0, err
    assert f"rolled app {name} back to revision {one}" in out
    code, out, err = thaw(capsys, "rollback", name, two[:8], *url)
    assert code == 0 and f"back to revision {two}" in out, err
    code, out, err = thaw(capsys, "rollback", name, "ffffffff", *url)
    assert code == 1 and out == ""
    assert err.strip().endswith(")") and "'ffffffff' matches no revision" in err
    assert len(err.strip().splitlines()) == 1

    async def read() -> list[tuple[str, dict[str, int], str]]:
        backbone = await JetStreamBackbone.connect(nats_server.url)
        try:
            record, _ = await read_deployment(backbone, name)
        finally:
            await backbone.aclose()
        assert record is not None
        return [(c.action, c.weights, c.note) for c in record.history]

    assert anyio.run(read) == [
        ("deploy", {one: 100}, ""),
        ("deploy", {one: 90, two: 10}, "try two"),
        ("rollback", {one: 100, two: 0}, "two is slow"),
        ("rollback", {one: 0, two: 100}, ""),
    ]


def test_unknown_apps_are_one_line_errors_on_nats(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    nats_server: EmbeddedServer,  # noqa: F811
    new_streams_removed: None,
) -> None:
    url = ["--url", nats_server.url, "--state-dir", str(tmp_path / "state")]
    for command in (("revisions", "nobody_here"), ("rollback", "nobody_here")):
        code, out, err = thaw(capsys, *command, *url)
        assert (code, out) == (1, "")
        assert err == (
            "thaw: error [deployment_invalid]: app 'nobody_here' is not deployed: "
            "run `thaw deploy` first\n"
        )


@pytest.mark.parametrize(
    "argv",
    [
        ("deploy", "x.snap", "--weight", "101"),
        ("deploy", "x.snap", "--weight", "-1"),
        ("deploy", "x.snap", "--weight", "ten"),
        ("deploy", "x.snap", "--note", "two\nlines"),
        ("deploy", "x.snap", "--note", "x" * 501),
        ("rollback", "app", "--note", "\x1b[31mred"),
    ],
)
def test_bad_usage_exits_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--backbone", "memory"])
    assert exited.value.code == 2
    assert "two\nlines" not in capsys.readouterr().err


def test_an_invalid_snapshot_is_refused_before_anything_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, blob in (
        ("garbage.snap", b"THAWSNAP\x00\x01\xff\xff\xff\xff"),
        ("empty.snap", b""),
        ("text.snap", b"not a snapshot at all" * 100),
    ):
        (tmp_path / name).write_bytes(blob)
        code, out, err = thaw(capsys, "deploy", str(tmp_path / name), "--backbone", "memory")
        assert (code, out) == (1, "")
        assert err.startswith("thaw: error [deployment_invalid]: cannot deploy it: ")
        assert len(err.strip().splitlines()) == 1
    code, _, err = thaw(capsys, "deploy", str(tmp_path / "missing.snap"), "--backbone", "memory")
    assert code == 1 and "cannot read snapshot" in err and len(err.strip().splitlines()) == 1


def test_a_first_deploy_below_100_takes_all_traffic_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = source(tmp_path, "firstapp", "one")
    code, out, err = thaw(capsys, "deploy", str(app), "--weight", "30", "--backbone", "memory")
    assert code == 0, err
    assert "it takes 100%: there is no stable revision to share the traffic with" in out


def test_an_unreachable_backbone_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = thaw(
        capsys, "revisions", "someapp", "--url", "nats://127.0.0.1:1", "--state-dir", str(tmp_path)
    )
    assert (code, out) == (1, "")
    assert (
        err.strip().splitlines()[-1].startswith("thaw: error [backbone_error]: could not connect")
    )


async def _damaged_record_read() -> None:
    backbone = MemoryBackbone()
    await ensure_deployment_stores(backbone)
    await (await backbone.kv(DEPLOYMENT_BUCKET)).put("someapp", b"\xff\xfe{[")
    from thaw.adapters.cli import deploy as commands

    await commands._read(backbone, "someapp")


def test_a_damaged_record_is_named_not_a_crash() -> None:
    """What the commands meet in a record someone overwrote with garbage (on the memory
    backbone, whose state lives inside one command, so read through the same helper)."""
    with pytest.raises(DeploymentError, match="the deployment record of app 'someapp' is damaged"):
        anyio.run(_damaged_record_read)
