"""The folder a snapshot's data files are extracted to: private (0700, ours), verified on
every load (an edited, missing or planted file is never served), hostile paths refused."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from snapshot_apps import build, write_app

from thaw import Event, Ok
from thaw.lowlevel import Invoker
from thaw.snapshots import _data_dir
from thaw.snapshots._data_dir import DataDirError, default_root, extract
from thaw.snapshots._format import (
    SnapshotError,
    SnapshotPayload,
    decode_snapshot,
    encode_snapshot,
    revision_id,
)
from thaw.snapshots._revision import load_revision

HELLO = Event(id="1", data=b'{"who": "ada"}')


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return build(tmp_path, write_app(tmp_path / "src"))


def revision_folder(root: Path, snapshot: Path) -> Path:
    return root / f"rev-{decode_snapshot(snapshot.read_bytes()).revision}"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def greet(snapshot: Path, root: Path) -> bytes:
    """Load, answer hello, unload: what the app read from its data file at import."""
    revision = load_revision(snapshot, data_dir=root)
    try:
        for hook in revision.app.start_hooks:
            await hook()
        outcome = await Invoker(revision.app).invoke("hello", HELLO)
        assert isinstance(outcome, Ok)
        return bytes(outcome.data)
    finally:
        revision.unload()


SNAPSHOT_ANSWER = b'{"text":"HELLO ADA","calls":1,"loads":1}'


@pytest.fixture
def any_umask() -> Iterator[None]:
    previous = os.umask(0)  # the most permissive: modes must not depend on it
    try:
        yield
    finally:
        os.umask(previous)


def test_folders_are_0700_and_files_0600(tmp_path: Path, snapshot: Path, any_umask: None) -> None:
    root = tmp_path / "data"
    revision = load_revision(snapshot, data_dir=root)
    revision.unload()
    base = revision_folder(root, snapshot)
    assert mode(root) == 0o700
    assert mode(base) == 0o700
    assert mode(base / "greeter") == 0o700
    assert mode(base / "greeter" / "data") == 0o700
    assert mode(base / "greeter" / "data" / "greeting.json") == 0o600
    assert os.lstat(base).st_uid == os.getuid()
    assert sorted(p.name for p in root.iterdir()) == [base.name]  # no temporary files left


@pytest.mark.anyio
async def test_an_edited_extracted_file_is_restored_on_the_next_load(
    tmp_path: Path, snapshot: Path
) -> None:
    root = tmp_path / "data"
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    greeting = revision_folder(root, snapshot) / "greeter" / "data" / "greeting.json"
    greeting.write_text('{"en": "pwned"}')
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    assert greeting.read_text() == '{"en": "hello"}'


@pytest.mark.anyio
async def test_a_missing_file_or_folder_is_restored(tmp_path: Path, snapshot: Path) -> None:
    root = tmp_path / "data"
    await greet(snapshot, root)
    data = revision_folder(root, snapshot) / "greeter" / "data"
    (data / "greeting.json").unlink()
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    (data / "greeting.json").unlink()
    data.rmdir()
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    assert (data / "greeting.json").read_text() == '{"en": "hello"}'


@pytest.mark.anyio
async def test_a_file_with_loose_mode_or_replaced_by_a_symlink_is_rewritten(
    tmp_path: Path, snapshot: Path
) -> None:
    root = tmp_path / "data"
    await greet(snapshot, root)
    greeting = revision_folder(root, snapshot) / "greeter" / "data" / "greeting.json"
    greeting.chmod(0o666)  # same bytes, but anyone could have changed them
    await greet(snapshot, root)
    assert mode(greeting) == 0o600
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"en": "pwned"}')
    greeting.unlink()
    greeting.symlink_to(elsewhere)
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    assert not greeting.is_symlink()
    assert elsewhere.read_text() == '{"en": "pwned"}'  # the link was replaced, not followed


@pytest.mark.anyio
async def test_planted_files_folders_and_links_are_removed(tmp_path: Path, snapshot: Path) -> None:
    root = tmp_path / "data"
    await greet(snapshot, root)
    base = revision_folder(root, snapshot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours to remove")
    (base / "greeter" / "data" / "extra.json").write_text("{}")
    (base / "greeter" / "planted").mkdir()
    (base / "greeter" / "planted" / "x.txt").write_text("x")
    (base / "greeter" / "linked").symlink_to(outside)
    await greet(snapshot, root)
    assert sorted(p.name for p in (base / "greeter").iterdir()) == ["data"]
    assert sorted(p.name for p in (base / "greeter" / "data").iterdir()) == ["greeting.json"]
    assert (outside / "keep.txt").read_text() == "not ours to remove"


@pytest.mark.anyio
async def test_a_pre_created_revision_folder_is_never_served(
    tmp_path: Path, snapshot: Path
) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    planted = revision_folder(root, snapshot)
    (planted / "greeter" / "data").mkdir(parents=True)
    (planted / "greeter" / "data" / "greeting.json").write_text('{"en": "pwned"}')
    (planted / ".thaw-extracted").write_text("trust me")  # the old marker means nothing
    planted.chmod(0o777)
    assert await greet(snapshot, root) == SNAPSHOT_ANSWER
    assert mode(planted) == 0o700
    assert not (planted / ".thaw-extracted").exists()


def test_a_symlink_at_the_revision_folder_is_refused(tmp_path: Path, snapshot: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    attacker = tmp_path / "attacker"
    (attacker / "greeter" / "data").mkdir(parents=True)
    (attacker / "greeter" / "data" / "greeting.json").write_text('{"en": "pwned"}')
    revision_folder(root, snapshot).symlink_to(attacker)
    with pytest.raises(DataDirError, match="is a symbolic link; refusing"):
        load_revision(snapshot, data_dir=root)
    assert (attacker / "greeter" / "data" / "greeting.json").read_text() == '{"en": "pwned"}'


def test_a_root_writable_by_others_is_refused(tmp_path: Path, snapshot: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(DataDirError, match=r"writable by group or others \(mode 0777\)") as caught:
        load_revision(snapshot, data_dir=root)
    assert caught.value.code == "snapshot_data_dir"
    assert "\n" not in str(caught.value)
    assert list(root.iterdir()) == []  # nothing was written into it


def test_a_root_that_is_a_symlink_or_a_file_is_refused(tmp_path: Path, snapshot: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(DataDirError, match="is a symbolic link"):
        load_revision(snapshot, data_dir=tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataDirError, match="is not a directory"):
        load_revision(snapshot, data_dir=tmp_path / "file")


def test_a_root_owned_by_someone_else_is_refused(
    tmp_path: Path, snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    someone_else = os.getuid() + 1
    monkeypatch.setattr(_data_dir, "_uid", lambda: someone_else)  # we are now another user
    with pytest.raises(DataDirError, match=f"not by this user \\(uid {someone_else}\\)"):
        load_revision(snapshot, data_dir=root)


def test_the_default_root_is_per_user_and_checked(
    tmp_path: Path, snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_root() == shared_tmp / f"thaw-{os.getuid()}"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert default_root() == runtime / "thaw"
    runtime.chmod(0o777)  # not usable: fall back
    assert default_root() == shared_tmp / f"thaw-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/path")
    assert default_root() == shared_tmp / f"thaw-{os.getuid()}"
    # Someone pre-created the predictable folder in the shared temp dir: refused.
    planted = shared_tmp / f"thaw-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(DataDirError, match="writable by group or others"):
        load_revision(snapshot)
    planted.chmod(0o700)
    revision = load_revision(snapshot)
    revision.unload()
    assert revision_folder(planted, snapshot).is_dir()


def _sealed(payload: SnapshotPayload) -> bytes:
    """The payload with the revision id its content gives (decoding recomputes it)."""
    revision = revision_id(payload.manifest, payload.modules, payload.data)
    return encode_snapshot(msgspec.structs.replace(payload, revision=revision))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"../../escape.txt": b"x"}, "escapes"),
        ({"/etc/escape.txt": b"x"}, "escapes"),
        ({"greeter/../../escape.txt": b"x"}, "escapes"),
        ({"a//b.txt": b"x"}, "not a plain relative path"),
        ({"a/./b.txt": b"x"}, "not a plain relative path"),
        ({"": b"x"}, "not a plain relative path"),
        ({"a\\..\\..\\b.txt": b"x"}, "not a plain relative path"),
        ({"a\x00b": b"x"}, "not a plain relative path"),
        ({"c:escape.txt": b"x"}, "not a plain relative path"),
        ({"a": b"x", "a/b.txt": b"y"}, "both a file and a folder"),
    ],
)
def test_hostile_data_paths_are_refused_before_anything_is_written(
    tmp_path: Path, snapshot: Path, data: dict[str, bytes], message: str
) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    hostile = _sealed(msgspec.structs.replace(payload, data=data))
    with pytest.raises(SnapshotError, match=message):
        load_revision(hostile, data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.snap", "src"]


def test_a_revision_id_that_is_no_digest_is_refused(tmp_path: Path) -> None:
    for revision in ("../../x", "ABC", "", "a" * 65, "rev/1"):
        with pytest.raises(SnapshotError, match="is not a hex digest"):
            extract(revision, {"x.txt": b"x"}, data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_snapshot_without_data_files_creates_nothing(tmp_path: Path) -> None:
    base = extract("ab" * 16, {}, data_dir=tmp_path / "data")
    assert base == tmp_path / "data" / f"rev-{'ab' * 16}"
    assert not (tmp_path / "data").exists()


def test_a_folder_where_a_data_file_belongs_is_replaced_by_the_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    extract("cd" * 16, {"x/y.txt": b"y"}, data_dir=root)
    planted = root / f"rev-{'cd' * 16}" / "x" / "y.txt"
    planted.unlink()
    planted.mkdir()
    (planted / "z").write_text("z")
    # Our own folder (we made it, in our private root): removed, and the file restored.
    assert extract("cd" * 16, {"x/y.txt": b"y"}, data_dir=root) == root / f"rev-{'cd' * 16}"
    assert planted.read_bytes() == b"y"
