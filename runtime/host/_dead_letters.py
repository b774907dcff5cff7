"""Dead letters: list, inspect, replay and purge what exhausted its attempts or was rejected.

Dead letters live in the ``THAW_DLQ`` stream (subject ``thaw.dlq.<app>.<capability>``)
with headers saying why (see ``thaw.decisions._delivery.dead_letter_headers``). A replay
re-publishes the original payload to the original subject with a fresh message
id, carrying the original event id in ``Thaw-Event-Id``, signed with the backbone's
event-id key (``thaw.host._identity``), so the idempotency layer still recognises
it: if the first run had in fact completed, the replay returns the stored result
instead of running the side effect again. Replays start a new attempt count (a
new message).
"""

from __future__ import annotations

import msgspec

from thaw._errors import MessageNotFound, StreamNotFound
from thaw._headers import (
    DEAD_LETTER_APP,
    DEAD_LETTER_ATTEMPTS,
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
from thaw.host._identity import load_event_key, signed_event_headers

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
    """Re-publish dead letter ``seq`` to its original subject; remove it from the DLQ."""
    record = await show_dead_letter(backbone, seq)
    if not record.original_subject:
        raise MessageNotFound(f"dead letter {seq} does not say where it came from")
    headers = {
        key: value
        for key, value in record.headers.items()
        if not key.startswith("Thaw-") and key != MSG_ID_HEADER
    }
    event_id = record.event_id or f"{record.original_stream}.{record.original_seq}"
    # Signed, or the consuming host would take the id for a foreign publisher's.
    key = await load_event_key(backbone)
    headers |= signed_event_headers(key, event_id, record.original_subject, record.data)
    headers[REPLAY_OF_HEADER] = str(seq)
    ack = await backbone.publish(
        record.original_subject, record.data, headers=headers, msg_id=f"thaw-replay/{seq}"
    )
    if remove:
        await backbone.delete_message(DEAD_LETTER_STREAM, seq)
    return ack


async def purge_dead_letters(
    backbone: Backbone, *, app: str | None = None, capability: str | None = None
) -> int:
    """Delete dead letters (all, or one app's or capability's); return how many."""
    records = await list_dead_letters(backbone, app=app, capability=capability, limit=10**9)
    for record in records:
        await backbone.delete_message(DEAD_LETTER_STREAM, record.seq)
    return len(records)
