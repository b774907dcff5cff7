"""``thaw snapshot build``: freeze an App into one snapshot file, in a clean child Python.

The App is imported in a child process (so nothing the parent imported leaks in);
the child runs ``thaw.snapshots.collect_snapshot``, writes the file atomically and
prints a ``BuildResult`` as JSON on its last line, after a marker (so an app that
prints at import cannot garble it). Then the build **loads what it wrote** in a
second fresh child (``--verify``): ``load_revision`` with a throw-away data folder,
then every module of the snapshot, lazily imported ones included. The verifying
child runs with ``-P``, so the current folder is not on ``sys.path`` and the app's
sources cannot stand in for a module the snapshot lacks. If that load fails, the
file is removed and the build fails with the load's error: a build that succeeds
wrote a snapshot that loads.

Warnings (a lazily named module that does not import, a FIFO in the app's tree) are
in ``BuildResult.warnings`` and, unless ``on_warning`` says otherwise, printed to
stderr as ``thaw: warning: ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import msgspec

from thaw._errors import AppLoadError
from thaw.snapshots._collect import collect_snapshot
from thaw.snapshots._format import SnapshotError, encode_snapshot

__all__ = ["BuildResult", "build_snapshot"]

TIMEOUT = 300.0  # seconds, for each child: the build, then the load that proves it
_RESULT_MARKER = "thaw-build-result:"
_VERIFY = "--verify"


class BuildResult(msgspec.Struct, frozen=True):
    path: str
    revision: str
    size: int
    modules: list[str]
    preload: list[str]
    data_files: list[str]
    warnings: list[str] = []


def _print_warning(message: str) -> None:
    print(f"thaw: warning: {message}", file=sys.stderr)


def build_snapshot(
    target: str,
    output: str,
    *,
    python: str | None = None,
    on_warning: Callable[[str], None] | None = _print_warning,
) -> BuildResult:
    """Build ``target`` (any form ``thaw run`` accepts) into the snapshot file ``output``.

    ``on_warning`` (default: print to stderr; None: silent) gets each build warning."""
    # The child is sys.executable (or ``python``), where thaw is installed: no PYTHONPATH.
    interpreter = python or sys.executable
    command = [interpreter, "-m", "thaw.adapters.process.build", target, output]
    completed = _run(command, what=f"building {target!r}")
    if completed.returncode != 0:
        raise SnapshotError(f"building a snapshot of {target!r} failed: {_last_line(completed)}")
    result = _result_of(completed.stdout)
    verify = [interpreter, "-P", "-m", "thaw.adapters.process.build", _VERIFY, output]
    try:
        checked = _run(verify, what=f"loading the snapshot {output!r} just built")
    except SnapshotError:
        _remove(output)
        raise
    if checked.returncode != 0:
        _remove(output)
        raise SnapshotError(
            f"the snapshot built from {target!r} does not load, so it was removed: "
            f"{_last_line(checked)}"
        )
    if on_warning is not None:
        for warning in result.warnings:
            on_warning(warning)
    return result


def _run(command: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{what} took longer than {TIMEOUT:g} s; gave up") from None
    except OSError as exc:
        raise SnapshotError(f"{what}: cannot start {command[0]!r}: {exc.strerror}") from None


def _last_line(completed: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {completed.returncode}"


def _result_of(stdout: str) -> BuildResult:
    for line in reversed(stdout.splitlines()):
        marker = line.find(_RESULT_MARKER)
        if marker >= 0:
            try:
                return msgspec.json.decode(line[marker + len(_RESULT_MARKER) :], type=BuildResult)
            except msgspec.DecodeError as exc:
                raise SnapshotError(
                    f"the snapshot builder printed a damaged result: {exc}"
                ) from None
    raise SnapshotError("the snapshot builder printed no result (did the app end the process?)")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _child_main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == _VERIFY:
        return _verify_main(argv[1])
    if len(argv) != 2:
        print("usage: python -m thaw.adapters.process.build APP OUTPUT", file=sys.stderr)
        return 2
    target, output = argv
    warnings: list[str] = []
    try:
        payload = collect_snapshot(target, on_warning=warnings.append)
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
        warnings=warnings,
    )
    print(f"\n{_RESULT_MARKER}{msgspec.json.encode(result).decode()}", flush=True)
    return 0


def _verify_main(path: str) -> int:
    """Load the snapshot at ``path`` as a host would, then each of its modules."""
    from thaw.snapshots._revision import load_revision

    try:
        with tempfile.TemporaryDirectory(prefix="thaw-verify-") as data_dir:
            revision = load_revision(path, data_dir=data_dir)
            namespace = revision.namespace
            if namespace is not None:
                for name in revision.manifest.modules:  # the lazily imported ones too
                    namespace.execute(name)
    except BaseException as exc:  # SystemExit from a module body is a failed load too
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        print(detail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
