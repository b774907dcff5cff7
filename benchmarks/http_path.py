"""The HTTP request path in one process: bytes in, bytes out, nanoseconds per request.

No sockets and no load generator: a fake transport stands in for the socket, so
what is timed is the server's own work per request (``HttpConnection``: parse,
dispatch, ``HttpService.handle``, the invoker, encode, write), the number the
socket benchmark (``http_bench.py``) shows as "cpu us/req" without the kernel,
the load generator and the machine's noise. Same routes and bytes as
``http_bench.py`` (what wrk sends): ``GET /ok`` and ``POST /order`` with a 44-byte
JSON contract, on uvloop.

Each request is fed from its own loop callback, as a socket read would be: the
fake transport's ``write`` schedules the next request with ``call_soon``. So a
variant that answers from a task pays for the task (its creation, its step in
the ready queue, its completion), and one that answers in the read callback
does not, exactly as on a socket.

Variants, each in its own child Python so each imports its own ``thaw``:

- ``head``: the last commit (``git archive HEAD adapters runtime``);
- ``mine``: the last commit with this tree's ``adapters/http/protocol.py``,
  ``_wire.py`` and ``_eager.py`` laid over it: the change to the request path
  alone, whatever else the working tree holds;
- ``tree``: this working tree as it is (other work in progress included).

Rounds alternate (every variant once per round); a child warms up, then times
``--requests`` requests per route in one go with ``perf_counter_ns``.
Reported: the median over rounds of each variant's ns per request, and the
median of per-round ratios against ``head``.

    python benchmarks/http_path.py [--requests 50000] [--rounds 5] [--variants head,mine]
    python benchmarks/http_path.py --profile [--route get]   # cProfile of this tree
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, median, table, write_json  # noqa: E402

# The files of the request path this benchmark's ``mine`` variant takes from the tree.
MINE = ("adapters/http/protocol.py", "adapters/http/_wire.py", "adapters/http/_eager.py")

CHILD = r"""
import asyncio, gc, json, sys, time
import msgspec
import uvloop
import thaw
from thaw import App, http
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.metrics import ServerCounters
from thaw.adapters.http.protocol import HttpConnection
from thaw.adapters.http.service import HttpService
from thaw.adapters.http.state import ServerState
from thaw.lowlevel import Invoker

mode, requests = sys.argv[1], int(sys.argv[2])
routes = sys.argv[3].split(",")

class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int
    qty: int

class Total(msgspec.Struct, frozen=True):
    order_id: str
    total: int

app = App("bench")

@app.capability(http("GET", "/ok"))
async def ok() -> dict[str, bool]:
    return {"ok": True}

@app.capability(http("POST", "/order"))
async def order(request: Order) -> Total:
    return Total(request.order_id, request.amount * request.qty)

ORDER = b'{"order_id":"A-1042","amount":1999,"qty":3}'
WIRE = {  # what wrk sends
    "get": b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    "post": b"POST /order HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: %d\r\n"
            b"Content-Type: application/json\r\n\r\n%s" % (len(ORDER), ORDER),
}
EXPECT = {"get": b'{"ok":true}', "post": b'{"order_id":"A-1042","total":5997}'}


class Transport(asyncio.Transport):
    def __init__(self, on_write):
        super().__init__()
        self.on_write = on_write
        self.last = b""
        self.closed = False

    def write(self, data):
        self.last = data
        self.on_write()

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self): pass
    def resume_reading(self): pass
    def is_closing(self): return self.closed
    def close(self): self.closed = True
    def abort(self): self.closed = True
    def can_write_eof(self): return True
    def write_eof(self): pass


async def drive(state, route, count):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    wire = WIRE[route]
    left = count
    connection = HttpConnection(state)

    def feed():
        connection.data_received(wire)

    def on_write():
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(feed)
        elif not done.done():
            done.set_result(None)

    transport = Transport(on_write)
    connection.connection_made(transport)
    start = time.perf_counter_ns()
    loop.call_soon(feed)
    await done
    elapsed = time.perf_counter_ns() - start
    head, _, body = bytes(transport.last).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or body != EXPECT[route]:
        raise SystemExit(f"unexpected answer on {route}: {transport.last!r}")
    connection.connection_lost(None)
    return elapsed / count


