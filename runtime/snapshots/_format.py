"""The snapshot file: one file holding an App's compiled modules, sources, data and manifest.

Layout (all integers big-endian)::

    b"THAWSNAP"  u16 format version  u32 header length  header (JSON)  payload (msgpack)

The header records the payload's length and SHA-256, the revision id and, when the
snapshot is signed, a signature and the id of the key that made it. A truncated,
corrupted or edited file is refused before anything in it is unmarshalled.
The payload holds the manifest, each module's source and marshalled code, and the
data files.

The **revision id** is a SHA-256 over what defines behaviour: the manifest
without its build time, the module sources and the data files, and the Python
bytecode magic. Marshalled code is left out on purpose (marshal output depends
on reference counts), so building the same sources twice gives the same id.
Decoding recomputes it from the payload and refuses a snapshot whose recorded id
differs (``SnapshotResealed``): changed sources or data cannot keep an old id.

What an **unsigned** snapshot proves: nothing about who made it. Its header
SHA-256 catches accidents (truncation, bit flips), and the recomputed revision id
catches sources, manifest or data changed under an old id; but anyone who can
write the file can swap the marshalled code (which the id does not cover), or
change everything and record the new id, and recompute the header. Authorship
needs a **signature**: an ed25519 signature over::

    b"THAWSNAP-SIG-1\\n" + payload_sha256 (64 hex digits, ASCII) + b"\\n" + revision (ASCII)

Since the payload SHA-256 is checked against the payload bytes first, the
signature covers the whole payload, marshalled code included. The header fields
``signature`` (base64) and ``key_id`` (hex, a short hash of the signer's raw
public key) default to empty (msgspec schema evolution: older snapshots decode
as unsigned). The core holds no cryptography: ``decode_snapshot(verifier=...)``
takes a ``SignatureVerifier`` (``thaw.adapters.trust.Verifier`` is one, over
ed25519 keys through ``cryptography``). Without a verifier signatures are not
checked (``read_header`` shows them); with one, an unsigned snapshot is refused
(``SnapshotUnsigned``) and a signature that does not verify against a trusted
key (altered after signing, or another key) is refused (``SnapshotSignatureInvalid``),
before the payload is parsed.

Validation never executes anything and never raises anything but
``SnapshotError`` (or a subclass), whose message names the cause.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import struct
import sys
from typing import Annotated, Any, Protocol

import msgspec

from thaw._errors import RuntimeFault

__all__ = [
    "SnapshotError",
    "SnapshotResealed",
    "SnapshotUnsigned",
    "SnapshotSignatureInvalid",
    "SignatureVerifier",
    "Manifest",
    "CapabilityManifest",
    "ModuleBlob",
    "SnapshotPayload",
    "SnapshotHeader",
    "encode_snapshot",
    "decode_snapshot",
    "read_header",
    "check_signature",
    "signing_message",
    "with_signature",
    "revision_id",
    "MAGIC",
    "FORMAT_VERSION",
    "MAX_SNAPSHOT_BYTES",
    "SIGNATURE_DOMAIN",
]

MAGIC = b"THAWSNAP"
FORMAT_VERSION = 1
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
SIGNATURE_DOMAIN = b"THAWSNAP-SIG-1\n"
_PREFIX = struct.Struct(">8sHI")
_MAX_HEADER = 64 * 1024
_MAX_SIGNATURE_TEXT = 1024  # base64 characters; an ed25519 signature takes 88


class SnapshotError(RuntimeFault):
    """A snapshot file is unreadable, damaged, foreign or for another Python."""

    code = "snapshot_invalid"


class SnapshotResealed(SnapshotError):
    """The payload's content gives another revision id than the one the snapshot records."""

    code = "snapshot_resealed"


class SnapshotUnsigned(SnapshotError):
    """This host requires signed snapshots and the snapshot carries no signature."""

    code = "snapshot_unsigned"


class SnapshotSignatureInvalid(SnapshotError):
    """The snapshot's signature does not verify against any key this host trusts."""

    code = "snapshot_signature_invalid"


class SignatureVerifier(Protocol):
    """Checks a snapshot signature: True only if a trusted key made ``signature`` over
    ``message``. ``key_id`` is what the header claims (unauthenticated: a hint for
    choosing the key). Must not raise for any input."""

    def __call__(self, key_id: str, message: bytes, signature: bytes) -> bool: ...


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


_Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]*$", max_length=128)]
_Base64 = Annotated[
    str, msgspec.Meta(pattern="^[A-Za-z0-9+/]*={0,2}$", max_length=_MAX_SIGNATURE_TEXT)
]


