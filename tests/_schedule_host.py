"""A host with a scheduled capability in a process of its own, for the kill -9 test.

Run: ``python tests/_schedule_host.py URL PREFIX`` (repository root on
``PYTHONPATH``). It serves ``schedule_app(PREFIX, hang_first=True)`` with a
2-second AckWait, prints ``ready`` once its workers run, and drains and exits 0
on SIGTERM or SIGINT. Every run of the function leaves a mark in the KV bucket
``<PREFIX>marks`` (``run.<tick epoch>.<attempt>.<run id>``; ``done.<tick epoch>.<run id>``
when it finished), so the test sees from outside what ran, where and how often.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
import uuid

import anyio

from thaw import Access, App, Backoff, Context, RetryPolicy, Tick, schedule
from thaw.lowlevel import open_host

ACK_WAIT = 2.0  # seconds: a killed host's tick comes back soon
CRON = "0 0 1 1 *"  # the runner's own ticks stay out of the way: the test publishes


def marks_bucket(prefix: str) -> str:
    return f"{prefix}marks"


def tick_epoch(tick: Tick) -> int:
    return int(dt.datetime.fromisoformat(tick.scheduled_at).timestamp())


def schedule_app(prefix: str, *, hang_first: bool = False, fail: bool = False) -> App:
    app = App(f"{prefix}sched")

    @app.capability(
        schedule(CRON),
        retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0)),
        access=Access(buckets=(marks_bucket(prefix),)),
    )
    async def report(tick: Tick, ctx: Context) -> None:
        marks = await ctx.kv(marks_bucket(prefix))
        epoch, run = tick_epoch(tick), uuid.uuid4().hex
        await marks.create(f"run.{epoch}.{ctx.attempt}.{run}", ctx.event.id.encode())
        if hang_first and ctx.attempt == 1:
            await anyio.sleep_forever()  # until the test kills this process
        if fail:
            raise ConnectionError("the report server is down")
        await marks.create(f"done.{epoch}.{run}", b"")

    return app


async def serve(url: str, prefix: str) -> None:
    from thaw.adapters.nats import open_jetstream_backbone

    app = schedule_app(prefix, hang_first=True)
    async with open_jetstream_backbone(url) as backbone:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_host(app, backbone, ack_wait=ACK_WAIT, fetch_timeout=0.2):
                print("ready", flush=True)
                async for _ in signals:
                    break


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2])
    sys.exit(0)
