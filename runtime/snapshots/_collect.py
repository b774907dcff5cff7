"""Collecting an App into a snapshot payload, in the interpreter that imports it.

``collect_snapshot`` imports the App, then the app modules its sources import lazily
(inside functions: ``_lazy``), records the modules loaded from the app's own tree,
compiles their sources, lists the third-party modules to preload (with their
distribution versions) and the data files beside the code. Third-party code is
listed, never copied. For a clean result it runs in a fresh interpreter:
``thaw snapshot build`` runs it in a child process (``thaw.adapters.process.build``),
the edge inside a fresh Pyodide. What the build should know but need not stop for
(a lazily named module that does not import, a FIFO in the tree) goes to
``on_warning``.

Data files: every file under the app tree that is not code, not hidden (dotfiles and
dot-folders: ``.env``, ``.git``, ``.thaw``), not a build or editor by-product
(``_SKIP_DIRS``, ``_SKIP_SUFFIXES``), not a private key, and not excluded by the
app's ``.thawignore`` (``IgnoreRules``). Invariants: symbolic links are never followed
out of the tree (links to folders are not followed at all); FIFOs, sockets and
devices are never opened; a file's size is checked by ``stat`` before it is read, so
a 2 GB file is refused without reading it.
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib.metadata
import marshal
import os
import stat
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from thaw._errors import AppLoadError
from thaw.declarations._app import App, CapabilitySpec
from thaw.declarations._loader import load_app
from thaw.snapshots._files import describe_mode, read_regular_file
from thaw.snapshots._format import (
    CapabilityManifest,
    Manifest,
    ModuleBlob,
    SnapshotError,
    SnapshotPayload,
    current_magic,
    revision_id,
)
from thaw.snapshots._lazy import import_lazy_modules, own_modules

__all__ = [
    "IGNORE_FILE",
    "MAX_DATA_BYTES",
    "MAX_DATA_FILES",
    "MAX_IGNORE_BYTES",
    "IgnoreRules",
    "collect_snapshot",
]

MAX_DATA_BYTES = 64 * 1024 * 1024
MAX_DATA_FILES = 2000
IGNORE_FILE = ".thawignore"
MAX_IGNORE_BYTES = 64 * 1024
_SKIP_DIRS = {"__pycache__", "node_modules", ".git", ".venv", "venv", ".mypy_cache"}
_SKIP_SUFFIXES = (
    *(".py", ".pyc", ".pyo", ".so", ".pyd"),  # code: modules are stored as modules
    *(".snap", ".log", ".tmp", ".swp", ".swo", "~"),  # snapshots, logs, editor by-products
    *(".out", ".err"),  # `thaw serve app.py > serve.out 2> serve.err`, nohup.out: logs too
    *(".env", ".key", ".p12", ".pfx"),  # secrets (dotfiles such as .env are skipped too)
)
_PRIVATE_KEY = b"PRIVATE KEY-----"  # a PEM private key, whatever its file is called
_OWN_PACKAGES = {"thaw"}


def _app_tree(target: str) -> tuple[Path, Path]:
    """(root, base): modules under ``root`` belong to the app; paths are relative to ``base``."""
    location = target
    if ":" in target and not os.path.exists(target):
        location = target.rpartition(":")[0]
    path = Path(location).resolve()
    if path.is_dir():
        if (path / "__init__.py").is_file():
            return path, path.parent
        return path, path
    if path.is_file():
        return path.parent, path.parent
    module = sys.modules.get(location)
    file = getattr(module, "__file__", None)
    if not file:
        raise AppLoadError(f"cannot tell where the source of {target!r} lives")
    module_path = Path(file).resolve()
    if module_path.name == "__init__.py":
        return module_path.parent, module_path.parent.parent
    return module_path.parent, module_path.parent


def _ignore_warning(message: str) -> None:
    """The default ``on_warning``: callers that show warnings pass their own."""


def collect_snapshot(
    target: str, *, on_warning: Callable[[str], None] | None = None
) -> SnapshotPayload:
    """Import ``target`` (any form ``thaw run`` accepts) and collect it into a payload.

    ``on_warning`` receives one line per thing left out that the app may miss."""
    warn = on_warning or _ignore_warning
    before = list(sys.modules)
    app = load_app(target)
    root, base = _app_tree(target)
    loaded_before = set(before)
    import_lazy_modules(root, base, loaded_before, warn)
    blobs: list[ModuleBlob] = []
    holders: list[tuple[str, str]] = []
    for name, module, source_path in own_modules(root, loaded_before):
        source = source_path.read_bytes()
        relative = source_path.relative_to(base).as_posix()
        code = compile(source, f"{app.name}@snapshot/{relative}", "exec", dont_inherit=True)
        is_package = source_path.name == "__init__.py"
        blobs.append(
            ModuleBlob(
                name=name,
                path=relative,
                is_package=is_package,
                source=source,
                code=marshal.dumps(code),
            )
        )
        attribute = _attribute_holding(module, app)
        if attribute is not None:
            holders.append((name, attribute))
    if not holders:
        raise AppLoadError(f"the App of {target!r} is not defined in the app's own modules")
    # The outermost module holding the App (the package the user pointed at), then `app`.
    entry = min(holders, key=lambda h: (h[0].count("."), h[1] != "app"))
    preload, dependencies = _third_party(before, {b.name.split(".")[0] for b in blobs})
    data = _data_files(root, base, warn)
    manifest = Manifest(
        app=app.name,
        entry_module=entry[0],
        app_attribute=entry[1],
        capabilities=[_capability_manifest(spec) for spec in app.capabilities.values()],
        python=sys.version.split()[0],
        implementation=sys.implementation.cache_tag or "unknown",
        magic=current_magic(),
        modules=[b.name for b in blobs],
        preload=preload,
        dependencies=dependencies,
        data_files=sorted(data),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        thaw_version=_version("thaw-runtime"),
    )
    return SnapshotPayload(
        revision=revision_id(manifest, blobs, data), manifest=manifest, modules=blobs, data=data
    )


def _attribute_holding(module: types.ModuleType, app: App) -> str | None:
    names = [name for name, value in vars(module).items() if value is app]
    if not names:
        return None
    return "app" if "app" in names else sorted(names)[0]


def _third_party(before: list[str], app_tops: set[str]) -> tuple[list[str], dict[str, str]]:
    stdlib = sys.stdlib_module_names
    tops: list[str] = []
    for name in sys.modules:
        top = name.partition(".")[0]
        if top in stdlib or top in app_tops or top in _OWN_PACKAGES or top.startswith("_"):
            continue
        if top not in tops:
            tops.append(top)
    already = {name.partition(".")[0] for name in before}
    preload = [top for top in tops if top not in already]
    distributions = importlib.metadata.packages_distributions()
    dependencies: dict[str, str] = {}
    for top in tops:
        for dist in distributions.get(top, []):
            dependencies[dist] = _version(dist)
    return preload, dict(sorted(dependencies.items()))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


class _Pattern(NamedTuple):
    negate: bool  # ``!pattern``: include again what an earlier pattern excluded
    folders_only: bool  # ``pattern/``
    parts: tuple[str, ...]  # matched part by part from the app root; "**" spans parts


class IgnoreRules:
    """The patterns of a ``.thawignore``: which data files the snapshot leaves out.

    One pattern a line, gitignore-like and deliberately small: blank lines and lines
    starting with ``#`` are skipped, surrounding spaces are stripped; ``*``, ``?``
    and ``[...]`` match within one path part (``fnmatch``), ``**`` matches any number
    of parts; a pattern with a ``/`` before its end is anchored at the app root
    (``/results.json``, ``data/*.csv``), one without matches a name at any depth
    (``*.parquet``); a trailing ``/`` matches folders only (and so everything in
    them); ``!pattern`` includes again what an earlier line excluded (the last
    matching line wins; a file inside an excluded folder stays excluded); ``\\#`` or
    ``\\!`` starts a pattern with a literal ``#`` or ``!``. Hidden files, code and the
    built-in exclusions can never be included again."""

    def __init__(self, patterns: tuple[_Pattern, ...] = ()) -> None:
        self._patterns = patterns

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate or line.startswith("\\"):
                line = line[1:]
            folders_only = line.endswith("/")
            anchored = "/" in line.rstrip("/")
            parts = tuple(part for part in line.split("/") if part not in ("", "."))
            if not parts:
                continue
            patterns.append(_Pattern(negate, folders_only, parts if anchored else ("**", *parts)))
        return cls(tuple(patterns))

    def __len__(self) -> int:
        return len(self._patterns)

    def ignored(self, relative: str, *, folder: bool) -> bool:
        """Whether ``relative`` (a ``/``-separated path from the app root) is excluded."""
        parts = tuple(relative.split("/"))
        verdict = False
        for pattern in self._patterns:
            if (folder or not pattern.folders_only) and _matches(pattern.parts, parts):
                verdict = not pattern.negate
        return verdict


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether ``pattern`` matches all of ``parts`` (linear in both: no backtracking)."""
    reachable = [True] + [False] * len(parts)  # reachable[j]: the pattern so far matched parts[:j]
    for segment in pattern:
        if segment == "**":
            seen = False
            spans = []
            for ok in reachable:
                seen = seen or ok
                spans.append(seen)
            reachable = spans
        else:
            reachable = [False] + [
                reachable[j] and fnmatch.fnmatchcase(parts[j], segment) for j in range(len(parts))
            ]
    return reachable[-1]


def _ignore_rules(root: Path) -> IgnoreRules:
    path = root / IGNORE_FILE
    if not os.path.lexists(path):
        return IgnoreRules()
    label = f"{IGNORE_FILE} {str(path)!r}"
    content = read_regular_file(path, label=label, limit=MAX_IGNORE_BYTES)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{label} is not UTF-8 text (at byte {exc.start})") from None
    return IgnoreRules.parse(text)


def _skipped_name(name: str, *, folder: bool) -> bool:
    if name.startswith("."):
        return True
    if folder:
        return name in _SKIP_DIRS
    return name.endswith(_SKIP_SUFFIXES) or ".snap.tmp-" in name  # the build's own temp file


def _left_out(relative: str, rules: IgnoreRules) -> bool:
    """Whether the file at ``relative`` (from the app root) is no data file, by any rule."""
    parts = relative.split("/")
    for depth in range(1, len(parts)):
        if _skipped_name(parts[depth - 1], folder=True):
            return True
        if rules.ignored("/".join(parts[:depth]), folder=True):
            return True
    return _skipped_name(parts[-1], folder=False) or rules.ignored(relative, folder=False)


def _data_files(root: Path, base: Path, warn: Callable[[str], None]) -> dict[str, bytes]:
    rules = _ignore_rules(root)
    data: dict[str, bytes] = {}
    total = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        kept: list[str] = []
        for name in sorted(dirs):
            path = here / name
            if _skipped_name(name, folder=True) or rules.ignored(_rel(path, root), folder=True):
                continue
            if path.is_symlink():
                warn(
                    f"{_rel(path, base)}: a symbolic link to a folder, not followed: its files "
                    "are not in the snapshot"
                )
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = here / name
            if _skipped_name(name, folder=False) or rules.ignored(_rel(path, root), folder=False):
                continue
            relative = _rel(path, base)
            found = _regular_file(path, root, relative, rules, warn)
            if found is None:
                continue
            source, size = found
            if len(data) >= MAX_DATA_FILES or total + size > MAX_DATA_BYTES:
                raise SnapshotError(
                    f"data file {relative!r} is {size} bytes, and the data files of a snapshot "
                    f"may be at most {MAX_DATA_FILES} files and {MAX_DATA_BYTES} bytes in all "
                    f"({len(data)} files, {total} bytes taken before it): move it out of the "
                    f"app's tree or name it in {IGNORE_FILE}"
                )
            content = read_regular_file(
                source, label=f"data file {relative!r}", limit=MAX_DATA_BYTES - total
            )
            if _PRIVATE_KEY in content:
                warn(f"{relative}: holds a private key; left out of the snapshot")
                continue
            total += len(content)
            data[relative] = content
    return data


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _regular_file(
    path: Path, root: Path, relative: str, rules: IgnoreRules, warn: Callable[[str], None]
) -> tuple[Path, int] | None:
    """(the file to read, its size) for a regular file or a link to one inside the tree."""
    try:
        info = os.lstat(path)
    except OSError:
        return None  # gone since the folder was listed
    source = path
    if stat.S_ISLNK(info.st_mode):
        source = path.resolve()
        if not source.is_relative_to(root) or source == root:
            warn(f"{relative}: a symbolic link out of the app's tree; not followed, left out")
            return None
        if _left_out(_rel(source, root), rules):
            warn(f"{relative}: a symbolic link to a file the snapshot leaves out; left out too")
            return None
        try:
            info = os.stat(source)
        except OSError:
            warn(f"{relative}: a broken symbolic link; left out")
            return None
    if not stat.S_ISREG(info.st_mode):
        warn(f"{relative} is {describe_mode(info.st_mode)}, not a regular file; left out unopened")
        return None
    return source, info.st_size


def _capability_manifest(spec: CapabilitySpec) -> CapabilityManifest:
    policy = spec.policy
    return CapabilityManifest(
        name=spec.name,
        description=spec.description,
        triggers=[msgspec.to_builtins(t) for t in spec.triggers],
        policy={
            "timeout": policy.timeout,
            "max_attempts": policy.retry.max_attempts,
            "backoff": msgspec.to_builtins(policy.retry.backoff),
            "idempotency": None
            if policy.idempotency is None
            else {"ttl": policy.idempotency.ttl, "custom_key": policy.idempotency.key is not None},
            "concurrency": policy.concurrency,
            "max_payload": policy.max_payload,
        },
        input_schema=_schema(spec.input_type) if spec.takes_payload else None,
        output_schema=_schema(spec.output_type),
    )


def _schema(contract: Any) -> dict[str, Any] | None:
    if contract is None:
        return None
    try:
        schema: dict[str, Any] = msgspec.json.schema(contract)
    except (TypeError, ValueError):
        return None
    return schema
