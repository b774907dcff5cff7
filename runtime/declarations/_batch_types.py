"""What fan-out and fan-in hand to user code: ``BatchRef`` from ``ctx.fan_out`` and
``Batch`` to the join (the machinery is ``thaw.declarations._batches``)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["Batch", "BatchRef"]

T = TypeVar("T")


class Batch(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """What a join capability receives: the children's results, by index.

    ``complete``: every child reported (succeeded or failed); ``timed_out``: the
    deadline closed the batch first, and ``missing`` lists the children that had
    not reported. ``failed`` maps a dead-lettered child to its error code.
    ``context`` is what ``ctx.fan_out(..., context=)`` was given (decoded JSON).
    """

    id: str
    size: int
    complete: bool
    timed_out: bool
    results: dict[int, T]
    failed: dict[int, str] = {}
    missing: list[int] = []
    context: Any = None


class BatchRef(msgspec.Struct, frozen=True):
    """What ``ctx.fan_out`` returns: the batch id and its size."""

    id: str
    size: int
    created: bool  # False: a redelivered parent found the batch already started
