"""``thaw dev APP``: serve an app for development and restart it when its files change.

The parent owns what should outlive a reload: the embedded nats-server (its
streams, KV and dead letters survive a code change) and the terminal. It runs
the app as a child ``thaw serve`` pointed at that server, polls the watched
files' modification times, and on a change stops the child (SIGTERM, it drains)
and starts a new one. A child that exits on its own (an import error, a crash)
is reported and started again at the next change, never in a loop.

Invariants: at most one child runs at a time (the old one has exited before the
new one starts, so the HTTP port is free again); the child runs in its own
session and dies with the parent (``--worker-of``); on SIGTERM/SIGINT the parent
stops the child, then its backbone, and exits 0. Polling needs no dependency
and works on every file system; ``--poll`` sets its period.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from thaw.adapters.cli.supervise import KILL_GRACE, backbone_url, worker_command
from thaw.backbone._registry import open_backbone

__all__ = ["changed_files", "run_dev", "snapshot_files", "watched_roots"]

WATCHED_SUFFIXES = frozenset({".py", ".json", ".toml", ".yaml", ".yml", ".txt", ".csv", ".snap"})
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", ".git", ".thaw", ".venv", "venv"})
MAX_FILES = 20_000  # a watched tree larger than this is a mistake (a home folder, say)

Snapshot = dict[str, int]  # path -> st_mtime_ns


def watched_roots(app: str, extra: Iterable[str] = ()) -> list[Path]:
    """The folders (or files) to watch: the app's own folder, plus ``--watch`` paths."""
    location = app
    if ":" in app and not os.path.exists(app):
        location = app.rpartition(":")[0].replace(".", os.sep)  # module:attribute
    path = Path(location).resolve()
    roots = [path if path.is_dir() or path.suffix == ".snap" else path.parent]
    roots += [Path(p).resolve() for p in extra]
    return roots


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
        for name in names:
            if Path(name).suffix in WATCHED_SUFFIXES:
                yield Path(folder, name)


def snapshot_files(roots: Iterable[Path]) -> Snapshot:
    """Modification times of the watched files (missing roots watch nothing)."""
    seen: Snapshot = {}
    for root in roots:
        for path in _files(root):
            with contextlib.suppress(OSError):  # deleted between listing and stat
                seen[str(path)] = path.stat().st_mtime_ns
            if len(seen) > MAX_FILES:
                raise ValueError(
                    f"thaw dev watches more than {MAX_FILES} files under {root}; "
                    "point it at the app's own folder"
                )
    return seen


def changed_files(before: Snapshot, after: Snapshot) -> list[str]:
    """Files added, removed or modified between two snapshots (sorted)."""
    return sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )


def run_dev(args: argparse.Namespace, *, kind: str, url: str | None) -> int:
    roots = watched_roots(args.app, args.watch)

    async def main() -> int:
        async with AsyncExitStack() as stack:
            child_url = url
            if kind == "memory":
                print(
                    "thaw dev: on the memory backbone the app's streams and KV start empty "
                    "after every reload",
                    flush=True,
                )
            elif url is None:  # start the embedded server once, for every reload
                backbone = await stack.enter_async_context(
                    open_backbone(kind, None, state_dir=args.state_dir)
                )
                child_url = backbone_url(backbone)
                if child_url is None:
                    print(f"thaw dev: the {kind} backbone has no URL: pass --url", flush=True)
                    return 2
            command = worker_command(args, kind=kind, url=child_url, port=args.http)
            return await _reload_loop(command, roots, args)

    code = anyio.run(main)
    print("thaw dev: stopped", flush=True)
    return code


async def _reload_loop(command: list[str], roots: list[Path], args: argparse.Namespace) -> int:
    shown = ", ".join(str(r) for r in roots)
    print(f"thaw dev: watching {shown} (every {args.poll:g}s); Ctrl-C stops", flush=True)
    watcher = _Watcher(roots, args.poll)
    await watcher.start()
    stopping = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stopping.set()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(watch_signals)
        while not stopping.is_set():
            process = await _start(command)
            changed = await _run_until_change(process, watcher, stopping)
            if changed:
                print(f"thaw dev: {_names(changed)} changed: reloading", flush=True)
            await _stop(process, args.drain_timeout)
        group.cancel_scope.cancel()
    return 0


class _Watcher:
    """Polls the watched files; ``wait_change`` returns what changed since the last one."""

    def __init__(self, roots: list[Path], period: float) -> None:
        self._roots = roots
        self._period = period
        self._files: Snapshot = {}

    async def start(self) -> None:
        self._files = await anyio.to_thread.run_sync(snapshot_files, self._roots)

    async def wait_change(self) -> list[str]:
        while True:
            await anyio.sleep(self._period)  # a polling period, not a race
            now = await anyio.to_thread.run_sync(snapshot_files, self._roots)
            changed, self._files = changed_files(self._files, now), now
            if changed:
                return changed


async def _run_until_change(
    process: anyio.abc.Process, watcher: _Watcher, stopping: anyio.Event
) -> list[str]:
    """Wait for a change (returned), or a stop (returns []); report the app exiting."""
    changed: list[str] = []
    async with anyio.create_task_group() as group:

        async def poll() -> None:
            changed.extend(await watcher.wait_change())
            group.cancel_scope.cancel()

        async def exited() -> None:
            code = await process.wait()
            print(
                f"thaw dev: the app exited with code {code}; "
                "fix it and save: it restarts on the next change",
                flush=True,
            )

        async def stop() -> None:
            await stopping.wait()
            group.cancel_scope.cancel()

        group.start_soon(poll)
        group.start_soon(exited)
        group.start_soon(stop)
    return changed


def _names(changed: list[str]) -> str:
    here = os.getcwd() + os.sep
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return ", ".join(p.removeprefix(here) for p in changed[:3]) + more


async def _start(command: list[str]) -> anyio.abc.Process:
    return await anyio.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=None,  # the app's output goes straight to the terminal
        stderr=None,
        start_new_session=True,  # Ctrl-C reaches the parent only; it stops the child once
    )


async def _stop(process: anyio.abc.Process, drain_timeout: float) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(drain_timeout + KILL_GRACE, shield=True):
            await process.wait()
        if process.returncode is None:
            print(f"thaw dev: pid {process.pid} did not stop in time: killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
