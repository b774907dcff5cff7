"""Fan-out with partial results: run several calls at once, keep what arrives in time.

``fan_out({"profile": ctx.call("profile", ...), ...})`` runs the calls
concurrently (in one task group: structured) and returns a ``Gathered``: the
decoded JSON results of the calls that succeeded, the error codes of those that
failed, and the names of those that ran past their deadline (``late``).
``partial`` says at a glance whether anything is missing, so a BFF page can
render what it has and mark the rest instead of failing as a whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import anyio
import msgspec

from thaw._errors import DeadlineExceeded
from thaw._event import Ok, Outcome

__all__ = ["fan_out", "Gathered"]


class Gathered(msgspec.Struct, frozen=True):
    results: dict[str, Any]
    failed: dict[str, str] = {}  # name -> stable error code
    late: list[str] = []

    @property
    def partial(self) -> bool:
        return bool(self.failed or self.late)

    @property
    def missing(self) -> list[str]:
        return sorted([*self.failed, *self.late])


async def fan_out(calls: Mapping[str, Awaitable[Outcome]]) -> Gathered:
    """Await every call concurrently; each is bounded by its own deadline."""
    outcomes: dict[str, Outcome] = {}

    async def run(name: str, call: Awaitable[Outcome]) -> None:
        outcomes[name] = await call

    async with anyio.create_task_group() as group:
        for name, call in calls.items():
            group.start_soon(run, name, call)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    late: list[str] = []
    for name in calls:
        outcome = outcomes[name]
        if isinstance(outcome, Ok):
            results[name] = _decoded(outcome.data)
        elif outcome.code == DeadlineExceeded.code:
            late.append(name)
        else:
            failed[name] = outcome.code
    return Gathered(results, failed, late)


def _decoded(data: bytes) -> Any:
    if not data:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data  # a capability answering raw bytes
