"""Warm invocation overhead of the Thaw invoker, against a bare call and naive designs.

Every variant does the same work on the same 40-byte JSON payload, in the same
event loop (uvloop when installed), in alternating rounds (A B C ... A B C ...).
Each call is timed on its own with perf_counter_ns; the first round is warm-up
and is discarded. Overhead = median(variant) - median(bare call) per round; the
reported figure is the median over rounds, and ratios are medians of per-round
ratios.

    python benchmarks/invoke.py [--calls 100000] [--rounds 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, median, summarize, table, write_json
from thaw import App, Event, Idempotency
from thaw.lowlevel import Invoker

PAYLOAD = b'{"order_id":"A-1042","amount":1999,"qty":3}'
TIMEOUT = 5.0


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int
    qty: int


class Total(msgspec.Struct, frozen=True):
    order_id: str
    total: int


async def handler(order: Order) -> Total:
    return Total(order.order_id, order.amount * order.qty)


async def suspending_handler(order: Order) -> Total:
    await asyncio.sleep(0)
    return Total(order.order_id, order.amount * order.qty)


def build_app() -> App:
    app = App("bench")
    app.capability(timeout=TIMEOUT)(handler)
    app.capability(name="idempotent", timeout=TIMEOUT, idempotency=Idempotency())(handler)
    app.capability(name="suspending", timeout=TIMEOUT)(suspending_handler)
    return app


Variant = Callable[[int], Awaitable[list[int]]]


def variants() -> dict[str, tuple[str, Variant]]:
    decode = msgspec.json.Decoder(Order).decode
    encode = msgspec.json.Encoder().encode
    invoker = Invoker(build_app())
    plain = invoker.capability("handler")
    idempotent = invoker.capability("idempotent")
    suspending = invoker.capability("suspending")
    event = Event(id="e-1", data=PAYLOAD)
    order = decode(PAYLOAD)
    clock = time.perf_counter_ns

    async def bare(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            await handler(order)
            out.append(clock() - t0)
        return out

    async def decode_call_encode(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            encode(await handler(decode(PAYLOAD)))
            out.append(clock() - t0)
        return out

    async def naive_fail_after(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            with anyio.fail_after(TIMEOUT):
                encode(await handler(decode(PAYLOAD)))
            out.append(clock() - t0)
        return out

    async def asyncio_timeout(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            async with asyncio.timeout(TIMEOUT):
                encode(await handler(decode(PAYLOAD)))
            out.append(clock() - t0)
        return out

    async def cancel_scope(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            with anyio.CancelScope(deadline=anyio.current_time() + TIMEOUT):
                encode(await handler(decode(PAYLOAD)))
            out.append(clock() - t0)
        return out

    async def thaw(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            await plain(event)
            out.append(clock() - t0)
        return out

    ids = iter(range(10**12))

    async def thaw_idempotent(n: int) -> list[int]:
        events = [Event(id=f"k-{next(ids)}", data=PAYLOAD) for _ in range(n)]
        out = []
        for each in events:
            t0 = clock()
            await idempotent(each)
            out.append(clock() - t0)
        return out

    async def bare_suspending(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            await suspending_handler(order)
            out.append(clock() - t0)
        return out

    async def naive_suspending(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            with anyio.fail_after(TIMEOUT):
                encode(await suspending_handler(decode(PAYLOAD)))
            out.append(clock() - t0)
        return out

    async def thaw_suspending(n: int) -> list[int]:
        out = []
        for _ in range(n):
            t0 = clock()
            await suspending(event)
            out.append(clock() - t0)
        return out

    return {
        "bare": ("bare `await fn(order)`", bare),
        "dce": ("decode + call + encode, no deadline", decode_call_encode),
        "naive": ("naive: anyio.fail_after per call", naive_fail_after),
        "asyncio_timeout": ("asyncio.timeout per call", asyncio_timeout),
        "cancel_scope": ("anyio.CancelScope per call", cancel_scope),
        "thaw": ("thaw invoker, deadline enforced", thaw),
        "thaw_idem": ("thaw invoker + idempotency (memory)", thaw_idempotent),
        "bare_susp": ("bare, fn suspends once", bare_suspending),
        "naive_susp": ("naive fail_after, fn suspends once", naive_suspending),
        "thaw_susp": ("thaw invoker, fn suspends once", thaw_suspending),
    }


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    table_of = variants()
    raw: dict[str, list[dict[str, float]]] = {key: [] for key in table_of}
    for round_number in range(rounds + 1):
        for key, (_, run) in table_of.items():
            n = calls if not key.endswith("susp") else max(calls // 5, 1000)
            gc.collect()
            samples = await run(n)
            if round_number == 0:
                continue  # warm-up round
            raw[key].append(summarize(samples))
    return raw


def report(raw: dict[str, list[dict[str, float]]], labels: dict[str, str]) -> dict[str, Any]:
    rounds = len(raw["bare"])
    results: dict[str, Any] = {}
    for key, per_round in raw.items():
        base_key = "bare_susp" if key.endswith("susp") else "bare"
        overheads = [r["median"] - raw[base_key][i]["median"] for i, r in enumerate(per_round)]
        results[key] = {
            "label": labels[key],
            "median_ns": median([r["median"] for r in per_round]),
            "p99_ns": median([r["p99"] for r in per_round]),
            "max_ns": max(r["max"] for r in per_round),
            "overhead_ns": median(overheads),
            "per_round": per_round,
        }

    def ratio(a: str, b: str) -> float:
        values = []
        for i in range(rounds):
            base = "bare_susp" if a.endswith("susp") else "bare"
            num = raw[a][i]["median"] - raw[base][i]["median"]
            den = raw[b][i]["median"] - raw[base][i]["median"]
            if den > 0:
                values.append(num / den)
        return median(values)

    for key in results:
        if key.endswith("susp"):
            results[key]["naive_over_this"] = (
                ratio("naive_susp", key) if key != "bare_susp" else None
            )
        elif key != "bare":
            results[key]["naive_over_this"] = ratio("naive", key)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (after warm-up)")
    parser.add_argument("--json", metavar="FILE", help="write results as JSON")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.calls < 1000 or args.rounds < 1:
        parser.error("--calls must be >= 1000 and --rounds >= 1")
    use_uvloop = args.loop == "uvloop"
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
    labels = {key: label for key, (label, _) in variants().items()}
    raw = anyio.run(
        measure,
        args.calls,
        args.rounds,
        backend="asyncio",
        backend_options={"use_uvloop": use_uvloop},
    )
    results = report(raw, labels)
    rows = []
    for _key, r in results.items():
        naive = r.get("naive_over_this")
        rows.append(
            [
                r["label"],
                r["median_ns"],
                r["p99_ns"],
                r["overhead_ns"],
                f"{naive:.1f}x" if isinstance(naive, float) else "-",
            ]
        )
    info = machine()
    print(
        f"invoke benchmark: {args.calls} calls x {args.rounds} rounds (+1 warm-up), "
        f"loop={'uvloop' if use_uvloop else 'asyncio'}, python {info['python']}, "
        f"{info['nproc']} cpus, {info['date']}"
    )
    print(table(["variant", "median ns", "p99 ns", "overhead ns", "naive/this"], rows))
    thaw = results["thaw"]
    print(
        f"\nthaw overhead over a bare call: {thaw['overhead_ns'] / 1000:.2f} us "
        f"(target <= 2.00 us); naive fail_after overhead is "
        f"{thaw['naive_over_this']:.1f}x thaw's (target >= 4x)"
    )
    write_json(
        args.json,
        {
            "benchmark": "invoke",
            "machine": info,
            "loop": "uvloop" if use_uvloop else "asyncio",
            "calls": args.calls,
            "rounds": args.rounds,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
