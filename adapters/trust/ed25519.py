"""Ed25519 keys for snapshot signatures, through ``cryptography``: key files, a verifier
for hosts, and signing a snapshot file in place.

Key files are PEM: the private key PKCS#8, unencrypted, written mode 0600 and never
overwritten; the public key SubjectPublicKeyInfo. A key's **id** is the first 16 hex
digits of the SHA-256 of its raw 32-byte public key; a signed snapshot names it in
its header, so a host trusting several keys knows which to try.

Invariants: reading a key file never reads more than ``MAX_KEY_FILE`` bytes, and
every failure is a ``KeyFileError`` naming the file and the cause, never the key's
bytes; signing rewrites the file atomically (a temporary file beside it, then
``os.replace``), with its payload bytes, and so its revision id, unchanged; a
``Verifier`` never raises for any signature bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from thaw._errors import ConfigError
from thaw.snapshots._format import (
    MAX_SNAPSHOT_BYTES,
    SnapshotError,
    SnapshotHeader,
    SnapshotSignatureInvalid,
    decode_snapshot,
    read_header,
    signing_message,
    with_signature,
)

__all__ = [
    "MAX_KEY_FILE",
    "KeyFileError",
    "KeyFiles",
    "SignResult",
    "Verified",
    "Verifier",
    "generate_key_files",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_snapshot_file",
    "sign_snapshot",
    "verify_snapshot",
]

MAX_KEY_FILE = 16 * 1024  # a PEM ed25519 key is about 120 bytes


class KeyFileError(ConfigError):
    """A signing or trusted key file is missing, unreadable, oversized or not an ed25519 key."""

    code = "key_file_invalid"


class KeyFiles(msgspec.Struct, frozen=True, kw_only=True):
    private_path: str
    public_path: str
    key_id: str


class SignResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    revision: str
    key_id: str
    size: int


class Verified(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    revision: str
    key_id: str
    app: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def generate_key_files(prefix: str | os.PathLike[str]) -> KeyFiles:
    """Write a new key pair to ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``.

    Refuses to overwrite either file; on a failure nothing is left half-written."""
    base = os.fspath(prefix)
    private_path, public_path = f"{base}.key", f"{base}.pub"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise KeyFileError(f"{path} exists; thaw never overwrites a key file")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, mode=0o600)
    try:
        _write_new(public_path, public_pem, mode=0o644)
    except KeyFileError:
        os.unlink(private_path)
        raise
    return KeyFiles(
        private_path=private_path, public_path=public_path, key_id=key_id(key.public_key())
    )


def _write_new(path: str, content: bytes, *, mode: int) -> None:
    # O_EXCL: never follow or replace what is there; the mode is set at creation,
    # so the private key is never readable by others, not even for an instant.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    os.chmod(path, mode)  # a umask may have taken bits off the public key's 0644


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise KeyFileError(f"{what} {name} is not a regular file")
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {name}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{what} {name} is larger than {MAX_KEY_FILE} bytes: not a key file")
    if not data.strip():
        raise KeyFileError(f"{what} {name} is empty")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The ed25519 private key in a PEM file (as ``generate_key_files`` writes it)."""
    name = os.fspath(path)
    data = _read_key_file(name, "signing key")
    if b"PRIVATE KEY" not in data:
        raise KeyFileError(
            f"signing key {name} holds no PEM private key (a public key? sign with PREFIX.key)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"signing key {name} is encrypted; thaw reads unencrypted keys (keep them 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"signing key {name} is not a readable PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"signing key {name} is not an ed25519 key; make one with `thaw snapshot keygen`"
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The ed25519 public key in a PEM file; a private key is refused (keep it off hosts)."""
    name = os.fspath(path)
    data = _read_key_file(name, "trusted key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"trusted key {name} holds a private key: give hosts the public key (PREFIX.pub), "
            "never the private one"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"trusted key {name} is not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"trusted key {name} is not an ed25519 key; make one with `thaw snapshot keygen`"
        )
    return key


class Verifier:
    """Accepts snapshot signatures made by one of the trusted ed25519 public keys.

    A ``thaw.snapshots._format.SignatureVerifier``: pass it as ``verifier=`` to
    ``decode_snapshot`` or ``load_revision``."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(key): key for key in keys}
        if not self._keys:
            raise KeyFileError("a verifier needs at least one trusted public key")

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> Verifier:
        return cls(load_public_key(path) for path in paths)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def trusts(self, key: str) -> bool:
        return key in self._keys

    def __call__(self, key_id: str, message: bytes, signature: bytes) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"<Verifier trusting {', '.join(self._keys)}>"


def read_snapshot_file(path: str | os.PathLike[str]) -> bytes:
    """A snapshot file's bytes, refusing one over ``MAX_SNAPSHOT_BYTES`` without reading it all."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            blob = handle.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {name!r}: {exc.strerror}") from None
    if len(blob) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"{name} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    return blob


def sign_snapshot(path: str | os.PathLike[str], private_key: Ed25519PrivateKey) -> SignResult:
    """Sign the snapshot file at ``path`` with ``private_key``, rewriting it atomically.

    The snapshot is validated first (a damaged or re-sealed one is not signed); an
    earlier signature is replaced. The payload, and so the revision id, is unchanged."""
    name = os.fspath(path)
    blob = read_snapshot_file(name)
    header = read_header(blob, source=name)
    signature = private_key.sign(signing_message(header))
    signer = key_id(private_key.public_key())
    signed = with_signature(blob, signature=signature, key_id=signer, source=name)
    payload = decode_snapshot(signed, source=name, verifier=Verifier([private_key.public_key()]))
    _replace_atomically(name, signed)
    return SignResult(path=name, revision=payload.revision, key_id=signer, size=len(signed))


def _replace_atomically(path: str, content: bytes) -> None:
    target = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        descriptor, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise SnapshotError(f"cannot rewrite {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise SnapshotError(f"cannot rewrite {path}: {exc.strerror}") from None


def verify_snapshot(path: str | os.PathLike[str], verifier: Verifier) -> Verified:
    """Check the snapshot file at ``path`` fully, its signature by ``verifier`` included.

    Like ``decode_snapshot(verifier=...)``, with a more precise message for a
    signature by a key the verifier does not hold."""
    name = os.fspath(path)
    blob = read_snapshot_file(name)
    header = read_header(blob, source=name)
    _refuse_untrusted_signer(header, verifier, name)
    payload = decode_snapshot(blob, source=name, verifier=verifier)
    return Verified(
        path=name, revision=payload.revision, key_id=header.key_id, app=payload.manifest.app
    )


def _refuse_untrusted_signer(header: SnapshotHeader, verifier: Verifier, name: str) -> None:
    if header.signature and not verifier.trusts(header.key_id):
        raise SnapshotSignatureInvalid(
            f"{name} is signed by key {header.key_id or '(none named)'}, which is not trusted "
            f"here (trusted: {', '.join(verifier.key_ids)})"
        )
