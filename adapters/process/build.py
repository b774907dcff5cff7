"""``thaw snapshot build``: freeze an App into one snapshot file, in a clean child Python.

The App is imported in a child process (so nothing the parent imported leaks in);
the child runs ``thaw.snapshots.collect_snapshot``, writes the file atomically and
prints a ``BuildResult`` as JSON on its last line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec

from thaw._errors import AppLoadError
from thaw.snapshots._collect import collect_snapshot
from thaw.snapshots._format import SnapshotError, encode_snapshot

__all__ = ["BuildResult", "build_snapshot"]


class BuildResult(msgspec.Struct, frozen=True):
    path: str
    revision: str
    size: int
    modules: list[str]
    preload: list[str]
    data_files: list[str]


def build_snapshot(target: str, output: str, *, python: str | None = None) -> BuildResult:
    """Build ``target`` (any form ``thaw run`` accepts) into the snapshot file ``output``."""
    # The child is sys.executable (or ``python``), where thaw is installed: no PYTHONPATH.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    command = [python or sys.executable, "-m", "thaw.adapters.process.build", target, output]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=300, check=False
        )
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"building {target!r} took longer than 300 s; gave up") from None
    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()
        detail = message[-1] if message else f"exit code {completed.returncode}"
        raise SnapshotError(f"building a snapshot of {target!r} failed: {detail}")
    try:
        return msgspec.json.decode(completed.stdout.strip().splitlines()[-1], type=BuildResult)
    except (IndexError, msgspec.DecodeError) as exc:
        raise SnapshotError(f"the snapshot builder printed no result: {exc}") from None


def _child_main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m thaw.adapters.process.build APP OUTPUT", file=sys.stderr)
        return 2
    target, output = argv
    try:
        payload = collect_snapshot(target)
        blob = encode_snapshot(payload)
        temporary = f"{output}.tmp-{os.getpid()}"
        with open(temporary, "wb") as handle:
            handle.write(blob)
        os.replace(temporary, output)
    except (AppLoadError, SnapshotError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    result = BuildResult(
        path=output,
        revision=payload.revision,
        size=len(blob),
        modules=payload.manifest.modules,
        preload=payload.manifest.preload,
        data_files=payload.manifest.data_files,
    )
    print(msgspec.json.encode(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
