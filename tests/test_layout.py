"""The house: one import name, a portable core, no import circles, folders that hold one concept.

These read the source (ast), so a broken rule names the file and line to mend.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "runtime"
ADAPTERS = ROOT / "adapters"

# What the core may import besides the standard library (anyio's own needs included).
ALLOWED_THIRD_PARTY = {"msgspec", "anyio", "sniffio", "idna", "typing_extensions"}
# Standard-library modules the core must not import: it runs in Pyodide, where a
# process, a signal, a socket or a thread cannot be had.
FORBIDDEN_STDLIB = {
    "subprocess",
    "signal",
    "socket",
    "socketserver",
    "selectors",
    "ssl",
    "threading",
    "_thread",
    "multiprocessing",
    "concurrent",
    "pty",
    "fcntl",
    "resource",
}
# Calls that fork, exec, signal, open sockets or start threads, by their dotted name.
FORBIDDEN_CALLS = {
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.waitpid",
    "os.wait",
    "os.system",
    "os.popen",
    "os.posix_spawn",
    "os.posix_spawnp",
    "os.register_at_fork",
    "anyio.to_thread.run_sync",
    "anyio.run_process",
    "anyio.open_process",
    "anyio.open_signal_receiver",
    "anyio.connect_tcp",
    "anyio.connect_unix",
    "anyio.create_tcp_listener",
    "anyio.create_unix_listener",
    "anyio.create_udp_socket",
    "asyncio.create_subprocess_exec",
    "asyncio.create_subprocess_shell",
    "asyncio.open_connection",
    "asyncio.start_server",
}
FORBIDDEN_PREFIXES = ("os.exec", "os.spawn")
# The concept folders of the core, bottom floor first: a folder imports only from
# folders below it (and from the leaf modules at the top of the package).
CORE_FLOORS = ["decisions", "backbone", "declarations", "invocation", "snapshots", "host"]


def python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if "pyodide_tests" not in path.parts and "__pycache__" not in path.parts:
            yield path


def module_name(path: Path) -> str:
    if path.is_relative_to(CORE):
        parts = ["thaw", *path.relative_to(CORE).with_suffix("").parts]
    else:
        parts = ["thaw", "adapters", *path.relative_to(ADAPTERS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for root in (CORE, ADAPTERS) for path in python_files(root)}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file: top level, lazy and TYPE_CHECKING alike."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports (thaw....)"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield node.lineno, submodule if submodule in MODULES else node.module


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def test_the_core_imports_only_the_standard_library_msgspec_and_anyio() -> None:
    offenders = []
    for path in python_files(CORE):
        for line, name in imported_modules(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}: import {name}"
            if name.startswith("thaw.adapters"):
                offenders.append(f"{where} (the core never imports adapters)")
            elif top == "thaw" or top in ALLOWED_THIRD_PARTY:
                continue
            elif top in FORBIDDEN_STDLIB:
                offenders.append(f"{where} (no processes, signals, sockets or threads)")
            elif top not in sys.stdlib_module_names:
                offenders.append(f"{where} (not stdlib, msgspec or anyio)")
    assert offenders == []


def test_the_core_never_forks_execs_signals_or_starts_threads() -> None:
    offenders = []
    for path in python_files(CORE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                name = dotted(node)
                if name in FORBIDDEN_CALLS or name.startswith(FORBIDDEN_PREFIXES):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []


def test_the_purity_rules_see_what_they_forbid() -> None:
    # The rules above read ast: prove they flag the forms they are meant to flag.
    source = "import os, anyio\nos.fork()\nanyio.to_thread.run_sync(f)\nos.execv('x', [])\n"
    found = [
        dotted(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and (dotted(node) in FORBIDDEN_CALLS or dotted(node).startswith(FORBIDDEN_PREFIXES))
    ]
    assert found == ["os.fork", "anyio.to_thread.run_sync", "os.execv"]


def import_graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in MODULES.items():
        for line, target in imported_modules(path):
            if target in MODULES and target != name:
                graph[name].setdefault(target, line)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_circles_are_found() -> None:
    assert circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [
        ["a", "b", "c"]
    ]


def test_no_module_imports_itself_back_in_a_circle() -> None:
    graph = import_graph()
    described = [
        ", ".join(f"{m} imports {n} (line {graph[m][n]})" for m in c for n in c if n in graph[m])
        for c in circles(graph)
    ]
    assert described == []


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in CORE_FLOORS:
        return CORE_FLOORS.index(parts[1])
    return None


def test_core_folders_import_only_downwards() -> None:
    upward = []
    for module, targets in import_graph().items():
        here = floor_of(module)
        for target, line in targets.items():
            there = floor_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module}:{line} imports {target}")
            if here is not None and target in ("thaw", "thaw.lowlevel", "thaw.testing"):
                upward.append(f"{module}:{line} imports the public surface {target}")
    assert upward == []


def test_every_core_folder_opens_with_what_it_holds() -> None:
    for folder in [CORE, *(p for p in CORE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no opening docstring"
    assert {p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        CORE_FLOORS
    )


def test_no_two_modules_are_one_letter_apart() -> None:
    def one_apart(a: str, b: str) -> bool:
        if a == b or abs(len(a) - len(b)) > 1:
            return False
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b, strict=True)) == 1
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))

    stems = sorted({name.rsplit(".", 1)[-1].strip("_") for name in MODULES})
    close = [(a, b) for i, a in enumerate(stems) for b in stems[i + 1 :] if one_apart(a, b)]
    assert close == []


def test_the_package_list_names_every_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"thaw": "runtime", "thaw.adapters": "adapters"}
    folders = {
        module_name(init)
        for root in (CORE, ADAPTERS)
        for init in root.rglob("__init__.py")
        if "pyodide_tests" not in init.parts
    }
    assert sorted(config["packages"]) == sorted(folders)


@pytest.mark.parametrize(("name", "hint"), [("runtime", "thaw"), ("adapters", "thaw.adapters")])
def test_the_folders_are_not_importable_under_their_own_names(name: str, hint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=ROOT,  # the folders are right here, on sys.path as ''
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 1
    assert f"imported as '{hint}', not '{name}'" in result.stderr


def test_an_app_with_its_own_adapters_package_keeps_it(tmp_path: Path) -> None:
    # A hexagonal app layout: its adapters/ package must not collide with Thaw's.
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "__init__.py").write_text("OWNER = 'the app'\n")
    (tmp_path / "runtime.py").write_text("OWNER = 'the app too'\n")
    script = (
        "import adapters, runtime, thaw, thaw.adapters.http\n"
        "print(adapters.OWNER, '|', runtime.OWNER, '|', thaw.adapters.http.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the app | the app too | thaw.adapters.http"
