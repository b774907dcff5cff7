"""Dead letters: list, inspect, replay and purge what exhausted its attempts or was rejected.

Dead letters live in the ``THAW_DLQ`` stream (subject ``thaw.dlq.<app>.<capability>``)
with headers saying why (see ``_decisions.dead_letter_headers``). A replay
re-publishes the original payload to the original subject with a fresh message
id, carrying the original event id in ``Thaw-Event-Id`` so the idempotency layer
still recognises it: if the first run had in fact completed, the replay returns
the stored result instead of running the side effect again. Replays start a new
attempt count (a new message).
"""

from __future__ import annotations

import msgspec

from ._backbone import Backbone, PubAck
from ._decisions import DEAD_LETTER_STREAM, EVENT_ID_HEADER
from ._errors import MessageNotFound, StreamNotFound

__all__ = [
    "DeadLetterRecord",
    "list_dead_letters",
    "show_dead_letter",
    "replay_dead_letter",
    "purge_dead_letters",
]

_MSG_ID = "Nats-Msg-Id"


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
        app=headers.get("Thaw-App", ""),
        capability=headers.get("Thaw-Capability", ""),
        code=headers.get("Thaw-Error-Code", ""),
        message=headers.get("Thaw-Error-Message", ""),
        attempts=number("Thaw-Attempts"),
        original_subject=headers.get("Thaw-Original-Subject", ""),
        original_stream=headers.get("Thaw-Original-Stream", ""),
        original_seq=number("Thaw-Original-Seq"),
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
        if not key.startswith("Thaw-") and key != _MSG_ID
    }
    headers[EVENT_ID_HEADER] = record.event_id or f"{record.original_stream}.{record.original_seq}"
    headers["Thaw-Replay-Of"] = str(seq)
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
