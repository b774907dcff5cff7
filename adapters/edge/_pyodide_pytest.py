"""Run the core's own pytest files inside Pyodide: the plugin and its summary.

Which files run is not kept here: ``tests/conftest.py`` marks every test file
with its layers and, inside Pyodide, collects only the core ones Pyodide can
import (and the edge's own ``test_in_pyodide.py``). The summary counts what
was collected per file, so the CPython side can check that all of it ran.

The edge host's ``test`` command calls ``run()``, which registers this module as
a plugin, through JSPI (``callPromising``), so a synchronous test
runner may block on the event loop the way it does on CPython.

Why a shim is needed, and all it changes: Pyodide registers its one ``WebLoop``
as *the running loop* for the whole process (JavaScript's event loop never
stops). Code that asks "is a loop running?" before starting one
(``asyncio.Runner.run``, anyio's test runner) would refuse everywhere, so while
tests run:

- "inside a running loop" means "inside a task" (which is what those checks
  protect against: re-entering a loop from a coroutine);
- ``asyncio.new_event_loop()`` returns the one WebLoop, whose ``close()`` is a
  no-op anyway. Creating a WebLoop per test also works, but each one takes
  over the running-loop slot and, past a few thousand, overflows the JSPI stack;
- ``Runner.close()`` does not shut the shared loop's async generators down (the
  loop lives on, and a later test's generators would be refused).

anyio finds the running library through sniffio (in the test wheel set), which
looks at the current task, not at the registered loop.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import json
import time
from typing import Any

import pytest

__all__ = [
    "pytest_collection_finish",
    "pytest_configure",
    "pytest_terminal_summary",
    "run",
]

# The edge's subset: tests/conftest.py leaves out, inside Pyodide, what does not belong.
DEFAULT_ARGS = ("tests",)

_counts: dict[str, int] = {}
_collected: dict[str, int] = {}


def pytest_configure(config: pytest.Config) -> None:
    _install_loop_shim()


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        path = item.nodeid.split("::", 1)[0]
        _collected[path] = _collected.get(path, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        _counts[key] = len(terminalreporter.stats.get(key, ()))


def run(args: list[str]) -> str:
    """Run pytest with ``args`` (default: the edge's subset); a JSON summary line.

    The summary holds the outcome counts and ``collected``, the number of tests
    collected per file.
    """
    import platform
    import sys

    started = time.perf_counter()
    _collected.clear()
    plugin = sys.modules[__name__]  # registered as an object: not re-imported for rewriting
    # The host imported thaw (and so anyio) at boot, before pytest could mark anyio's
    # plugin for assertion rewriting; that plugin has no asserts of ours to rewrite.
    quiet = "ignore:Module already imported so cannot be rewritten; anyio"
    options = ["-p", "no:cacheprovider", "-W", f"{quiet}:pytest.PytestAssertRewriteWarning"]
    code = pytest.main([*options, *(args or DEFAULT_ARGS)], plugins=[plugin])
    summary = {
        "exit_code": int(code),
        **_counts,
        "collected": dict(sorted(_collected.items())),
        "seconds": round(time.perf_counter() - started, 2),
        "python": platform.python_version(),
        "platform": sys.platform,
    }
    return json.dumps(summary)


def _install_loop_shim() -> None:
    from anyio._backends import _asyncio as anyio_asyncio
    from pyodide.webloop import WebLoop  # type: ignore[import-not-found]

    shared = asyncio.events.get_event_loop()
    original_run = asyncio.Runner.run
    original_set = asyncio.events.set_event_loop

    def runner_run(self: asyncio.Runner, coro: Any, *, context: Any = None) -> Any:
        loop = asyncio.events._get_running_loop()
        if isinstance(loop, WebLoop) and asyncio.current_task(loop) is None:
            asyncio.events._set_running_loop(None)
            try:
                return original_run(self, coro, context=context)
            finally:
                asyncio.events._set_running_loop(loop)
        return original_run(self, coro, context=context)

    async def keep_asyncgens() -> None:
        return None

    def set_event_loop(loop: Any) -> None:
        original_set(shared if loop is None else loop)

    asyncio.Runner.run = runner_run  # type: ignore[method-assign]
    asyncio.events.new_event_loop = lambda: shared
    asyncio.events.set_event_loop = set_event_loop
    shared.shutdown_asyncgens = keep_asyncgens  # type: ignore[method-assign]
    anyio_asyncio.TestRunner.is_running = (  # type: ignore[method-assign]
        lambda self: asyncio.current_task() is not None
    )
