"""The core stays portable: `thaw` works where the fast and NATS packages cannot be imported.

The source-level rules (imports, fork/exec/signal/socket/thread calls) are in test_layout.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

FORBIDDEN = ("uvloop", "httptools", "orjson", "nats")


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
    import thaw
    import thaw.lowlevel
    import thaw.testing
    from thaw import App, Event

    app = App("pure")

    @app.capability()
    async def add(numbers: list[int]) -> int:
        return sum(numbers)

    async def main():
        invoker = thaw.lowlevel.Invoker(app, backbone=thaw.testing.MemoryBackbone())
        return await invoker.invoke("add", Event(id="1", data=b"[1, 2, 3]"))

    print(anyio.run(main))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
    print("forbidden loaded:", loaded)
    """
).format(forbidden=set(FORBIDDEN))


def test_runtime_works_where_fast_and_nats_packages_cannot_be_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
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
