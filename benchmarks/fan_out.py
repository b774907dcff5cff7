"""Fan-out / fan-in on JetStream: a batch of N children joined, against the same N
messages consumed without a batch (the hand-made loop of ``ctx.publish`` it replaces).

One host (``open_host``, as ``thaw serve`` runs it) on an embedded nats-server
(127.0.0.1). Per round and way: a parent capability publishes ``--children``
children; the time from publishing the parent's trigger to the end (the join ran,
or the last plain child finished) is measured; children/s = N / that time. The two
ways alternate for ``--rounds`` rounds; medians and the median per-round ratio
are printed (see BENCHMARKING.md). What the batch costs per child: its outcome
written with ``create`` and one compare-and-set on the batch record (more under
concurrency, when siblings race). ``--json FILE`` writes the raw rounds. Not a
test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import anyio

from thaw import App, Batch, Context, stream
from thaw.adapters.nats import JetStreamBackbone, open_embedded_server
from thaw.lowlevel import open_host


def batch_app(n: int, children: int, done: anyio.Event) -> App:
    app = App(f"fanb{n}")

    @app.join()
    async def joined(batch: Batch[int]) -> None:
        assert batch.complete and len(batch.results) == children
        done.set()

    @app.capability(stream(f"fanb{n}.start"))
    async def start(raw: bytes, ctx: Context) -> None:
        await ctx.fan_out(f"fanb{n}.parts", range(children), join=joined)

    @app.capability(stream(f"fanb{n}.parts"), concurrency=64)
    async def part(i: int) -> int:
        return i * 2

    return app


def plain_app(n: int, children: int, done: anyio.Event) -> App:
    app = App(f"fanp{n}")
    seen: set[int] = set()

    @app.capability(stream(f"fanp{n}.start"))
    async def start(raw: bytes, ctx: Context) -> None:
        for i in range(children):
            await ctx.publish(f"fanp{n}.parts", i)

    @app.capability(stream(f"fanp{n}.parts"), concurrency=64)
    async def part(i: int) -> int:
        seen.add(i)
        if len(seen) == children:
            done.set()
        return i * 2

    return app


async def one(backbone: JetStreamBackbone, make: object, n: int, children: int) -> float:
    done = anyio.Event()
    app = make(n, children, done)  # type: ignore[operator]
    async with open_host(app, backbone, fetch_timeout=0.05, drain_timeout=2.0):
        start = time.perf_counter()
        await backbone.publish(f"{app.name}.start", b"go")
        with anyio.fail_after(120):
            await done.wait()
        return children / (time.perf_counter() - start)


async def main(rounds: int, children: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"batch": [], "plain": []}
    async with open_embedded_server() as server:
        backbone = await JetStreamBackbone.connect(server.url)
        try:
            await one(backbone, batch_app, 0, 50)  # warm-up, discarded
            await one(backbone, plain_app, 0, 50)
            for n in range(1, rounds + 1):
                found["batch"].append(await one(backbone, batch_app, n, children))
                found["plain"].append(await one(backbone, plain_app, n, children))
        finally:
            await backbone.aclose()
    ratio = statistics.median(p / b for p, b in zip(found["plain"], found["batch"], strict=True))
    print(f"{children} children, {rounds} rounds")
    print(f"{'way':<44}{'children/s (median)':>20}{'min':>10}{'max':>10}")
    for way, label in (
        ("batch", "ctx.fan_out + @app.join"),
        ("plain", "ctx.publish loop, no join"),
    ):
        values = found[way]
        print(
            f"{label:<44}{statistics.median(values):>20.0f}{min(values):>10.0f}{max(values):>10.0f}"
        )
    print(f"plain / batch (median of per-round ratios): {ratio:.2f}x")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args()
    found = anyio.run(main, args.rounds, args.children)
    if args.json:
        machine = {"nproc": os.cpu_count(), "python": platform.python_version()}
        with open(args.json, "w") as file:
            json.dump(
                {"children": args.children, "rounds": found, "machine": machine}, file, indent=2
            )
