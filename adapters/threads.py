"""Blocking work off the event loop, for hosts on CPython (the core starts no threads).

``run_in_thread`` is a ``thaw.lowlevel.BlockingRunner``: pass it where the core
takes ``run_blocking`` (``RevisionRouter``) so a snapshot load does not stall the
requests the loop is serving. Pyodide has no threads and keeps ``run_inline``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

__all__ = ["run_in_thread"]

T = TypeVar("T")


async def run_in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in anyio's worker thread pool and return its result."""
    return await anyio.to_thread.run_sync(work)
