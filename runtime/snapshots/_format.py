"""The snapshot file: one file holding an App's compiled modules, sources, data and manifest.

Layout (all integers big-endian)::

    b"THAWSNAP"  u16 format version  u32 header length  header (JSON)  payload (msgpack)

The header records the payload's length and SHA-256, so a truncated, corrupted or
edited file is refused before anything in it is unmarshalled. The payload holds
the manifest, each module's source and marshalled code, and the data files.

The **revision id** is a SHA-256 over what defines behaviour: the manifest
without its build time, the module sources and the data files, and the Python
bytecode magic. Marshalled code is left out on purpose (marshal output depends
on reference counts), so building the same sources twice gives the same id.

Validation never executes anything and never raises anything but
``SnapshotError``, whose message names the cause.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
from typing import Any

import msgspec

from thaw._errors import RuntimeFault

__all__ = [
    "SnapshotError",
    "Manifest",
    "CapabilityManifest",
    "ModuleBlob",
    "SnapshotPayload",
    "encode_snapshot",
    "decode_snapshot",
    "revision_id",
    "MAGIC",
    "FORMAT_VERSION",
    "MAX_SNAPSHOT_BYTES",
]

MAGIC = b"THAWSNAP"
FORMAT_VERSION = 1
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
_PREFIX = struct.Struct(">8sHI")
_MAX_HEADER = 64 * 1024


class SnapshotError(RuntimeFault):
    """A snapshot file is unreadable, damaged, foreign or for another Python."""

    code = "snapshot_invalid"


class CapabilityManifest(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    triggers: list[dict[str, Any]] = []
    policy: dict[str, Any] = {}
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = 1
    app: str
    entry_module: str  # the module holding the App, e.g. "payment_webhook"
    app_attribute: str  # the variable holding the App, e.g. "app"
    capabilities: list[CapabilityManifest] = []
    python: str  # "3.11.7"
    implementation: str  # sys.implementation.cache_tag, e.g. "cpython-311"
    magic: str  # importlib.util.MAGIC_NUMBER, hex
    modules: list[str] = []  # app modules, in the order they were first imported
    preload: list[str] = []  # third-party top-level modules to import before executing
    dependencies: dict[str, str] = {}  # distribution -> version
    data_files: list[str] = []
    built_at: str = ""  # ISO time; not part of the revision id
    thaw_version: str = ""


class ModuleBlob(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # as imported in the app, e.g. "payment_webhook.rules"
    path: str  # relative path inside the app tree, e.g. "payment_webhook/rules.py"
    is_package: bool
    source: bytes
    code: bytes  # marshal.dumps of the compiled module code


class SnapshotPayload(msgspec.Struct, frozen=True, kw_only=True):
    revision: str
    manifest: Manifest
    modules: list[ModuleBlob]
    data: dict[str, bytes] = {}


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    payload_length: int
    payload_sha256: str
    revision: str


def current_magic() -> str:
    return importlib.util.MAGIC_NUMBER.hex()


def revision_id(manifest: Manifest, modules: list[ModuleBlob], data: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    stable = msgspec.structs.replace(manifest, built_at="")
    digest.update(msgspec.json.encode(stable, order="sorted"))
    for blob in sorted(modules, key=lambda b: b.name):
        for part in (blob.name.encode(), blob.path.encode(), blob.source):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    for name in sorted(data):
        for part in (name.encode(), data[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()[:32]


def encode_snapshot(payload: SnapshotPayload) -> bytes:
    body = msgspec.msgpack.encode(payload)
    header = msgspec.json.encode(
        _Header(
            payload_length=len(body),
            payload_sha256=hashlib.sha256(body).hexdigest(),
            revision=payload.revision,
        )
    )
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + body


def decode_snapshot(blob: bytes, *, source: str = "snapshot") -> SnapshotPayload:
    """Validate and decode a snapshot; ``SnapshotError`` says what is wrong."""
    if len(blob) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"{source} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    if len(blob) < _PREFIX.size or blob[:8] != MAGIC:
        raise SnapshotError(f"{source} is not a Thaw snapshot (it does not start with THAWSNAP)")
    _, version, header_length = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{source} uses snapshot format {version}; this Thaw reads format {FORMAT_VERSION}: "
            "rebuild it with `thaw snapshot build`"
        )
    if header_length > _MAX_HEADER or _PREFIX.size + header_length > len(blob):
        raise SnapshotError(f"{source} is truncated (its header is incomplete)")
    header_end = _PREFIX.size + header_length
    try:
        header = msgspec.json.decode(blob[_PREFIX.size : header_end], type=_Header)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{source} has a damaged header: {exc}") from None
    body = memoryview(blob)[header_end:]
    if len(body) != header.payload_length:
        what = "truncated" if len(body) < header.payload_length else "longer than its header says"
        raise SnapshotError(
            f"{source} is {what}: payload has {len(body)} bytes, expected {header.payload_length}"
        )
    if hashlib.sha256(body).hexdigest() != header.payload_sha256:
        raise SnapshotError(
            f"{source} was modified or corrupted after it was built (checksum mismatch)"
        )
    try:
        payload = msgspec.msgpack.decode(body, type=SnapshotPayload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{source} has a damaged payload: {exc}") from None
    if payload.revision != header.revision:
        raise SnapshotError(f"{source}: header and payload disagree on the revision id")
    check_python(payload.manifest, source=source)
    return payload


def check_python(manifest: Manifest, *, source: str = "snapshot") -> None:
    """Refuse code compiled for another interpreter: bytecode is version-specific."""
    tag = sys.implementation.cache_tag
    if manifest.magic != current_magic() or manifest.implementation != tag:
        here = f"{sys.version.split()[0]} ({tag}, magic {current_magic()})"
        raise SnapshotError(
            f"{source} was built for Python {manifest.python} ({manifest.implementation}, "
            f"magic {manifest.magic}); this is Python {here}. Rebuild it with this Python."
        )
