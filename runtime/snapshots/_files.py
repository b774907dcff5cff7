"""Reading files that may be hostile: snapshots, data files, ``.thawignore``.

``read_regular_file`` opens a path without blocking (``O_NONBLOCK``: a FIFO named
``x.snap`` never hangs the reader, ``O_NOCTTY``: a terminal never becomes ours),
checks with ``fstat`` on the open descriptor that it is a regular file no larger
than the limit **before** reading a byte, then reads at most limit + 1 bytes (a
file that grows meanwhile is still refused). ``read_snapshot_file`` is that with
the snapshot limit and ``SnapshotError``; ``starts_with`` peeks at a file's first
bytes the same way. ``unmarshal_modules`` turns a payload's marshalled code into
code objects, or says which module is unreadable.

Invariants: nothing here blocks on a FIFO, device or socket, nothing reads more
than its limit + 1 bytes, and every failure is a ``SnapshotError`` (or the
caller's subclass) with a one-line message naming the file.
"""

from __future__ import annotations

import marshal
import os
import stat
import types

from thaw.snapshots._format import MAX_SNAPSHOT_BYTES, SnapshotError, SnapshotPayload

__all__ = [
    "describe_mode",
    "read_regular_file",
    "read_snapshot_file",
    "starts_with",
    "unmarshal_modules",
]

_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 1024 * 1024


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(
    path: str | os.PathLike[str],
    *,
    label: str,
    limit: int,
    error: type[SnapshotError] = SnapshotError,
) -> bytes:
    """The bytes of the regular file ``path`` if it holds at most ``limit`` bytes.

    ``label`` names the file in messages (``"snapshot 'x.snap'"``)."""
    try:
        handle = os.open(path, _FLAGS)
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror}") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{label} is {describe_mode(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise error(f"{label} is {info.st_size} bytes, more than the limit of {limit} bytes")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(handle, min(_CHUNK, left))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror}") from None
    finally:
        os.close(handle)
    content = b"".join(chunks)
    if len(content) > limit:
        raise error(f"{label} grew past the limit of {limit} bytes while being read")
    return content


def read_snapshot_file(path: str | os.PathLike[str], *, label: str) -> bytes:
    """The bytes of a snapshot file: a regular file of at most ``MAX_SNAPSHOT_BYTES``."""
    return read_regular_file(path, label=f"snapshot {label!r}", limit=MAX_SNAPSHOT_BYTES)


def starts_with(path: str | os.PathLike[str], prefix: bytes) -> bool:
    """Whether ``path`` is a regular file whose first bytes are ``prefix`` (never blocks)."""
    try:
        handle = os.open(path, _FLAGS)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return False
        return os.read(handle, len(prefix)) == prefix
    except OSError:
        return False
    finally:
        os.close(handle)


def unmarshal_modules(payload: SnapshotPayload, *, label: str) -> dict[str, types.CodeType]:
    """Each module's code object, by module name; ``SnapshotError`` names an unreadable one."""
    codes: dict[str, types.CodeType] = {}
    for blob in payload.modules:
        try:
            code = marshal.loads(blob.code)
        except (EOFError, ValueError, TypeError) as exc:
            raise SnapshotError(f"{label}: module {blob.name!r} has unreadable code") from exc
        if not isinstance(code, types.CodeType):
            raise SnapshotError(f"{label}: module {blob.name!r} does not hold code")
        codes[blob.name] = code
    return codes
