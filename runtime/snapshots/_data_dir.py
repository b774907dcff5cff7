"""Where a revision's data files live on disk, and why they can be trusted there.

``extract(revision, data, data_dir=...)`` gives the revision's folder,
``<root>/rev-<revision>``, holding exactly the snapshot's data files, so that
``Path(__file__).parent / "x.json"`` reads in app modules see the snapshot's bytes.

Invariants:

- The root is private: ``data_dir`` if given, else ``$XDG_RUNTIME_DIR/thaw`` when that
  is set and usable, else ``<tempdir>/thaw-<uid>``. It is created mode 0700, and an
  existing one is used only if it is a real directory (not a symlink), owned by the
  current user and not writable by group or others; otherwise ``DataDirError``. No one
  else can then add, change or swap anything beneath it.
- The folder is verified on every load, never trusted because it exists: every data
  file is compared byte for byte with the snapshot and restored when changed, missing,
  a symlink, or not owned by us; whatever the snapshot does not hold (extra files,
  symlinks, directories) is removed. Folders are 0700, files 0600.
- Files are written atomically (a temporary file in the root, then ``os.replace``), so
  concurrent loads of the same revision (several worker processes) only ever see
  complete files, and never remove each other's work.
- Where the platform has no users (``os.getuid`` missing: Windows) ownership is not
  checked; where modes mean nothing (Windows) they are not checked either. Contents
  are always verified.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from thaw.snapshots._format import SnapshotError

__all__ = ["DataDirError", "default_root", "ensure_file", "extract", "split_relative"]

_REVISION = re.compile(r"[0-9a-f]{8,64}")
_CHECK_MODES = os.name != "nt"  # Pyodide's file system keeps modes (and has uid 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class DataDirError(SnapshotError):
    """The folder for a snapshot's data files is not private to this user, or unusable."""

    code = "snapshot_data_dir"


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)
    return None if getuid is None else int(getuid())


def split_relative(relative: str) -> tuple[str, ...]:
    """The parts of a snapshot path (``"pkg/data/x.json"``); ``SnapshotError`` if it is
    not a plain relative path that stays inside its folder."""
    parts = tuple(relative.split("/"))
    if relative.startswith("/") or ".." in parts:
        raise SnapshotError(f"data file path {relative!r} escapes the revision folder")
    for part in parts:
        if part in ("", ".") or "\x00" in part or "\\" in part or ":" in part:
            raise SnapshotError(f"data file path {relative!r} is not a plain relative path")
    return parts


def default_root() -> Path:
    """``$XDG_RUNTIME_DIR/thaw`` if that folder is ours and private, else
    ``<tempdir>/thaw-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if (
        runtime
        and os.path.isabs(runtime)
        and _private_problem(Path(runtime)) is None
        and os.access(runtime, os.W_OK | os.X_OK)
    ):
        return Path(runtime) / "thaw"
    uid = _uid()
    return Path(tempfile.gettempdir()) / ("thaw" if uid is None else f"thaw-{uid}")


def extract(
    revision: str, data: Mapping[str, bytes], *, data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The verified folder of ``revision`` holding exactly ``data`` (see the module doc)."""
    if not _REVISION.fullmatch(revision):
        raise SnapshotError(f"revision id {revision!r} is not a hex digest")
    root = Path(os.path.abspath(data_dir)) if data_dir is not None else default_root()
    base = root / f"rev-{revision}"
    files = {split_relative(relative): content for relative, content in data.items()}
    folders = _folders_of(files)
    if not files and not os.path.lexists(root):
        return base  # nothing to serve and nothing there that could be served
    _make_private(root, what="data folder")
    if not files and not os.path.lexists(base):
        return base
    _make_private(base, what="revision folder", ours_to_fix=True)
    _remove_unexpected(base, files, folders)
    for parts in sorted(folders, key=len):
        _make_private(base.joinpath(*parts), what="folder", ours_to_fix=True, replace=True)
    for parts, content in files.items():
        _ensure(root, base, parts, content)
    return base


def ensure_file(base: Path, relative: str, content: bytes) -> Path:
    """Verify (restore if needed) one file of an extracted revision; its path."""
    parts = split_relative(relative)
    _make_private(base.parent, what="data folder")
    _make_private(base, what="revision folder", ours_to_fix=True)
    for depth in range(1, len(parts)):
        _make_private(base.joinpath(*parts[:depth]), what="folder", ours_to_fix=True, replace=True)
    return _ensure(base.parent, base, parts, content)


