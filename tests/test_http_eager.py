"""adapters/http/_eager.py: a coroutine started in a loop callback, a task only if it suspends.

Each test starts coroutines the way the connection does, from a plain loop
callback (``call_soon``), on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from thaw import App, Event, Ok
from thaw.adapters.http._eager import EagerTask, start
from thaw.lowlevel import Invoker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize(
        "anyio_backend",
        [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
        ids=["asyncio", "uvloop"],
    ),
]

WAIT = 5.0
T = TypeVar("T")
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def in_callback(call: Callable[[], T]) -> T:
    """Run ``call`` in a plain loop callback (no current task), as a protocol callback runs."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the test, re-raised there
            done.set_exception(exc)

    loop.call_soon(run)
    with anyio.fail_after(WAIT):
        return await done


def started(coro: Coroutine[Any, Any, None]) -> Callable[[], asyncio.Task[None] | None]:
    def call() -> asyncio.Task[None] | None:
        return start(coro, asyncio.get_running_loop(), contextvars.copy_context())

    return call


async def finish(task: asyncio.Task[None] | None) -> None:
    assert task is not None
    with anyio.fail_after(WAIT):
        await asyncio.wait([task])


async def test_a_coroutine_that_never_suspends_runs_at_once_without_a_task() -> None:
    seen: list[object] = []
    before = len(asyncio.all_tasks())

    async def quick() -> None:
        var.set("quick")
        seen.append(asyncio.current_task())
        seen.append(len(asyncio.all_tasks()))

    task = await in_callback(started(quick()))
    assert task is None
    assert isinstance(seen[0], EagerTask)  # current_task() answers while it runs
    assert seen[1] == before  # and no task was made
    assert var.get() == "unset"  # what it set stayed in its own context


async def test_a_coroutine_that_suspends_once_goes_on_in_the_same_task() -> None:
    seen: list[object] = []
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def once() -> None:
        var.set("once")
        before = asyncio.current_task()
        value = await gate
        seen.extend([value, before, asyncio.current_task(), var.get()])

    task = await in_callback(started(once()))
    assert isinstance(task, EagerTask)
    assert not seen
    gate.set_result(7)
    await finish(task)
    assert task.result() is None
    assert seen == [7, task, task, "once"]  # one task throughout; its context kept


async def test_a_coroutine_that_suspends_many_times() -> None:
    steps: list[int] = []
    loop = asyncio.get_running_loop()

    async def many() -> None:
        for n in range(50):
            if n % 2:
                await asyncio.sleep(0)  # a bare yield
            else:
                future: asyncio.Future[int] = loop.create_future()
                loop.call_soon(future.set_result, n)
                steps.append(await future)

    task = await in_callback(started(many()))
    await finish(task)
    assert task is not None and task.exception() is None
    assert steps == list(range(0, 50, 2))


async def test_raising_before_suspending_raises_from_start() -> None:
    async def broken() -> None:
        raise ValueError("before")

    with pytest.raises(ValueError, match="before"):
        await in_callback(started(broken()))


async def test_raising_after_suspending_fails_the_task() -> None:
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("after")

    task = await in_callback(started(broken()))
    await finish(task)
    assert task is not None
    with pytest.raises(ValueError, match="after"):
        task.result()


async def test_a_future_that_fails_raises_inside_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    caught: list[BaseException] = []

    async def waits() -> None:
        try:
            await gate
        except KeyError as exc:
            caught.append(exc)
        await asyncio.sleep(0)

    task = await in_callback(started(waits()))
    gate.set_exception(KeyError("gone"))
    await finish(task)
    assert task is not None and task.exception() is None
    assert [str(e) for e in caught] == ["'gone'"]


async def test_cancelled_while_suspended() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    events: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    task = await in_callback(started(waits()))
    assert task is not None
    await asyncio.sleep(0)  # let the task take its first step: it waits on the gate
    task.cancel()
    await finish(task)
    assert task.cancelled()
    assert gate.cancelled()  # cancelled as a plain task cancels what it waits on
    assert events == ["cancelled", "finally"]


