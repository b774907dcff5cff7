"""What telemetry costs per invocation: per-invocation accounting, tracing, the last commit.

One warm invocation (the 40-byte JSON payload of invoke.py, a capability taking a
payload and returning a Struct), in each variant's own child Python so each imports
its own ``thaw``:

- ``head``:       the last commit's runtime (``git archive HEAD runtime``), through a
  host (``open_host`` on a MemoryBackbone: the ``ServedCapability`` every trigger
  passes), no tracing;
- ``accounting``: this working tree through a host: per-invocation accounting on
  (thaw.invocation._accounting; CPU read for one call in about 16), no tracing;
- ``cpu-every``:  the same with ``Accounting(cpu_sample_every=1)``: CPU time read
  around every call (what sampling saves);
- ``tracing``:    this working tree through a host with ``OtelTracer`` over the
  OpenTelemetry SDK (a ``TracerProvider`` with no processor: spans made and ended,
  not exported), accounting on too;
- ``invoker-head`` / ``invoker``: the bare compiled capability (no host, no
  accounting, no tracer) of the last commit and of this tree: what tracing off costs.

Rounds alternate (every variant once per round, in order); in a round each child
times every call on its own with perf_counter_ns after a warm-up, and reports the
median and p99. Reported: median over rounds of each variant's median, and the median
of per-round differences against its baseline (``head`` for the host variants,
``invoker-head`` for the invoker ones), in ns per invocation.

    python benchmarks/tracing.py [--calls 100000] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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

CHILD = r"""
import asyncio, gc, json, sys, time
variant, calls = sys.argv[1], int(sys.argv[2])
import msgspec
from thaw import App, Event
from thaw.lowlevel import Invoker, MemoryBackbone, open_host

class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int
    qty: int

class Total(msgspec.Struct, frozen=True):
    order_id: str
    total: int

app = App("bench")

@app.capability(timeout=5.0)
async def handler(order: Order) -> Total:
    return Total(order.order_id, order.amount * order.qty)

event = Event(id="e1", data=b'{"order_id":"A-1042","amount":1999,"qty":3}',
              traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
now = time.perf_counter_ns

async def timed(capability):
    for _ in range(min(calls, 20000)):
        await capability(event)
    samples = []
    gc.disable()
    for _ in range(calls):
        start = now()
        await capability(event)
        samples.append(now() - start)
    gc.enable()
    samples.sort()
    return {"median": samples[len(samples) // 2],
            "p99": samples[int(len(samples) * 0.99)], "max": samples[-1]}

async def main():
    if variant.startswith("invoker"):
        result = await timed(Invoker(app).capability("handler"))
    else:
        options = {}
        if variant == "tracing":
            from opentelemetry.sdk.trace import TracerProvider
            from thaw.adapters.telemetry.tracing import OtelTracer
            options["tracer"] = OtelTracer(TracerProvider().get_tracer("bench"))
        if variant == "cpu-every":
            from thaw.lowlevel import Accounting
            options["accounting"] = Accounting(cpu_sample_every=1)
        async with open_host(app, MemoryBackbone(), warm=True, **options) as host:
            invoker = host.invoker
            via = getattr(invoker, "capability_via", None)  # HEAD has no trigger handles
            capability = via("handler", "http") if via else invoker.capability("handler")
            result = await timed(capability)
    print(json.dumps(result))

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def head_runtime(into: Path) -> Path:
    """The last commit's ``runtime/`` as an importable ``thaw`` package under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "runtime"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "runtime").rename(into / "thaw")
    return into


def run_child(variant: str, calls: int, path: Path | None, deadline: float) -> dict[str, int]:
    env = dict(os.environ)
    if path is not None:  # first on sys.path: ahead of the editable install's finder
        env["PYTHONPATH"] = str(path)
    timeout = max(30.0, deadline - time.monotonic())
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, variant, str(calls)],
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{variant} child failed: {errors.read().decode()[-2000:]}")
    result: dict[str, int] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    variants = ("head", "accounting", "cpu-every", "tracing", "invoker-head", "invoker")
    rounds: list[dict[str, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        head = head_runtime(Path(tmp))
        for _ in range(args.rounds):
            if time.monotonic() > deadline:
                break
            rounds.append(
                {
                    v: run_child(v, args.calls, head if v.endswith("head") else None, deadline)
                    for v in variants
                }
            )
    rows = []
    for v in variants:
        medians = [r[v]["median"] for r in rounds]
        p99s = [r[v]["p99"] for r in rounds]
        base = "invoker-head" if v.startswith("invoker") else "head"
        delta = [r[v]["median"] - r[base]["median"] for r in rounds]
        ratio = [r[v]["median"] / r[base]["median"] for r in rounds]
        rows.append([v, base, median(medians), median(p99s), median(delta), f"{median(ratio):.3f}"])
    print(f"{args.calls} calls per variant per round, {len(rounds)} rounds (ns per invocation)")
    print(table(["variant", "baseline", "median ns", "p99 ns", "vs baseline ns", "ratio"], rows))
    write_json(
        args.json,
        {
            "benchmark": "telemetry",
            "machine": machine(extra=("opentelemetry-api", "opentelemetry-sdk")),
            "calls": args.calls,
            "rounds": rounds,
            "summary": {
                r[0]: dict(zip(("baseline", "median", "p99", "vs_baseline"), r[1:5], strict=True))
                for r in rows
            },
        },
    )


if __name__ == "__main__":
    main()
