"""Which id an event gets: the identity idempotency and status look-ups key on.

A stream delivery's id comes from Thaw's own ``Thaw-Event-Id`` header when set,
else the publisher's ``Nats-Msg-Id``, else ``<stream>.<seq>``.
"""

from __future__ import annotations

from thaw._headers import EVENT_ID_HEADER
from thaw.backbone._contract import Message

__all__ = ["stream_event_id"]


def stream_event_id(message: Message) -> str:
    """The event id of one stream delivery."""
    return (
        message.headers.get(EVENT_ID_HEADER) or message.msg_id or f"{message.stream}.{message.seq}"
    )
