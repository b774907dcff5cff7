"""KV get_many on JetStream: one batch direct get (multi_last) against pipelined direct gets.

Reads 100 keys of 100 bytes from a bucket on an embedded nats-server (127.0.0.1),
alternating the two ways for ``--rounds`` rounds of ``--calls`` calls each, and
prints the medians and the median of the per-round ratios (see BENCHMARKING.md).
``--json FILE`` writes the raw per-round numbers. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time

from thaw.adapters.nats import JetStreamBackbone, open_embedded_server
from thaw.adapters.nats._kv import JetStreamKeyValue
from thaw.lowlevel import KvConfig

KEYS = [f"ledger.p{index}" for index in range(100)]


async def _pipelined(bucket: JetStreamKeyValue) -> int:
    entries = await asyncio.gather(*(bucket._latest(key) for key in KEYS))
    return sum(entry is not None for entry in entries)


async def _batch(bucket: JetStreamKeyValue) -> int:
    return len(await bucket.get_many(KEYS))


async def _median_ms(way: object, bucket: JetStreamKeyValue, calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        assert await way(bucket) == len(KEYS)  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


async def main(rounds: int, calls: int) -> tuple[list[float], list[float]]:
    async with open_embedded_server() as server:
        backbone = await JetStreamBackbone.connect(server.url)
        try:
            bucket = await backbone.add_kv(KvConfig(bucket="bench_get_many"))
            assert isinstance(bucket, JetStreamKeyValue)
            for key in KEYS:
                await bucket.put(key, b"x" * 100)
            await _median_ms(_batch, bucket, calls)  # warm-up round, discarded
            await _median_ms(_pipelined, bucket, calls)
            batch, pipelined = [], []
            deadline = time.monotonic() + 120
            for _ in range(rounds):
                batch.append(await _median_ms(_batch, bucket, calls))
                pipelined.append(await _median_ms(_pipelined, bucket, calls))
                if time.monotonic() > deadline:
                    break
        finally:
            await backbone.aclose()
    ratio = statistics.median(p / b for p, b in zip(pipelined, batch, strict=True))
    print(f"{'what':<34}{'median ms':>10}")
    print(f"{'get_many, one batch direct get':<34}{statistics.median(batch):>10.3f}")
    print(f"{'100 direct gets, pipelined':<34}{statistics.median(pipelined):>10.3f}")
    print(f"pipelined / batch (median of per-round ratios): {ratio:.2f}x")
    return batch, pipelined


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    batch, pipelined = asyncio.run(main(args.rounds, args.calls))
    if args.json:
        machine = {"nproc": os.cpu_count(), "python": platform.python_version()}
        with open(args.json, "w") as file:
            json.dump({"machine": machine, "batch_ms": batch, "pipelined_ms": pipelined}, file)
