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

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import msgspec

from thaw._headers import KV_OPERATION_HEADER
from thaw.backbone._buckets import decode_object_meta, kv_subject_prefix

if TYPE_CHECKING:
    from thaw.backbone._contract import Message
    from thaw.declarations._triggers import Trigger

__all__ = [
    "KvChange",
    "ObjectChange",
    "Shaper",
    "shaper_for",
]


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


_encode = msgspec.json.Encoder().encode


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
    from thaw.declarations._triggers import KvTrigger, ObjectsTrigger

    if isinstance(trigger, KvTrigger):
        return _kv_shaper(trigger.bucket)
    if isinstance(trigger, ObjectsTrigger):
        return _objects_shaper(trigger.bucket, trigger.deletes)
    return None
