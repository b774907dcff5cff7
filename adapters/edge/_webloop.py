"""Make Pyodide's WebLoop accept a deadline that has just passed, as asyncio does.

``asyncio``'s ``call_at``/``call_later`` run a callback whose time is already
past as soon as possible; Pyodide's ``WebLoop.call_later`` raises ``ValueError:
Can't schedule in the past`` instead. anyio's cancel scopes re-arm their deadline
with ``call_at`` after checking the clock, so under load the few microseconds in
between turn a timeout into an exception in a callback (seen as a flaky
``test_cancel_scopes_and_task_groups_inside_functions_work`` inside Pyodide). The
host applies ``patch()`` once at boot; elsewhere it does nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["patch"]


def patch() -> bool:
    """Clamp negative delays to zero in Pyodide's WebLoop; False where there is none."""
    try:
        webloop = importlib.import_module("pyodide.webloop")
    except ImportError:
        return False
    loop_class: Any = webloop.WebLoop
    if getattr(loop_class.call_later, "_thaw_clamped", False):
        return True
    original = loop_class.call_later

    def call_later(self: Any, delay: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, max(delay, 0), callback, *args, **kwargs)

    call_later._thaw_clamped = True  # type: ignore[attr-defined]
    loop_class.call_later = call_later
    return True
