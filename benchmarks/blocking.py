"""Latency of an unrelated HTTP request while a CPU-bound capability runs, with the work
on the event loop (inline) and through ``ctx.run_sync`` (a SyncPool thread).

A child process serves two routes on 127.0.0.1 (pinned to core 0 when there are two):
``POST /work`` runs ``hashlib.pbkdf2_hmac`` (about 30 ms, it releases the GIL, as
Pillow's resize does) either inline or via ``ctx.run_sync``, and ``GET /ping``
answers at once. The parent (core 1) keeps one ``/work`` request in flight from a
thread and times ``/ping`` round trips. Modes alternate per round (BENCHMARKING.md);
the figure is the median over rounds of the per-round ratio of ping medians.

    .venv/bin/python benchmarks/blocking.py --json benchmarks/results/blocking.json
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import socket
import threading
import time
from typing import Any

import anyio
from _common import machine, median, summarize, table, write_json

from thaw import App, Context, http
from thaw.adapters.http import open_http_server
from thaw.adapters.threads import SyncPool
from thaw.host._host import open_host
from thaw.testing import MemoryBackbone

ITERATIONS = 60_000


def work() -> int:
    return len(hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", ITERATIONS))


def serve(mode: str, ready: Any, stop: Any) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    app = App("blocking")

    @app.capability(http("POST", "/work"), timeout=30)
    async def heavy(ctx: Context) -> int:
        return work() if mode == "inline" else await ctx.run_sync(work)

    @app.capability(http("GET", "/ping"))
    async def ping() -> int:
        return 1

    async def main() -> None:
        pool = SyncPool(threads=2)
        try:
            async with (
                open_host(app, MemoryBackbone(), run_sync=pool) as host,
                open_http_server(host) as server,
            ):
                ready.send(server.port)
                while not stop.is_set():  # noqa: ASYNC110  (a multiprocessing Event)
                    await anyio.sleep(0.05)
        finally:
            pool.close()

    anyio.run(main, backend="asyncio")


def round_trip(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = (
        int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if b"content-length" in head.lower()
        else 0
    )
    while len(body) < length:
        body += sock.recv(65536)


def measure(mode: str, pings: int, seconds: float) -> list[float]:
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    stop = context.Event()
    child = context.Process(target=serve, args=(mode, there, stop))
    child.start()
    try:
        if not here.poll(60):
            raise RuntimeError("server did not start")
        port = here.recv()
        done = threading.Event()

        def load() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                while not done.is_set():
                    round_trip(sock, b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        samples: list[float] = []
        deadline = time.monotonic() + seconds
        with socket.create_connection(("127.0.0.1", port)) as sock:
            ping = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
            for _ in range(20):  # warm up
                round_trip(sock, ping)
            while len(samples) < pings and time.monotonic() < deadline:
                start = time.perf_counter_ns()
                round_trip(sock, ping)
                samples.append((time.perf_counter_ns() - start) / 1000)
                time.sleep(0.002)
        done.set()
        loader.join(10)
        return samples
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()  # our own child, by its handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0, help="per mode and round")
    parser.add_argument("--json")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        one = {mode: measure(mode, args.pings, args.seconds) for mode in ("inline", "run_sync")}
        rounds.append({mode: summarize(samples) for mode, samples in one.items()})
    ratio = median([r["inline"]["median"] / r["run_sync"]["median"] for r in rounds])
    rows = []
    for mode in ("inline", "run_sync"):
        rows.append(
            [
                f"/ping while /work runs {mode}",
                median([r[mode]["median"] for r in rounds]),
                median([r[mode]["p99"] for r in rounds]),
                ratio if mode == "inline" else 1.0,
            ]
        )
    print(table(["what", "median us", "p99 us", "x run_sync"], rows))
    write_json(
        args.json,
        {
            "benchmark": "blocking",
            "machine": machine(),
            "iterations": ITERATIONS,
            "rounds": rounds,
            "ratio_inline_over_run_sync": ratio,
        },
    )


if __name__ == "__main__":
    main()
