"""Run the core's own pytest files inside Pyodide: the plugin and the file list.

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

__all__ = ["CORE_TESTS", "pytest_configure", "pytest_terminal_summary", "run"]

# The core's test files that need neither processes, sockets nor native-only
# packages (snapshot builds, the CLI and the process isolation level spawn
# processes, which Emscripten cannot).
CORE_TESTS = (
    "tests/test_app.py",
    "tests/test_budget.py",
    "tests/test_context.py",
    "tests/test_cron.py",
    "tests/test_dead_letters.py",
    "tests/test_decisions.py",
    "tests/test_exports.py",
    "tests/test_host.py",
    "tests/test_idempotency.py",
    "tests/test_invoker.py",
    "tests/test_invoker_properties.py",
    "tests/test_kv_idempotency.py",
    "tests/test_loader.py",
    "tests/test_memory_backbone.py",
    "tests/test_policy.py",
    "tests/test_schedule.py",
    "tests/test_subjects.py",
    "tests/test_trace.py",
    "tests/test_triggers.py",
    "tests/test_worker.py",
    "tests/test_in_pyodide.py",  # the edge's own checks (adapters/edge/pyodide_tests/)
)

_counts: dict[str, int] = {}


def pytest_configure(config: pytest.Config) -> None:
    _install_loop_shim()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        _counts[key] = len(terminalreporter.stats.get(key, ()))


def run(args: list[str]) -> str:
    """Run pytest with ``args`` (default: the core subset); a JSON summary line."""
    import platform
    import sys

    started = time.perf_counter()
    plugin = sys.modules[__name__]  # registered as an object: not re-imported for rewriting
    # The host imported thaw (and so anyio) at boot, before pytest could mark anyio's
    # plugin for assertion rewriting; that plugin has no asserts of ours to rewrite.
    quiet = "ignore:Module already imported so cannot be rewritten; anyio"
    options = ["-p", "no:cacheprovider", "-W", f"{quiet}:pytest.PytestAssertRewriteWarning"]
    code = pytest.main([*options, *(args or CORE_TESTS)], plugins=[plugin])
    summary = {
        "exit_code": int(code),
        **_counts,
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
