"""A revision's files for ``importlib.resources`` and ``pkgutil.get_data``, from memory.

``SnapshotTree`` holds every file a revision ships (its data files and its module
sources) by their path inside the app tree (``"rules_app/rules/limits.toml"``).
``SnapshotPath`` is a ``Traversable`` over it (``iterdir``, ``joinpath``, ``/``,
``open``, ``read_text``, ``read_bytes``, ``is_file``, ``is_dir``), and
``SnapshotResources`` the resource reader the snapshot loader hands to
``importlib.resources.files()``.

Invariants: reads are served from the snapshot's bytes in memory, never from disk, so
nothing written to the data folder after the load changes what a module reads; a path
that is not in the snapshot raises ``FileNotFoundError`` naming it; paths never leave
the app tree (``..`` above it names nothing). ``as_file`` of a data file gives its
extracted copy on disk, verified (restored if changed) right before it is handed out;
of anything else, the standard temporary copy.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
from collections.abc import Iterator, Mapping
from importlib.resources import as_file
from importlib.resources.abc import Traversable, TraversableResources
from pathlib import Path
from typing import IO, Any

from thaw.snapshots._data_dir import ensure_file, split_relative

__all__ = ["SnapshotPath", "SnapshotResources", "SnapshotTree"]

_OUTSIDE = "\x00outside"  # a path above the app tree: it names nothing


class SnapshotTree:
    """Every file of one revision, by relative path; ``base`` is where the tree would be
    on disk (module ``__file__``s point there; data files are extracted there)."""

    def __init__(
        self,
        *,
        revision: str,
        data: Mapping[str, bytes],
        sources: Mapping[str, bytes],
        base: Path,
    ) -> None:
        self.revision = revision
        self.base = base
        self._data = data
        self.files: dict[str, bytes] = dict(sources)
        self.files.update(data)
        self.folders: dict[str, set[str]] = {"": set()}
        for relative in self.files:
            parts = split_relative(relative)
            for depth in range(1, len(parts) + 1):
                parent = "/".join(parts[: depth - 1])
                self.folders.setdefault(parent, set()).add(parts[depth - 1])
                if depth < len(parts):
                    self.folders.setdefault("/".join(parts[:depth]), set())

    def path(self, relative: str = "") -> SnapshotPath:
        return SnapshotPath(self, relative)

    def reader(self, folder: str) -> SnapshotResources:
        return SnapshotResources(self, folder)

    def missing(self, relative: str) -> FileNotFoundError:
        shown = relative if relative != _OUTSIDE else "(a path outside the app)"
        return FileNotFoundError(
            errno.ENOENT, f"no such resource in snapshot revision {self.revision[:12]}", shown
        )

    def get_data(self, path: str) -> bytes:
        """A file by its would-be path on disk (``pkgutil.get_data``, ``loader.get_data``)."""
        absolute = os.path.normpath(os.path.abspath(path))
        base = os.path.normpath(str(self.base))
        if absolute.startswith(base + os.sep):
            content = self.files.get(absolute[len(base) + 1 :].replace(os.sep, "/"))
            if content is not None:
                return content
        raise FileNotFoundError(
            errno.ENOENT, f"no such file in snapshot revision {self.revision[:12]}", path
        )

    def on_disk(self, relative: str) -> Path | None:
        """The extracted, just verified copy of a data file (None: not a data file)."""
        content = self._data.get(relative)
        if content is None:
            return None
        return ensure_file(self.base, relative, content)

    def data_under(self, folder: str) -> list[str]:
        prefix = folder + "/" if folder else ""
        return [name for name in self._data if name.startswith(prefix)]


class SnapshotPath(Traversable):
    """A file or folder of a snapshot (read-only), in the manner of ``pathlib.Path``."""

    def __init__(self, tree: SnapshotTree, relative: str) -> None:
        self._tree = tree
        self._relative = relative

    @property
    def name(self) -> str:
        if self._relative == _OUTSIDE:
            return ""
        return posixpath.basename(self._relative) or self._tree.base.name

    def is_file(self) -> bool:
        return self._relative in self._tree.files

    def is_dir(self) -> bool:
        return self._relative in self._tree.folders

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[SnapshotPath]:
        names = self._tree.folders.get(self._relative)
        if names is None:
            if self.is_file():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", self._relative)
            raise self._tree.missing(self._relative)
        prefix = self._relative + "/" if self._relative else ""
        return iter([SnapshotPath(self._tree, prefix + name) for name in sorted(names)])

    def joinpath(self, *descendants: str | os.PathLike[str]) -> SnapshotPath:
        relative = self._relative
        for descendant in descendants:
            if relative == _OUTSIDE:
                break
            step = os.fspath(descendant)
            joined = posixpath.normpath(posixpath.join(relative or ".", step))
            if step.startswith("/") or joined == ".." or joined.startswith("../"):
                relative = _OUTSIDE
            else:
                relative = "" if joined == "." else joined
        return SnapshotPath(self._tree, relative)

    def __truediv__(self, child: str | os.PathLike[str]) -> SnapshotPath:
        return self.joinpath(child)

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if mode not in ("r", "rb"):
            raise ValueError(f"snapshot resources are read-only: mode {mode!r} is not 'r' or 'rb'")
        content = self._tree.files.get(self._relative)
        if content is None:
            if self.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder", self._relative)
            raise self._tree.missing(self._relative)
        if mode == "rb":
            return io.BytesIO(content)
        if not args and kwargs.get("encoding") is None:
            kwargs["encoding"] = "utf-8"  # the snapshot's bytes, not the host's locale
        return io.TextIOWrapper(io.BytesIO(content), *args, **kwargs)

    def read_bytes(self) -> bytes:
        with self.open("rb") as handle:
            data: bytes = handle.read()
        return data

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        with self.open("r", encoding=encoding, errors=errors) as handle:
            text: str = handle.read()
        return text

    def __fspath__(self) -> str:
        """Where this would be on disk (data files are extracted there)."""
        if self._relative == _OUTSIDE:
            raise self._tree.missing(self._relative)
        if not self._relative:
            return str(self._tree.base)
        return str(self._tree.base.joinpath(*self._relative.split("/")))

    def __str__(self) -> str:
        return self.__fspath__() if self._relative != _OUTSIDE else "<outside the snapshot>"

    def __repr__(self) -> str:
        return f"SnapshotPath({self._relative!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SnapshotPath):
            return NotImplemented
        return self._tree is other._tree and self._relative == other._relative

    def __hash__(self) -> int:
        return hash((id(self._tree), self._relative))


class SnapshotResources(TraversableResources):
    """The resource reader of one snapshot module's folder."""

    def __init__(self, tree: SnapshotTree, folder: str) -> None:
        self._tree = tree
        self._folder = folder

    def files(self) -> SnapshotPath:
        return SnapshotPath(self._tree, self._folder)


@contextlib.contextmanager
def _snapshot_as_file(path: SnapshotPath) -> Iterator[Path]:
    tree, relative = path._tree, path._relative
    if relative != _OUTSIDE:
        extracted = tree.on_disk(relative)
        if extracted is not None:
            yield extracted
            return
        under = tree.data_under(relative) if path.is_dir() else []
        if under:
            for name in under:
                tree.on_disk(name)
            yield Path(os.fspath(path))
            return
    with _as_file.dispatch(object)(path) as copied:  # the standard temporary copy
        yield copied


_as_file: Any = as_file  # a functools.singledispatch function (typeshed says Callable)
_as_file.register(SnapshotPath, _snapshot_as_file)