async def test_cancelled_before_the_task_took_its_first_step() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    events: list[str] = []

    async def waits() -> None:
        try:
            await gate
        finally:
            events.append("finally")

    def start_and_cancel() -> asyncio.Task[None] | None:
        task = started(waits())()
        assert task is not None
        task.cancel()  # in the same callback: the task has not stepped yet
        return task

    task = await in_callback(start_and_cancel)
    await finish(task)
    assert task is not None and task.cancelled()
    assert gate.cancelled()
    assert events == ["finally"]  # the started coroutine was not left suspended


async def test_contextvars_are_per_start_and_kept_across_suspension() -> None:
    seen: list[str] = []

    async def sets(value: str) -> None:
        assert var.get() == "unset"  # a copy of the caller's context, not a neighbour's
        var.set(value)
        await asyncio.sleep(0)
        seen.append(var.get())

    def both() -> list[asyncio.Task[None] | None]:
        return [started(sets("a"))(), started(sets("b"))()]

    tasks = await in_callback(both)
    for task in tasks:
        await finish(task)
    assert sorted(seen) == ["a", "b"]
    assert var.get() == "unset"


async def test_asking_for_the_task_before_suspending_makes_it_real() -> None:
    names: list[str] = []

    async def asks() -> None:
        task = asyncio.current_task()
        assert task is not None
        names.append(task.get_name())  # made a real task here; the coroutine goes on
        async with asyncio.timeout(WAIT):  # noqa: ASYNC100 (reads cancelling(), never suspends)
            pass

    assert await in_callback(started(asks())) is None
    assert names and names[0].startswith("Task-")


async def test_a_task_kept_and_asked_after_returning_finishes_at_once() -> None:
    kept: list[asyncio.Task[Any] | None] = []

    async def keeps() -> None:
        kept.append(asyncio.current_task())

    assert await in_callback(started(keeps())) is None
    task = kept[0]
    assert task is not None
    assert not task.done()  # made a real task by being asked, after the coroutine returned
    await finish(task)
    assert task.result() is None


async def test_asyncio_timeout_across_a_suspension_fires_in_the_same_task() -> None:
    outcome: list[str] = []

    async def slow() -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timed out")

    task = await in_callback(started(slow()))
    await finish(task)
    assert outcome == ["timed out"]
    assert task is not None and not task.cancelled() and task.cancelling() == 0


async def test_anyio_cancel_scope_across_a_suspension() -> None:
    outcome: list[str] = []

    async def slow() -> None:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(WAIT)
        outcome.append("moved on" if scope.cancelled_caught else "slept")

    task = await in_callback(started(slow()))
    await finish(task)
    assert outcome == ["moved on"]
    assert task is not None and task.exception() is None


async def test_inside_a_running_task_it_falls_back_to_a_plain_task() -> None:
    ran: list[bool] = []

    async def quick() -> None:
        ran.append(True)

    task = started(quick())()  # called from this test's own task
    assert task is not None and not isinstance(task, EagerTask)
    assert not ran  # not run eagerly: it waits for its turn like any task
    await finish(task)
    assert ran == [True]


class Order(msgspec.Struct, frozen=True):
    order_id: str


async def test_an_invokers_deadline_cancels_an_eagerly_started_call() -> None:
    app = App("eager")

    @app.capability(timeout=0.05)
    async def stuck(order: Order) -> Order:
        await asyncio.Event().wait()
        return order

    @app.capability(timeout=1.0)
    async def quick(order: Order) -> Order:
        return order

    invoker = Invoker(app)
    outcomes: list[object] = []
    event = Event(id="e1", data=b'{"order_id":"A-1"}')

    async def call(name: str) -> None:
        outcomes.append(await invoker.capability(name)(event))

    assert await in_callback(started(call("quick"))) is None
    assert outcomes == [Ok(b'{"order_id":"A-1"}')]
    task = await in_callback(started(call("stuck")))
    await finish(task)
    assert task is not None and task.exception() is None and task.cancelling() == 0
    assert getattr(outcomes[1], "code", None) == "deadline_exceeded"
