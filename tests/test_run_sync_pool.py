"""ctx.run_sync on SyncPool (what thaw serve passes): real threads and a real forkserver
process pool; the deadline ends the await; unpicklable work is a clear ConfigError."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from thaw import App, ConfigError, Context, Event, Ok
from thaw.adapters.threads import SyncPool
from thaw.lowlevel import Invoker

pytestmark = pytest.mark.anyio


def square(x: int) -> int:
    return x * x


@pytest.fixture
def pool() -> Iterator[SyncPool]:
    sync = SyncPool(threads=2, processes=1, start_method="forkserver")
    yield sync
    sync.close()


async def test_a_thread_runs_the_function_off_the_loop(pool: SyncPool) -> None:
    app = App("cpu")
    loop_thread = threading.get_ident()

    @app.capability()
    async def where(ctx: Context) -> bool:
        return await ctx.run_sync(threading.get_ident) != loop_thread

    assert await Invoker(app, run_sync=pool).invoke("where", Event(id="e1", data=b"")) == Ok(
        b"true"
    )


async def test_a_process_runs_a_picklable_function(pool: SyncPool) -> None:
    app = App("cpu")

    @app.capability(timeout=60.0)
    async def sq(ctx: Context) -> int:
        return await ctx.run_sync(square, 12, process=True)

    assert await Invoker(app, run_sync=pool).invoke("sq", Event(id="e1", data=b"")) == Ok(b"144")


async def test_the_deadline_ends_the_await_while_the_thread_runs_on(pool: SyncPool) -> None:
    app = App("cpu")
    release = threading.Event()
    finished = threading.Event()

    def blocked() -> None:
        release.wait(30)
        finished.set()

    @app.capability(timeout=0.2)
    async def stuck(ctx: Context) -> None:
        await ctx.run_sync(blocked)

    outcome = await Invoker(app, run_sync=pool).invoke("stuck", Event(id="e1", data=b""))
    assert getattr(outcome, "code", None) == "deadline_exceeded"
    assert not finished.is_set()  # the thread still runs; its result will be dropped
    release.set()
    assert finished.wait(10)


async def test_unpicklable_work_for_a_process_is_a_config_error(pool: SyncPool) -> None:
    with pytest.raises(ConfigError, match="must pickle"):
        await pool(lambda: 1, (), process=True)


async def test_process_without_a_pool_says_how_to_get_one() -> None:
    sync = SyncPool(threads=1)
    with pytest.raises(ConfigError, match="--sync-processes"):
        await sync(square, (2,), process=True)


@pytest.mark.parametrize("options", [{"threads": 0}, {"processes": -1}, {"threads": True}])
def test_bad_pool_sizes_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="SyncPool"):
        SyncPool(**options)
