"""For tests of apps and adapters: in-memory parts and a one-call invoker.

``FakeClock`` moves only when told; ``MemoryBackbone`` has JetStream's
semantics on that clock; ``invoke`` runs one capability of an app in process.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from thaw._clock import FakeClock
from thaw._event import Event, Outcome
from thaw.backbone._contract import Backbone
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.declarations._app import App
from thaw.invocation._idempotency import MemoryIdempotencyStore
from thaw.invocation._invoker import Invoker

__all__ = ["FakeClock", "MemoryBackbone", "MemoryIdempotencyStore", "invoke", "make_event"]

_ids = itertools.count(1)
_encode = msgspec.json.Encoder().encode


def make_event(data: Any = b"", *, id: str | None = None, **fields: Any) -> Event:
    """An Event for tests; non-bytes ``data`` is JSON-encoded, ``id`` defaults to a counter."""
    payload = data if isinstance(data, bytes) else _encode(data)
    return Event(id=id or f"test-{next(_ids)}", data=payload, **fields)


async def invoke(
    app: App, capability: str, data: Any = b"", *, backbone: Backbone | None = None, **fields: Any
) -> Outcome:
    """Invoke one capability once, in process, and return its Outcome."""
    invoker = Invoker(app, backbone=backbone)
    return await invoker.invoke(capability, make_event(data, **fields))