class SnapshotHeader(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The JSON header. Unsigned snapshots omit the signature fields entirely."""

    payload_length: Annotated[int, msgspec.Meta(ge=0)]
    payload_sha256: _Hex
    revision: _Hex
    signature: _Base64 = ""  # base64 of the signature over signing_message(header)
    key_id: _Hex = ""  # the signer's key id, as the signer recorded it

    @property
    def signed(self) -> bool:
        return bool(self.signature)


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


def signing_message(header: SnapshotHeader) -> bytes:
    """The bytes a snapshot signature is made over (see the module docstring)."""
    return (
        SIGNATURE_DOMAIN + header.payload_sha256.encode("ascii") + b"\n" + header.revision.encode()
    )


def encode_snapshot(payload: SnapshotPayload) -> bytes:
    """An unsigned snapshot of ``payload`` (its recorded revision as given)."""
    body = msgspec.msgpack.encode(payload)
    header = SnapshotHeader(
        payload_length=len(body),
        payload_sha256=hashlib.sha256(body).hexdigest(),
        revision=payload.revision,
    )
    return _assemble(header, body)


def _assemble(header: SnapshotHeader, body: bytes | memoryview) -> bytes:
    encoded = msgspec.json.encode(header)
    return b"".join((_PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)), encoded, body))


def with_signature(
    blob: bytes, *, signature: bytes, key_id: str, source: str = "snapshot"
) -> bytes:
    """``blob`` with ``signature`` (by key ``key_id``) in its header; the payload bytes,
    and so the revision id, unchanged. ``blob`` is validated first (a damaged or
    re-sealed snapshot is not signed); a previous signature is replaced."""
    decode_snapshot(blob, source=source)
    header, body = _open(blob, source)
    signed = msgspec.structs.replace(
        header, signature=base64.b64encode(signature).decode("ascii"), key_id=key_id
    )
    try:  # run the header's own constraints on what is written
        msgspec.json.decode(msgspec.json.encode(signed), type=SnapshotHeader)
    except msgspec.ValidationError as exc:
        raise SnapshotError(f"cannot sign {source}: {exc}") from None
    return _assemble(signed, body)


def read_header(blob: bytes, *, source: str = "snapshot") -> SnapshotHeader:
    """The validated header of a snapshot whose payload matches its length and SHA-256.

    Checks nothing past that (the payload is not parsed, signatures not verified)."""
    return _open(blob, source)[0]


def _open(blob: bytes, source: str) -> tuple[SnapshotHeader, memoryview]:
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
        header = msgspec.json.decode(blob[_PREFIX.size : header_end], type=SnapshotHeader)
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
    return header, body


def decode_snapshot(
    blob: bytes, *, source: str = "snapshot", verifier: SignatureVerifier | None = None
) -> SnapshotPayload:
    """Validate and decode a snapshot; ``SnapshotError`` says what is wrong.

    ``verifier`` None: a signature is not required, nor checked. Otherwise the
    snapshot must carry a signature ``verifier`` accepts, checked before the
    payload is parsed."""
    header, body = _open(blob, source)
    if verifier is not None:
        check_signature(header, verifier, source=source)
    try:
        payload = msgspec.msgpack.decode(body, type=SnapshotPayload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{source} has a damaged payload: {exc}") from None
    if payload.revision != header.revision:
        raise SnapshotError(f"{source}: header and payload disagree on the revision id")
    # Another Python's snapshot is named as such first: its manifest is honest, only foreign.
    check_python(payload.manifest, source=source)
    content = revision_id(payload.manifest, payload.modules, payload.data)
    if content != payload.revision:
        raise SnapshotResealed(
            f"{source} was re-sealed: its content gives revision {content}, it claims "
            f"{_shown(payload.revision)}; rebuild it with `thaw snapshot build`"
        )
    return payload


def check_signature(
    header: SnapshotHeader, verifier: SignatureVerifier, *, source: str = "snapshot"
) -> None:
    """Refuse an unsigned header, or one whose signature ``verifier`` does not accept."""
    if not header.signature:
        raise SnapshotUnsigned(
            f"{source} is not signed, and signatures are required here: sign it with "
            "`thaw snapshot sign FILE --key KEYFILE` using a key this host trusts"
        )
    key = header.key_id or "(none named)"
    try:
        signature = base64.b64decode(header.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SnapshotSignatureInvalid(
            f"{source} has a damaged signature (key {key}): it is not valid base64"
        ) from None
    if not verifier(header.key_id, signing_message(header), signature):
        raise SnapshotSignatureInvalid(
            f"{source}: its signature (key {key}) does not verify against a trusted key: "
            "it was altered after signing, or signed by a key not trusted here"
        )


def _shown(text: str) -> str:
    return text if len(text) <= 64 else f"{text[:64]}..."


def check_python(manifest: Manifest, *, source: str = "snapshot") -> None:
    """Refuse code compiled for another interpreter: bytecode is version-specific."""
    tag = sys.implementation.cache_tag
    if manifest.magic != current_magic() or manifest.implementation != tag:
        here = f"{sys.version.split()[0]} ({tag}, magic {current_magic()})"
        raise SnapshotError(
            f"{source} was built for Python {manifest.python} ({manifest.implementation}, "
            f"magic {manifest.magic}); this is Python {here}. Rebuild it with this Python."
        )
