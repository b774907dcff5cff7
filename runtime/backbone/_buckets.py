"""KV buckets and object stores on JetStream streams: their stream names and subjects,
object-name rules, chunking and the object metadata record.

Both backbones (memory and JetStream) store buckets this way, so the names and
records here are the wire format NATS clients share.
"""

from __future__ import annotations

import base64
import hashlib

import msgspec

from thaw._errors import ConfigError
from thaw.backbone._contract import ObjectInfo

__all__ = [
    "MAX_OBJECT_NAME_BYTES",
    "OBJECT_CHUNK_SIZE",
    "kv_stream_name",
    "kv_subject_prefix",
    "object_stream_name",
    "object_stream_subjects",
    "object_meta_subject",
    "validate_object_name",
    "object_data",
    "object_digest",
    "ObjectMeta",
    "decode_object_meta",
]


MAX_OBJECT_NAME_BYTES = 1024


OBJECT_CHUNK_SIZE = 128 * 1024  # what NATS clients split object data into


def kv_stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


def object_stream_name(bucket: str) -> str:
    return f"OBJ_{bucket}"


def object_stream_subjects(bucket: str) -> tuple[str, str]:
    """The chunk and meta subjects of the bucket's stream."""
    return (f"$O.{bucket}.C.>", f"$O.{bucket}.M.>")


def _encode_name(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def object_meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{_encode_name(name)}"


def validate_object_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is a usable object name.

    Any text works (spaces, ``/``, non-ASCII: names travel base64url-encoded)
    except empty names, control characters, text that is not valid Unicode, and
    more than ``MAX_OBJECT_NAME_BYTES`` bytes of UTF-8 (names become subjects).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"invalid object name {name!r}: a name must be a non-empty string")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ConfigError(
            f"invalid object name {name!r}: it is not valid Unicode (lone surrogate)"
        ) from None
    if size > MAX_OBJECT_NAME_BYTES:
        raise ConfigError(
            f"invalid object name {name[:40]!r}...: it is {size} bytes of UTF-8; "
            f"the limit is {MAX_OBJECT_NAME_BYTES}"
        )
    bad = next((char for char in name if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0), None)
    if bad is not None:
        raise ConfigError(
            f"invalid object name {name!r}: it contains the control character {bad!r}"
        )


def object_data(name: str, data: object) -> bytes:
    """``data`` as bytes, or ``ConfigError`` when it is not bytes-like (text is not)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(
            f"object {name!r}: data must be bytes, not {type(data).__name__}; "
            "encode text or JSON first"
        )
    return bytes(data)


def object_digest(data: bytes) -> str:
    """The digest NATS clients record: ``SHA-256=<base64url>``."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


class ObjectMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The JSON info on a meta subject, as NATS clients write it (nulls tolerated)."""

    name: str
    bucket: str = ""
    nuid: str = ""
    size: int | None = None
    mtime: str | None = None
    chunks: int | None = None
    digest: str | None = None
    deleted: bool | None = None
    options: dict[str, int] | None = None

    def info(self, bucket: str) -> ObjectInfo:
        return ObjectInfo(
            bucket=self.bucket or bucket,
            name=self.name,
            size=self.size or 0,
            digest=self.digest or "",
            chunks=self.chunks or 0,
            modified=self.mtime or "",
            deleted=bool(self.deleted),
        )


_meta_decoder = msgspec.json.Decoder(ObjectMeta)


def decode_object_meta(data: bytes) -> ObjectMeta | None:
    try:
        return _meta_decoder.decode(data)
    except msgspec.DecodeError:
        return None
