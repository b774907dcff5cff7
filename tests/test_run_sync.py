"""ctx.run_sync with the core's inline runner (what Pyodide does): the result, the
arguments, and a call that starts past its deadline is DeadlineExceeded."""

from __future__ import annotations

import pytest

from thaw import App, Context, Event, Ok, Reject, Retry
from thaw.lowlevel import Invoker
from thaw.testing import FakeClock

pytestmark = pytest.mark.anyio


def add(a: int, b: int) -> int:
    return a + b


def make_app(clock: FakeClock | None = None) -> App:
    app = App("cpu")

    @app.capability()
    async def total(ctx: Context) -> int:
        return await ctx.run_sync(add, 2, 3)

    @app.capability(timeout=5.0)
    async def late(ctx: Context) -> int:
        assert clock is not None
        clock.advance(6.0)  # the deadline passes before run_sync is asked
        return await ctx.run_sync(add, 1, 1)

    return app


async def test_run_sync_inline_returns_the_result() -> None:
    outcome = await Invoker(make_app()).invoke("total", Event(id="e1", data=b""))
    assert outcome == Ok(b"5")


async def test_run_sync_after_the_deadline_is_deadline_exceeded() -> None:
    clock = FakeClock()
    outcome = await Invoker(make_app(clock), clock=clock).invoke("late", Event(id="e1", data=b""))
    assert isinstance(outcome, Retry | Reject)
    assert outcome.code == "deadline_exceeded"
