"""Key changes and object puts as capability inputs (``kv`` and ``objects`` triggers).

A ``kv`` trigger is a durable consumer on the bucket's stream ``KV_<bucket>``
filtered to ``$KV.<bucket>.<key pattern>``; an ``objects`` trigger one on
``OBJ_<bucket>`` filtered to the meta subjects ``$O.<bucket>.M.>``. Both run on
the ordinary ``StreamWorker`` (retries, backoff, dead letters, idempotency), which
turns each raw delivery into the capability's input with a *shaper* made here
once per consumer: ``KvChange`` or ``ObjectChange``, JSON-encoded for the invoker.

Invariants: a shaper never raises; a delivery it cannot read is passed on as
is, so the invoker's contract check rejects it and it is dead-lettered with
the reason. A shaper returning None means "not for this capability" (an object
deletion when the trigger does not want deletions): the worker acks it.
The object-store layout (subjects, base64url names, JSON info) is the one every
NATS client uses, so objects written by ``nats object put`` trigger too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import msgspec

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._backbone import Message, ObjectInfo
    from ._triggers import Trigger

__all__ = [
    "KvChange",
    "ObjectChange",
    "Shaper",
    "KV_OPERATION_HEADER",
    "ROLLUP_HEADER",
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
    "shaper_for",
]

KV_OPERATION_HEADER = "KV-Operation"
ROLLUP_HEADER = "Nats-Rollup"
MAX_OBJECT_NAME_BYTES = 1024
OBJECT_CHUNK_SIZE = 128 * 1024  # what NATS clients split object data into

Shaper = Callable[["Message"], "bytes | None"]


class KvChange(msgspec.Struct, frozen=True, kw_only=True):
    """The input of a ``kv``-triggered capability: one change of one key.

    ``revision`` is the bucket-wide revision of the change; ``value`` is empty
    for ``DEL`` and ``PURGE``.
    """

    bucket: str
    key: str
    operation: Literal["PUT", "DEL", "PURGE"]
    revision: int
    value: bytes = b""


class ObjectChange(msgspec.Struct, frozen=True, kw_only=True):
    """The input of an ``objects``-triggered capability: one object was put (or deleted).

    Read the data with ``await (await ctx.objects(change.bucket)).get(change.name)``.
    ``revision`` orders changes within the bucket. ``deleted`` is only ever true
    for triggers declared with ``objects(bucket, deletes=True)``.
    """

    bucket: str
    name: str
    size: int
    digest: str
    revision: int
    modified: str = ""
    deleted: bool = False


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
        from ._backbone import ObjectInfo

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
_encode = msgspec.json.Encoder().encode


def decode_object_meta(data: bytes) -> ObjectMeta | None:
    try:
        return _meta_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def _kv_shaper(bucket: str) -> Shaper:
    prefix = kv_subject_prefix(bucket)
    skip = len(prefix)

    def shape(message: Message) -> bytes | None:
        subject = message.subject
        if not subject.startswith(prefix):
            return message.data  # not a key change: the contract check rejects it
        operation = _operation(message.headers)
        return _encode(
            KvChange(
                bucket=bucket,
                key=subject[skip:],
                operation=operation,
                revision=message.seq,
                value=message.data if operation == "PUT" else b"",
            )
        )

    return shape


def _operation(headers: Mapping[str, str]) -> Literal["PUT", "DEL", "PURGE"]:
    operation = headers.get(KV_OPERATION_HEADER)
    if operation == "DEL":
        return "DEL"
    if operation == "PURGE":
        return "PURGE"
    reason = headers.get("Nats-Marker-Reason")  # server-placed markers (nats-server 2.11+)
    if reason is not None:
        return "DEL" if reason == "Remove" else "PURGE"
    return "PUT"


def _objects_shaper(bucket: str, deletes: bool) -> Shaper:
    def shape(message: Message) -> bytes | None:
        meta = decode_object_meta(message.data)
        if meta is None:
            return message.data  # unreadable info: the contract check rejects it
        if meta.deleted and not deletes:
            return None
        info = meta.info(bucket)
        return _encode(
            ObjectChange(
                bucket=info.bucket,
                name=info.name,
                size=info.size,
                digest=info.digest,
                revision=message.seq,
                modified=info.modified,
                deleted=info.deleted,
            )
        )

    return shape


def shaper_for(trigger: Trigger | None) -> Shaper | None:
    """The shaper a consumer created for ``trigger`` needs (None: the message is the input)."""
    from ._triggers import KvTrigger, ObjectsTrigger

    if isinstance(trigger, KvTrigger):
        return _kv_shaper(trigger.bucket)
    if isinstance(trigger, ObjectsTrigger):
        return _objects_shaper(trigger.bucket, trigger.deletes)
    return None
