"""The `shared` cold start on every capability of every example, at the tail.

Issue 15's target: a `shared` cold start at most 50 µs at p99 on every example.
``coldstart.py`` measures every layer of a cold start on two examples; this measures
the one layer that scale-to-zero costs a `thaw serve` host (a new `shared` instance of
a preloaded revision, as the host's ``InstancePool`` makes it) on every capability of
every app under examples/, with many trials, so p99 means something.

Per trial, alternating: (1) a new pool's ``thaw()`` alone (the instance: its context,
``on_start``); (2) a new pool's first ``invoke`` (the cold start as a caller sees it:
thaw plus the function's first call) and right after it (3) a second ``invoke`` on the
same pool (warm). "cold - warm" is the pair's difference: what being cold added to that
call. The payload is the capability's sample from its input contract (the same as
``thaw bench coldstart``); a capability that needs route parameters, a signature or
stored state answers from its rejection or failure path, which the outcome column
says. Failures are logged by the host as usual; that log is silenced here so the
traceback formatting does not time the terminal.

    python benchmarks/coldstart_shared.py [--trials 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, summarize, table, write_json  # noqa: E402
from thaw._event import Event, Ok, Outcome  # noqa: E402
from thaw.adapters.cli.coldstart import _bench_backbone, _Target  # noqa: E402
from thaw.declarations._sample import sample_payload  # noqa: E402
from thaw.host._instances import InstancePool  # noqa: E402
from thaw.snapshots._revision import load_revision  # noqa: E402

TARGET_P99_US = 50.0
_ids = itertools.count(1)


def examples() -> list[str]:
    found = []
    for folder in sorted((ROOT / "examples").iterdir()):
        if folder.is_dir() and ((folder / "app.py").exists() or (folder / "__init__.py").exists()):
            found.append(folder.name)
    return found


def label(outcome: Outcome) -> str:
    return "ok" if isinstance(outcome, Ok) else f"{type(outcome).__name__.lower()}:{outcome.code}"


async def measure_app(name: str, trials: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="thaw-cold-shared-") as folder:
        target = _Target(str(ROOT / "examples" / name), Path(folder))
        revision = load_revision(target.blob, data_dir=Path(folder) / "data")
        backbone = await _bench_backbone()
        clock = time.perf_counter
        for capability, spec in revision.app.capabilities.items():
            data = sample_payload(spec.input_type)
            thaw, cold, warm, extra = [], [], [], []
            outcome = "?"
            for _ in range(trials):
                pool = InstancePool(revision, isolation="shared", backbone=backbone)
                started = clock()
                await pool.thaw()
                thaw.append(clock() - started)
                await pool.aclose()
                pool = InstancePool(revision, isolation="shared", backbone=backbone)
                started = clock()
                first = await pool.invoke(capability, Event(id=f"c{next(_ids)}", data=data))
                middle = clock()
                await pool.invoke(capability, Event(id=f"c{next(_ids)}", data=data))
                ended = clock()
                await pool.aclose()
                cold.append(middle - started)
                warm.append(ended - middle)
                extra.append((middle - started) - (ended - middle))
                outcome = label(first)
            rows.append(
                {
                    "app": name,
                    "capability": capability,
                    "outcome": outcome,
                    "thaw_us": _us(summarize(thaw)),
                    "cold_us": _us(summarize(cold)),
                    "warm_us": _us(summarize(warm)),
                    "cold_minus_warm_us": _us(summarize(extra)),
                }
            )
            print(f"   {name}.{capability}", file=sys.stderr, flush=True)
        await backbone.aclose()
    return rows


def _us(stats: dict[str, float]) -> dict[str, float]:
    return {k: (v * 1e6 if k != "n" else v) for k, v in stats.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000, help="trials per capability")
    parser.add_argument("--only", action="append", help="an example's folder name")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    os.environ.setdefault("PAYMENT_WEBHOOK_SECRET", "whsec_benchmark_only")
    logging.getLogger("thaw").setLevel(logging.CRITICAL)  # failure paths log tracebacks

    async def run() -> list[dict[str, Any]]:
        rows = []
        for name in args.only or examples():
            rows += await measure_app(name, args.trials)
        return rows

    rows = anyio.run(run, backend_options={"use_uvloop": True})
    print(
        table(
            [
                "capability",
                "outcome",
                "thaw p50/p99 µs",
                "cold p50/p99 µs",
                "warm p50/p99 µs",
                "cold - warm p50/p99 µs",
            ],
            [
                [
                    f"{r['app']}.{r['capability']}",
                    r["outcome"],
                    *(
                        f"{r[k]['median']:.1f} / {r[k]['p99']:.1f}"
                        for k in ("thaw_us", "cold_us", "warm_us", "cold_minus_warm_us")
                    ),
                ]
                for r in rows
            ],
        )
    )
    worst_thaw = max(rows, key=lambda r: r["thaw_us"]["p99"])
    worst_extra = max(rows, key=lambda r: r["cold_minus_warm_us"]["p99"])
    worst_cold = max(rows, key=lambda r: r["cold_us"]["p99"])
    for what, row, key in (
        ("thaw", worst_thaw, "thaw_us"),
        ("cold - warm", worst_extra, "cold_minus_warm_us"),
        ("cold (with the function's own first call)", worst_cold, "cold_us"),
    ):
        p99 = row[key]["p99"]
        verdict = "met" if p99 <= TARGET_P99_US else "MISSED"
        print(
            f"worst p99, {what}: {p99:.1f} µs ({row['app']}.{row['capability']}) "
            f"[target <= {TARGET_P99_US:g} µs: {verdict}]"
        )
    write_json(
        args.json,
        {
            "benchmark": "coldstart_shared",
            "machine": machine(),
            "settings": {
                "trials": args.trials,
                "command": " ".join(["python", "benchmarks/coldstart_shared.py", *sys.argv[1:]]),
            },
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
