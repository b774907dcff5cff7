"""Loading a snapshot into a live revision: validate, unmarshal, preload, execute once.

Every revision gets its own module namespace: its modules are registered in
``sys.modules`` under a private prefix (``_thaw_<revision>.<name>``) and their
``import`` statements go through a per-revision ``__import__`` (installed in the
modules' ``__builtins__``) that maps the app's own module names to the
revision's modules and everything else to the normal import system. So two
revisions whose modules share names live side by side in one process, each
importing its own. Relative imports, packages and module-level state work as
usual. Resources (``importlib.resources``, ``pkgutil.get_data``) are served from
the snapshot's bytes in memory by the loader's resource reader (``_resources``);
data files are also extracted into a private, verified folder (``_data_dir``) and
each module's ``__file__`` points beside them, so ``Path(__file__).parent / ...``
reads them.

A revision is either fully loaded or not at all: if executing a module fails,
every module it registered is removed again and ``RevisionLoadError`` is raised.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import os
import posixpath
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from thaw._errors import ConfigError
from thaw.declarations._app import App
from thaw.declarations._loader import load_app
from thaw.snapshots._data_dir import extract
from thaw.snapshots._files import read_snapshot_file, starts_with, unmarshal_modules
from thaw.snapshots._format import (
    MAGIC,
    Manifest,
    ModuleBlob,
    SignatureVerifier,
    SnapshotError,
    SnapshotPayload,
    decode_snapshot,
)
from thaw.snapshots._resources import SnapshotResources, SnapshotTree

__all__ = [
    "LoadTimings",
    "ModuleNamespace",
    "Revision",
    "RevisionLoadError",
    "is_snapshot",
    "load_revision",
    "load_target",
]

_real_import = builtins.__import__
_instance_numbers = itertools.count(1)


class RevisionLoadError(SnapshotError):
    """The snapshot is valid but its modules failed to execute here."""

    code = "revision_load_failed"


class LoadTimings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a revision load went, in seconds."""

    read: float
    validate: float
    unmarshal: float
    preload: float
    execute: float  # all app module bodies
    modules: dict[str, float]  # per module, its own body only (imports it triggers excluded)
    total: float


class _SnapshotLoader(importlib.abc.Loader):
    """The ``__loader__`` of snapshot modules: serves sources (for tracebacks), files
    (``get_data``) and resources (``get_resource_reader``), all from the snapshot."""

    def __init__(self, tree: SnapshotTree, blobs: dict[str, ModuleBlob]) -> None:
        self._tree = tree
        self._blobs = blobs  # by plain module name

    def get_source(self, fullname: str) -> str | None:
        """Source of a module, by its prefixed or plain name (linecache asks lazily)."""
        blob = self._blobs.get(_plain(fullname))
        return None if blob is None else blob.source.decode("utf-8", "replace")

    def get_data(self, path: str) -> bytes:
        return self._tree.get_data(path)

    def get_resource_reader(self, fullname: str) -> SnapshotResources | None:
        """The reader of the folder holding the module (a package: its own folder)."""
        plain = _plain(fullname)
        if not plain:  # the namespace root: the app tree's top
            return self._tree.reader("")
        blob = self._blobs.get(plain)
        return None if blob is None else self._tree.reader(posixpath.dirname(blob.path))


def _plain(fullname: str) -> str:
    return fullname.partition(".")[2] if fullname.startswith("_thaw_") else fullname


