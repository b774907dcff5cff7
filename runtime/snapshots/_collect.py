"""Collecting an App into a snapshot payload, in the interpreter that imports it.

``collect_snapshot`` imports the App, records the modules loaded from the app's
own tree, compiles their sources, lists the third-party modules to preload (with
their distribution versions) and the data files beside the code. Third-party
code is listed, never copied. For a clean result it runs in a fresh interpreter:
``thaw snapshot build`` runs it in a child process (``thaw.adapters.process.build``),
the edge inside a fresh Pyodide.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import marshal
import os
import sys
import types
from pathlib import Path
from typing import Any

import msgspec

from thaw._errors import AppLoadError
from thaw.declarations._app import App, CapabilitySpec
from thaw.declarations._loader import load_app
from thaw.snapshots._format import (
    CapabilityManifest,
    Manifest,
    ModuleBlob,
    SnapshotError,
    SnapshotPayload,
    current_magic,
    revision_id,
)

__all__ = ["MAX_DATA_BYTES", "MAX_DATA_FILES", "collect_snapshot"]

MAX_DATA_BYTES = 64 * 1024 * 1024
MAX_DATA_FILES = 2000
_SKIP_DIRS = {"__pycache__", "node_modules", ".git", ".venv", "venv", ".mypy_cache"}
_SKIP_SUFFIXES = (".py", ".pyc", ".pyo", ".snap", ".so", ".pyd")
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


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def collect_snapshot(target: str) -> SnapshotPayload:
    """Import ``target`` (any form ``thaw run`` accepts) and collect it into a payload."""
    before = list(sys.modules)
    app = load_app(target)
    root, base = _app_tree(target)
    blobs: list[ModuleBlob] = []
    holders: list[tuple[str, str]] = []
    loaded_before = set(before)
    for name in [m for m in sys.modules if m not in loaded_before]:
        module = sys.modules[name]
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        source_path = Path(file).resolve()
        if not _inside(source_path, root):
            continue
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
    data = _data_files(root, base)
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


def _data_files(root: Path, base: Path) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(files):
            if filename.startswith(".") or filename.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(folder) / filename
            if not path.is_file():
                continue
            content = path.read_bytes()
            total += len(content)
            relative = path.relative_to(base).as_posix()
            if len(data) >= MAX_DATA_FILES or total > MAX_DATA_BYTES:
                raise SnapshotError(
                    f"the app tree {root} holds more than {MAX_DATA_FILES} data files or "
                    f"{MAX_DATA_BYTES} bytes (at {relative}); move large files out of it"
                )
            data[relative] = content
    return data


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
