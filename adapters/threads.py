"""Blocking work off the event loop, for hosts on CPython (the core starts no threads).

``run_in_thread`` is a ``thaw.lowlevel.BlockingRunner``: pass it where the core
takes ``run_blocking`` (``RevisionRouter``) so a snapshot load does not stall the
requests the loop is serving. Pyodide has no threads and keeps ``run_inline``.

``SyncPool`` is a ``SyncRunner`` for ``ctx.run_sync`` (``open_host(run_sync=...)``):
threads through anyio with a bounded ``CapacityLimiter`` (a burst of CPU-bound calls
queues instead of taking every worker thread), and optionally a spawn/forkserver
``ProcessPoolExecutor`` for ``process=True``. Invariants: a cancelled await (the
deadline) returns at once; its thread is abandoned (it runs on, its result is
dropped) and a process task that has not started is cancelled; a function or
arguments that do not pickle fail with ``ConfigError`` before anything is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.to_thread

from thaw import ConfigError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["SyncPool", "run_in_thread"]

T = TypeVar("T")


async def run_in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in anyio's worker thread pool and return its result."""
    return await anyio.to_thread.run_sync(work)


class SyncPool:
    """``ctx.run_sync`` in at most ``threads`` threads (and ``processes`` processes)."""

    def __init__(
        self,
        *,
        threads: int = 8,
        processes: int = 0,
        start_method: Literal["spawn", "forkserver"] = "forkserver",
    ) -> None:
        for name, value, least in (("threads", threads, 1), ("processes", processes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"SyncPool {name} must be an int >= {least}, got {value!r}")
        if start_method not in ("spawn", "forkserver"):
            raise ConfigError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.limiter = anyio.CapacityLimiter(threads)
        self._executor: ProcessPoolExecutor | None = None
        if processes:  # multiprocessing is imported only by a host that asks for processes
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context(start_method)
            self._executor = ProcessPoolExecutor(processes, mp_context=context)

    async def __call__(
        self, function: Callable[..., T], args: tuple[Any, ...], *, process: bool
    ) -> T:
        if not process:
            return await anyio.to_thread.run_sync(
                partial(function, *args), abandon_on_cancel=True, limiter=self.limiter
            )
        if self._executor is None:
            raise ConfigError(
                "ctx.run_sync(..., process=True) needs a process pool: "
                "thaw serve --sync-processes N (or SyncPool(processes=N))"
            )
        import pickle

        name = getattr(function, "__qualname__", repr(function))
        try:
            pickle.dumps((function, args))
        except Exception as exc:  # PicklingError, TypeError, AttributeError: all say why
            raise ConfigError(
                f"ctx.run_sync({name}, process=True): the function and its arguments must "
                f"pickle (a module-level function, plain data): {type(exc).__name__}: {exc}"
            ) from None
        # Cancelling the asyncio future cancels the pool's if it has not started.
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    def close(self) -> None:
        """Stop the processes; queued tasks are cancelled (threads end on their own)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