class ModuleNamespace:
    """One set of executed app modules (a revision's, or a ``fresh`` instance's)."""

    def __init__(
        self,
        *,
        prefix: str,
        blobs: dict[str, ModuleBlob],
        codes: dict[str, types.CodeType],
        base: Path,
        loader: _SnapshotLoader,
    ) -> None:
        self.prefix = prefix
        self._blobs = blobs
        self._codes = codes
        self._base = base
        self._loader = loader
        self.modules: dict[str, types.ModuleType] = {}
        self.timings: dict[str, float] = {}
        self._child_time = 0.0
        self._builtins = dict(vars(builtins))
        self._builtins["__import__"] = self._import
        self._root = types.ModuleType(prefix, "Thaw revision namespace")
        self._root.__path__ = []
        # A spec, so files(__package__) in a top-level module reaches the resource reader.
        self._root.__spec__ = importlib.machinery.ModuleSpec(prefix, loader, is_package=True)

    def sibling(self, prefix: str) -> ModuleNamespace:
        """A new, empty namespace over the same modules (a ``fresh`` instance's)."""
        return ModuleNamespace(
            prefix=prefix,
            blobs=self._blobs,
            codes=self._codes,
            base=self._base,
            loader=self._loader,
        )

    def execute(self, entry: str) -> types.ModuleType:
        """Execute ``entry`` (and whatever it imports); undo everything on failure."""
        sys.modules[self.prefix] = self._root
        try:
            return self._load(entry)
        except BaseException:
            self.unregister()
            raise

    def unregister(self) -> None:
        for name in list(self.modules):
            sys.modules.pop(f"{self.prefix}.{name}", None)
        sys.modules.pop(self.prefix, None)

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level:
            package = (globals or {}).get("__package__") or ""
            own = self.prefix + "."
            if not package.startswith(own) and package != self.prefix:
                return _real_import(name, globals, locals, fromlist, level)
            plain = package[len(own) :]
            absolute = importlib.util.resolve_name("." * level + name, plain) if plain else name
        else:
            absolute = name
        top = absolute.partition(".")[0]
        if absolute not in self._blobs and top not in self._blobs:
            return _real_import(name, globals, locals, fromlist, level)
        module = self._load(absolute)
        if fromlist:
            for item in fromlist:
                child = f"{absolute}.{item}"
                if item != "*" and child in self._blobs and child not in self.modules:
                    self._load(child)
            return module
        return self.modules[top] if level == 0 else module

    def _load(self, name: str) -> types.ModuleType:
        module = self.modules.get(name)
        if module is not None:
            return module
        blob = self._blobs.get(name)
        if blob is None:
            raise ModuleNotFoundError(f"No module named {name!r} in this snapshot", name=name)
        parent_name, _, child = name.rpartition(".")
        parent = self._load(parent_name) if parent_name else None
        if name in self.modules:  # the parent's body imported it already
            return self.modules[name]
        full = f"{self.prefix}.{name}"
        file = str(self._base / blob.path)
        module = types.ModuleType(full)
        spec = importlib.machinery.ModuleSpec(
            full, self._loader, origin=file, is_package=blob.is_package
        )
        spec.has_location = True
        if blob.is_package:
            module.__path__ = [os.path.dirname(file)]
            spec.submodule_search_locations = module.__path__
        module.__file__ = file
        module.__spec__ = spec
        module.__loader__ = self._loader
        module.__package__ = full if blob.is_package else full.rpartition(".")[0]
        module.__dict__["__builtins__"] = self._builtins
        self.modules[name] = module
        sys.modules[full] = module
        outer_child_time = self._child_time
        self._child_time = 0.0
        started = time.perf_counter()
        try:
            exec(self._codes[name], module.__dict__)
        except BaseException:
            del self.modules[name]
            sys.modules.pop(full, None)
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.timings[name] = elapsed - self._child_time
            self._child_time = outer_child_time + elapsed
        if parent is not None:
            setattr(parent, child, module)
        return module


