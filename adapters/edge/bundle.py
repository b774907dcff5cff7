"""``thaw edge build``: a self-contained folder a JS edge runtime can run.

The bundle has the edge cache's layout, so the host finds everything beside itself
(it switches to bundle mode when ``thaw-bundle.json`` sits next to it)::

    DIR/thaw_edge.mjs                the host (serve / handle / bench / snapshot)
    DIR/nats_bridge.mjs              its JetStream half (``serve --nats``)
    DIR/node_modules/@nats-io/...    the npm NATS client and its dependencies (0.8 MB)
    DIR/thaw-bundle.json             manifest: app, snapshot, versions, every file's size
    DIR/README.md                    how to run it
    DIR/node_modules/pyodide/        Pyodide's five files (nothing else is read)
    DIR/wheels/runtime/*.whl         msgspec (wasm32) and the pure wheels
    DIR/thaw/runtime/, thaw/adapters/{edge,http}/   Thaw's sources the guest imports
    DIR/app/<name>/                  the app's sources
    DIR/app.snap                     the app's snapshot, built inside Pyodide (its Python)
    DIR/app.mem                      optional: a Pyodide memory snapshot the host boots from

Bytecode is version-specific: the snapshot is built by the host's ``snapshot``
command inside Pyodide, never by this CPython. Nothing in the bundle points back
at the project or at ``.thaw/edge``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import msgspec

from thaw.adapters.edge import prepare

__all__ = ["PYODIDE_FILES", "BundleManifest", "build_bundle"]

# What Pyodide reads when the host boots it (a bundle with only these boots).
PYODIDE_FILES = (
    "pyodide.mjs",
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "python_stdlib.zip",
    "pyodide-lock.json",
)
EDGE_MODULES = (
    "__init__.py",
    "_guest.py",
    "_bench.py",
    "_jsbackbone.py",
    "_pyodide_pytest.py",
    "_webloop.py",
)
MANIFEST = "thaw-bundle.json"
_SKIP = ("__pycache__", "*.pyc", ".*", "node_modules")
NATS_ROOTS = ("@nats-io/transport-node", "@nats-io/jetstream", "@nats-io/kv")
_SNAPSHOT_TIMEOUT = 300.0


class BundleManifest(msgspec.Struct, frozen=True):
    """``thaw-bundle.json``: what the bundle holds; sizes in bytes, paths relative to it."""

    format: int
    app: str
    snapshot: str | None
    pyodide: str
    python: str
    node: str
    sizes: dict[str, int]  # pyodide, wheels, thaw, app, snapshot, host, total
    files: dict[str, int]
    memory_snapshot: str | None = None


def build_bundle(
    app: str, output: Path, *, snapshot: bool = True, memory_snapshot: bool = False
) -> BundleManifest:
    """Write the bundle for the app at ``app`` (a folder or a .py file) into ``output``."""
    problems = prepare.check(test_wheels=False)
    if problems:
        raise prepare.EdgeSetupError("; ".join(problems))
    source = Path(app).resolve()
    if not source.exists():
        raise prepare.EdgeSetupError(f"{app} does not exist")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise prepare.EdgeSetupError(f"{output} exists and is not empty: choose a new folder")
    output.mkdir(parents=True, exist_ok=True)
    stamp = msgspec.json.decode((prepare.CACHE / "prepared.json").read_bytes())

    pyodide = output / "node_modules" / "pyodide"
    pyodide.mkdir(parents=True)
    for name in PYODIDE_FILES:
        shutil.copyfile(prepare.CACHE / "node_modules" / "pyodide" / name, pyodide / name)
    shutil.copytree(prepare.CACHE / "wheels" / "runtime", output / "wheels" / "runtime")
    _copy_thaw(output / "thaw")
    folder = source if source.is_dir() else source.parent
    app_dir = output / "app" / folder.name
    shutil.copytree(folder, app_dir, ignore=shutil.ignore_patterns(*_SKIP))
    app_entry = app_dir if source.is_dir() else app_dir / source.name
    shutil.copyfile(prepare.HOST_SCRIPT, output / "thaw_edge.mjs")
    # Imported by the host; `serve --nats` loads the @nats-io packages from node_modules.
    shutil.copyfile(prepare.HOST_SCRIPT.parent / "nats_bridge.mjs", output / "nats_bridge.mjs")
    for package in nats_client_packages():
        shutil.copytree(
            prepare.CACHE / "node_modules" / package,
            output / "node_modules" / package,
            ignore=shutil.ignore_patterns("*.map", "*.ts"),  # source maps, type declarations
        )

    snapshot_name: str | None = None
    if snapshot:
        snapshot_name = "app.snap"
        _snapshot_in_pyodide(app_entry, output / snapshot_name)
    app_name = app_entry.relative_to(output).as_posix()
    manifest = _write_manifest(output, app=app_name, snapshot=snapshot_name, stamp=stamp)
    if memory_snapshot:
        # Made by the bundle's own host, so the bytecode it keeps has the bundle's paths.
        _run_host(
            [prepare.find_node().node, str(output / "thaw_edge.mjs"), "memory-snapshot"],
            output / "app.mem",
            what="the Pyodide memory snapshot",
        )
        manifest = _write_manifest(
            output, app=app_name, snapshot=snapshot_name, stamp=stamp, memory="app.mem"
        )
    return manifest


def nats_client_packages(lock: Path | None = None) -> list[str]:
    """The npm packages ``serve --nats`` needs: NATS_ROOTS and what they depend on.

    Read from the committed package-lock.json, so a bundle carries exactly what
    ``npm ci`` installed (and nothing of Pyodide's own dependencies).
    """
    tree = msgspec.json.decode((lock or prepare.HERE / "package-lock.json").read_bytes())
    packages: dict[str, dict[str, object]] = tree["packages"]
    wanted: list[str] = []
    pending = list(NATS_ROOTS)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        entry = packages.get(f"node_modules/{name}")
        if entry is None:
            raise prepare.EdgeSetupError(
                f"{name} is not in adapters/edge/package-lock.json; run `make edge` again"
            )
        wanted.append(name)
        dependencies = entry.get("dependencies") or {}
        assert isinstance(dependencies, dict)
        pending.extend(dependencies)
    return sorted(wanted)


def _write_manifest(
    output: Path,
    *,
    app: str,
    snapshot: str | None,
    stamp: dict[str, object],
    memory: str | None = None,
) -> BundleManifest:
    for name in (MANIFEST, "README.md"):
        (output / name).unlink(missing_ok=True)
    manifest = _manifest(output, app=app, snapshot=snapshot, stamp=stamp, memory=memory)
    (output / "README.md").write_text(_readme(manifest))
    encoded = msgspec.json.format(msgspec.json.encode(manifest)) + b"\n"
    (output / MANIFEST).write_bytes(encoded)
    return manifest


def _copy_thaw(target: Path) -> None:
    ignore = shutil.ignore_patterns(*_SKIP)
    shutil.copytree(prepare.ROOT / "runtime", target / "runtime", ignore=ignore)
    adapters = prepare.ROOT / "adapters"
    (target / "adapters" / "edge").mkdir(parents=True)
    shutil.copyfile(adapters / "__init__.py", target / "adapters" / "__init__.py")
    for name in EDGE_MODULES:
        shutil.copyfile(adapters / "edge" / name, target / "adapters" / "edge" / name)
    # The source layout (runtime/, adapters/): the host installs it as thaw and thaw.adapters.
    # The host copies adapters/http/*.py but __init__.py (it writes its own, without
    # the httptools server); the guest imports only the transport-free modules.
    (target / "adapters" / "http").mkdir()
    for module in sorted((adapters / "http").glob("*.py")):
        if module.name != "__init__.py":
            shutil.copyfile(module, target / "adapters" / "http" / module.name)


def _snapshot_in_pyodide(app: Path, output: Path) -> None:
    _run_host(prepare.host_command("snapshot", str(app)), output, what="the snapshot")


def _run_host(command: list[str], output: Path, *, what: str) -> None:
    command = [*command, "--output", str(output)]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_SNAPSHOT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise prepare.EdgeSetupError(
            f"building {what} inside Pyodide took over {_SNAPSHOT_TIMEOUT:g}s"
        ) from None
    if completed.returncode != 0 or not output.is_file():
        tail = "\n".join(completed.stderr.strip().splitlines()[-12:])
        raise prepare.EdgeSetupError(
            f"building {what} inside Pyodide failed ({completed.returncode}):\n{tail}"
        )


def _manifest(
    output: Path, *, app: str, snapshot: str | None, stamp: dict[str, object], memory: str | None
) -> BundleManifest:
    files = {
        path.relative_to(output).as_posix(): path.stat().st_size
        for path in sorted(output.rglob("*"))
        if path.is_file()
    }

    def under(prefix: str) -> int:
        return sum(size for name, size in files.items() if name.startswith(prefix))

    sizes = {
        "pyodide": under("node_modules/pyodide/"),
        "nats_client": under("node_modules/") - under("node_modules/pyodide/"),
        "wheels": under("wheels/"),
        "thaw": under("thaw/"),
        "app": under("app/"),
        "snapshot": files.get(snapshot, 0) if snapshot else 0,
        "memory_snapshot": files.get(memory, 0) if memory else 0,
        "host": files["thaw_edge.mjs"] + files["nats_bridge.mjs"],
    }
    sizes["total"] = sum(sizes.values())
    target = stamp.get("target")
    python = str(target.get("python", "")) if isinstance(target, dict) else ""
    return BundleManifest(
        format=1,
        app=app,
        snapshot=snapshot,
        pyodide=str(stamp.get("pyodide", "")),
        python=python,
        node=str(stamp.get("node", "")),
        sizes=sizes,
        files=files,
        memory_snapshot=memory,
    )


def _readme(manifest: BundleManifest) -> str:
    serves = manifest.snapshot or manifest.app
    return f"""# Thaw edge bundle

Built by `thaw edge build`: Pyodide {manifest.pyodide} (Python {manifest.python}), the
wheels Thaw needs, Thaw's runtime and the app `{manifest.app}`. Nothing is fetched at
run time; {manifest.sizes["total"]:,} bytes in all (`thaw-bundle.json` lists every file).

Run it with Node 24 or newer ({manifest.node} when built):

```sh
node thaw_edge.mjs serve --port 8787          # serves {serves}
curl -s -X POST 127.0.0.1:8787/ROUTE -d '{{...}}'
```

`serve` without an app serves the bundled one (its snapshot when there is one: bytecode
built inside this Pyodide, so it loads only in Python {manifest.python}); `serve app/...`
serves the sources instead. As a module, `import {{ openEdge }} from "./thaw_edge.mjs"`
and `await (await openEdge({json.dumps(serves)})).handle(request)` answers a fetch
`Request` with a `Response`.
{_memory_note(manifest)}"""


def _memory_note(manifest: BundleManifest) -> str:
    if manifest.memory_snapshot is None:
        return ""
    return (
        f"\n`serve` boots from `{manifest.memory_snapshot}`, a Pyodide memory snapshot with the\n"
        "standard library imported and Thaw's bytecode kept (msgspec, a compiled module, is\n"
        "imported after the restore); `serve APP --memory-snapshot app.mem` boots another app\n"
        "from it. Delete it to boot in full; it works only with this bundle's Pyodide.\n"
    )
