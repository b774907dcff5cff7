"""Dead letters: list, inspect, replay and purge what exhausted its attempts or was rejected.

Dead letters live in the ``THAW_DLQ`` stream (subject ``thaw.dlq.<app>.<capability>``)
with headers saying why (see ``thaw.decisions._delivery.dead_letter_headers``). A replay
re-publishes the original payload to the original subject with a fresh message
id, carrying the original event id in ``Thaw-Event-Id``, signed with the backbone's
event-id key (``thaw.host._identity``), so the idempotency layer still recognises
it: if the first run had in fact completed, the replay returns the stored result
instead of running the side effect again. Replays start a new attempt count (a
new message).

Dead letters of ``kv`` and ``objects`` triggers are not re-published to where they
came from: their subject is the bucket's own (``$KV.<bucket>.<key>``,
``$O.<bucket>.M.<name>``), so publishing there *writes* the bucket, putting the
old value back over a newer one, or an object's old metadata over chunks that
may be gone (a later get hung). Instead the change is shaped into the
capability's input (``KvChange``/``ObjectChange``, exactly as the worker shapes a
delivery, the original stream sequence as its revision) and published to
``thaw.replay.<app>.<capability>`` on the ``THAW_REPLAY`` stream, which a second
durable consumer of that capability (provisioned beside its change consumer)
runs with the same policy: the capability runs once more, the bucket is never
touched. The ``objects`` input names the object; the capability reads what the
bucket holds now.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from thaw._errors import ConfigError, MessageNotFound, StreamNotFound
from thaw._headers import (
    DEAD_LETTER_APP,
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_BODY_OMITTED,
    DEAD_LETTER_CAPABILITY,
    DEAD_LETTER_CODE,
    DEAD_LETTER_MESSAGE,
    DEAD_LETTER_ORIGINAL_SEQ,
    DEAD_LETTER_ORIGINAL_STREAM,
    DEAD_LETTER_ORIGINAL_SUBJECT,
    EVENT_ID_HEADER,
    MSG_ID_HEADER,
    REPLAY_OF_HEADER,
)
from thaw.backbone._contract import Backbone, PubAck
from thaw.decisions._delivery import DEAD_LETTER_STREAM
from thaw.declarations._changes import shaper_for
from thaw.declarations._triggers import Trigger, kv, objects
from thaw.host._identity import load_event_key, signed_event_headers
from thaw.host._provision import replay_subject

__all__ = [
    "DeadLetterRecord",
    "list_dead_letters",
    "show_dead_letter",
    "replay_dead_letter",
    "purge_dead_letters",
]


class DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    app: str
    capability: str
    code: str
    message: str
    attempts: int
    original_subject: str
    original_stream: str
    original_seq: int
    event_id: str
    data: bytes
    headers: dict[str, str]


def _record(seq: int, data: bytes, headers: dict[str, str]) -> DeadLetterRecord:
    def number(name: str) -> int:
        try:
            return int(headers.get(name, "0"))
        except ValueError:
            return 0

    return DeadLetterRecord(
        seq=seq,
        app=headers.get(DEAD_LETTER_APP, ""),
        capability=headers.get(DEAD_LETTER_CAPABILITY, ""),
        code=headers.get(DEAD_LETTER_CODE, ""),
        message=headers.get(DEAD_LETTER_MESSAGE, ""),
        attempts=number(DEAD_LETTER_ATTEMPTS),
        original_subject=headers.get(DEAD_LETTER_ORIGINAL_SUBJECT, ""),
        original_stream=headers.get(DEAD_LETTER_ORIGINAL_STREAM, ""),
        original_seq=number(DEAD_LETTER_ORIGINAL_SEQ),
        event_id=headers.get(EVENT_ID_HEADER, ""),
        data=data,
        headers=headers,
    )


async def list_dead_letters(
    backbone: Backbone,
    *,
    app: str | None = None,
    capability: str | None = None,
    limit: int = 100,
) -> list[DeadLetterRecord]:
    """Dead letters oldest first, optionally only one app's or capability's."""
    try:
        info = await backbone.stream_info(DEAD_LETTER_STREAM)
    except StreamNotFound:
        return []
    found: list[DeadLetterRecord] = []
    if not info.last_seq:  # nothing was ever stored (there is no message 0 to read)
        return found
    for seq in range(info.first_seq, info.last_seq + 1):
        if len(found) >= limit:
            break
        try:
            stored = await backbone.get_message(DEAD_LETTER_STREAM, seq)
        except MessageNotFound:
            continue
        record = _record(seq, stored.data, dict(stored.headers))
        if (app is None or record.app == app) and (
            capability is None or record.capability == capability
        ):
            found.append(record)
    return found


async def show_dead_letter(backbone: Backbone, seq: int) -> DeadLetterRecord:
    stored = await backbone.get_message(DEAD_LETTER_STREAM, seq)
    return _record(seq, stored.data, dict(stored.headers))


async def replay_dead_letter(backbone: Backbone, seq: int, *, remove: bool = True) -> PubAck:
    """Re-run dead letter ``seq`` (see the module docstring); remove it from the DLQ."""
    record = await show_dead_letter(backbone, seq)
    if not record.original_subject:
        raise MessageNotFound(f"dead letter {seq} does not say where it came from")
    subject, data = record.original_subject, record.data
    if DEAD_LETTER_BODY_OMITTED in record.headers:
        record = await _with_original(backbone, record)
        data = record.data
    trigger = _change_trigger(subject)
    if trigger is not None:  # a kv/objects change: to the capability, never to the bucket
        subject, data = _change_replay(record, trigger)
    headers = {
        key: value
        for key, value in record.headers.items()
        if not key.startswith("Thaw-") and key != MSG_ID_HEADER
    }
    event_id = record.event_id or f"{record.original_stream}.{record.original_seq}"
    # Signed, or the consuming host would take the id for a foreign publisher's.
    key = await load_event_key(backbone)
    headers |= signed_event_headers(key, event_id, subject, data)
    headers[REPLAY_OF_HEADER] = str(seq)
    ack = await backbone.publish(subject, data, headers=headers, msg_id=f"thaw-replay/{seq}")
    if remove:
        await backbone.delete_message(DEAD_LETTER_STREAM, seq)
    return ack


async def _with_original(backbone: Backbone, record: DeadLetterRecord) -> DeadLetterRecord:
    """A dead letter written without its body (too large): the body and headers again,
    from the original message, which its stream keeps until its age limit."""
    try:
        original = await backbone.get_message(record.original_stream, record.original_seq)
    except MessageNotFound:
        raise MessageNotFound(
            f"dead letter {record.seq} was written without its body, and the original "
            f"({record.original_stream} seq {record.original_seq}) is gone from its stream"
        ) from None
    if original.subject != record.original_subject:
        raise MessageNotFound(
            f"dead letter {record.seq}: {record.original_stream} seq {record.original_seq} "
            f"is on {original.subject!r}, not {record.original_subject!r}"
        )
    headers = {**original.headers, **record.headers}
    del headers[DEAD_LETTER_BODY_OMITTED]
    return msgspec.structs.replace(record, data=original.data, headers=headers)


def _change_trigger(subject: str) -> Trigger | None:
    """The trigger whose shaper reads a change from ``subject`` (None: not a bucket's).

    Any other ``$`` subject is refused: a dead letter is data anyone allowed to publish
    to ``thaw.dlq.>`` could forge, and a replay to ``$JS.API.STREAM.DELETE.X`` would
    be an API request made with the operator's rights.
    """
    if subject.startswith("$KV."):
        return kv(subject.split(".", 2)[1])  # validates the bucket name
    if subject.startswith("$O."):
        return objects(subject.split(".", 2)[1], deletes=True)
    if subject.startswith("$"):
        raise ConfigError(
            f"refusing to replay to the system subject {subject[:80]!r}: Thaw never "
            "dead-letters from one, so this dead letter was not written by Thaw"
        )
    return None


def _change_replay(record: DeadLetterRecord, trigger: Trigger) -> tuple[str, bytes]:
    """The replay subject and the capability's input for a kv/objects dead letter."""
    if not record.app or not record.capability:
        raise ConfigError(
            f"dead letter {record.seq} of {record.original_subject!r} does not name its app "
            "and capability, so it cannot be replayed to them; read it with thaw dlq show"
        )
    shape = shaper_for(trigger)
    assert shape is not None
    shaped = shape(_StoredChange(record))
    if shaped is None:  # cannot happen with deletes=True; never write the bucket anyway
        raise ConfigError(f"dead letter {record.seq} holds no change to replay")
    return replay_subject(record.app, record.capability), shaped


class _StoredChange:
    """A dead-lettered change as the ``Message`` a shaper reads (nothing to ack)."""

    def __init__(self, record: DeadLetterRecord) -> None:
        self._record = record

    @property
    def subject(self) -> str:
        return self._record.original_subject

    @property
    def data(self) -> bytes:
        return self._record.data

    @property
    def headers(self) -> Mapping[str, str]:
        return MappingProxyType(self._record.headers)

    @property
    def stream(self) -> str:
        return self._record.original_stream

    @property
    def seq(self) -> int:
        return self._record.original_seq  # the change's revision

    @property
    def num_delivered(self) -> int:
        return 1

    @property
    def pending(self) -> int:
        return 0

    @property
    def msg_id(self) -> str | None:
        return None

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        return None

    async def term(self, reason: str = "") -> None:
        return None

    async def in_progress(self) -> None:
        return None


async def purge_dead_letters(
    backbone: Backbone, *, app: str | None = None, capability: str | None = None
) -> int:
    """Delete dead letters (all, or one app's or capability's); return how many."""
    records = await list_dead_letters(backbone, app=app, capability=capability, limit=10**9)
    for record in records:
        await backbone.delete_message(DEAD_LETTER_STREAM, record.seq)
    return len(records)