class Revision:
    """A loaded snapshot: its manifest, its executed modules and its App."""

    def __init__(
        self,
        *,
        payload: SnapshotPayload,
        namespace: ModuleNamespace | None,
        app: App,
        timings: LoadTimings,
    ) -> None:
        """``namespace`` None: an App imported from source (``source_revision``),
        which has no module bodies to execute again."""
        self.payload = payload
        self.revision_id = payload.revision
        self.manifest: Manifest = payload.manifest
        self.namespace = namespace
        self.app = app
        self.timings = timings

    def __repr__(self) -> str:
        return f"<Revision {self.manifest.app} {self.revision_id[:12]}>"

    def execute_fresh(self) -> tuple[App, ModuleNamespace]:
        """Execute every module body again into a new namespace (the ``fresh`` isolation)."""
        if self.namespace is None:
            raise ConfigError(
                f"app {self.manifest.app!r} was imported from source, so its modules cannot "
                "be executed again for isolation 'fresh': serve it from a snapshot "
                "(`thaw serve` builds one; in code, load_revision)"
            )
        namespace = self.namespace.sibling(
            f"_thaw_{self.revision_id[:12]}_i{next(_instance_numbers)}"
        )
        module = namespace.execute(self.manifest.entry_module)
        return _app_in(module, self.manifest), namespace

    def unload(self) -> None:
        """Forget this revision's modules (instances still referencing them keep working)."""
        if self.namespace is not None:
            self.namespace.unregister()


def load_revision(
    source: str | os.PathLike[str] | bytes,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    verifier: SignatureVerifier | None = None,
) -> Revision:
    """Validate a snapshot (a path or its bytes), preload its imports, execute its modules once.

    ``verifier``: require a signature it accepts (see ``decode_snapshot``)."""
    started = clock()
    if isinstance(source, bytes):
        blob, label = source, "snapshot"
    else:
        label = os.fspath(source)
        blob = read_snapshot_file(label, label=label)  # never blocks on a FIFO; size first
    read_done = clock()
    payload = decode_snapshot(blob, source=label, verifier=verifier)
    validated = clock()
    codes = unmarshal_modules(payload, label=label)
    unmarshalled = clock()
    for name in payload.manifest.preload:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise RevisionLoadError(
                f"{label} needs the package {name!r}, which does not import here: {exc}"
            ) from exc
    preloaded = clock()
    base = extract(payload.revision, payload.data, data_dir=data_dir)
    tree = SnapshotTree(
        revision=payload.revision,
        data=payload.data,
        sources={m.path: m.source for m in payload.modules},
        base=base,
    )
    loader = _SnapshotLoader(tree, {m.name: m for m in payload.modules})
    namespace = ModuleNamespace(
        prefix=f"_thaw_{payload.revision[:12]}_{next(_instance_numbers)}",
        blobs={b.name: b for b in payload.modules},
        codes=codes,
        base=base,
        loader=loader,
    )
    try:
        module = namespace.execute(payload.manifest.entry_module)
    except Exception as exc:
        raise RevisionLoadError(
            f"{label}: executing the app's modules failed: {type(exc).__name__}: {exc}"
        ) from exc
    executed = clock()
    app = _app_in(module, payload.manifest)
    timings = LoadTimings(
        read=read_done - started,
        validate=validated - read_done,
        unmarshal=unmarshalled - validated,
        preload=preloaded - unmarshalled,
        execute=executed - preloaded,
        modules=dict(namespace.timings),
        total=executed - started,
    )
    return Revision(payload=payload, namespace=namespace, app=app, timings=timings)


def _app_in(module: types.ModuleType, manifest: Manifest) -> App:
    app = getattr(module, manifest.app_attribute, None)
    if not isinstance(app, App):
        raise RevisionLoadError(
            f"module {manifest.entry_module!r} has no App named {manifest.app_attribute!r}"
        )
    return app


def load_target(target: str) -> App:
    """An App from source (file, folder, module:attr) or from a snapshot file."""
    if is_snapshot(target):
        return load_revision(target).app
    return load_app(target)


def is_snapshot(target: str) -> bool:
    """Whether ``target`` names a snapshot file (by suffix or by its magic bytes)."""
    if target.endswith(".snap"):
        return True
    return starts_with(target, MAGIC)  # a FIFO or device is no snapshot, and never blocks
