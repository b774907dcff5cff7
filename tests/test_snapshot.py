"""Snapshots: build, validate, load into private namespaces; refuse damaged or foreign files."""

from __future__ import annotations

import functools
import struct
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from snapshot_apps import build, write_app

from thaw import Event, Ok
from thaw.adapters.process.build import build_snapshot
from thaw.lowlevel import Invoker
from thaw.snapshots._format import (
    MAGIC,
    SnapshotError,
    SnapshotPayload,
    decode_snapshot,
    encode_snapshot,
    revision_id,
)
from thaw.snapshots._revision import RevisionLoadError, load_revision

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return build(tmp_path, write_app(tmp_path / "src"))


def test_build_records_modules_data_and_manifest(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    manifest = payload.manifest
    assert manifest.app == "greeter"
    assert manifest.entry_module == "greeter"
    assert manifest.app_attribute == "app"
    assert set(manifest.modules) == {
        "greeter",
        "greeter.app",
        "greeter.state",
        "greeter.contracts",
        "greeter.helpers",
        "greeter.helpers.words",
    }
    assert manifest.data_files == ["greeter/data/greeting.json"]
    assert manifest.python == sys.version.split()[0]
    assert "msgspec" in manifest.dependencies
    hello = next(c for c in manifest.capabilities if c.name == "hello")
    assert hello.input_schema is not None
    assert "Query" in str(hello.input_schema)
    assert hello.policy["timeout"] == 10.0


def test_same_sources_give_the_same_revision(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "src")
    first = build_snapshot(str(folder), str(tmp_path / "a.snap"))
    second = build_snapshot(str(folder), str(tmp_path / "b.snap"))
    assert first.revision == second.revision
    (folder / "state.py").write_text("loads = 0\nstarted = 0\nstopped = 0\ncalls = 0\nclient = 1\n")
    third = build_snapshot(str(folder), str(tmp_path / "c.snap"))
    assert third.revision != first.revision


def test_data_files_change_the_revision(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "src")
    first = build_snapshot(str(folder), str(tmp_path / "a.snap"))
    (folder / "data" / "greeting.json").write_text('{"en": "howdy"}')
    second = build_snapshot(str(folder), str(tmp_path / "b.snap"))
    assert first.revision != second.revision


def test_build_of_a_broken_app_names_the_cause(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "src")
    (folder / "state.py").write_text("raise ValueError('state is broken')\n")
    with pytest.raises(SnapshotError, match="state is broken"):
        build_snapshot(str(folder), str(tmp_path / "x.snap"))
    assert not (tmp_path / "x.snap").exists()


@pytest.mark.anyio
async def test_loaded_revision_runs_like_source(snapshot: Path) -> None:
    revision = load_revision(snapshot)
    try:
        app = revision.app
        for hook in app.start_hooks:
            await hook()
        outcome = await Invoker(app).invoke("hello", Event(id="1", data=b'{"who": "ada"}'))
        assert outcome == Ok(b'{"text":"HELLO ADA","calls":1,"loads":1}')
        assert revision.timings.total > 0
        assert set(revision.timings.modules) == set(revision.manifest.modules)
    finally:
        revision.unload()


@pytest.mark.anyio
async def test_two_revisions_with_the_same_module_names_coexist(tmp_path: Path) -> None:
    one = build(tmp_path, write_app(tmp_path / "v1", greeting="hello"), "v1.snap")
    two = build(tmp_path, write_app(tmp_path / "v2", greeting="bonjour"), "v2.snap")
    first, second = load_revision(one), load_revision(two)
    try:
        assert first.revision_id != second.revision_id
        for revision in (first, second):
            for hook in revision.app.start_hooks:
                await hook()
        event = Event(id="1", data=b'{"who": "x"}')
        a = await Invoker(first.app).invoke("hello", event)
        b = await Invoker(second.app).invoke("hello", event)
        assert a == Ok(b'{"text":"HELLO X","calls":1,"loads":1}')
        assert b == Ok(b'{"text":"BONJOUR X","calls":1,"loads":1}')  # its own state module
        state_one = first.namespace.modules["greeter.state"]
        state_two = second.namespace.modules["greeter.state"]
        assert state_one is not state_two
        assert "greeter" not in sys.modules  # nothing leaks under the plain names
    finally:
        first.unload()
        second.unload()
    assert not [m for m in sys.modules if m.startswith(first.namespace.prefix)]


def test_tampered_snapshot_is_refused(snapshot: Path) -> None:
    blob = bytearray(snapshot.read_bytes())
    blob[-10] ^= 0xFF
    with pytest.raises(SnapshotError, match="modified or corrupted"):
        decode_snapshot(bytes(blob))


def test_truncated_snapshot_is_refused(snapshot: Path) -> None:
    blob = snapshot.read_bytes()
    for cut in (5, 15, 40, len(blob) // 2, len(blob) - 1):
        with pytest.raises(SnapshotError, match="truncated|not a Thaw snapshot|damaged"):
            decode_snapshot(blob[:cut])


def test_not_a_snapshot_and_future_format(snapshot: Path) -> None:
    with pytest.raises(SnapshotError, match="not a Thaw snapshot"):
        decode_snapshot(b"#!/usr/bin/env python\nprint('hi')\n")
    blob = bytearray(snapshot.read_bytes())
    struct.pack_into(">H", blob, len(MAGIC), 99)
    with pytest.raises(SnapshotError, match="format 99"):
        decode_snapshot(bytes(blob))


def test_snapshot_from_another_python_is_refused_clearly(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    foreign_manifest = msgspec.structs.replace(
        payload.manifest, python="3.14.0", implementation="cpython-314", magic="2b0e0d0a"
    )
    foreign = encode_snapshot(msgspec.structs.replace(payload, manifest=foreign_manifest))
    with pytest.raises(SnapshotError, match=r"built for Python 3\.14\.0.*Rebuild it"):
        load_revision(foreign)


def test_garbage_code_is_refused_without_a_half_loaded_revision(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    modules = [msgspec.structs.replace(m, code=b"\x00garbage") for m in payload.modules]
    damaged = encode_snapshot(msgspec.structs.replace(payload, modules=modules))
    with pytest.raises(SnapshotError, match="unreadable code|does not hold code"):
        load_revision(damaged)


def test_module_failing_at_load_leaves_nothing_behind(tmp_path: Path, snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    code = compile("raise RuntimeError('boom at load')", "x", "exec")
    import marshal

    modules = [
        msgspec.structs.replace(m, code=marshal.dumps(code)) if m.name == "greeter.state" else m
        for m in payload.modules
    ]
    before = set(sys.modules)
    broken = encode_snapshot(msgspec.structs.replace(payload, modules=modules))
    with pytest.raises(RevisionLoadError, match="boom at load"):
        load_revision(broken, data_dir=tmp_path / "data")
    assert set(sys.modules) - before == set()


def test_missing_preload_package_is_a_clear_error(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    manifest = msgspec.structs.replace(payload.manifest, preload=["no_such_package_xyz"])
    blob = encode_snapshot(_sealed(msgspec.structs.replace(payload, manifest=manifest)))
    with pytest.raises(RevisionLoadError, match="no_such_package_xyz"):
        load_revision(blob)


def test_data_file_paths_cannot_escape(tmp_path: Path, snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    evil = msgspec.structs.replace(payload, data={"../../escape.txt": b"x"})
    with pytest.raises(SnapshotError, match="escapes"):
        load_revision(encode_snapshot(_sealed(evil)), data_dir=tmp_path / "data")
    assert not (tmp_path / "escape.txt").exists()


def _sealed(payload: SnapshotPayload) -> SnapshotPayload:
    """``payload`` under the revision id of its content (as a builder would record it)."""
    return msgspec.structs.replace(
        payload, revision=revision_id(payload.manifest, payload.modules, payload.data)
    )


def test_unreadable_path() -> None:
    with pytest.raises(SnapshotError, match="cannot read snapshot"):
        load_revision("/nonexistent/file.snap")


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_snapshot_error_only(blob: bytes) -> None:
    try:
        decode_snapshot(blob)
    except SnapshotError:
        pass


@given(st.data())
def test_mutated_snapshots_are_refused_or_identical(data: st.DataObject) -> None:
    original = _hello_blob()
    blob = bytearray(original)
    position = data.draw(st.integers(0, len(blob) - 1))
    value = data.draw(st.integers(0, 255))
    blob[position] = value
    try:
        payload = decode_snapshot(bytes(blob))
    except SnapshotError:
        return
    # Only a byte that does not change what the file says (in the JSON header) may
    # pass: whatever loads is exactly what was built.
    assert payload == decode_snapshot(original)


@functools.cache
def _hello_blob() -> bytes:
    """examples/hello built once, when first asked (collecting this file starts no child)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hello.snap"
        build_snapshot(str(ROOT / "examples" / "hello"), str(out))
        return out.read_bytes()


@pytest.mark.anyio
async def test_tracebacks_from_snapshot_code_show_source_lines(tmp_path: Path) -> None:
    import traceback

    folder = write_app(tmp_path / "src")
    (folder / "helpers" / "words.py").write_text(
        "from ..contracts import Query\n\n\ndef shout(text):\n"
        "    raise ValueError('shouting failed here')\n"
    )
    revision = load_revision(build(tmp_path, folder), data_dir=tmp_path / "d")
    try:
        words = revision.namespace.modules["greeter.helpers.words"]
        with pytest.raises(ValueError) as caught:
            words.shout("x")
        rendered = "".join(traceback.format_exception(caught.value))
        assert "greeter@snapshot/greeter/helpers/words.py" in rendered
        assert "raise ValueError('shouting failed here')" in rendered
    finally:
        revision.unload()