async def main():
    config = HttpConfig()
    service = HttpService(Invoker(app), config=config)
    state = ServerState(service, config, asyncio.get_running_loop(), counters=ServerCounters())
    service.state = state
    if mode == "profile":
        import cProfile, pstats
        for route in routes:
            await drive(state, route, 5000)
        profiler = cProfile.Profile()
        profiler.enable()
        for route in routes:
            await drive(state, route, requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return
    result = {"thaw": thaw.__file__}
    for route in routes:
        await drive(state, route, min(requests, 10000))  # warm-up
        gc.collect()
        result[route] = await drive(state, route, requests)
    print(json.dumps(result))

uvloop.run(main())
"""


def head_tree(into: Path) -> Path:
    """The last commit's runtime/ and adapters/ as an importable ``thaw`` under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "runtime", "adapters"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "thaw"
    (into / "runtime").rename(package)
    (into / "adapters").rename(package / "adapters")
    return into


def mine_tree(head: Path, into: Path) -> Path:
    """``head`` with this tree's request-path files (MINE) laid over it."""
    shutil.copytree(head / "thaw", into / "thaw")
    for name in MINE:
        source = ROOT / name
        if source.exists():  # adapters/... lives at thaw/adapters/... there
            shutil.copyfile(source, into / "thaw" / name)
    return into


def run_child(
    mode: str, requests: int, routes: str, path: Path | None, deadline: float
) -> dict[str, float]:
    env = dict(os.environ)
    if path is not None:  # first on sys.path: ahead of the editable install's finder
        env["PYTHONPATH"] = str(path)
    timeout = max(60.0, deadline - time.monotonic())
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(requests), routes],
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{mode} child failed: {errors.read().decode()[-3000:]}")
    if mode == "profile":
        print(done.stdout.decode())
        return {}
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="head,mine")
    parser.add_argument("--routes", default="get,post")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--profile", action="store_true", help="cProfile this tree instead")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    routes = args.routes.split(",")
    if not routes or any(route not in ("get", "post") for route in routes):
        parser.error("--routes takes get, post or get,post")
    if args.profile:
        run_child("profile", args.requests, args.routes, None, time.monotonic() + 300)
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in ("head", "mine", "tree")]
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from head, mine, tree")
    deadline = time.monotonic() + args.max_seconds
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        head = head_tree(Path(tmp) / "head")
        paths = {"head": head, "mine": mine_tree(head, Path(tmp) / "mine"), "tree": None}
        for number in range(args.rounds):
            if time.monotonic() > deadline:
                break
            results = {}
            for variant in variants:
                results[variant] = run_child(
                    "time", args.requests, args.routes, paths[variant], deadline
                )
            rounds.append(results)
            line = "  ".join(f"{v} {r}={results[v][r]:,.0f}" for v in variants for r in routes)
            print(f"round {number + 1}/{args.rounds} ns/request: {line}", flush=True)
    rows = []
    for route in routes:
        for variant in variants:
            values = [r[variant][route] for r in rounds]
            ratios = [r[variant][route] / r["head"][route] for r in rounds if "head" in r]
            rows.append(
                [
                    {"get": "GET /ok", "post": "POST /order"}[route],
                    variant,
                    f"{median(values):,.0f}",
                    f"{min(values):,.0f}",
                    f"{median(ratios):.3f}" if ratios else "-",
                ]
            )
    print(f"\n{args.requests} requests per route per variant per round, {len(rounds)} rounds")
    print(table(["route", "variant", "median ns/req", "best ns/req", "vs head"], rows))
    write_json(
        args.json,
        {
            "benchmark": "http_path",
            "machine": machine(),
            "requests": args.requests,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