def _folders_of(files: Mapping[tuple[str, ...], bytes]) -> set[tuple[str, ...]]:
    folders = {parts[:depth] for parts in files for depth in range(1, len(parts))}
    clash = folders.intersection(files)
    if clash:
        raise SnapshotError(f"data file path {'/'.join(min(clash))!r} is both a file and a folder")
    return folders


def _private_problem(path: Path) -> str | None:
    """Why ``path`` is not a private directory of ours, or None."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    uid = _uid()
    if uid is not None and info.st_uid != uid:
        return f"is owned by uid {info.st_uid}, not by this user (uid {uid})"
    if _CHECK_MODES and info.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _make_private(
    path: Path, *, what: str, ours_to_fix: bool = False, replace: bool = False
) -> None:
    """Create ``path`` 0700, or check that the existing one is a private folder of ours.

    ``ours_to_fix``: inside our private root, loose modes on our own folder are
    tightened; ``replace``: a file or symlink where a folder belongs is removed."""
    for _ in range(4):  # replace, create, check; once more if a concurrent load raced us
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise DataDirError(
                    f"cannot create the snapshot {what} {str(path)!r}: {exc.strerror}"
                ) from None
            continue  # check what was made (an odd umask, a filesystem without modes)
        except OSError as exc:
            raise DataDirError(
                f"cannot inspect the snapshot {what} {str(path)!r}: {exc.strerror}"
            ) from None
        if replace and not stat.S_ISDIR(info.st_mode):
            _unlink(path)
            continue
        problem = _private_problem(path)
        if problem is None:
            return
        uid = _uid()
        ours = uid is None or info.st_uid == uid
        if ours_to_fix and ours and stat.S_ISDIR(info.st_mode) and "writable" in problem:
            try:
                os.chmod(path, 0o700)
            except OSError as exc:
                raise DataDirError(f"cannot chmod {str(path)!r}: {exc.strerror}") from None
            continue
        raise DataDirError(
            f"the snapshot {what} {str(path)!r} {problem}; refusing to use it: remove it, "
            "or pass a private data_dir"
        )
    problem = _private_problem(path)
    if problem is not None:
        raise DataDirError(f"the snapshot {what} {str(path)!r} {problem}; refusing to use it")


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DataDirError(f"cannot remove {str(path)!r}: {exc.strerror}") from None


def _remove_unexpected(
    base: Path, files: Mapping[tuple[str, ...], bytes], folders: set[tuple[str, ...]]
) -> None:
    """Remove everything under ``base`` that the snapshot does not hold."""
    for folder, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(folder).relative_to(base).parts
        keep: list[str] = []
        for name in dirnames:
            path = Path(folder) / name
            if os.path.islink(path):
                _unlink(path)
            elif (*here, name) in folders:
                keep.append(name)
            else:
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    raise DataDirError(f"cannot remove {str(path)!r}: {exc.strerror}") from None
        dirnames[:] = keep
        for name in filenames:
            if (*here, name) not in files:
                _unlink(Path(folder) / name)


def _ensure(root: Path, base: Path, parts: tuple[str, ...], content: bytes) -> Path:
    target = base.joinpath(*parts)
    if _holds(target, content):
        return target
    handle, temporary = tempfile.mkstemp(prefix=".thaw-", suffix=".tmp", dir=root)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.replace(temporary, target)  # replaces a planted symlink itself, never its target
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if exc.errno == errno.EISDIR or os.path.isdir(target):
            raise DataDirError(f"{str(target)!r} is a folder where a data file belongs") from None
        raise DataDirError(f"cannot write the data file {str(target)!r}: {exc.strerror}") from None
    return target


def _holds(path: Path, content: bytes) -> bool:
    """Whether ``path`` is a regular file of ours, private, holding exactly ``content``."""
    try:
        handle = os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)
    except OSError:
        return False
    with os.fdopen(handle, "rb") as existing:
        info = os.fstat(existing.fileno())
        uid = _uid()
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(content):
            return False
        if (uid is not None and info.st_uid != uid) or (_CHECK_MODES and info.st_mode & 0o077):
            return False
        return existing.read(len(content) + 1) == content
