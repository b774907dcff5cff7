"""The core stays portable: runtime/ imports only the standard library, msgspec and anyio."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
ALLOWED_THIRD_PARTY = {"msgspec", "anyio", "sniffio", "idna", "typing_extensions"}
FORBIDDEN = ("uvloop", "httptools", "orjson", "nats")


def test_runtime_imports_nothing_but_stdlib_msgspec_and_anyio() -> None:
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED_THIRD_PARTY or top == "runtime":
                    continue
                if top not in sys.stdlib_module_names:
                    offenders.append(f"{path.name}: import {name}")
    assert offenders == []


BLOCKER = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {forbidden!r}:
                raise ImportError(f"{{name}} is blocked: the core must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    import anyio
    import runtime
    import runtime.lowlevel
    import runtime.testing
    import runtime.cli
    from runtime import App, Event

    app = App("pure")

    @app.capability()
    async def add(numbers: list[int]) -> int:
        return sum(numbers)

    async def main():
        invoker = runtime.lowlevel.Invoker(app, backbone=runtime.testing.MemoryBackbone())
        return await invoker.invoke("add", Event(id="1", data=b"[1, 2, 3]"))

    print(anyio.run(main))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
    print("forbidden loaded:", loaded)
    """
).format(forbidden=set(FORBIDDEN))


def test_runtime_works_where_fast_and_nats_packages_cannot_be_imported() -> None:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME.parent))
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Ok(data=b'6', replayed=False)" in result.stdout
    assert "forbidden loaded: []" in result.stdout
